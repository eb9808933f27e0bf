"""hal.precision.convert: fp8_training swaps Linear layers (and says why it did not), fp8_autocast runs F.linear in FP8."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from precision_helpers import rel

from hal.errors import InvalidInput, ShapeError
from hal.precision import Bf16Linear, Fp8Linear, fp8_autocast, fp8_linear, fp8_training


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 64)
        self.head = nn.Linear(64, 10)  # 10 is not a multiple of 16

    def forward(self, x):
        return self.head(self.down(F.silu(self.up(x))))


def test_swaps_eligible_layers_and_keeps_the_optimizers_parameters():
    model = Block()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = list(model.parameters())
    fp8_training(model, "rowwise", skip=["head"])
    assert isinstance(model.up, Fp8Linear) and isinstance(model.down, Fp8Linear) and type(model.head) is nn.Linear
    assert list(model.parameters()) == params  # the same Parameter objects: the optimizer still updates them
    model(torch.randn(8, 64)).sum().backward()
    opt.step()
    assert [d.action for d in model.fp8_report.layers] == ["fp8", "fp8", "kept"]
    assert "skip" in str(model.fp8_report) and model.fp8_report.fp8_layers == ["up", "down"]


def test_refuses_ineligible_layers_naming_all_of_them():
    with pytest.raises(ShapeError, match=r"head \(64x10.*fallback='bf16'"):
        fp8_training(Block())


def test_bf16_fallback_is_reported_and_runs_in_bfloat16():
    model = fp8_training(Block(), fallback="bf16")
    assert isinstance(model.head, Bf16Linear)
    decision = model.fp8_report.layers[-1]
    assert decision.action == "bf16" and "multiple of 16" in decision.reason
    x = torch.randn(4, 64)
    hidden = model.down(F.silu(model.up(x)))
    expected = F.linear(hidden.bfloat16(), model.head.weight.bfloat16(), model.head.bias.bfloat16()).float()
    assert torch.equal(model.head(hidden), expected)


def test_skip_predicate_history_len_and_bad_options():
    model = fp8_training(Block(), "delayed", skip=lambda name, m: m.out_features == 10, history_len=4)
    assert model.up.fp8_amax_history.shape == (2, 4)
    with pytest.raises(InvalidInput, match="fallback"):
        fp8_training(Block(), fallback="fp16")
    root = fp8_training(nn.Linear(32, 32))
    assert isinstance(root, Fp8Linear)


def test_fp8_autocast_runs_eligible_linears_in_fp8_and_counts_the_rest():
    torch.manual_seed(0)
    model = Block()
    x = torch.randn(8, 64)
    with fp8_autocast(backend="torch") as report:
        y = model(x)
    assert report.fp8_calls == 2 and sum(report.fallback_calls.values()) == 1
    assert "(10, 64)" in next(iter(report.fallback_calls))
    h = fp8_linear(F.silu(fp8_linear(x, model.up.weight, model.up.bias, backend="torch")), model.down.weight,
                   model.down.bias, backend="torch")
    assert torch.equal(y, model.head(h))
    y.sum().backward()  # gradients flow through the FP8 products
    assert model.up.weight.grad is not None
    with pytest.raises(InvalidInput, match="delayed"):
        fp8_autocast("delayed")


def test_training_a_tiny_model_in_fp8_tracks_float32():
    torch.manual_seed(0)
    teacher = nn.Linear(64, 64)
    ref = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64))
    model = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64))
    model.load_state_dict(ref.state_dict())
    fp8_training(model, "tensorwise", backend="torch")
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3) for m in (ref, model)]
    for _ in range(30):
        x = torch.randn(64, 64)
        target = teacher(x).detach()
        for m, opt in zip((ref, model), opts):
            opt.zero_grad()
            F.mse_loss(m(x), target).backward()
            opt.step()
    x = torch.randn(256, 64)
    with torch.no_grad():
        losses = [float(F.mse_loss(m(x), teacher(x))) for m in (ref, model)]
        assert losses[1] < 0.5 * float(F.mse_loss(torch.zeros_like(x), teacher(x)))  # it learned
    assert abs(losses[1] - losses[0]) / losses[0] < 0.1
    assert rel(model[0].weight, ref[0].weight) < 0.05
