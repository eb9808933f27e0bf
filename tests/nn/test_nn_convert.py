"""hal.nn.convert with the generic device layers (the CPU device), bad input, state_dict, verbs, grads."""

import pytest
import torch
from torch import nn

import hal
import hal.nn
from hal.errors import InvalidInput, UnsupportedOp


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))


def test_convert_runs_every_linear_on_the_device_and_matches_eager():
    model = _mlp().eval()
    converted = hal.nn.convert(model, "cpu:0").eval()
    names = [n for n, _ in converted.device_layers()]
    assert names == ["0", "2.0"]
    x = torch.randn(5, 16)
    assert torch.allclose(converted(x), model(x), atol=1e-5)
    assert converted.program_weights() == 2
    assert isinstance(model[0], nn.Linear) and type(model[0]) is nn.Linear, "the original is left alone"


def test_state_dict_round_trips_with_the_original_keys():
    model = _mlp()
    converted = hal.nn.convert(model, "cpu:0")
    assert converted.state_dict().keys() == model.state_dict().keys()
    other = _mlp()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(2)
    converted.load_state_dict(other.state_dict())
    converted.eval()
    x = torch.randn(3, 16)
    assert torch.allclose(converted(x), other.eval()(x), atol=1e-5)


def test_weights_changed_after_programming_are_programmed_again():
    converted = hal.nn.convert(nn.Linear(4, 3), "cpu:0?precision=float64").eval()
    x = torch.randn(2, 4)
    first = converted(x)
    with torch.no_grad():
        converted.module.weight.mul_(-1)
    assert torch.allclose(converted(x), -first + 2 * converted.module.bias.double(), atol=1e-6)


def test_training_is_digital_and_a_backward_through_the_device_is_a_named_error():
    converted = hal.nn.convert(_mlp(), "cpu:0")
    x = torch.randn(4, 16)
    converted.train()
    converted(x).sum().backward()
    assert converted.module[0].weight.grad is not None
    converted.eval()
    with pytest.raises(UnsupportedOp, match="eval\\(\\) mode and has no gradient"):
        converted(x).sum().backward()


def test_layers_filter_and_bad_input():
    converted = hal.nn.convert(nn.Sequential(nn.Linear(4, 4), nn.Conv2d(1, 1, 3)), "cpu:0", layers=[nn.Conv2d])
    assert [type(m).__name__ for m in converted.module] == ["Linear", "DeviceConv2d"]
    with pytest.raises(UnsupportedOp, match="nothing in ReLU converts"):
        hal.nn.convert(nn.ReLU(), "cpu:0")
    with pytest.raises(InvalidInput, match="takes no conversion options"):
        hal.nn.convert(_mlp(), "cpu:0", noise_scale=2)
    with pytest.raises(InvalidInput, match="Module classes"):
        hal.nn.convert(_mlp(), "cpu:0", layers=["Linear"])
    with pytest.raises(hal.UnknownDevice):
        hal.nn.convert(_mlp(), "nosuchdevice:0")


def test_unknown_attribute_names_the_device():
    converted = hal.nn.convert(_mlp(), "cpu:0")
    with pytest.raises(AttributeError, match="cpu:0 has no attribute 'elapse'"):
        converted.elapse(10)


def test_conv2d_twin_matches_torch():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, padding=1).eval()
    converted = hal.nn.convert(conv, "cpu:0").eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(converted(x), conv(x), atol=1e-5)
