"""CUDA graphs on a real GPU (hal/drivers/nvidia/graphs.py; run on an H100/H200:
``pytest -m gpu -s tests/drivers/test_nvidia_graphs_gpu.py``, ``-s`` to see the measured host cost per call).

Graphed vs eager equality on a small MLP and on a decode-like step writing its KV cache in place, replay after an
in-place weight update, a shape change making a new bucket, ``.item()`` inside the callable making it eager with the
reason and leaving no capture open, dropout drawing new masks on every replay, a caller on a side stream, the
cost-benefit decision on launch-bound and compute-bound work, and a claimed subgraph Program graphed through the
driver's ``?graphs=`` option."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from hal.device import OpSpec
from hal.drivers.nvidia.graphs import GraphedCallable, GraphPolicy, GraphPool
from hal.subgraph import Subgraph, run_wired

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with a CUDA build of torch"),
]

DEV = torch.device("cuda", 0)
ALWAYS = GraphPolicy(mode="always")


def _mlp(width: int = 1024, layers: int = 16, dtype: torch.dtype = torch.float16) -> nn.Module:
    """The issue's launch-bound model: Linear-GELU-LayerNorm blocks."""
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width)]
    return nn.Sequential(*blocks).to(DEV, dtype).eval().requires_grad_(False)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=2e-3, atol=2e-3)


@torch.no_grad()
def test_a_launch_bound_mlp_is_graphed_by_auto_and_equals_eager() -> None:
    model = _mlp()
    g = GraphedCallable(model, device=DEV)
    x = torch.randn(8, 1024, device=DEV, dtype=torch.float16)
    assert torch.equal(g(x), model(x)), "a new bucket's first call is the eager call"
    print(f"\n16-layer MLP, batch 8, width 1024, fp16: {g.last_decision.reason}")
    assert g.last_decision.graphed, g.last_decision.reason
    for _ in range(3):
        y = torch.randn_like(x)
        _close(g(y), model(y))
    assert g.stats.replays == 3 and g.stats.buckets_made == 1


@torch.no_grad()
def test_a_compute_bound_matmul_stays_eager_under_auto() -> None:
    w = torch.randn(8192, 8192, device=DEV, dtype=torch.float16)
    g = GraphedCallable(lambda a: a @ w, device=DEV)
    g(torch.randn(8192, 8192, device=DEV, dtype=torch.float16))
    print(f"\none 8192^3 fp16 GEMM: {g.last_decision.reason}")
    assert not g.last_decision.graphed and g.last_decision.replay_s_per_call is not None, g.last_decision.reason


def _decode_step(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor):
    """One attention decode step: project x, write k and v at ``pos`` into the caches, attend over positions <= pos."""
    scale = wq.shape[1] ** -0.5

    def step(x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q, k, v = x @ wq, x @ wk, x @ wv
        cache_k.index_copy_(1, pos, k.unsqueeze(1))
        cache_v.index_copy_(1, pos, v.unsqueeze(1))
        seen = torch.arange(cache_k.shape[1], device=x.device) <= pos
        scores = (cache_k @ q.unsqueeze(-1)).squeeze(-1) * scale
        weights = scores.masked_fill(~seen, float("-inf")).softmax(-1)
        return (weights.unsqueeze(1) @ cache_v).squeeze(1)

    return step


@torch.inference_mode()
def test_a_decode_step_writing_its_kv_cache_in_place_equals_eager() -> None:
    torch.manual_seed(1)
    batch, width, steps = 4, 256, 16
    wq, wk, wv = (torch.randn(width, width, device=DEV) / width**0.5 for _ in range(3))
    step = _decode_step(wq, wk, wv)
    graphed = GraphedCallable(step, device=DEV, policy=ALWAYS, written_argnums=(1, 2))
    eager_k, eager_v = torch.zeros(batch, steps, width, device=DEV), torch.zeros(batch, steps, width, device=DEV)
    graph_k, graph_v = eager_k.clone(), eager_v.clone()
    for t in range(steps):
        x, pos = torch.randn(batch, width, device=DEV), torch.tensor([t], device=DEV)
        _close(graphed(x, graph_k, graph_v, pos), step(x, eager_k, eager_v, pos))
    _close(graph_k, eager_k)
    _close(graph_v, eager_v)
    assert graphed.last_decision.graphed and graphed.stats.buckets_made == 1 and graphed.stats.replays == steps - 1
    assert graphed.stats.input_copies == 2 * (steps - 1), "x and pos copied; the caches are written where they lie"


def test_replay_sees_an_in_place_weight_update_without_a_new_capture() -> None:
    model = _mlp(layers=2)
    g = GraphedCallable(model, device=DEV, policy=ALWAYS)
    x = torch.randn(8, 1024, device=DEV, dtype=torch.float16)
    with torch.no_grad():
        g(x), g(x)
        for p in model.parameters():
            p.mul_(0.5)  # an optimiser step
        _close(g(x), model(x))
    assert g.stats.buckets_made == 1 and g.stats.replays == 2


@torch.no_grad()
def test_a_new_shape_is_a_new_bucket() -> None:
    model = _mlp(layers=2)
    g = GraphedCallable(model, device=DEV, policy=ALWAYS)
    for batch in (8, 16, 8, 16):
        x = torch.randn(batch, 1024, device=DEV, dtype=torch.float16)
        _close(g(x), model(x))
    assert g.stats.buckets_made == 2 and g.stats.replays == 2
    assert [d for d, _ in g.buckets()] == ["float16[8, 1024]", "float16[16, 1024]"]


@torch.no_grad()
def test_item_inside_the_callable_makes_it_eager_and_leaves_no_capture_open() -> None:
    def normalise(x: torch.Tensor) -> torch.Tensor:
        return x / x.abs().max().item()  # a host sync: illegal inside a capture

    pool = GraphPool(DEV)
    g = GraphedCallable(normalise, device=DEV, policy=ALWAYS, pool=pool)
    x = torch.randn(1024, device=DEV)
    normalise(x)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(DEV)
    out = g(x)
    assert torch.equal(out, normalise(x))
    del out
    reason = g.last_decision.reason
    assert reason.startswith("eager: capture illegal: ") and "\n" not in reason, reason
    assert not torch.cuda.is_current_stream_capturing()
    assert torch.cuda.current_stream(DEV) == torch.cuda.default_stream(DEV)
    assert torch.equal(g(x), normalise(x)) and g.stats.buckets_made == 1 and g.stats.replays == 0
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated(DEV) == before, "the failed capture's buffers and intermediates are freed"
    double = GraphedCallable(lambda t: t * 2, device=DEV, policy=ALWAYS, pool=pool)  # the pool still captures
    double(x)
    assert torch.equal(double(x), x * 2) and double.stats.replays == 1, double.last_decision.reason


@torch.no_grad()
def test_dropout_draws_a_new_mask_on_every_replay() -> None:
    g = GraphedCallable(lambda t: nn.functional.dropout(t, p=0.5, training=True), device=DEV, policy=ALWAYS)
    x = torch.ones(1 << 16, device=DEV)
    g(x)
    replays = [g(x) for _ in range(3)]
    assert g.stats.replays == 3
    masks = [r != 0 for r in replays]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    for r, m in zip(replays, masks):
        assert torch.all(r[m] == 2.0) and 0.48 < float(m.float().mean()) < 0.52


@torch.no_grad()
def test_a_caller_on_a_side_stream_gets_its_work_ordered_on_that_stream() -> None:
    model = _mlp(layers=4)
    g = GraphedCallable(model, device=DEV, policy=ALWAYS)
    x = torch.randn(8, 1024, device=DEV, dtype=torch.float16)
    expected = model(x)
    side = torch.cuda.Stream(DEV)
    side.wait_stream(torch.cuda.current_stream(DEV))
    with torch.cuda.stream(side):
        outs = [g(x) for _ in range(4)]  # captured, then replayed, all from this stream
    side.synchronize()
    for out in outs:
        _close(out, expected)
    assert g.stats.replays == 3


@torch.no_grad()
def test_threads_on_their_own_streams_replaying_graphs_of_one_pool_get_their_own_results() -> None:
    import threading

    pool = GraphPool(DEV)
    model = _mlp(width=256, layers=4)
    first = GraphedCallable(model, device=DEV, policy=ALWAYS, pool=pool)
    second = GraphedCallable(lambda t: torch.tanh(t) * 3, device=DEV, policy=ALWAYS, pool=pool)
    xs = [torch.randn(8, 256, device=DEV, dtype=torch.float16) for _ in range(8)]
    first(xs[0]), second(xs[0])
    results: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def work(i: int) -> None:
        stream = torch.cuda.Stream(DEV)
        with torch.cuda.stream(stream):
            for _ in range(20):
                a, b = first(xs[i]), second(xs[i])
            stream.synchronize()
        results[i] = (a, b)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (a, b) in results.items():
        _close(a, model(xs[i]))
        _close(b, torch.tanh(xs[i]) * 3)


@torch.no_grad()
def test_the_host_cost_of_a_replay_is_reported() -> None:
    x = torch.zeros(16, device=DEV)
    g = GraphedCallable(lambda t: t + 1, device=DEV, policy=ALWAYS)
    g(x), g(x)
    bare = torch.cuda.CUDAGraph()
    static = x.clone()
    side = torch.cuda.Stream(DEV)
    side.wait_stream(torch.cuda.current_stream(DEV))
    with torch.cuda.stream(side):
        static + 1
    torch.cuda.current_stream(DEV).wait_stream(side)
    with torch.cuda.graph(bare):
        static + 1

    def host_us(call, n: int = 2000) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            call()
        elapsed = time.perf_counter() - start
        torch.cuda.synchronize()
        return elapsed / n * 1e6

    figures = {
        "hal replay, fresh output": host_us(lambda: g(x)),
        "bare CUDAGraph.replay()": host_us(bare.replay),
        "eager t + 1": host_us(lambda: x + 1),
    }
    print("\nhost time per call (one 16-element input, time.perf_counter over 2000 calls):")
    for name, us in figures.items():
        print(f"  {name}: {us:.1f} us")
    assert g.stats.replays >= 4000


def _uri(options: str) -> str:
    from hal.drivers.nvidia.detect import detect

    gpu = detect().find(0)
    assert gpu is not None and not gpu.problem, f"CUDA device 0 was not detected: {gpu}"
    return gpu.uri + options


def _launch_bound_chain(batch: int = 8, width: int = 1024, blocks: int = 6) -> tuple[Subgraph, list[dict], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ops, params = [], []
    for _ in range(blocks):
        w, b, ln = torch.randn(width, width, generator=g) / width**0.5, torch.randn(width, generator=g), torch.rand(width, generator=g) + 0.5
        ops += [OpSpec("linear", [torch.empty(batch, width)], {"weight": w, "bias": b}, {"activation": "relu"}), OpSpec("layer_norm", [torch.empty(batch, width)], {"weight": ln})]
        params += [{"weight": w, "bias": b}, {"weight": ln}]
    return Subgraph.chain(ops), params, torch.randn(batch, width, generator=g)


@pytest.mark.parametrize("fuse", ["none", "inductor"])
@torch.no_grad()
def test_a_claimed_subgraph_program_is_graphed_through_the_driver(fuse: str) -> None:
    import hal

    device = hal.device(_uri(f"?fuse={fuse}&graphs=auto"))
    sub, params, x = _launch_bound_chain()
    program = device.prepare_subgraph(sub, params)
    x = x.to(DEV)
    first, second = program(x), program(x * 2)
    one_by_one = run_wired(sub, [device.prepare(op, p) for op, p in zip(sub.ops, params)], [x * 2])
    torch.testing.assert_close(second, one_by_one, rtol=1e-4, atol=1e-4)
    print(f"\nsubgraph of 12 ops, fuse={fuse}: {program.path}")
    assert program.decision.graphed, program.path
    assert program.path.endswith(program.decision.reason) and "graphed: replay" in program.path
    never = hal.device(_uri(f"?fuse={fuse}&graphs=never")).prepare_subgraph(sub, params)
    torch.testing.assert_close(never(x), first, rtol=1e-4, atol=1e-4)
    assert never.path.endswith("eager: graph mode never")
