"""hal.runtime.capture: fx tracing into vocabulary and host nodes, linear+relu fusion, untraceable models."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from runtime_fakes import ActTwice, WritesInPlace
from torch import nn

from hal.kernels.selective_scan import selective_scan_reference
from hal.runtime.capture import UntraceableModel, capture


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Flatten(), nn.Linear(16, 4), nn.Softmax(dim=-1))


def test_mlp_maps_modules_to_vocabulary_and_fuses_linear_relu():
    g = capture(mlp(), (torch.randn(3, 8),))
    ops = [(n.name, n.op.name if n.op else None) for n in g.nodes]
    assert ops == [("0", "linear"), ("2", None), ("3", "linear"), ("4", "softmax")]
    first = g.nodes[0]
    assert first.op.attr("activation") == "relu" and first.fused == ("1",)
    assert g.aliases == {"1": "0"}
    assert g.nodes[2].op.attr("activation") == "none"
    assert g.nodes[3].op.attr("dim") == -1
    assert first.output.shape == (3, 16) and g.nodes[3].output.shape == (3, 4)
    assert set(first.params) == {"weight", "bias"}
    assert "Flatten" in g.nodes[1].source and g.nodes[1].host_fn is not None
    assert any("fused 1 relu" in note for note in g.notes)


class TwoUsers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        return torch.relu(y) + y


def test_relu_is_not_fused_when_the_linear_has_another_user():
    g = capture(TwoUsers(), (torch.randn(2, 4),))
    names = [n.op.name for n in g.nodes]
    assert names == ["linear", "relu", "add"]
    assert g.nodes[0].op.attr("activation") == "none"
    assert g.nodes[2].inputs == ("relu", "fc")


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4))
        self.b = nn.Parameter(torch.randn(6))
        self.A = nn.Parameter(-torch.rand(6, 3))
        self.D = nn.Parameter(torch.randn(6))

    def forward(self, x, q, k, v, delta, B, C):
        h = F.gelu(F.linear(x, self.w, self.b))
        s = torch.softmax(h, dim=-1) * h
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        u = h.transpose(1, 2)
        y = selective_scan_reference(u, delta, self.A, B, C, self.D)
        return s, a, y


def test_functional_calls_map_to_vocabulary_ops_with_constants_as_params_or_inputs():
    x = torch.randn(2, 5, 4)
    q, k, v = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    delta, B, C = torch.rand(2, 6, 5), torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    g = capture(Functional(), (x, q, k, v, delta, B, C))
    by_op = {n.op.name: n for n in g.nodes if n.op is not None}
    assert {"linear", "gelu", "softmax", "mul", "attention", "selective_scan"} <= set(by_op)
    assert by_op["attention"].op.attr("causal") is True
    assert by_op["linear"].params["weight"].shape == (6, 4)
    scan = by_op["selective_scan"]
    assert scan.inputs[2] == "A" and scan.inputs[5] == "D" and "A" in g.constants
    assert [n.op is None for n in g.nodes].count(True) == 1  # the transpose
    assert len(g.outputs) == 3


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.gate = DataDependent()
        self.post = nn.Linear(4, 2)

    def forward(self, x):
        return self.post(self.gate(self.pre(x)))


def test_untraceable_model_names_the_module_and_suggests_a_pin():
    with pytest.raises(UntraceableModel) as info:
        capture(Wrapper(), (torch.randn(2, 4),))
    assert info.value.module == "gate"
    assert "'gate'" in str(info.value) and "pins=" in str(info.value) and "DataDependent" in str(info.value)


def test_a_leaf_module_becomes_one_host_node():
    g = capture(Wrapper(), (torch.randn(2, 4),), leaf_modules=["gate"])
    assert [n.name for n in g.nodes] == ["pre", "gate", "post"]
    assert g.nodes[1].op is None and g.nodes[1].output.shape == (2, 4)


def test_wrong_number_of_example_inputs_is_refused():
    with pytest.raises(ValueError, match="takes 1 input"):
        capture(mlp(), (torch.randn(3, 8), torch.randn(3, 8)))


def test_untraceable_root_forward_says_to_move_the_branch_into_a_pinned_submodule():
    with pytest.raises(UntraceableModel, match="own forward .*DataDependent.*submodule") as info:
        capture(DataDependent(), (torch.randn(2, 4),))
    assert info.value.module == ""


def test_plan_keeps_a_pinned_untraceable_module_whole_and_runs_it():
    import hal
    from hal.runtime import plan

    model = Wrapper()
    x = torch.randn(2, 4)
    p = plan(model, x, pins={"gate": "cpu:0"}, devices=[hal.device("cpu")])
    assert p.device_of("gate") == "host" and p.device_of("pre") == "cpu:0"
    torch.testing.assert_close(p.run(x), model(x).detach())


def test_readers_of_a_value_written_in_place_wait_for_the_writer():
    g = capture(WritesInPlace(), (torch.randn(2, 4),))
    writer, reader = g.nodes
    assert writer.op is None and writer.host_op == "mul_"
    assert reader.inputs == ("x",) and reader.after == (writer.name,)


class PausesWhileTraced(nn.Module):
    """Its forward, run by the tracer, signals ``entered`` and waits for ``release``: the trace is held open."""

    def __init__(self, entered: threading.Event, release: threading.Event):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.entered, self.release = entered, release

    def forward(self, x):
        self.entered.set()
        assert self.release.wait(30)
        return self.fc(x)


def test_a_trace_in_progress_leaves_other_threads_eager_modules_and_plans_alone():
    import hal
    from hal.runtime import plan

    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(4, 4), nn.Flatten(), nn.ReLU())
    x = torch.randn(2, 4)
    expected = other(x).detach()
    running = plan(other, x, devices=[hal.device("cpu")])
    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    entered, release = threading.Event(), threading.Event()
    traced = {}
    tracer = threading.Thread(target=lambda: traced.setdefault("graph", capture(PausesWhileTraced(entered, release), (x,))))
    tracer.start()
    try:
        assert entered.wait(30)  # the trace is now open: torch.nn.Module is patched process-wide
        eager = other(x)
        planned = running.run(x)
    finally:
        release.set()
        tracer.join(30)
    assert isinstance(eager, torch.Tensor) and torch.equal(eager.detach(), expected)
    assert isinstance(planned, torch.Tensor) and torch.allclose(planned, expected)
    assert [n.op.name for n in traced["graph"].nodes] == ["linear"]
    assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_


def test_overlapping_traces_restore_torch():
    """The first trace finishes while the second is still open: overlapping patch/restore would leave fx's patch installed."""
    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    first_in, second_in, first_done = threading.Event(), threading.Event(), threading.Event()

    class First(nn.Module):
        def forward(self, x):
            first_in.set()
            second_in.wait(1)  # times out when traces are serialised: the second cannot start meanwhile
            return x * 2

    class Second(nn.Module):
        def forward(self, x):
            second_in.set()
            first_done.wait(1)
            return x * 3

    def first():
        capture(First(), (torch.randn(2),))
        first_done.set()

    a = threading.Thread(target=first)
    a.start()
    assert first_in.wait(30)
    b = threading.Thread(target=capture, args=(Second(), (torch.randn(2),)))
    b.start()
    a.join(30)
    b.join(30)
    assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_
    assert isinstance(nn.Linear(2, 2)(torch.randn(1, 2)), torch.Tensor)


def test_an_in_place_op_whose_input_is_read_later_stays_an_in_place_host_step():
    g = capture(ActTwice(), (torch.randn(2, 4),))
    fc, act, add = g.nodes
    assert fc.op.name == "linear" and act.op is None and act.writes == "fc"
    assert add.op.name == "add" and add.after == ("act",)


def test_an_in_place_op_no_later_step_can_tell_is_placed_and_fused_like_its_out_of_place_form():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2), nn.ReLU(inplace=True))
    g = capture(model, (torch.randn(2, 4),))
    assert [n.label for n in g.nodes] == ["linear+relu", "linear+relu"]
    assert all(n.writes is None and n.after == () for n in g.nodes)


def test_a_write_through_a_view_orders_the_views_readers_too():
    class ViewWrite(nn.Module):
        def forward(self, x):
            v = x.view(-1)
            F.relu(x, True)  # positional inplace
            return v.sum() + torch.relu(x).sum()

    g = capture(ViewWrite(), (torch.randn(2, 3),))
    by_name = {n.name: n for n in g.nodes}
    write = by_name["relu"]
    assert write.op is None and write.writes == "x" and write.after == ("view",)
    assert by_name["sum_1"].after == ("relu",) and by_name["relu_1"].after == ("relu",)
