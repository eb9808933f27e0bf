"""hal.runtime.planner: a Plan run from several threads, re-planning for a new batch size, the caller's tensors."""

from __future__ import annotations

import importlib
import sys
import threading

import pytest
import torch
from runtime_fakes import WritesInPlace, fake
from torch import nn

import hal
from hal.runtime import plan

capture_module = importlib.import_module("hal.runtime.capture")


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Flatten(), nn.Linear(32, 8), nn.GELU())


def test_one_plan_runs_from_four_threads_while_new_batch_sizes_are_replanned():
    """Every run asks for a batch size not planned yet, in four threads at once: re-planning, preparing and
    running overlap. Every result must match eager, and torch must be left as it was."""
    m = model()
    p = plan(m, torch.randn(4, 16), devices=[fake("threads", ops=("linear",)), hal.device("cpu")])
    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    torch.manual_seed(1)
    work = [[torch.randn(1 + k + 4 * i, 16) for i in range(8)] for k in range(4)]  # 32 batch sizes, each new
    expected = [[m(x).detach() for x in xs] for xs in work]
    start = threading.Barrier(4, timeout=30)
    problems: list[str] = []

    def worker(k: int) -> None:
        start.wait()
        for x, want in zip(work[k], expected[k]):
            try:
                got = p.run(x)
            except Exception as exc:  # noqa: BLE001 (collected and reported by the assertion below)
                problems.append(f"thread {k}, batch {len(x)}: {type(exc).__name__}: {exc}")
                continue
            if not isinstance(got, torch.Tensor) or not torch.allclose(got, want, atol=1e-6):
                problems.append(f"thread {k}, batch {len(x)}: got {type(got).__name__}, not the eager result")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, so that interleavings actually happen
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert problems == []
    assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_
    fresh = nn.Linear(3, 2)
    assert isinstance(fresh(torch.randn(1, 3)), torch.Tensor)


def test_a_new_batch_size_is_planned_from_the_first_trace(monkeypatch):
    traces = []
    real = capture_module.trace

    def counted(*args, **kwargs):
        traces.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_module, "trace", counted)
    m = model()
    p = plan(m, torch.randn(4, 16), devices=[hal.device("cpu")])
    for batch in (2, 3, 2):
        x = torch.randn(batch, 16)
        torch.testing.assert_close(p.run(x), m(x).detach())
    assert len(traces) == 1


def test_plan_does_not_write_its_example_inputs():
    x = torch.randn(3, 4)
    before, version = x.clone(), x._version
    plan(WritesInPlace(), x, devices=[hal.device("cpu")])
    assert torch.equal(x, before) and x._version == version


def test_replanning_for_a_new_batch_size_leaves_the_callers_tensor_alone_and_matches_eager():
    torch.manual_seed(0)
    m = WritesInPlace()
    p = plan(m, torch.randn(3, 4), devices=[hal.device("cpu")])
    y = torch.randn(5, 4)
    before = y.clone()
    out = p.run(y)
    assert torch.equal(y, before)
    torch.testing.assert_close(out, m.fc(before * 2).detach())


class CountsCalls(nn.Module):
    """Writes a buffer in place on every call, as eager torch does."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        return self.fc(x) + self.calls


def test_planning_leaves_the_models_buffers_alone_and_runs_write_them_as_eager_does():
    m = CountsCalls()
    x = torch.randn(2, 4)
    p = plan(m, x, devices=[hal.device("cpu")])
    p.run(torch.randn(3, 4))  # a re-plan for batch 3, then the run
    assert float(m.calls) == 1.0
    out = p.run(x)
    assert float(m.calls) == 2.0
    torch.testing.assert_close(out, (m.fc(x) + 2).detach())


# --------------------------------------------------------------------------- which devices take part


def _probe(monkeypatch, infos, opened=None):
    """Make the registry list ``infos``; ``opened`` maps device strings to the Devices that open for them."""
    from hal import registry

    real = registry.open_device
    monkeypatch.setattr(registry, "probe_all", lambda *a, **k: list(infos))
    monkeypatch.setattr(registry, "open_device", lambda uri: (opened or {}).get(uri) or real(uri))


def test_emulators_are_left_out_unless_named_or_allowed(monkeypatch):
    from hal.device import DeviceInfo

    _probe(monkeypatch, [DeviceInfo("cpu:0", "cpu", True), DeviceInfo("memristor:0", "memristor", True, simulated=True)])
    m, x = model(), torch.randn(4, 16)
    by_default = plan(m, x)
    assert [str(d) for d in by_default.devices] == ["cpu:0"]
    assert any("left out 1 simulated device(s): memristor:0" in n and "allow_simulated=True" in n for n in by_default.notes)
    assert "memristor:0" in [str(d) for d in plan(m, x, allow_simulated=True).devices]
    assert [str(d) for d in plan(m, x, devices=["memristor:0"]).devices] == ["memristor:0"]
    pinned = plan(m, x, pins={"0": "memristor:0"})
    assert [str(d) for d in pinned.devices] == ["cpu:0", "memristor:0"] and pinned.device_of("0") == "memristor:0"


def test_a_device_simulated_by_its_capabilities_alone_is_left_out_too(monkeypatch):
    from hal.device import DeviceInfo
    from hal.runtime import available_devices

    emulator = fake("quiet")  # the fakes declare capabilities simulated=True; its probe entry does not say so
    _probe(monkeypatch, [DeviceInfo("cpu:0", "cpu", True), DeviceInfo("quiet:0", "quiet", True)], {"quiet:0": emulator})
    devices, notes = available_devices()
    assert [str(d) for d in devices] == ["cpu:0"] and "quiet:0" in notes[0]
    assert [str(d) for d in available_devices(allow_simulated=True)[0]] == ["cpu:0", "quiet:0"]


def test_a_gpu_listed_under_a_second_name_is_one_location_unless_the_alias_is_named(monkeypatch):
    from hal.device import DeviceInfo
    from hal.runtime import available_devices

    gpu, alias = fake("hopper", simulated=False), fake("cuda", simulated=False)
    for d in (gpu, alias):
        d.torch_device = torch.device("cuda", 0)  # only planned, never run: no GPU is needed
    infos = [DeviceInfo("cuda:0", "cuda", True, summary={"alias_of": "hopper:0"}), DeviceInfo("hopper:0", "hopper", True)]
    _probe(monkeypatch, infos, {"hopper:0": gpu, "cuda:0": alias})
    assert [str(d) for d in available_devices()[0]] == ["hopper:0"]
    m, x = model(), torch.randn(4, 16)
    named = plan(m, x, devices=["cuda:0"])
    assert [str(d) for d in named.devices] == ["cuda:0"]
    both = plan(m, x, pins={"0": "cuda:0"})
    assert [str(d) for d in both.devices] == ["cuda:0", "hopper:0"]
    assert any("cuda:0 and hopper:0 are one GPU (cuda:0)" in n for n in both.notes)


class Untraceable(nn.Module):
    def forward(self, x):
        raise AssertionError("traced: planning did work before checking its devices")


@pytest.mark.parametrize(("devices", "error", "match"), [
    (["nosuch:0"], "UnknownDevice", "nosuch"),
    (["cpu:0", "memristor:7"], "DeviceUnavailable", "memristor:7"),
    ("cpu:0", "InvalidInput", r"devices=\['cpu:0'\]"),
])
def test_a_device_that_is_not_here_is_refused_by_name_before_any_work(devices, error, match):
    from hal import errors

    with pytest.raises(getattr(errors, error), match=match):
        plan(Untraceable(), torch.randn(2, 4), devices=devices)
