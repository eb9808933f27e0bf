"""hal.sparsity.pattern and hal.sparsity.prune: magnitude 2:4 masks, kept through fine-tuning."""

import pytest
import torch
import torch.nn as nn

from hal.errors import InvalidInput, ShapeError
from hal.sparsity import is_2_4, magnitude_mask, mask_of, prune_2_4, remove_masks


def test_mask_keeps_the_two_largest_of_every_four_along_the_input_dimension():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, -1.0, 0.0],
                      [4.0, 3.0, -2.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    mask = magnitude_mask(w)
    assert mask.tolist() == [[False, True, True, False, True, True, False, False],
                             [True, True, False, False, True, True, False, False]]  # ties keep the lower index
    torch.manual_seed(0)
    big = torch.randn(64, 128)
    m = magnitude_mask(big)
    assert is_2_4(big * m) and int(m.sum()) == big.numel() // 2
    kept = (big.abs() * m).reshape(64, 32, 4)
    dropped = (big.abs() * ~m).reshape(64, 32, 4)
    assert (kept.topk(2, dim=-1).values.min(dim=-1).values >= dropped.max(dim=-1).values).all()


def test_pattern_errors():
    with pytest.raises(ShapeError, match="multiple of 4"):
        magnitude_mask(torch.randn(4, 6))
    with pytest.raises(ShapeError, match="2-D"):
        is_2_4(torch.randn(4))
    bad = torch.randn(4, 8)
    bad[0, 0] = float("nan")
    with pytest.raises(InvalidInput, match="NaN"):
        magnitude_mask(bad)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 30), nn.ReLU(), nn.Linear(30, 8))


def test_prune_reports_every_layer_and_saves_the_masks():
    m = model()
    report = prune_2_4(m, skip=["4"])
    assert [layer.action for layer in report.layers] == ["pruned", "pruned", "kept"]
    assert report.layers[0].density == pytest.approx(0.5) and "skip" in report.layers[2].reason
    assert is_2_4(m[0].weight) and is_2_4(m[2].weight)
    assert "0.parametrizations.weight.0.mask" in m.state_dict()
    again = prune_2_4(m)
    assert [layer.reason for layer in again.layers][:2] == ["already pruned to 2:4"] * 2
    odd = nn.Linear(30, 8)
    assert prune_2_4(nn.Sequential(nn.Linear(8, 30), nn.ReLU(), odd)).layers[1].action == "kept"
    with pytest.raises(InvalidInput, match="unknown pruning method"):
        prune_2_4(m, method="random")


@pytest.mark.parametrize("optimizer", ["adamw", "sgd_momentum"])
def test_masks_are_kept_through_fine_tuning(optimizer):
    m = model()
    opt_before = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) if optimizer == "adamw" else None
    prune_2_4(m, skip=["4"])
    masks = [mask_of(m[i]).clone() for i in (0, 2)]
    opt = opt_before or torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        m(torch.randn(16, 32)).square().mean().backward()
        opt.step()
    for i, mask in zip((0, 2), masks):
        w = m[i].weight
        assert torch.equal(w != 0, mask)  # exactly the kept weights are non-zero
        assert is_2_4(w)
        assert (m[i].parametrizations.weight.original.grad[~mask] == 0).all()  # pruned weights get no gradient


def test_remove_masks_bakes_the_zeros():
    m = model()
    prune_2_4(m)
    w = m[0].weight.detach().clone()
    assert remove_masks(m) == ["0", "2"]  # layer 4 has 30 inputs: never pruned
    assert type(m[0].weight) is nn.Parameter and torch.equal(m[0].weight, w) and mask_of(m[0]) is None
