"""CUDA graphs' logic on the CPU (hal/drivers/nvidia/graphs.py) through a fake GraphBackend: buckets and their keys,
copy skipping, parameters read in place, fresh and static outputs, the cost-benefit decision and its reasons,
eviction, the fallbacks (capture illegal, autograd, host tensors, writes) and the measurement leaving no trace.

The fake captures by recording the callable and the tensors it reads, and replays by running it again on those very
tensors, writing into the static outputs in place: what a real graph does with addresses. Its clock charges
``eager_s`` per timed call that replays nothing (an eager call), ``replay_s`` per replay and ``copy_s`` per copy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from hal.drivers.nvidia import graphs
from hal.drivers.nvidia.graphs import GraphedCallable, GraphPolicy, GraphPool
from hal.errors import InvalidInput

CPU = torch.device("cpu")
ILLEGAL = "CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors might be asynchronously reported"


class FakeGraph:
    def __init__(self, fn: Callable[..., Any], args: Sequence[torch.Tensor], outputs: Any):
        self.fn, self.args, self.outputs = fn, tuple(args), outputs


class FakeBackend:
    """A GraphBackend on host tensors with a simulated clock and memory counter."""

    clock = "fake clock"

    def __init__(self, eager_s: float = 1e-3, replay_s: float = 1e-4, copy_s: float = 1e-6, capture_bytes: int = 2 * graphs.MIB):
        self.device = CPU
        self.eager_s, self.replay_s, self.copy_s, self.capture_bytes = eager_s, replay_s, copy_s, capture_bytes
        self.now = 0.0
        self.reserved = 0
        self.capturing = False
        self.replaying = False
        self.pools = self.warm_ups = self.captures = self.replays = self.released = self.copies = 0

    def new_pool(self) -> Any:
        self.pools += 1
        return ("pool", self.pools)

    def warm_up(self, fn, args, calls) -> None:
        self.warm_ups += calls
        for _ in range(calls):
            fn(*args)

    def capture(self, fn, args, pool) -> tuple[Any, Any]:
        self.captures += 1
        self.capturing = True
        try:
            outputs = fn(*args)
        finally:
            self.capturing = False
        self.reserved += self.capture_bytes
        return FakeGraph(fn, args, outputs), outputs

    def replay(self, graph: FakeGraph) -> None:
        self.replays += 1
        self.replaying = True
        try:
            new = graph.fn(*graph.args)
        finally:
            self.replaying = False
        for static, value in zip(graphs._as_tuple(graph.outputs), graphs._as_tuple(new)):
            if static is not value:
                static.copy_(value)
        self.now += self.replay_s

    def release(self, graph: FakeGraph) -> None:
        self.released += 1
        self.reserved -= self.capture_bytes

    def per_call_s(self, call, calls) -> float:
        start = self.now
        for _ in range(calls):
            replays = self.replays
            call()
            if self.replays == replays:
                self.now += self.eager_s
        return (self.now - start) / calls

    def reserved_bytes(self) -> int:
        return self.reserved

    def copy_(self, dst, src) -> None:
        self.copies += 1
        self.now += self.copy_s
        dst.copy_(src)

    def fresh(self, t):
        self.now += self.copy_s
        return t.clone()

    def fence(self):
        self.fences = getattr(self, "fences", 0) + 1
        return ("fence", self.fences)

    def wait(self, fence) -> None:
        self.waited = [*getattr(self, "waited", []), fence]


def _graphed(fn, backend: FakeBackend, **kwargs) -> GraphedCallable:
    return GraphedCallable(fn, device=CPU, backend=backend, **kwargs)


def _linear(weight: torch.Tensor | None = None):
    def fn(x, w=None):
        return torch.relu(x @ (weight if w is None else w).T)

    return fn


def test_the_first_call_decides_and_later_calls_replay_with_the_same_result() -> None:
    fake = FakeBackend()
    w, x = torch.randn(5, 4), torch.randn(3, 4)
    fn = _linear(w)
    g = _graphed(fn, fake)
    assert g.last_decision is graphs.PENDING
    first = g(x)
    assert torch.equal(first, fn(x)) and g.stats.replays == 0 and g.stats.buckets_made == 1
    assert fake.warm_ups == graphs.WARMUP_CALLS.value - 1 and fake.captures == 1
    assert g.last_decision.graphed
    assert g.last_decision.reason == "graphed: replay 0.102 ms vs eager 1 ms per call, 2.0 MiB"  # 0.1 ms + input and output copy
    y = torch.randn(3, 4)
    assert torch.equal(g(y), fn(y)) and g.stats.replays == 1 and fake.captures == 1
    decision = g.last_decision
    assert decision.eager_s_per_call.value == pytest.approx(1e-3) and decision.eager_s_per_call.kind == "measured"
    assert decision.replay_s_per_call.value == pytest.approx(1.02e-4)
    assert decision.memory_bytes.value == 2 * graphs.MIB + x.nbytes, "pool growth plus the input buffer"


def test_a_new_dtype_shape_or_stride_is_a_new_bucket() -> None:
    fake = FakeBackend()
    g = _graphed(lambda x: x * 2, fake)
    x = torch.randn(4, 6)
    for t in (x, x.clone(), x.double(), torch.randn(5, 6), x.T.contiguous().T):
        assert torch.equal(g(t), t * 2)
    assert g.stats.buckets_made == 4, "the clone reuses the first bucket; dtype, shape and stride each make one"
    assert [d for d, _ in g.buckets()] == ["float32[4, 6]", "float64[4, 6]", "float32[5, 6]", "float32[4, 6]"]


def test_static_inputs_are_read_in_place_and_an_in_place_update_is_seen_without_a_copy() -> None:
    fake = FakeBackend()
    w, x = torch.randn(5, 4), torch.randn(3, 4)
    g = _graphed(_linear(), fake, static_argnums=(1,))
    g(x, w)
    g(x, w)
    copies = g.stats.input_copies
    assert copies == 1, "x copied into its buffer, w read where it lies"
    with torch.no_grad():
        w.copy_(torch.randn(5, 4))  # an optimiser step
    assert torch.equal(g(x, w), torch.relu(x @ w.T))
    assert g.stats.buckets_made == 1 and g.stats.input_copies == copies + 1 and fake.captures == 1


def test_a_static_input_replaced_by_another_tensor_never_replays_the_old_address() -> None:
    fake = FakeBackend()
    x = torch.randn(3, 4)
    w1, w2 = torch.randn(5, 4), torch.randn(5, 4)
    g = _graphed(_linear(), fake, static_argnums=(1,))
    g(x, w1)
    assert torch.equal(g(x, w2), torch.relu(x @ w2.T)), "the first call of w2 runs eager"
    assert torch.equal(g(x, w2), torch.relu(x @ w2.T)), "and then its own graph replays"
    assert torch.equal(g(x, w1), torch.relu(x @ w1.T))
    assert g.stats.buckets_made == 2 and g.stats.replays == 2
    assert [d for d, _ in g.buckets()] == ["float32[3, 4], float32[5, 4] in place"] * 2


def test_a_predicate_marks_parameters_static() -> None:
    fake = FakeBackend()
    w = torch.nn.Parameter(torch.randn(5, 4), requires_grad=False)
    g = _graphed(_linear(), fake, is_static=lambda t: isinstance(t, torch.nn.Parameter))
    x = torch.randn(3, 4)
    g(x, w)
    g(x, w)
    assert g.stats.input_copies == 1 and g.buckets()[0][0] == "float32[3, 4], float32[5, 4] in place"


def test_an_input_already_in_the_buffer_is_not_copied() -> None:
    fake = FakeBackend()
    fn = _linear(torch.randn(5, 4))
    g = _graphed(fn, fake)
    g(torch.randn(3, 4))
    (buffer,) = g.static_inputs(torch.randn(3, 4))
    buffer.copy_(torch.randn(3, 4))  # the caller writes the next input where the graph reads it
    assert torch.equal(g(buffer), fn(buffer))
    assert g.stats.copies_skipped == 1 and g.stats.input_copies == 0


def test_outputs_are_the_callers_and_never_overwritten_by_later_replays() -> None:
    fake = FakeBackend()
    g = _graphed(lambda x: (x + 1, x * 3), fake)
    a, b = torch.zeros(3), torch.ones(3)
    g(a)
    first = g(a)
    second = g(b)
    assert first[0] is not second[0] and torch.equal(first[0], a + 1) and torch.equal(first[1], a * 3)
    assert torch.equal(second[0], b + 1)


def test_graphs_of_one_pool_share_one_handle_and_each_copies_its_inputs() -> None:
    fake = FakeBackend()
    pool = GraphPool(CPU)
    first = _graphed(lambda x: x * 2, fake, pool=pool)
    second = _graphed(lambda h: h + 1, fake, pool=pool)
    x = torch.randn(4)
    for _ in range(3):
        out = second(first(x))
    assert torch.equal(out, x * 2 + 1) and fake.pools == 1, "one pool handle for both graphs"


def test_auto_keeps_eager_when_replay_is_not_faster_by_the_margin() -> None:
    fake = FakeBackend(eager_s=1.0e-4, replay_s=0.98e-4, capture_bytes=40 * graphs.MIB)
    g = _graphed(_linear(torch.randn(5, 4)), fake)
    g(torch.randn(3, 4))
    decision = g.last_decision
    assert not decision.graphed
    assert decision.reason == "eager: replay 0.1 ms vs eager 0.1 ms per call, not 1.1x faster: not worth 40.0 MiB"
    assert fake.released == 1 and fake.reserved == 0, "the rejected graph is freed"
    g(torch.randn(3, 4))
    assert g.stats.replays == 0 and g.stats.eager_calls == 2 and fake.captures == 1, "decided once per bucket"


def test_auto_keeps_eager_when_the_graph_holds_more_than_the_budget() -> None:
    fake = FakeBackend(capture_bytes=8 * graphs.MIB)
    g = _graphed(_linear(torch.randn(5, 4)), fake, policy=GraphPolicy(memory_budget_bytes=4 * graphs.MIB))
    g(torch.randn(3, 4))
    assert not g.last_decision.graphed
    assert g.last_decision.reason == "eager: replay 0.102 ms vs eager 1 ms per call, but the graph holds 8.0 MiB, over the 4.0 MiB budget"


def test_always_graphs_untimed_and_never_runs_eager() -> None:
    fake = FakeBackend(eager_s=1e-4, replay_s=1e-3, capture_bytes=8 * graphs.MIB)
    fn = _linear(torch.randn(5, 4))
    always = _graphed(fn, fake, policy=GraphPolicy(mode="always", memory_budget_bytes=0))
    x = torch.randn(3, 4)
    always(x)
    assert always.last_decision.graphed and always.last_decision.reason == "graphed: mode always (not timed), 8.0 MiB"
    assert always.last_decision.eager_s_per_call is None
    never = _graphed(fn, fake, policy=GraphPolicy(mode="never"))
    assert never.last_decision.reason == "eager: graph mode never"
    assert torch.equal(never(x), fn(x)) and never.stats.buckets_made == 0 and fake.captures == 1


def test_an_illegal_capture_runs_eager_from_then_on_with_the_first_line_of_the_error() -> None:
    fake = FakeBackend()

    def syncs(x):
        if fake.capturing:  # what .item() or torch.cuda.synchronize() does inside a capture
            raise RuntimeError(ILLEGAL)
        return x.sum() * x

    g = _graphed(syncs, fake)
    x = torch.randn(4)
    assert torch.equal(g(x), x.sum() * x)
    assert not g.last_decision.graphed
    assert g.last_decision.reason == "eager: capture illegal: RuntimeError: CUDA error: operation not permitted when stream is capturing"
    assert not fake.capturing and fake.reserved == 0
    assert torch.equal(g(x), x.sum() * x) and fake.captures == 1 and g.stats.eager_calls == 2


def test_a_replay_that_fails_is_not_kept() -> None:
    fake = FakeBackend()
    state = {"captured": False}

    def fn(x):
        if fake.capturing:
            state["captured"] = True
        elif state["captured"] and fake.replaying:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return x + 1

    g = _graphed(fn, fake)
    g(torch.zeros(2))
    assert g.last_decision.reason == "eager: replay failed: RuntimeError: CUDA error: an illegal memory access was encountered"
    assert fake.released == 1


def test_autograd_runs_eager_with_the_reason() -> None:
    fake = FakeBackend()
    w = torch.randn(5, 4, requires_grad=True)
    x = torch.randn(3, 4)
    g = _graphed(lambda t: t * 2, fake)
    out = g(x.requires_grad_())
    assert out.requires_grad and g.stats.buckets_made == 0
    assert g.last_decision.reason.startswith("eager: autograd: grad mode is on and input 0 requires grad")
    closes_over_weight = _graphed(lambda t: t @ w.T, fake)
    assert closes_over_weight(torch.randn(3, 4)).requires_grad
    assert closes_over_weight.last_decision.reason.startswith("eager: autograd: output 0 requires grad")
    with torch.no_grad():
        closes_over_weight(torch.randn(3, 4))
        closes_over_weight(torch.randn(3, 4))
    assert closes_over_weight.stats.replays == 1, "without grad mode it is its own bucket, graphed"


def test_an_input_on_another_device_runs_eager_with_the_reason() -> None:
    fake = FakeBackend()
    g = _graphed(lambda t: t + 1, fake)
    out = g(torch.empty(3, device="meta"))
    assert out.device.type == "meta"
    assert g.last_decision.reason == "eager: host tensor: input 0 is on meta, not cpu (a graph reads and writes device memory only)"


def test_a_callable_returning_something_else_than_tensors_runs_eager() -> None:
    fake = FakeBackend()
    g = _graphed(lambda t: [t, t], fake)
    assert isinstance(g(torch.ones(2)), list)
    assert g.last_decision.reason == "eager: the callable returned list, not a tensor or a tuple of tensors"


@pytest.mark.parametrize("inference", [False, True])
def test_an_undeclared_write_to_an_input_runs_eager_naming_it(inference: bool) -> None:
    fake = FakeBackend()

    def writes(x, cache):
        cache.add_(x)
        return cache * 2

    g = _graphed(writes, fake)
    with torch.inference_mode(inference):
        x, cache = torch.ones(3), torch.zeros(3)
        g(x, cache)
        g(x, cache)
    assert torch.equal(cache, torch.full((3,), 2.0)), "each call wrote the caller's tensor once"
    assert g.last_decision.reason == "eager: input 1 is written in place by the callable: declare it (written_argnums) so that the graph writes the caller's tensor"


@pytest.mark.parametrize("inference", [False, True])
def test_a_declared_write_goes_to_the_callers_tensor_once_per_call(inference: bool) -> None:
    # not idempotent on purpose: the warm-up, timing and first replay must leave no trace
    fake = FakeBackend()

    def step(x, cache):
        cache.add_(x)
        return cache.sum().reshape(1)

    g = _graphed(step, fake, written_argnums=(1,))
    with torch.inference_mode(inference):
        x, cache = torch.ones(3), torch.zeros(3)
        outs = [g(x, cache) for _ in range(4)]
    assert g.last_decision.graphed and g.stats.replays == 3
    assert torch.equal(cache, torch.full((3,), 4.0))
    assert [float(o) for o in outs] == [3.0, 6.0, 9.0, 12.0]


def test_buckets_are_bounded_and_every_eviction_is_counted_and_explained() -> None:
    fake = FakeBackend()
    g = _graphed(lambda x: x + 1, fake, policy=GraphPolicy(max_buckets=2))
    a, b, c = torch.zeros(1), torch.zeros(2), torch.zeros(3)
    g(a), g(b), g(a), g(c)  # b is the least recently used when c arrives
    assert [d for d, _ in g.buckets()] == ["float32[1]", "float32[3]"]
    assert g.stats.evictions == ["float32[2] (graphed): the least recently used of 3 buckets, over max_buckets=2"]
    assert fake.released == 1
    g(b)
    assert g.stats.buckets_made == 4 and len(g.stats.evictions) == 2


def test_past_the_bucket_limit_new_layouts_run_eager_and_known_ones_still_replay() -> None:
    fake = FakeBackend()
    g = _graphed(lambda x: x + 1, fake, policy=GraphPolicy(max_buckets=2, max_buckets_made=2))
    g(torch.zeros(1)), g(torch.zeros(2))
    assert torch.equal(g(torch.zeros(3)), torch.ones(3))
    assert g.last_decision.reason.startswith("eager: 2 buckets made already, the limit (input layouts or static tensors keep changing")
    g(torch.zeros(2))
    assert g.stats.replays == 1 and g.stats.buckets_made == 2 and fake.captures == 2


def test_clear_frees_every_graph() -> None:
    fake = FakeBackend()
    g = _graphed(lambda x: x + 1, fake)
    g(torch.zeros(1)), g(torch.zeros(2))
    g.clear()
    assert g.buckets() == [] and fake.released == 2 and fake.reserved == 0


def test_bad_arguments_are_refused_with_the_fix() -> None:
    fake = FakeBackend()
    with pytest.raises(InvalidInput, match="not one of auto, always, never"):
        GraphPolicy(mode="sometimes")
    with pytest.raises(InvalidInput, match="max_buckets_made"):
        GraphPolicy(max_buckets=16, max_buckets_made=8)
    with pytest.raises(InvalidInput, match="min_speedup must be >= 1"):
        GraphPolicy(min_speedup=0.5)
    with pytest.raises(InvalidInput, match="argument positions"):
        _graphed(lambda x: x, fake, static_argnums=(-1,))
    with pytest.raises(InvalidInput, match="one pool per device"):
        _graphed(lambda x: x, fake, pool=GraphPool(torch.device("cuda", 0)))
    g = _graphed(lambda x, y: x, fake, static_argnums=(2,))
    with pytest.raises(InvalidInput, match="name input 2 but this call has 2 input"):
        g(torch.zeros(1), torch.zeros(1))
    with pytest.raises(InvalidInput, match="input 1 is float"):
        _graphed(lambda x, y: x, fake)(torch.zeros(1), 2.0)
    with pytest.raises(InvalidInput, match="call it first"):
        _graphed(lambda x: x, fake).static_inputs(torch.zeros(1))


def test_without_a_cuda_device_every_call_is_eager_with_the_reason() -> None:
    g = GraphedCallable(lambda x: x + 1, device=CPU)
    assert torch.equal(g(torch.zeros(2)), torch.ones(2))
    assert g.last_decision.reason == "eager: CUDA graphs need a CUDA device; this callable runs on cpu"
    assert g.stats.eager_calls == 1 and g.stats.buckets_made == 0


def test_the_defaults_say_where_they_come_from() -> None:
    defaults = (graphs.MAX_BUCKETS, graphs.MAX_BUCKETS_MADE, graphs.WARMUP_CALLS, graphs.TIMING_CALLS, graphs.MIN_SPEEDUP, graphs.MEMORY_BUDGET)
    assert all(f.kind == "assumed" for f in defaults)
    policy = GraphPolicy()
    assert (policy.max_buckets, policy.min_speedup, policy.memory_budget_bytes) == (8, 1.1, 2**30)


def test_guarded_layouts_key_on_static_addresses_only_and_copy_every_other_input() -> None:
    fake = FakeBackend()
    x, w1, w2 = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4)
    g = _graphed(_linear(), fake, static_argnums=(1,), layouts_guarded=True)
    g(x, w1)
    assert g._key((x, w1)) == (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), w1.data_ptr())
    y = torch.randn(3, 4)
    assert torch.equal(g(y, w1), torch.relu(y @ w1.T)) and g.stats.replays == 1 and g.stats.input_copies == 1
    assert torch.equal(g(x, w2), torch.relu(x @ w2.T)), "another weight is another bucket, never the old address"
    assert g.stats.buckets_made == 2


class Overlapping(FakeBackend):
    """A fake whose replays take a while and count how many run at once."""

    def __init__(self):
        super().__init__()
        self.active = self.most = 0
        self.guard = threading.Lock()

    def replay(self, graph) -> None:
        with self.guard:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(0.002)
        super().replay(graph)
        with self.guard:
            self.active -= 1


def test_replays_from_several_threads_are_serialised_on_the_pool_and_fenced() -> None:
    fake = Overlapping()
    pool = GraphPool(CPU)
    w = torch.randn(5, 4)
    a = _graphed(_linear(w), fake, pool=pool)
    b = _graphed(lambda x: x * 3, fake, pool=pool)
    xs = [torch.randn(3, 4) for _ in range(8)]
    a(xs[0]), b(xs[0])
    fake.most = 0
    results = {}

    def work(i: int) -> None:
        results[i] = (a(xs[i]), b(xs[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.most == 1, "two graphs of one pool replayed at once: they share buffers and memory"
    for i, (ya, yb) in results.items():
        assert torch.equal(ya, torch.relu(xs[i] @ w.T)) and torch.equal(yb, xs[i] * 3), "each thread gets its own inputs' result"
    assert len(fake.waited) >= 16, "every replay after the first waits for the previous replay's fence"


def test_an_output_viewing_a_tensor_read_in_place_is_handed_back_as_the_view_eager_returns() -> None:
    fake = FakeBackend()
    cache, x = torch.zeros(4, 3), torch.randn(3)

    def step(x, cache):
        cache[1].copy_(x)
        return cache[1:3], x * 2

    g = _graphed(step, fake, written_argnums=(1,))
    g(x, cache)
    y = torch.randn(3)
    view, doubled = g(y, cache)
    assert view.untyped_storage().data_ptr() == cache.untyped_storage().data_ptr(), "the caller's cache, not a copy"
    assert torch.equal(view[0], y) and torch.equal(doubled, y * 2)
    again, doubled_again = g(x, cache)
    assert doubled_again.untyped_storage().data_ptr() != doubled.untyped_storage().data_ptr(), "graph memory is copied out"
