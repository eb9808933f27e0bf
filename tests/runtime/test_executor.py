"""hal.runtime.executor: chained runs match the model, failures fall back, inputs stay intact, stages overlap."""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import torch
from runtime_fakes import ActTwice, WritesInPlace, fake
from torch import nn

import hal
from hal.capability import Paradigm
from hal.errors import ProgramInvalidated, ShapeError
from hal.runtime import plan


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Flatten(), nn.Linear(32, 10), nn.Softmax(dim=-1))


def test_run_across_devices_matches_the_model():
    m, x = model(), torch.randn(8, 16)
    a = fake("ea", s_per_flop=1e-13, ops=("linear",), paradigm=Paradigm.ANALOG)
    p = plan(m, x, devices=[a, hal.device("cpu")])
    assert {p.device_of(n) for n in p.graph.node_names()} >= {"ea:0", "cpu:0", "host"}
    out, report = p.run(x, profile=True)
    torch.testing.assert_close(out, m(x).detach())
    assert [r.device for r in report.stages] == [p.placement.label(s.location) for s in p.stages]
    assert all(r.measured_s > 0 and r.est_latency_s >= 0 for r in report.stages)
    assert report.fallbacks == [] and report.replanned_for is None


def test_programs_are_prepared_once():
    m, x = model(), torch.randn(4, 16)
    a = fake("once")
    p = plan(m, x, devices=[a])
    for _ in range(3):
        p.run(x)
    on_device = [n for n in p.graph.node_names() if p.device_of(n) == "once:0"]
    assert len(on_device) == 5 and a.prepared == 5  # one Program per node, for all three runs
    assert a.calls == 3 * 5


def test_device_failure_mid_run_drops_it_replans_and_continues():
    m, x = model(), torch.randn(8, 16)
    flaky = fake("flaky", s_per_flop=1e-14, fail_on_call=2)
    steady = fake("steady", s_per_flop=1e-11)
    p = plan(m, x, devices=[flaky, steady])
    assert {p.device_of(n) for n in ("0", "2", "5")} == {"flaky:0"}
    with pytest.warns(RuntimeWarning, match="flaky:0 failed .*DeviceFailure.*re-planned"):
        out, report = p.run(x, profile=True)
    torch.testing.assert_close(out, m(x).detach())
    (fb,) = report.fallbacks
    assert fb.device == "flaky:0" and fb.node == "2" and "injected link loss" in fb.error
    assert fb.replaced_by and set(fb.replaced_by.values()) == {"steady:0"}
    assert p.dropped == ["flaky:0"] and "flaky:0" not in p.to_dict()["devices"]
    calls = flaky.calls
    p.run(x)  # the dropped device is not used again
    assert flaky.calls == calls


def test_any_program_exception_counts_as_a_failure_and_the_host_takes_over():
    m, x = model(), torch.randn(2, 16)

    def explode(op):
        raise RuntimeError("driver bug")

    only = fake("only", on_run=explode)
    p = plan(m, x, devices=[only])
    with pytest.warns(RuntimeWarning, match="RuntimeError: driver bug"):
        out = p.run(x)
    torch.testing.assert_close(out, m(x).detach())
    assert all(p.device_of(n) == "host" for n in p.graph.node_names())


def test_inputs_are_never_mutated():
    torch.manual_seed(0)
    m = WritesInPlace()
    x = torch.randn(3, 4)
    before, version = x.clone(), x._version
    p = plan(m, x.clone(), devices=[hal.device("cpu")])
    out = p.run(x)
    assert torch.equal(x, before) and x._version == version
    torch.testing.assert_close(out, m.fc(before * 2).detach())


def test_new_batch_size_is_replanned_and_other_shapes_refused():
    m = model()
    p = plan(m, torch.randn(8, 16), devices=[hal.device("cpu")])
    x = torch.randn(3, 16)
    out, report = p.run(x, profile=True)
    torch.testing.assert_close(out, m(x).detach())
    assert report.replanned_for == [[3, 16]]
    with pytest.raises(ShapeError, match="only the batch"):
        p.run(torch.randn(8, 12))
    with pytest.raises(ShapeError, match="takes 1 input"):
        p.run(torch.randn(8, 16), torch.randn(8, 16))


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.left(x), torch.relu(self.right(x))


def test_independent_stages_on_different_devices_overlap():
    """Each branch's program waits at a barrier for the other: only concurrent execution gets through."""
    barrier = threading.Barrier(2, timeout=10)

    def meet(op):
        if op.name == "linear":
            barrier.wait()

    left = fake("left", ops=("linear",), on_run=meet)
    right = fake("right", ops=("linear", "relu"), on_run=meet, s_per_flop=1e-11)
    m, x = Branches(), torch.randn(2, 8)
    p = plan(m, x, devices=[left, right], pins={"left": "left:0", "right": "right:0"})
    a, b = p.run(x)
    torch.testing.assert_close(a, m.left(x).detach())
    torch.testing.assert_close(b, torch.relu(m.right(x)).detach())
    assert not barrier.broken


def test_nan_refused_by_a_device_is_the_callers_error_not_a_device_failure():
    from hal.errors import InvalidInput

    class Refusing(type(fake("tmp"))):
        refuses_nonfinite = True

    picky = Refusing("tmp:0")
    m, x = model(), torch.randn(2, 16)
    p = plan(m, x, devices=[picky])
    x[0, 0] = float("nan")
    with pytest.raises(InvalidInput, match="NaN"):
        p.run(x)
    assert p.dropped == [] and "tmp:0" in {p.device_of(n) for n in p.graph.node_names()}


def test_failure_while_branches_overlap_falls_back_and_report_prints():
    left = fake("bl", ops=("linear",), fail_on_call=1)
    right = fake("br", ops=("linear", "relu"), s_per_flop=1e-11)
    m, x = Branches(), torch.randn(2, 8)
    p = plan(m, x, devices=[left, right], pins={"left": "bl:0", "right": "br:0"})
    assert len(p.stages) == 2 and not p.stages[1].deps
    with pytest.warns(RuntimeWarning, match="bl:0 failed"):
        (a, b), report = p.run(x, profile=True)
    torch.testing.assert_close(a, m.left(x).detach())
    torch.testing.assert_close(b, torch.relu(m.right(x)).detach())
    assert report.fallbacks[0].replaced_by == {"left": "br:0"}
    text = str(report)
    assert "measured" in text and "fallback: bl:0 failed at left" in text


class ReadsThenWrites(nn.Module):
    """A device reads x, then the host doubles x in place, then a device reads it again."""

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        a = self.fc(x)
        x.mul_(2)
        return a, self.fc2(x)


def test_an_in_place_write_waits_for_an_earlier_device_reader_when_stages_overlap():
    """The first read is slow: a write that did not wait for it would change what it reads."""

    def slow_first_read(op):
        if not reads:
            time.sleep(0.2)
        reads.append(op.name)

    reads: list[str] = []
    torch.manual_seed(0)
    m, x = ReadsThenWrites(), torch.randn(3, 4)
    slow = fake("slowread", ops=("linear",), s_per_flop=1e-14, on_run=slow_first_read)
    p = plan(m, x, devices=[slow], overlap=True)
    assert [p.device_of(n) for n in ("fc", "mul_", "fc2")] == ["slowread:0", "host", "slowread:0"]
    assert p.stages[1].deps == {0}
    before = x.clone()
    a, b = p.run(x)
    assert torch.equal(x, before)
    torch.testing.assert_close(a, m.fc(before).detach())
    torch.testing.assert_close(b, m.fc2(before * 2).detach())


def test_an_in_place_module_whose_input_is_read_again_gives_the_eager_result():
    torch.manual_seed(0)
    m, x = ActTwice(), torch.randn(5, 4)
    p = plan(m, x, devices=[fake("act", ops=("linear", "add", "relu")), hal.device("cpu")])
    torch.testing.assert_close(p.run(x), m(x).detach())


def test_a_program_invalidated_between_lookup_and_call_is_prepared_again_not_counted_as_a_failure():
    """As when another thread's plan takes a crossbar's tiles at that moment: the run re-prepares and goes on."""
    evicted = []

    def evicted_once(op):
        if op.name == "linear" and op.param("weight").shape == (10, 32) and not evicted:
            program = p.programs[("5", "evicting:0")]
            program.invalidate("its tiles were reprogrammed for another program")
            evicted.append(program)
            raise ProgramInvalidated("this linear program on evicting:0 can no longer run: its tiles were reprogrammed")

    m, x = model(), torch.randn(4, 16)
    evicting = fake("evicting", on_run=evicted_once)
    p = plan(m, x, devices=[evicting])
    p.prepare()
    prepared = evicting.prepared
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = p.run(x)
    torch.testing.assert_close(out, m(x).detach())
    assert evicted and p.dropped == [] and evicting.prepared == prepared + 1


def test_after_a_fallback_later_runs_use_a_placement_made_afresh():
    m, x = model(), torch.randn(8, 16)
    flaky = fake("flaky2", s_per_flop=1e-14, fail_on_call=2)
    steady = fake("steady2", s_per_flop=1e-11)
    p = plan(m, x, devices=[flaky, steady])
    with pytest.warns(RuntimeWarning):
        p.run(x)
    assert all(c.formula != "already executed" for c in p.placement.node_costs)
    assert {p.device_of(n.name) for n in p.graph.nodes if n.op is not None} == {"steady2:0"}


def test_a_run_is_inference_and_its_programs_run_with_gradients_off():
    from runtime_fakes import fake
    from torch import nn

    from hal.runtime import plan

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(3, 4)
    modes = []
    device = fake("gradmode", claim_ops=("linear", "relu"), on_run=lambda spec: modes.append(torch.is_grad_enabled()))
    out = plan(model, x, devices=[device]).run(x)
    assert modes == [False], "a GPU stage's weights require grad: under grad mode its outputs would too, and it could not replay as a CUDA graph"
    assert not out.requires_grad
    torch.testing.assert_close(out, model(x).detach())
