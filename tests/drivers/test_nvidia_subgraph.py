"""NVIDIA subgraph claims and hal.nn.convert on a CPU-only machine (simulated NVML/CUDA, Programs run on host tensors):
what is claimed and refused, one Program equal to the ops one by one, fused or not, the precision policy inside it."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn

pytest.importorskip("pynvml")

from nvidia_fakes import H100_SXM, FakeCuda, FakeNvml, machine

from hal.device import OpSpec
from hal.drivers.nvidia import HopperDevice, fusion, graphs, matmul
from hal.drivers.nvidia.detect import Backends, using
from hal.errors import InvalidInput, UnsupportedOp
from hal.subgraph import Subgraph, run_wired

#: What a subgraph Program computing on host tensors (these tests) says about CUDA graphs.
NO_CUDA_GRAPHS = "eager: CUDA graphs need a CUDA device; this callable runs on cpu"


@contextmanager
def simulated_h100():
    gpus = machine(H100_SXM)
    with using(Backends(FakeNvml(gpus), FakeCuda(gpus), torch_problem=lambda: None)):
        yield


def _on_host(uri: str) -> HopperDevice:
    device = HopperDevice(uri)
    device.torch_device = torch.device("cpu")  # no CUDA here: Programs compute on host tensors
    return device


def _mlp_chain(batch: int = 6) -> tuple[Subgraph, list[dict[str, torch.Tensor]], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w1, b1, w2 = torch.randn(32, 16, generator=g), torch.randn(32, generator=g), torch.randn(8, 32, generator=g) / 4
    ln_w = torch.rand(32, generator=g) + 0.5
    x = torch.randn(batch, 16, generator=g)
    ops = [
        OpSpec("linear", [x], {"weight": w1, "bias": b1}, {"activation": "relu"}),
        OpSpec("layer_norm", [torch.empty(batch, 32)], {"weight": ln_w}),
        OpSpec("linear", [torch.empty(batch, 32)], {"weight": w2}),
        OpSpec("softmax", [torch.empty(batch, 8)]),
    ]
    return Subgraph.chain(ops), [{"weight": w1, "bias": b1}, {"weight": ln_w}, {"weight": w2}, {}], x


def _one_by_one(device: HopperDevice, sub: Subgraph, params: list[dict[str, torch.Tensor]], inputs: list[torch.Tensor]):
    programs = [device.prepare(op, p) for op, p in zip(sub.ops, params)]
    return run_wired(sub, programs, inputs)


@pytest.mark.parametrize("fuse", ["none", pytest.param("inductor", marks=pytest.mark.slow)])  # Inductor compiles for seconds
def test_a_claimed_chain_is_one_program_equal_to_the_ops_one_by_one(fuse: str) -> None:
    sub, params, x = _mlp_chain()
    with simulated_h100():
        device = _on_host(f"hopper:0?fuse={fuse}")
        assert device.claim(sub)
        program = device.prepare_subgraph(sub, params)
        out = program(x)
        expected = _one_by_one(device, sub, params, [x])
    assert program.op.name == "subgraph" and program.op.attr("ops") == ("linear", "layer_norm", "linear", "softmax")
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    if fuse == "none":
        assert program.path == f"{fusion.PLAIN}: ?fuse=none; {NO_CUDA_GRAPHS}"
    else:  # Inductor's CPU back end here; on a GPU it builds Triton kernels (test_nvidia_gpu.py)
        assert program.path == f"{fusion.FUSED}; {NO_CUDA_GRAPHS}" or "Inductor failed" in program.path
    assert program.cost.latency_s == pytest.approx(sum(device.estimate(op).latency_s for op in sub.ops))


def test_a_dag_is_claimed_and_returns_its_outputs_in_order() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    sub = Subgraph((OpSpec("add", [a, b]), OpSpec("gelu", [a]), OpSpec("mul", [a, a])), ((-1, -2), (0,), (1, -1)), (2, 0))
    with simulated_h100():
        device = _on_host("hopper:0?fuse=none")
        out_mul, out_add = device.prepare_subgraph(sub, [{}, {}, {}])(a, b)
    assert torch.allclose(out_add, a + b) and torch.allclose(out_mul, nn.functional.gelu(a + b) * a)


def test_the_precision_policy_holds_inside_a_subgraph_and_the_mode_is_restored() -> None:
    sub, params, x = _mlp_chain()
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    with simulated_h100():
        fp8 = _on_host("hopper:0?fuse=none&matmul_precision=fp8")
        native = _on_host("hopper:0?fuse=none")
        out_fp8 = fp8.prepare_subgraph(sub, params)(x)
        per_op_fp8 = _one_by_one(fp8, sub, params, [x])
        out_native = native.prepare_subgraph(sub, params)(x)
        _on_host("hopper:0?fuse=none&matmul_precision=tf32").prepare_subgraph(sub, params)(x)
    assert torch.equal(out_fp8, per_op_fp8), "the same fp8 quantisation as the ops one by one"
    assert not torch.equal(out_fp8, out_native)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before


def test_a_subgraph_with_an_op_the_gpu_does_not_declare_is_refused_with_the_reason() -> None:
    spikes = torch.zeros(4, 2, 8, dtype=torch.uint8)
    sub = Subgraph.chain([OpSpec("relu", [torch.empty(4, 2, 8)]), OpSpec("lif_layer", [spikes], {"weight": torch.zeros(3, 8)})])
    with simulated_h100():
        device = _on_host("hopper:0")
        support = device.claim(sub)
        assert not support and "op 1 (lif_layer)" in support.reason and "does not implement 'lif_layer'" in support.reason
        with pytest.raises(UnsupportedOp, match="lif_layer"):
            device.prepare_subgraph(sub, [{}, {"weight": torch.zeros(3, 8)}])


def test_inductor_needs_triton_for_cuda_kernels(monkeypatch) -> None:
    import torch.utils._triton

    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    assert "Triton" in fusion.inductor_unavailable(torch.device("cuda", 0))
    assert fusion.inductor_unavailable(torch.device("cpu")) is None


def test_a_failed_compile_runs_the_plain_composition_and_says_why(monkeypatch) -> None:
    import torch._dynamo

    class CompileFailed(torch._dynamo.exc.BackendCompilerFailed):
        def __init__(self) -> None:
            RuntimeError.__init__(self, "inductor: no C++ compiler")

    def broken(*_args, **_kwargs):
        def call(*_inputs):
            raise CompileFailed()

        return call

    monkeypatch.setattr(torch, "compile", broken)
    composition = fusion.Composition(lambda t: t + 1, None)
    assert torch.equal(composition(torch.ones(2)), torch.full((2,), 2.0))
    assert composition.path == f"{fusion.PLAIN}: Inductor failed to compile it (inductor: no C++ compiler)"
    assert torch.equal(composition(torch.ones(2)), torch.full((2,), 2.0))  # and stays unfused


def test_convert_uses_the_generic_layers_which_run_the_precision_policy(monkeypatch) -> None:
    import hal.nn
    from hal import registry

    monkeypatch.setattr(registry, "_probed", {})  # keep simulated probe results out of other tests
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(37, 21), nn.ReLU(), nn.Linear(21, 5)).eval()
    x = torch.randn(4, 37)
    with simulated_h100():
        try:
            device = registry.open_device("hopper:0?matmul_precision=fp8")
            device.torch_device = torch.device("cpu")
            converted = hal.nn.convert(model, "hopper:0?matmul_precision=fp8").eval()
            out = converted(x)
            paths = [layer.hal_program().path for _, layer in converted.device_layers()]
        finally:
            device.close()
    assert [type(m).__name__ for m in converted.module] == ["DeviceLinear", "ReLU", "DeviceLinear"]
    assert paths == ["torch linear (float8_e4m3fn)"] * 2
    first = matmul.linear_fn("fp8", torch.float32, model[0].weight.detach(), model[0].bias.detach(), "none")
    second = matmul.linear_fn("fp8", torch.float32, model[2].weight.detach(), model[2].bias.detach(), "none")
    assert torch.equal(out, second(torch.relu(first(x))))
    assert not torch.allclose(out, model(x), atol=1e-4), "fp8 really ran"


def test_every_subgraph_gets_its_own_compile_cache(monkeypatch) -> None:
    # Dynamo keeps at most 8 graphs per code object and runs the 9th structure uncompiled, silently; every
    # composition is a closure of the same driver function, so each must compile a code object of its own
    import torch._dynamo

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, backend: real_compile(fn, backend="eager"))  # Dynamo's cache, no Inductor
    x = torch.randn(2, 4)
    before = torch._dynamo.utils.counters["frames"]["ok"]
    for n in range(1, 11):
        sub = Subgraph.chain([OpSpec("relu", [x])] * n)

        def composed(*inputs, sub=sub):
            return run_wired(sub, [torch.relu] * len(sub.ops), inputs)

        assert torch.equal(fusion.Composition(composed, None)(x), torch.relu(x))
    assert torch._dynamo.utils.counters["frames"]["ok"] - before == 10, "each of the 10 structures was compiled"


def test_a_subgraph_program_is_graphed_where_replay_pays_and_says_so(monkeypatch) -> None:
    from test_nvidia_graphs import FakeBackend  # CUDA graphs' primitives simulated on host tensors

    fake = FakeBackend(eager_s=1.2e-3, replay_s=1e-4)
    monkeypatch.setattr(graphs, "backend_for", lambda device: (fake, None))
    sub, params, x = _mlp_chain()
    with simulated_h100():
        device = _on_host("hopper:0?fuse=none")
        program = device.prepare_subgraph(sub, params)
        assert program.decision is graphs.PENDING
        first, second = program(x), program(x * 2)
        expected = _one_by_one(device, sub, params, [x * 2])
    assert torch.allclose(second, expected, rtol=1e-5, atol=1e-6) and not torch.equal(first, second)
    assert program.decision.graphed
    assert fake.replays == 1 + graphs.TIMING_CALLS.value + 1, "the decision's untimed and timed replays, then the second call's"
    assert program.path == f"{fusion.PLAIN}: ?fuse=none; graphed: replay 0.102 ms vs eager 1.2 ms per call, 2.0 MiB"


@pytest.mark.parametrize("options, reason", [("graphs=never", "eager: graph mode never"), ("graphs=auto&graph_memory_mib=1", "over the 1.0 MiB budget")])
def test_graph_options_reach_the_decision(monkeypatch, options: str, reason: str) -> None:
    from test_nvidia_graphs import FakeBackend

    fake = FakeBackend()
    monkeypatch.setattr(graphs, "backend_for", lambda device: (fake, None))
    sub, params, x = _mlp_chain()
    with simulated_h100():
        program = _on_host(f"hopper:0?fuse=none&{options}").prepare_subgraph(sub, params)
        program(x)
    assert not program.decision.graphed and reason in program.path


def test_graph_options_are_checked() -> None:
    with simulated_h100():
        with pytest.raises(InvalidInput, match="graphs='sometimes' is invalid"):
            HopperDevice("hopper:0?graphs=sometimes")
        with pytest.raises(InvalidInput, match="graph_buckets='0' is invalid"):
            HopperDevice("hopper:0?graph_buckets=0")


def test_every_program_of_a_device_shares_its_one_graph_pool(monkeypatch) -> None:
    from test_nvidia_graphs import FakeBackend

    fake = FakeBackend()
    monkeypatch.setattr(graphs, "backend_for", lambda device: (fake, None))
    sub, params, x = _mlp_chain()
    with simulated_h100():
        device = _on_host("hopper:0?fuse=none")
        first, second = device.prepare_subgraph(sub, params), device.prepare_subgraph(sub, params)
        first(x), second(x)
    assert fake.pools == 1, "one pool handle for both Programs' graphs"
