"""hal.runtime.planner: a Plan run from several threads, re-planning for a new batch size, the caller's tensors."""

from __future__ import annotations

import importlib
import sys
import threading

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
