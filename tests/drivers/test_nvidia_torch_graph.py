"""hal/drivers/nvidia/torch_graph.py: a whole Dynamo graph through the fusion passes, the delegate and a CUDA graph
(the graph machinery through the fake backend of test_nvidia_graphs; the real GPU in test_nvidia_graphs_gpu.py)."""

from __future__ import annotations

import pytest
import torch
from test_nvidia_graphs import FakeBackend
from torch import nn

from hal.drivers.nvidia import graphs, torch_graph


class Block(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, width)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.out(self.norm(torch.nn.functional.gelu(self.fc(x))))


def _dynamo_graph(model: nn.Module, x: torch.Tensor):
    got = []

    def record(gm, example_inputs):
        got.append((gm, list(example_inputs)))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=record)(x)
    ((gm, example_inputs),) = got
    return gm, example_inputs


def _compiled(model, x, fake, **kwargs):
    gm, example_inputs = _dynamo_graph(model, x)
    return example_inputs, torch_graph.CompiledGraph(
        gm, example_inputs, lambda g, xs: g.forward, device=fake.device, policy=graphs.GraphPolicy(), fuse=kwargs.get("fuse", True), backend=fake,
    )


def test_a_small_batch_graph_is_fused_compiled_and_replayed_with_eager_results():
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(4, 16)
    fake = FakeBackend()
    with torch.no_grad():
        expected = model(x)
        example_inputs, compiled = _compiled(model, x, fake)
        fired = compiled.fusion.fired
        assert fired["norm"] == 1 and fired["epilogue"] >= 1, str(compiled.fusion)
        args = [x if t is x else t for t in example_inputs]
        first = compiled(*args)
        again = compiled(*args)
    torch.testing.assert_close(first[0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again[0], expected, rtol=1e-4, atol=1e-5)
    assert compiled.chosen is not None and compiled.graphed.last_decision.graphed
    text = compiled.describe()
    assert "fusion passes:" in text and "fusion choice: fused kept" in text and "CUDA graph: graphed: replay" in text


class Clocked(FakeBackend):
    """A fake backend whose timer reads the cost each compiled candidate adds to a shared clock when it runs."""

    def __init__(self):
        super().__init__()
        self.elapsed = 0.0

    def per_call_s(self, call, calls):
        start = self.elapsed
        for _ in range(calls):
            call()
        return (self.elapsed - start) / calls


def _fused(g) -> bool:
    return any("hal" in f"{getattr(n.target, '__module__', '')} {n.target}" for n in g.graph.nodes if n.op == "call_function")


@pytest.mark.parametrize("fused_cost,kept", [(1e-3, "fused"), (3e-3, "unfused")])
def test_the_faster_of_the_fused_and_unfused_graphs_is_kept_and_the_caller_sees_one_call(fused_cost, kept):
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(4, 16)
    clock = Clocked()

    def delegate(g, xs):
        cost = fused_cost if _fused(g) else 2e-3

        def run(*args):
            clock.elapsed += cost
            return g.forward(*args)

        return run

    policy = graphs.GraphPolicy(mode="never")
    with torch.no_grad():
        expected = model(x)
        gm, example_inputs = _dynamo_graph(model, x)
        compiled = torch_graph.CompiledGraph(gm, example_inputs, delegate, device=clock.device, policy=policy, fuse=True, backend=clock)
        before = float(model.calls)
        out = compiled(*example_inputs)
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-5)
    assert compiled.chosen.name == kept and f"fusion choice: {kept} kept: fused " in compiled.describe()
    assert float(model.calls) == before + 1, "both candidates ran and were timed, yet the buffer saw one call"


def test_parameters_and_buffers_are_read_in_place_and_buffers_count_as_written():
    model, x = Block().eval(), torch.randn(4, 16)
    fake = FakeBackend()
    with torch.no_grad():
        example_inputs, compiled = _compiled(model, x, fake, fuse=False)
        calls_at = next(i for i, t in enumerate(example_inputs) if t is model.calls)
        weight_at = next(i for i, t in enumerate(example_inputs) if t is model.fc.weight)
        assert calls_at in compiled.graphed._written and weight_at in compiled.graphed._static
        before = float(model.calls)
        compiled(*example_inputs)
    assert float(model.calls) == before + 1, "the first call's warm-up and timing runs are undone: the caller sees one call"
    assert "fusion passes: off" in compiled.describe()


def test_a_training_graph_is_left_to_the_delegate():
    model, x = Block(), torch.randn(4, 16)
    gm, example_inputs = _dynamo_graph(model, x)
    assert torch_graph.compile_torch_graph(gm, example_inputs, lambda g, xs: g.forward, device=torch.device("cpu"), policy=graphs.GraphPolicy(), fuse=True) is None


def test_list_outputs_become_tuples_for_the_graph():
    call = torch_graph._tensors_out(lambda x: [x * 2, x + 1])
    out = call(torch.ones(2))
    assert isinstance(out, tuple) and out[0].tolist() == [2.0, 2.0] and out[1].tolist() == [2.0, 2.0]


class WritesItsArgument(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, cache: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        cache[:, 1] = self.fc(x)
        cache.narrow(1, 0, 1).mul_(2)
        total += 1
        return cache.sum(1)


def test_inputs_the_graph_writes_are_found_through_views_and_read_in_place():
    model = WritesItsArgument().eval()
    x = torch.randn(3, 4)
    got = []

    def record(gm, example_inputs):
        got.append((gm, list(example_inputs)))
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=record)(x, torch.zeros(3, 2, 4), torch.zeros(1))
    ((gm, example_inputs),) = got
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    assert sorted(names[i] for i in torch_graph.written_inputs(gm)) == sorted(n for n in names if "cache" in n or "total" in n)
    fake = FakeBackend()
    compiled = torch_graph.CompiledGraph(gm, example_inputs, lambda g, xs: g.forward, device=fake.device, policy=graphs.GraphPolicy(), fuse=False, backend=fake)
    args = list(example_inputs)
    cache, total = torch.zeros(3, 2, 4), torch.zeros(1)
    args[next(i for i, n in enumerate(names) if "cache" in n)] = cache
    args[next(i for i, n in enumerate(names) if "total" in n)] = total
    with torch.no_grad():
        for _ in range(3):
            compiled(*args)
        expected = model.fc(x)
    assert compiled.graphed.last_decision.graphed, compiled.graphed.last_decision.reason
    torch.testing.assert_close(cache[:, 1], expected)  # the graph wrote the caller's cache, not a copy of it
    assert float(total) == 3.0, "three calls, three increments: the first call's measurements were undone"
