"""PhotonicDevice (hal/drivers/photonic/driver.py, layers.py): conformance, bad input, tiling, options, hal.nn.convert."""

import gc
import math
import weakref

import pytest
import torch
from section_numbers import numbers as section_numbers
from torch import nn

import hal
import hal.nn
from hal.capability import Figure, validate
from hal.device import OpSpec
from hal.drivers.photonic import PhotonicLinear
from hal.drivers.photonic.energy import laser_power_w
from hal.errors import CapacityExceeded, DeviceUnavailable, InvalidInput, UnsupportedOp
from hal.testing.conformance import DeviceConformance, Sample


class TestConformance(DeviceConformance):
    uri = "photonic:0?seed=0"


class TestReckConformance(DeviceConformance):
    uri = "photonic:0?N=16&mesh=reck&balanced_loss=1&seed=3"  # unbalanced, a 16-port Reck triangle is refused (tolerance 0.51)


class TestIdealConformance(DeviceConformance):
    uri = "photonic:0?N=16&ideal=1"


class TestIntensityConformance(DeviceConformance):
    uri = "photonic:0?N=16&detection=intensity"

    def sample(self, op_name, dtype, generator):
        if op_name != "intensity_linear":
            return super().sample(op_name, dtype, generator)
        x = torch.randn(4, 16, generator=generator, dtype=torch.float64).to(dtype)
        return Sample([x], {"weight": (torch.randn(8, 16, generator=generator, dtype=torch.float64) / 4).to(dtype)})

    def reference(self, op_name, sample):
        if op_name != "intensity_linear":
            return super().reference(op_name, sample)
        x, w = sample.inputs[0].double(), sample.params["weight"].double()
        return (x @ w.T) ** 2


def _relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.norm(out.double() - ref.double()) / torch.linalg.norm(ref.double()))


def test_ideal_device_is_exact_in_float64():
    d = hal.device("photonic:0?N=16&ideal=1")
    x, w, b = torch.randn(7, 12, dtype=torch.float64), torch.randn(10, 12, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    assert _relative(d.linear(x, w, b), x @ w.T + b) < 1e-12
    assert d.capabilities.deterministic
    assert d.capabilities.ops["linear"].tolerance["float64"] < 1e-10


def test_default_device_declares_a_derived_honest_tolerance():
    d = hal.device("photonic:0?N=16&seed=1")
    tolerance = d.capabilities.ops["linear"].tolerance["float32"]
    expected = d.capabilities.sections["photonic"].accuracy["expected_error"]
    assert expected.kind == "derived" and "snr_db" in expected.source
    assert 0.005 < expected.value < tolerance < 0.5
    assert tolerance == pytest.approx(2 * expected.value + 2e-5)
    x, w = torch.randn(64, 16), torch.randn(16, 16)
    assert _relative(d.linear(x, w), x @ w.T) < tolerance


def test_nan_inputs_and_weights_are_refused():
    d = hal.device("photonic:0?N=8")
    w = torch.randn(4, 8)
    x = torch.randn(2, 8)
    x[0, 3] = float("nan")
    with pytest.raises(InvalidInput, match="NaN"):
        d.linear(x, w)
    w[1, 1] = float("inf")
    with pytest.raises(InvalidInput, match="NaN"):
        d.linear(torch.randn(2, 8), w)


def test_oversized_weight_is_tiled_and_reported():
    d = hal.device("photonic:0?N=8&ideal=1")
    x, w = torch.randn(5, 20, dtype=torch.float64), torch.randn(11, 20, dtype=torch.float64)
    program = d.prepare(OpSpec("linear", [x], {"weight": w}), {"weight": w})
    assert _relative(program(x), x @ w.T) < 1e-12
    assert program.stats["tiles"] == math.ceil(11 / 8) * math.ceil(20 / 8)
    assert len(program.scale) == program.stats["tiles"]
    assert program.cost.latency_s > program.stats["tiles"] * d.config.phase.settle_time_s * 0.99  # each tile rewritten per call


def test_weight_beyond_max_tiles_is_refused_with_the_fix():
    d = hal.device("photonic:0?N=8&max_tiles=4")
    w = torch.randn(17, 17)
    support = d.supports(OpSpec("linear", [torch.randn(2, 17)], {"weight": w}))
    assert not support
    assert "needs 9" in support.reason and "max_tiles=9" in support.reason
    with pytest.raises(UnsupportedOp, match="max_tiles"):
        d.linear(torch.randn(2, 17), w)


def test_large_singular_values_are_scaled_and_the_scale_reported():
    d = hal.device("photonic:0?N=8&ideal=1")
    w = torch.diag(torch.tensor([40.0, 2.0, 1.0], dtype=torch.float64))
    program = d.prepare(OpSpec("linear", [torch.randn(3, 3, dtype=torch.float64)], {"weight": w}), {"weight": w})
    assert program.scale == [pytest.approx(40.0)]
    x = torch.randn(3, 3, dtype=torch.float64)
    assert _relative(program(x), x @ w.T) < 1e-12


def test_relu_is_electronic_after_detection_and_bias_is_added():
    d = hal.device("photonic:0?N=8&ideal=1")
    x, w, b = torch.randn(6, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert torch.allclose(d.linear(x, w, b, activation="relu"), torch.relu(x @ w.T + b), atol=1e-12)


def test_matmul_reprograms_b_each_call_and_refuses_batched_b():
    d = hal.device("photonic:0?N=8&ideal=1")
    a = torch.randn(2, 3, 6, dtype=torch.float64)
    b = torch.randn(6, 4, dtype=torch.float64)
    program = d.prepare(OpSpec("matmul", [a, b]))
    assert _relative(program(a, b), a @ b) < 1e-12
    b2 = torch.randn(6, 4, dtype=torch.float64)
    assert _relative(program(a, b2), a @ b2) < 1e-12
    assert program.cost.latency_s >= d.config.phase.settle_time_s
    support = d.supports(OpSpec("matmul", [torch.randn(2, 3, 6), torch.randn(2, 6, 4)]))
    assert not support and "2-D b" in support.reason


def test_intensity_detection_offers_only_the_square_law_op():
    d = hal.device("photonic:0?N=8&detection=intensity&ideal=1")
    assert set(d.capabilities.ops) == {"intensity_linear"}
    x, w = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    out = d.run_op("intensity_linear", (x,), {"weight": w})
    assert torch.allclose(out, (x @ w.T) ** 2, atol=1e-10)
    assert not d.supports(OpSpec("linear", [x], {"weight": w}))
    bad = d.supports(OpSpec("intensity_linear", [torch.randn(4, 5, dtype=torch.float64)], {"weight": w}))
    assert not bad and "6" in bad.reason
    too_big = d.supports(OpSpec("intensity_linear", [torch.randn(4, 9, dtype=torch.float64)], {"weight": torch.randn(3, 9, dtype=torch.float64)}))
    assert not too_big and "?N=" in too_big.reason


def test_noise_repeats_after_manual_seed_and_fabrication_depends_on_seed():
    d = hal.device("photonic:0?N=8")
    x, w = torch.randn(16, 8), torch.randn(8, 8)
    program = d.prepare(OpSpec("linear", [x], {"weight": w}), {"weight": w})
    d.manual_seed(5)
    first = program(x)
    second = program(x)
    d.manual_seed(5)
    assert torch.equal(program(x), first)
    assert not torch.equal(first, second)
    other = hal.device("photonic:0?N=8&seed=7&noise=0")
    same = hal.device("photonic:0?N=8&noise=0")
    assert not torch.allclose(other.linear(x, w), same.linear(x, w))


def test_switching_effects_off_reduces_the_error():
    x, w = torch.randn(64, 16, dtype=torch.float64), torch.randn(16, 16, dtype=torch.float64)
    ref = x @ w.T
    full = _relative(hal.device("photonic:0?N=16").linear(x, w), ref)
    no_fab = _relative(hal.device("photonic:0?N=16&fabrication=0&crosstalk=0&loss=0").linear(x, w), ref)
    quiet = _relative(hal.device("photonic:0?N=16&fabrication=0&crosstalk=0&loss=0&noise=0&adc_bits=0&dispersion=0").linear(x, w), ref)
    assert full > no_fab > quiet
    assert quiet < 2e-3  # only the 12-bit phase DACs left


def test_capabilities_section_and_estimates():
    d = hal.device("photonic:0?N=16&channels=4")
    caps = d.capabilities
    validate(caps.to_dict())
    section = caps.sections["photonic"]
    assert section.mesh.ports.value == 16 and section.mesh.mzis.value == 120 and section.mesh.depth_columns.value == 16
    assert section.mesh.ports.source == "assumed:set by ?N=16" and section.mesh.mzis.kind == "derived"
    assert section.wavelength_channels.value == 4
    assert caps.peak["mac_per_s"].value == 16**2 * 10e9 * 4
    cost = d.estimate(OpSpec("linear", [torch.randn(32, 16)], {"weight": torch.randn(16, 16)}))
    assert cost.latency_s > 0 and cost.energy_j > 0 and 0 < cost.error < caps.ops["linear"].tolerance["float32"]
    assert "heaters" in cost.formula
    assert set(d.telemetry()) >= {"heater_power_w", "laser_power_w"}


def test_bad_options_say_what_is_allowed():
    with pytest.raises(InvalidInput, match="clements"):
        hal.device("photonic:0?mesh=hexagonal")
    with pytest.raises(InvalidInput, match="ports"):
        hal.device("photonic:0?N=1")
    with pytest.raises(InvalidInput, match="dB"):
        hal.device("photonic:0?snr_db=-3")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_compute_without_cuda_is_unavailable_with_a_fix():
    with pytest.raises(DeviceUnavailable, match="compute=cuda"):
        hal.device("photonic:0?compute=cuda")


@pytest.mark.gpu
def test_cuda_compute_matches_cpu():
    options = "N=16&noise=0&adc_bits=0"
    cpu, gpu = hal.device(f"photonic:0?{options}"), hal.device(f"photonic:0?{options}&compute=cuda")
    x, w = torch.randn(33, 16, dtype=torch.float64), torch.randn(16, 16, dtype=torch.float64)
    out = gpu.linear(x.cuda(), w.cuda())
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), cpu.linear(x, w), atol=1e-9)
    noisy = hal.device("photonic:0?N=16&compute=cuda")
    noisy.manual_seed(0)
    first = noisy.linear(x, w)
    noisy.manual_seed(0)
    assert torch.equal(first, noisy.linear(x, w))


def test_convert_swaps_linear_layers_and_runs_them_on_the_device():
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    photonic = hal.nn.convert(model, "photonic:0?N=16&ideal=1").eval()
    assert isinstance(photonic.module[0], PhotonicLinear) and isinstance(photonic.module[2], PhotonicLinear)
    assert isinstance(model[0], nn.Linear) and not isinstance(model[0], PhotonicLinear)
    assert photonic.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(9, 12)
    with torch.no_grad():
        assert torch.allclose(photonic(x), model(x), atol=1e-4)
    layer = photonic.module[0]
    program = layer.hal_program()
    assert layer.hal_program() is program  # programmed once
    assert photonic.program_weights() == 2 and layer.hal_program() is program
    with torch.no_grad():
        layer.weight.mul_(2)
    assert layer.hal_program() is not program  # weight changed: reprogrammed


def test_convert_takes_no_options_and_forwards_manual_seed():
    with pytest.raises(InvalidInput, match=r"photonic:0\?N=16 has no conversion options \(got \['noise_scale'\]\)"):
        hal.nn.convert(nn.Linear(4, 4), "photonic:0?N=16", noise_scale=1.0)
    photonic = hal.nn.convert(nn.Linear(16, 8), "photonic:0?N=16")
    assert photonic.manual_seed.__self__ is hal.device("photonic:0?N=16")
    with pytest.raises(AttributeError, match="verbs are: manual_seed"):
        photonic.elapse(1.0)
    with pytest.raises(UnsupportedOp, match="max_tiles"):
        hal.nn.convert(nn.Linear(17, 17), "photonic:0?N=8&max_tiles=4")
    double = hal.nn.convert(nn.Linear(8, 4).double(), "photonic:0?N=8&ideal=1").eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    assert double.module.weight.dtype == torch.float64
    with torch.no_grad():
        assert torch.allclose(double(x), x @ double.module.weight.T + double.module.bias, atol=1e-10)


def test_a_backward_through_an_eval_mode_photonic_layer_is_a_named_error():
    """It used to return a gradient for the input only (the emulator's arithmetic), none for the weight."""
    photonic = hal.nn.convert(nn.Linear(8, 4), "photonic:0?N=8&ideal=1").eval()
    x = torch.randn(3, 8, requires_grad=True)
    with pytest.raises(UnsupportedOp, match="PhotonicLinear on photonic:0.*no gradient"):
        photonic(x).sum().backward()


def test_program_error_estimate_matches_what_a_call_gives():
    d = hal.device("photonic:0?N=16&seed=2")
    w = torch.randn(16, 16, dtype=torch.float64)
    x = torch.randn(512, 16, dtype=torch.float64)
    program = d.prepare(OpSpec("linear", [x], {"weight": w}), {"weight": w})
    actual = _relative(program(x), x @ w.T)
    assert 0.5 < program.cost.error / actual < 2.0


def test_wavelengths_carry_the_batch_in_parallel():
    x, w = torch.randn(4096, 16), torch.randn(16, 16)
    op = OpSpec("linear", [x], {"weight": w})
    one = hal.device("photonic:0?N=16&channels=1").estimate(op)
    eight = hal.device("photonic:0?N=16&channels=8").estimate(op)
    streaming = 4096 / 10e9
    assert one.latency_s == pytest.approx(streaming, rel=0.05)
    assert eight.latency_s == pytest.approx(streaming / 8, rel=0.2)


# ---------------------------------------------------------------------------- programs at the seams


def test_eager_linear_with_a_fresh_weight_every_call_stays_within_tolerance():
    """Issue 14: temporary weights freed after each call used to alias a cached Program through a reused id()."""
    d = hal.device("photonic:0?N=16&seed=0")
    tolerance = d.capabilities.ops["linear"].tolerance["float32"]
    x = torch.randn(32, 16)
    for i in range(12):
        w = torch.randn(8, 16)
        error = _relative(d.linear(x, w), x @ w.T)
        assert error < tolerance, f"call {i}: relative error {error:.2f} > declared tolerance {tolerance:.2f}"
        del w


def test_a_program_keeps_the_weight_it_was_programmed_from():
    d = hal.device("photonic:0?N=8&ideal=1")
    w = torch.randn(4, 8)
    program = d.prepare(OpSpec("linear", [torch.randn(2, 8)], {"weight": w}), {"weight": w})
    alive = weakref.ref(w)
    del w
    gc.collect()
    assert alive() is not None and program.resident.matches({"weight": alive()})


def test_layer_reprograms_a_parameter_replaced_at_the_freed_ones_address():
    """Issue 14 audit: the layer keyed its Program on (data_ptr, _version), which a new parameter allocated where the
    freed one lay matches: the layer kept computing with the old phases."""
    layer = PhotonicLinear(16, 16, bias=False, device_uri="photonic:0?N=16&ideal=1").eval()
    x = torch.randn(3, 16)
    with torch.no_grad():
        for _ in range(12):
            layer(x)
            layer.weight = None  # frees the old parameter (and its storage, unless something still holds it)
            gc.collect()
            layer.weight = nn.Parameter(torch.randn(16, 16))
            assert torch.allclose(layer(x), x @ layer.weight.T, atol=1e-4)


def test_layer_reprograms_when_its_weight_data_is_replaced():
    layer = PhotonicLinear(8, 4, bias=False, device_uri="photonic:0?N=8&ideal=1").eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        first = layer.hal_program()
        layer.weight.data = torch.randn(4, 8)  # a new storage, _version unchanged
        assert layer.hal_program() is not first
        assert torch.allclose(layer(x), x @ layer.weight.T, atol=1e-4)


EMPTY = {"no rows": ((0, 16), (8, 16)), "no inputs": ((4, 0), (8, 0)), "no outputs": ((4, 16), (0, 16))}


@pytest.mark.parametrize("case", sorted(EMPTY))
def test_empty_dimensions_return_what_the_cpu_returns(case):
    d, cpu = hal.device("photonic:0?N=16&seed=0"), hal.device("cpu:0")
    x_shape, w_shape = EMPTY[case]
    x, w, b = torch.randn(*x_shape), torch.randn(*w_shape), torch.randn(w_shape[0])
    for bias in (None, b):
        out, ref = d.linear(x, w, bias), cpu.linear(x, w, bias)
        assert out.shape == ref.shape and torch.equal(out, ref)
    a, m = torch.randn(*x_shape), torch.randn(*w_shape).T.contiguous()
    out, ref = d.matmul(a, m), cpu.matmul(a, m)
    assert out.shape == ref.shape and torch.equal(out, ref)


# ---------------------------------------------------------------------------- honesty and physics


@pytest.mark.parametrize("uri, option", [("photonic:0?N=16&adc_bits=2", "adc_bits"), ("photonic:0?N=16&snr_db=10", "snr_db"), ("photonic:0?N=16&phase_bits=3", "phase_bits")])
def test_configurations_too_noisy_to_declare_a_tolerance_below_one_are_refused(uri, option):
    with pytest.raises(InvalidInput, match=option):
        hal.device(uri)


def test_mesh_larger_than_the_loss_limit_is_refused_with_the_limit():
    with pytest.raises(CapacityExceeded, match=r"largest mesh is N=51.*\?N=51") as caught:
        hal.device("photonic:0?N=64")
    assert caught.value.needed == 64 and caught.value.available == 51
    with pytest.raises(CapacityExceeded, match="N=27"):
        hal.device("photonic:0?N=32&mesh=reck")
    assert hal.device("photonic:0?N=64&snr_db=40").max_ports == 68  # 10 dB less SNR buys 10 dB of mesh loss
    assert hal.device("photonic:0?N=64&loss=0").max_ports == 512  # a lossless mesh is not loss-limited


def test_laser_power_has_no_hidden_transmission_floor():
    d = hal.device("photonic:0?seed=0")
    section = d.capabilities.sections["photonic"]
    assert section.mesh.max_ports.kind == "derived" and section.mesh.ports.value <= section.mesh.max_ports.value
    loss_db = section.physics["mesh_loss"].value
    laser = d.capabilities.energy["laser_power_w"].value
    c, e = d.config, d.energy
    per_channel = 32 * d.receiver.signal_power_w * 10 ** (loss_db / 10) + 32 * c.detector.lo_power_w
    assert laser == pytest.approx(c.wdm.channels * per_channel / e.laser_wall_plug_efficiency)
    assert laser < 100  # watts, not the kilowatts of an unbounded 64-port mesh
    with pytest.raises(ValueError, match="transmission"):
        laser_power_w(1, 1, 1e-4, 0.0, c, e)


def test_heater_power_figure_is_the_cost_model():
    d = hal.device("photonic:0?seed=0")
    heaters = d.capabilities.energy["heater_holding_power_w"]
    assert heaters.value == pytest.approx(d.config.phase.p_pi_w * (2 * 32 * 32 + 2 * 32))  # mean phase pi per heater
    estimate = d.estimate(OpSpec("linear", [torch.randn(4, 32)], {"weight": torch.randn(32, 32)}))
    assert f"heaters {heaters.value:.3g} W" in estimate.formula


def test_every_number_of_the_photonic_section_is_a_sourced_figure():
    d = hal.device("photonic:0?N=16&adc_bits=6")
    numbers = dict(section_numbers(d.capabilities.sections["photonic"], "photonic"))
    bare = [path for path, value in numbers.items() if not isinstance(value, Figure)]
    assert not bare, f"bare numbers without a source: {bare}"
    assert numbers["photonic.readout.adc_bits"].source == "assumed:set by ?adc_bits=6"
    for choice in ("photonic.physics.heater_crosstalk", "photonic.physics.heater_crosstalk_residual", "photonic.physics.max_input_power", "photonic.physics.lo_power"):
        assert numbers[choice].kind == "assumed", choice
    assert d.capabilities.energy["laser_wall_plug_efficiency"].kind == "assumed"
