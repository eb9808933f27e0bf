"""hal.nn.convert to Loihi 2 (hal/drivers/loihi2/module.py, Loihi2Device.convert_module): the whole ReLU network
becomes one SpikingModule; what it refuses and why; its state_dict; the decoded output of a ReLU output layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hal
import hal.nn
from hal.drivers.loihi2 import SpikingModule
from hal.drivers.loihi2.conversion import spiking_model
from hal.drivers.loihi2.engine import LifNetwork
from hal.errors import InvalidInput, ShapeError, UnsupportedOp


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))


def _inputs(n: int = 24) -> torch.Tensor:
    return torch.rand(n, 12, generator=torch.Generator().manual_seed(1))


def test_convert_gives_one_spiking_module_that_runs_the_conversion_on_the_device() -> None:
    model, x = _mlp(), _inputs()
    converted = hal.nn.convert(model, "loihi2:0", calibration=x, steps=64)
    assert isinstance(converted.module, SpikingModule) and converted.module.device_uri == "loihi2:0"
    out = converted(x)
    assert torch.equal(out, spiking_model(model, x, 64)(x))  # the converter's network, run by the device's engine
    ref = model(x).detach()
    assert float((out - ref).norm() / ref.norm()) < converted.module.last_cost.error
    assert converted.module.last_run.synaptic_ops > 0 and "edge" in converted.module.last_cost.formula
    assert torch.equal(converted(x, steps=32), spiking_model(model, x, 64)(x, steps=32))
    assert isinstance(model[0], nn.Linear), "the original is left alone"


def test_the_device_steps_option_is_the_default_and_the_uri_picks_the_back_end() -> None:
    model, x = _mlp(), _inputs()
    converted = hal.nn.convert(model, "loihi2:0?steps=48", calibration=x)
    assert converted.module.steps == 48 and converted.device == hal.device("loihi2:0?steps=48")


def test_without_calibration_or_as_a_whole_network_it_refuses_with_what_is_missing() -> None:
    model, x = _mlp(), _inputs()
    with pytest.raises(InvalidInput, match="needs calibration data.*calibration="):
        hal.nn.convert(model, "loihi2:0")

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x))

    with pytest.raises(InvalidInput, match="nn.Sequential.*cannot convert layer by layer"):
        hal.nn.convert(Net(), "loihi2:0", calibration=x)
    with pytest.raises(InvalidInput, match="no conversion option.*noise_scale"):
        hal.nn.convert(model, "loihi2:0", calibration=x, noise_scale=2.0)
    with pytest.raises(ShapeError, match="do not fit the model"):
        hal.nn.convert(model, "loihi2:0", calibration=torch.rand(8, 5))
    with pytest.raises(InvalidInput, match="percentile"):
        hal.nn.convert(model, "loihi2:0", calibration=x, percentile=0)
    with pytest.raises(InvalidInput, match="NaN"):
        hal.nn.convert(model, "loihi2:0", calibration=x)(torch.full((1, 12), float("nan")))


def test_state_dict_holds_the_spiking_network_and_round_trips_exactly() -> None:
    x = _inputs()
    first = hal.nn.convert(_mlp(0), "loihi2:0", calibration=x, steps=64)
    second = hal.nn.convert(_mlp(1), "loihi2:0", calibration=x, steps=64)
    state = first.state_dict()
    assert {"input_scale", "output_scale", "max_rate", "layers.0.weight_mantissa", "layers.0.vth", "layers.1.bias_per_step"} <= set(state)
    expected = first(x)
    assert not torch.equal(second(x), expected)
    second.load_state_dict(state)
    assert torch.equal(second(x), expected) and second.module.report is None
    with pytest.raises(InvalidInput, match="convert it again"):  # float weights are not a spiking state
        second.load_state_dict(_mlp(2).state_dict())


def test_a_buffer_changed_in_place_rebuilds_the_network() -> None:
    x = _inputs()
    converted = hal.nn.convert(_mlp(), "loihi2:0", calibration=x, steps=64)
    before = converted(x)
    converted.module.layers[1].vth.mul_(2)  # twice the output threshold: about half the output spikes
    after = converted(x)
    assert not torch.equal(after, before)
    rebuilt = converted.module.spiking
    assert rebuilt.stages[1].vth == 2 * spiking_model(_mlp(), x, 64).stages[1].vth


def test_a_relu_output_layer_decodes_to_non_negative_values() -> None:
    # an output neuron whose pre-activation is always negative: its membrane falls below zero every step, and
    # count + v / threshold was read as a large negative value where the ANN's ReLU gives 0
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 3), nn.ReLU())
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.2, 0.1, -5.0]))
    x = torch.rand(16, 6)
    out = hal.nn.convert(model, "loihi2:0", calibration=x, steps=64)(x)
    assert bool((out >= 0).all()) and bool((out[:, 2] == 0).all())


def test_the_lava_decode_path_equals_the_engine_run() -> None:
    # through lava the device decodes the last layer's spike trains and final voltage itself (run_spiking)
    model, x = _mlp(), _inputs()
    snn = spiking_model(model, x, 64)
    result = LifNetwork(snn.layers(64)).run(snn.encode(x, 64))
    assert torch.equal(snn.decode(result.spikes[-1].sum(dim=0), result.final_v[-1], 64), snn(x))


def test_backward_through_the_spiking_model_is_a_named_error() -> None:
    converted = hal.nn.convert(_mlp(), "loihi2:0", calibration=_inputs(), steps=32)
    x = _inputs(4).requires_grad_()
    with pytest.raises(UnsupportedOp, match="no gradient"):
        converted(x).sum().backward()
