"""hal.precision.guard: steps whose gradients hold inf/NaN are skipped and reported, never applied."""

import torch
import torch.nn as nn

from hal.precision import Fp8Linear, GradGuard


def test_finite_gradients_step():
    model = nn.Linear(4, 4)
    guard = GradGuard(torch.optim.SGD(model.parameters(), lr=0.1), dict(model.named_parameters()))
    before = model.weight.detach().clone()
    model(torch.randn(2, 4)).sum().backward()
    assert guard.step() and not torch.equal(model.weight, before) and guard.skipped == []


def test_an_inf_input_to_an_fp8_layer_skips_the_step_and_names_the_parameters():
    model = Fp8Linear(32, 16, backend="torch")
    guard = GradGuard(torch.optim.AdamW(model.parameters(), lr=0.1), dict(model.named_parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 32)
    x[3, 5] = float("inf")
    model(x).sum().backward()
    assert not guard.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # nothing applied
    assert guard.skipped[0].step == 0 and "weight" in guard.skipped[0].nonfinite
    assert all(p.grad is None for p in model.parameters())  # dropped, ready for the next step
    model(torch.randn(8, 32)).sum().backward()
    assert guard.step() and guard.steps == 2 and len(guard.skipped) == 1


def test_unnamed_parameters_are_reported_by_position():
    w = nn.Parameter(torch.ones(3))
    guard = GradGuard(torch.optim.SGD([w], lr=1.0))
    w.grad = torch.tensor([1.0, float("nan"), 0.0])
    assert not guard.step() and guard.skipped[0].nonfinite == ("group0.param0",)
