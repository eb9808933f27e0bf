"""Tests of hal/drivers/memristor: device contract, tile model, physics, capacity, energy, layers."""

from __future__ import annotations

import gc
import math
import weakref
from typing import ClassVar

import pytest
import torch
from section_numbers import numbers as section_numbers

import hal
import hal.nn
from hal.capability import Figure, validate
from hal.device import OpSpec
from hal.drivers.memristor import AnalogConv2d, AnalogLinear, MemristorDevice, pcm
from hal.drivers.memristor.config import CrossbarConfig, NonIdealities, PcmStatistics, TileConfig
from hal.drivers.memristor.tile import Crossbar
from hal.errors import CapacityExceeded, DeviceUnavailable, InvalidInput, ProgramInvalidated, UnsupportedOp
from hal.testing.conformance import DeviceConformance


class TestConformance(DeviceConformance):
    uri = "memristor:0?seed=0"


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Fixed random operands in every test below (the conformance kit draws its own)."""
    torch.manual_seed(0)


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().cpu().double(), ref.detach().cpu().double()
    return float((out - ref).norm() / ref.norm())


def fresh(uri: str) -> MemristorDevice:
    """A device not shared with other tests (tests that change state close it)."""
    device = hal.device(uri)
    device.close()
    return hal.device(uri)


# ---------------------------------------------------------------------------- device behaviour


def test_ideal_device_computes_exact_products():
    d = fresh("memristor:0?ideal=1")
    x, w, b = torch.randn(5, 300), torch.randn(70, 300), torch.randn(70)
    assert rel(d.linear(x, w, b), x.double() @ w.double().T + b.double()) < 1e-5
    a, m = torch.randn(2, 7, 40), torch.randn(2, 40, 9)
    assert rel(d.matmul(a, m), a.double() @ m.double()) < 1e-5
    xc, wc = torch.randn(2, 4, 7, 7), torch.randn(6, 2, 3, 3)
    ref = torch.nn.functional.conv2d(xc.double(), wc.double(), stride=2, padding=1, groups=2)
    assert rel(d.conv2d(xc, wc, None, stride=2, padding=1, groups=2), ref) < 1e-5


def test_default_error_is_within_declared_tolerance_and_not_trivial():
    d = fresh("memristor:0?seed=3")
    tolerance = d.capabilities.ops["linear"].tolerance["float32"]
    x, w = torch.randn(64, 256), torch.randn(64, 256)
    error = rel(d.linear(x, w), x.double() @ w.double().T)
    assert 0.02 < error < tolerance  # the analog errors are there, and the declaration covers them


def test_relu_activation_is_fused():
    d = fresh("memristor:0?ideal=1")
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    y = d.linear(x, w, activation="relu")
    assert (y >= 0).all() and rel(y, (x @ w.T).relu()) < 1e-5


def test_manual_seed_repeats_programming_and_reads():
    d = fresh("memristor:0")
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    op = OpSpec("linear", [x], {"weight": w})
    d.manual_seed(7)
    first = d.prepare(op, {"weight": w})(x)
    d.manual_seed(7)
    second = d.prepare(op, {"weight": w})(x)
    assert torch.equal(first, second)
    assert not torch.equal(first, d.prepare(op, {"weight": w})(x))  # a fresh draw differs


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_and_weights_are_refused(bad):
    d = fresh("memristor:0")
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    x[1, 3] = bad
    with pytest.raises(InvalidInput, match="1 NaN/inf"):
        d.linear(x, w)
    with pytest.raises(InvalidInput, match="NaN/inf"):
        d.linear(w, x)  # as a weight too
    program = d.prepare(OpSpec("linear", [w], {"weight": w}), {"weight": w})
    with pytest.raises(InvalidInput, match="NaN/inf"):
        program(x[:, :16].repeat(2, 1)[:8])


def test_capacity_exceeded_names_the_tiles_needed():
    d = fresh("memristor:0?tiles=4&tile=64")
    w = torch.randn(200, 150)  # 3 row blocks x 4 column blocks = 12 tiles
    with pytest.raises(CapacityExceeded, match="needs 12 tiles") as caught:
        d.prepare(OpSpec("linear", [torch.randn(2, 150)], {"weight": w}), {"weight": w})
    assert caught.value.needed == 12 and caught.value.available == 4
    assert not d.supports(OpSpec("linear", [torch.randn(2, 150)], {"weight": w}))


def test_reprogrammed_tiles_invalidate_the_old_program():
    d = fresh("memristor:0?tiles=2&tile=16")
    x = torch.randn(3, 16)
    w1, w2, w3 = torch.randn(16, 16), torch.randn(16, 16), torch.randn(16, 16)
    p1 = d.prepare(OpSpec("linear", [x], {"weight": w1}), {"weight": w1})
    p2 = d.prepare(OpSpec("linear", [x], {"weight": w2}), {"weight": w2})
    p1(x)
    d.prepare(OpSpec("linear", [x], {"weight": w3}), {"weight": w3})  # overwrites p1's tile (the oldest)
    with pytest.raises(ProgramInvalidated, match="reprogrammed"):
        p1(x)
    p2(x)
    p2.release()
    assert d.tiles_in_use == 1
    with pytest.raises(ProgramInvalidated, match="released"):
        p2(x)


def test_eager_ops_reprogram_after_eviction():
    d = fresh("memristor:0?tiles=1&tile=16&ideal=1")
    x, w1, w2 = torch.randn(2, 16), torch.randn(4, 16), torch.randn(4, 16)
    d.linear(x, w1)
    d.linear(x, w2)  # evicts w1's program
    assert rel(d.linear(x, w1), x @ w1.T) < 1e-5


def test_static_dac_range_clips_and_counts():
    d = fresh("memristor:0?input_range=1&ideal=1")
    x = torch.tensor([[0.5, 3.0, -2.0, 0.25]])
    w = torch.eye(4)
    program = d.prepare(OpSpec("linear", [x], {"weight": w}), {"weight": w})
    y = program(x)
    assert program.stats.dac_clipped == 2 and d.counters.dac_clipped == 2
    assert torch.allclose(y, torch.tensor([[0.5, 1.0, -1.0, 0.25]]))


def test_adc_saturation_is_counted():
    d = fresh("memristor:0?ideal=1&input_range=1")
    w = torch.ones(1, 64)  # 64 full-scale devices on one column: 64 x v_read g_max > the 12-unit ADC range
    program = d.prepare(OpSpec("linear", [torch.ones(1, 64)], {"weight": w}), {"weight": w})
    y = program(torch.ones(1, 64))
    assert program.stats.adc_saturated == 1
    assert float(y) == pytest.approx(12.0)


def test_unsupported_and_bad_options():
    d = fresh("memristor:0")
    with pytest.raises(UnsupportedOp):
        d.softmax(torch.randn(2, 3))
    with pytest.raises(InvalidInput, match="tile"):
        hal.device("memristor:0?tile=0")
    with pytest.raises(InvalidInput, match="compute"):
        hal.device("memristor:0?compute=tpu")


def test_cuda_compute_is_refused_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceUnavailable, match="CUDA"):
        hal.device("memristor:0?compute=cuda")


def test_capabilities_describe_the_crossbar():
    d = fresh("memristor:0?tiles=8")
    caps = d.capabilities
    validate(caps.to_dict())
    section = caps.sections["analog"]
    assert caps.simulated and not caps.deterministic and caps.paradigm.value == "analog"
    assert section.tiles.count.value == 8 and section.tiles.rows.value == 256
    assert section.tiles.count.source == "assumed:set by ?tiles=8" and section.tiles.rows.kind == "paper"
    assert caps.ops["linear"].limits["max_tiles"] == 8
    assert all(f.kind in ("paper", "derived", "assumed") for f in caps.energy.values())


def test_every_number_of_the_analog_section_is_a_sourced_figure():
    d = fresh("memristor:0?dac_bits=6")
    numbers = list(section_numbers(d.capabilities.sections["analog"], "analog"))
    bare = [path for path, value in numbers if not isinstance(value, Figure)]
    assert not bare, f"bare numbers without a source: {bare}"
    figures = dict(numbers)
    assert figures["analog.converters.dac_bits"].source == "assumed:set by ?dac_bits=6"
    assert figures["analog.converters.adc_bits"].kind == "paper"
    for choice in ("analog.physics.stuck_at_gmin_rate", "analog.physics.stuck_at_gmax_rate", "analog.write_verify.pulse_energy", "analog.conductance_levels"):
        assert figures[choice].kind == "assumed", choice  # engineering choices, not measurements or published figures
    assert figures["analog.accuracy.expected_error"].kind == "derived"


def test_probe_and_diagnose_do_not_raise():
    infos = MemristorDevice.probe()
    assert infos[0].available and infos[0].simulated
    assert MemristorDevice.diagnose()[0].ok


# ---------------------------------------------------------------------------- physics


def test_programming_noise_polynomial_matches_the_published_fit():
    model = PcmStatistics()
    g = torch.tensor([0.0, 12.5, 25.0])
    sigma = pcm.programming_sigma_us(g, 25.0, model)
    expected = [0.26348, 0.26348 + 1.9650 * 0.5 - 1.1731 * 0.25, 0.26348 + 1.9650 - 1.1731]
    assert torch.allclose(sigma, torch.tensor(expected), atol=1e-6)


def test_drift_follows_the_power_law_with_device_variation():
    model = PcmStatistics()
    generator = torch.Generator().manual_seed(0)
    g = torch.full((20000,), 25.0)
    nu = pcm.drift_exponents(g, 25.0, model, generator)
    assert nu.mean().item() == pytest.approx(0.049, abs=0.003)  # mean clamped at 0.049 at g_max
    assert 0.005 < nu.std().item() < 0.012  # std clamped at 0.008 (folded normal)
    drifted = pcm.conductance_at(g, nu, 3600.0, 25.0, model, None)
    expected = 25.0 * ((20.0 + 3600.0) / 20.0) ** -nu
    assert torch.allclose(drifted, expected, rtol=1e-5)


def test_read_noise_grows_with_log_time():
    model = PcmStatistics()
    g = torch.tensor([12.5])
    early = pcm.read_noise_sigma(g, 25.0, 0.0, model).item()
    late = pcm.read_noise_sigma(g, 25.0, 3.15e7, model).item()
    q = 0.0088 / 0.5**0.65
    assert early == pytest.approx(q * math.sqrt(math.log((20 + 250e-9) / 500e-9)), rel=1e-6)
    assert late > early


def test_write_verify_reduces_residual_and_costs_pulses():
    w = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(0))
    single = CrossbarConfig(tile=TileConfig(write_verify_iterations=0))
    verified = CrossbarConfig(tile=TileConfig(write_verify_iterations=5, write_verify_tolerance_us=0.3))
    one, many = Crossbar(w, single, seed=1).report, Crossbar(w, verified, seed=1).report
    assert many.residual_rms_us < 0.8 * one.residual_rms_us
    assert many.pulses > one.pulses == one.devices and many.energy_j > one.energy_j


def test_drift_compensation_recovers_accuracy_after_a_year():
    w, x = torch.randn(1, 128, 64), torch.randn(1, 32, 128)
    ref = x[0].double() @ w[0].double()
    base = CrossbarConfig().with_effects(output_noise=False)
    errors = {}
    for compensate in (True, False):
        crossbar = Crossbar(w, base.with_effects(drift_compensation=compensate), seed=2)
        y, _ = crossbar.read(x, 3.15e7, torch.Generator().manual_seed(0))
        errors[compensate] = rel(y[0], ref)
    assert errors[True] < 0.6 * errors[False]


def test_ir_drop_attenuates_outputs_more_on_longer_lines():
    config = CrossbarConfig(effects=NonIdealities(*(False,) * 4, True, False, False, False))
    assert config.effects.ir_drop and not config.effects.drift_compensation
    crossbar = Crossbar(torch.ones(1, 256, 256), config, seed=0)
    gain = crossbar.state(0.0).g_read[0]  # (G+ - G-) / g_max of each device (no DAC/ADC scaling here): 1 without IR drop
    assert (gain < 1).all() and (gain > 0.3).all()  # worst case: every device at g_max
    assert gain[0, 0] < gain[255, 0]  # row 0 is furthest from the bit line's sense amplifier
    assert gain[255, 255] < gain[255, 0]  # column 255 is furthest from the word line's driver


def test_stuck_at_gmax_devices_are_mapped_around():
    w = torch.rand(1, 64, 64) + 0.1
    config = CrossbarConfig(tile=TileConfig(stuck_at_gmin_rate=0.0, stuck_at_gmax_rate=0.05), effects=NonIdealities(*(False,) * 5, True, False, False))
    crossbar = Crossbar(w, config, seed=0)
    assert crossbar.report.stuck_at_gmax > 0
    y, _ = crossbar.read(torch.eye(64).unsqueeze(0), 0.0, torch.Generator())
    stuck_positive, stuck_negative = crossbar.stuck[0, 0, :64, :64] == 2, crossbar.stuck[1, 0, :64, :64] == 2
    repaired = stuck_positive & ~stuck_negative  # G+ stuck at g_max: G- is retargeted to g_max - w
    assert repaired.any()
    assert torch.allclose(y[0][repaired], w[0][repaired], atol=1e-5)
    lost = stuck_negative & ~stuck_positive  # G- stuck at g_max under a positive weight: G+ cannot exceed g_max
    assert torch.allclose(y[0][lost], torch.zeros_like(y[0][lost]), atol=1e-5)


def test_read_energy_and_counters_follow_the_model():
    d = fresh("memristor:0?ideal=1")
    x, w = torch.ones(10, 256), torch.ones(256, 256)
    program = d.prepare(OpSpec("linear", [x], {"weight": w}), {"weight": w})
    program(x)
    energy = d.config.energy
    tile = d.config.tile
    # every device pair holds G+ = g_max, G- = g_min = 0; all inputs at full scale for 127 clock periods
    array = 10 * 256 * 256 * 25e-6 * energy.read_voltage_v**2 * tile.dac_steps * energy.clock_period_s
    assert program.stats.array_energy_j == pytest.approx(array, rel=1e-4)
    assert program.stats.adc_conversions == 10 * 256 and program.stats.dac_conversions == 10 * 256
    assert program.stats.adc_energy_j == pytest.approx(10 * 256 * 3.1e-3 / 1.2e9)
    assert program.cost.energy_j > 0 and program.programming.energy_j > 0


def test_elapse_drifts_programs():
    d = fresh("memristor:0?read_noise=0&output_noise=0&drift_compensation=0&prog_noise=0&stuck=0&ir_drop=0&quantization=0")
    x, w = torch.rand(8, 32), torch.rand(16, 32)
    program = d.prepare(OpSpec("linear", [x], {"weight": w}), {"weight": w})
    before = program(x)
    d.elapse(600.0)
    after = program(x)
    assert program.age_s == 600.0
    assert (after < before).all()  # conductances decay under drift
    assert program.cost.error > 0.0 and "read 600 s after t0" in program.cost.formula


def test_elapse_past_the_usable_age_is_refused_and_the_clock_stays():
    """Issue 15: ``?t=86400&drift_compensation=0`` is refused at hal.device(...), but elapse(86400) used to age the same
    device's programs there silently, past the tolerance it declared."""
    uri = "memristor:0?drift_compensation=0&seed=1"
    with pytest.raises(InvalidInput, match="drift_compensation"):
        hal.device(uri + "&t=86400")
    d = fresh(uri)
    x, w = torch.randn(8, 64), torch.randn(16, 64)
    program = d.prepare(OpSpec("linear", [x], {"weight": w}), {"weight": w})
    with pytest.raises(InvalidInput, match=r"read 86400 s after t0.*clock stays at 0 s.*reprogram"):
        d.elapse(86400.0)
    assert d.clock_s == 0.0 and program.age_s == 0.0
    program.release()
    d.elapse(86400.0)  # no program is that old now: a weight programmed afterwards starts at ?t again
    fresh_program = d.prepare(OpSpec("linear", [x], {"weight": w}), {"weight": w})
    assert fresh_program.age_s == 0.0 and d.clock_s == 86400.0


def test_elapse_rederives_the_errors_and_the_declared_tolerance():
    d = fresh("memristor:0?seed=2")
    base = d.capabilities.ops["linear"].tolerance["float32"]
    x, w = torch.randn(8, 128), torch.randn(10, 128)
    program = d.prepare(OpSpec("linear", [x], {"weight": w}), {"weight": w})
    at_t0 = program.cost.error
    assert at_t0 == pytest.approx(d.expected_error(128, 10).error)
    year = 365.25 * 86400.0
    d.elapse(year)
    assert program.cost.error == pytest.approx(d.expected_error(128, 10, age_s=year).error) and program.cost.error > at_t0
    tolerance = d.capabilities.ops["linear"].tolerance["float32"]
    assert tolerance == pytest.approx(max(base, 2 * program.cost.error + 1e-3)) and tolerance > base
    assert "after elapse" in d.capabilities.sections["analog"].accuracy["tolerance"].source
    measured = rel(program(x), x.double() @ w.double().T)
    assert measured < tolerance
    with pytest.raises(InvalidInput, match="finite number of seconds"):
        d.elapse(-1.0)


def test_matmul_writes_b_at_every_call_so_elapse_does_not_age_it():
    """matmul's b used to be read at the program's age although it is programmed at every call."""
    d = fresh("memristor:0?ideal=1&drift=1&drift_compensation=0")
    a, b = torch.rand(4, 32), torch.rand(32, 8)
    program = d.prepare(OpSpec("matmul", [a, b]))
    d.elapse(365.25 * 86400.0)
    assert program.age_s == 0.0
    assert rel(program(a, b), a.double() @ b.double()) < 1e-5  # no drift at t0 after a fresh programming


# ---------------------------------------------------------------------------- layers


def test_convert_swaps_layers_and_runs_on_the_device():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    analog = hal.nn.convert(model, "memristor:0?ideal=1")
    assert isinstance(analog.module[0], AnalogConv2d) and isinstance(analog.module[3], AnalogLinear)
    assert [name for name, _ in analog.device_layers()] == ["0", "3"]
    x = torch.randn(3, 1, 6, 6)
    analog.eval()
    with torch.no_grad():
        assert rel(analog(x), model(x)) < 1e-5
        program = analog.module[3].hal_program()
        analog(x)
        assert analog.module[3].hal_program() is program  # programmed once, reused
    assert analog.program_weights() == 2 and analog.module[3].hal_program() is program


def test_convert_passes_the_noise_options_and_refuses_unknown_ones():
    analog = hal.nn.convert(torch.nn.Sequential(torch.nn.Linear(8, 4)), "memristor:0", noise_scale=0.5, noise_age_s=3600.0)
    assert analog.module[0].noise_scale == 0.5 and analog.module[0].noise_age_s == 3600.0
    with pytest.raises(InvalidInput, match=r"no conversion option\(s\) \['calibration'\].*noise_scale.*noise_age_s"):
        hal.nn.convert(torch.nn.Linear(8, 4), "memristor:0", calibration=torch.rand(2, 8))
    with pytest.raises(InvalidInput, match="noise_scale must be a finite number"):
        hal.nn.convert(torch.nn.Linear(8, 4), "memristor:0", noise_scale=-1.0)
    with pytest.raises(UnsupportedOp, match="padding_mode 'reflect'"):
        hal.nn.convert(torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), "memristor:0")
    with pytest.raises(UnsupportedOp, match="needs 16 tiles"):
        hal.nn.convert(torch.nn.Linear(256, 256), "memristor:0?tile=64&tiles=4")


def test_converted_model_keeps_the_dtype_and_the_state_dict_keys():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    analog = hal.nn.convert(model, "memristor:0?ideal=1").eval()
    assert analog.module[0].weight.dtype == torch.float64 and analog.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(5, 8, dtype=torch.float64)
    with torch.no_grad():
        assert analog(x).dtype == torch.float64 and rel(analog(x), model(x)) < 1e-5


def test_a_backward_through_an_eval_mode_analog_layer_is_a_named_error():
    """It used to return the gradient of the emulator's rounding and noise (the input's) and no weight gradient."""
    analog = hal.nn.convert(torch.nn.Linear(8, 4), "memristor:0?ideal=1").eval()
    x = torch.randn(3, 8, requires_grad=True)
    with pytest.raises(UnsupportedOp, match="AnalogLinear on memristor:0.*no gradient"):
        analog(x).sum().backward()
    analog.train()
    analog(x).sum().backward()
    assert analog.module.weight.grad is not None


def test_converted_model_forwards_the_device_verbs():
    analog = hal.nn.convert(torch.nn.Linear(8, 4), "memristor:0?seed=5")
    device = hal.device("memristor:0?seed=5")
    assert analog.elapse.__self__ is device and analog.manual_seed.__self__ is device
    with pytest.raises(AttributeError, match="elapse, manual_seed"):
        analog.recalibrate()


def test_training_injects_noise_with_gradients():
    layer = AnalogLinear(16, 4, device_uri="memristor:0?seed=1")
    layer.train()
    x = torch.randn(8, 16)
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)
    a.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_matmul_programs_b_on_every_call():
    d = fresh("memristor:0?tile=16&seed=1")
    a, b = torch.randn(3, 8, 16), torch.randn(3, 16, 8)
    program = d.prepare(OpSpec("matmul", [a, b]))
    assert len(program.tiles) == 3  # one tile per batch matrix
    program(a, b)
    once = program.programming.pulses
    program(a, b)
    assert program.programming.pulses > once >= 2 * 3 * 16 * 8  # every device pulsed at least once per call
    assert program.cost.energy_j > program.stats.energy_j / 2  # the estimate includes reprogramming b


def test_grouped_conv_layer_matches_torch_when_ideal():
    layer = torch.nn.Conv2d(4, 6, 3, stride=1, padding=1, groups=2)
    analog = hal.nn.convert(layer, "memristor:0?ideal=1")
    assert isinstance(analog.module, AnalogConv2d)
    x = torch.randn(2, 4, 5, 5)
    analog.eval()
    with torch.no_grad():
        assert rel(analog(x), layer(x)) < 1e-5


@pytest.mark.gpu
def test_cuda_emulation_matches_the_cpu_model():
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    ideal = fresh("memristor:0?compute=cuda&ideal=1")
    x, w, b = torch.randn(64, 300), torch.randn(40, 300), torch.randn(40)
    assert rel(ideal.linear(x, w, b), x.double() @ w.double().T + b.double()) < 1e-5
    noisy = fresh("memristor:0?compute=cuda&seed=2")
    y = noisy.linear(x.cuda(), w.cuda(), b.cuda())
    assert y.is_cuda and rel(y, x.double() @ w.double().T + b.double()) < noisy.capabilities.ops["linear"].tolerance["float32"]
    xc, wc = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    assert rel(ideal.conv2d(xc, wc, None, padding=1), torch.nn.functional.conv2d(xc.double(), wc.double(), padding=1)) < 1e-5


class TestConformanceCuda(DeviceConformance):
    uri = "memristor:0?seed=0&compute=cuda"
    pytestmark: ClassVar = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


def test_training_noise_grows_with_the_deployment_age():
    from hal.drivers.memristor.layers import weight_noise_std

    w = torch.randn(8, 32)
    config = CrossbarConfig()
    at_t0 = weight_noise_std(w, config)
    after_a_day = weight_noise_std(w, config, age_s=86400.0)
    assert (after_a_day > at_t0).all()
    assert torch.allclose(weight_noise_std(w, config, scale=2.0), 2 * at_t0)
    largest = w.abs().argmax(dim=1)  # the largest weight of each row sits at g_max: programming std 1.055 uS of 25
    assert (at_t0[torch.arange(8), largest] / w.abs().amax(dim=1) > 1.055 / 25).all()


def test_estimates_and_telemetry_report_costs():
    d = fresh("memristor:0?tile=64")
    x, w = torch.randn(4, 64), torch.randn(32, 64)
    linear = d.estimate(OpSpec("linear", [x], {"weight": w}))
    matmul = d.estimate(OpSpec("matmul", [x, w.T.contiguous()]))
    assert 0 < linear.energy_j < matmul.energy_j  # matmul pays for programming b on every call
    assert linear.error == d.expected_error(64, 32).error  # derived at the op's reduction length
    d.linear(x, w)
    readings = d.telemetry()
    assert readings["tiles_in_use"] == 1 and readings["reads"]["calls"] == 1 and readings["reads"]["vectors"] == 4
    assert readings["programming"]["pulses"] >= 2 * 64 * 32


def _exact_column_currents(g_siemens: torch.Tensor, volts: torch.Tensor, r_ohm: float) -> torch.Tensor:
    """Nodal analysis of a crossbar with resistive lines: word line i driven at column 0, bit lines grounded
    after the last row, one device per cell (the circuit the first-order model linearises)."""
    rows, cols = g_siemens.shape
    n = 2 * rows * cols
    Y, b, g = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), 1.0 / r_ohm

    def word(i, c):
        return i * cols + c

    def bit(i, c):
        return rows * cols + i * cols + c

    def link(p, q, conductance):
        Y[p, p] += conductance
        Y[q, q] += conductance
        Y[p, q] -= conductance
        Y[q, p] -= conductance

    for i in range(rows):
        Y[word(i, 0), word(i, 0)] += g
        b[word(i, 0)] += g * volts[i]
        for c in range(cols):
            link(word(i, c), bit(i, c), float(g_siemens[i, c]))
            if c + 1 < cols:
                link(word(i, c), word(i, c + 1), g)
            if i + 1 < rows:
                link(bit(i, c), bit(i + 1, c), g)
    for c in range(cols):
        Y[bit(rows - 1, c), bit(rows - 1, c)] += g
    v = torch.linalg.solve(Y, b)
    return torch.stack([v[bit(rows - 1, c)] * g for c in range(cols)])


def test_first_order_ir_drop_agrees_with_nodal_analysis():
    size, r = 24, 10.0  # a strong drop (about 7 %) so the comparison means something
    tile = TileConfig(rows=size, cols=size, wire_resistance_ohm=r, stuck_at_gmin_rate=0.0, stuck_at_gmax_rate=0.0)
    crossbar = Crossbar(torch.rand(1, size, size), CrossbarConfig(tile=tile, effects=NonIdealities(*(False,) * 4, True, False, False, False)), seed=0)
    g = crossbar.g_target[0, 0].double() * 1e-6  # all weights positive: G- = g_min = 0
    effective = crossbar.state(0.0).g_read[0].double() * tile.g_max_us * 1e-6
    volts = torch.rand(size, dtype=torch.float64) * 0.4
    exact = _exact_column_currents(g, volts, r)
    ideal_error = rel(volts @ g, exact)
    model_error = rel(volts @ effective, exact)
    assert ideal_error > 0.03 and model_error < 0.2 * ideal_error


# ---------------------------------------------------------------------------- programs at the seams


def test_eager_linear_with_a_fresh_weight_every_call_stays_within_tolerance():
    """Issue 14: temporary weights freed after each call used to alias a cached Program through a reused id()."""
    d = fresh("memristor:0?seed=0&tile=16")
    tolerance = d.capabilities.ops["linear"].tolerance["float32"]
    x = torch.randn(32, 16)
    for i in range(12):
        w = torch.randn(8, 16)
        error = rel(d.linear(x, w), x.double() @ w.double().T)
        assert error < tolerance, f"call {i}: relative error {error:.2f} > declared tolerance {tolerance:.2f}"
        del w


def test_a_program_keeps_the_weight_it_was_programmed_from():
    d = fresh("memristor:0?ideal=1")
    w = torch.randn(8, 16)
    program = d.prepare(OpSpec("linear", [torch.randn(2, 16)], {"weight": w}), {"weight": w})
    alive = weakref.ref(w)
    del w
    gc.collect()
    assert alive() is not None  # no new tensor can take the programmed weight's id() while the Program lives
    assert program.resident.matches({"weight": alive()})


def test_layer_reprograms_a_parameter_replaced_at_the_freed_ones_address():
    """Issue 14 audit: the layer keyed its Program on (data_ptr, _version), which a new parameter allocated where the
    freed one lay matches: the layer kept computing with the old conductances."""
    layer = AnalogLinear(16, 4, bias=False, device_uri="memristor:0?ideal=1").eval()
    x = torch.randn(3, 16)
    with torch.no_grad():
        for _ in range(12):
            layer(x)
            layer.weight = None  # frees the old parameter (and its storage, unless something still holds it)
            gc.collect()
            layer.weight = torch.nn.Parameter(torch.randn(4, 16))
            assert rel(layer(x), x @ layer.weight.T) < 1e-5


def test_layer_reprograms_when_its_weight_is_replaced_not_otherwise():
    layer = AnalogLinear(16, 4, bias=False, device_uri="memristor:0?ideal=1").eval()
    x = torch.randn(3, 16)
    with torch.no_grad():
        first = layer.hal_program()
        assert layer.hal_program() is first
        layer.weight.data = torch.randn(4, 16)  # a new storage; _version unchanged
        second = layer.hal_program()
        assert second is not first and rel(layer(x), x @ layer.weight.T) < 1e-5
        layer.weight.add_(1.0)  # in place
        third = layer.hal_program()
        assert third is not second and rel(layer(x), x @ layer.weight.T) < 1e-5
        layer.weight = torch.nn.Parameter(torch.randn(4, 16))  # a new parameter of the same shape
        assert layer.hal_program() is not third and rel(layer(x), x @ layer.weight.T) < 1e-5


EMPTY_LINEAR = {"no rows": ((0, 16), (8, 16)), "no inputs": ((4, 0), (8, 0)), "no outputs": ((4, 16), (0, 16))}
EMPTY_MATMUL = {"no rows": ((0, 16), (16, 8)), "no inputs": ((4, 0), (0, 8)), "no outputs": ((4, 16), (16, 0)), "no batch": ((0, 4, 16), (16, 8))}


@pytest.mark.parametrize("case", sorted(EMPTY_LINEAR))
def test_linear_with_an_empty_dimension_returns_what_the_cpu_returns(case):
    d, cpu = fresh("memristor:0"), hal.device("cpu:0")
    x_shape, w_shape = EMPTY_LINEAR[case]
    x, w, b = torch.randn(*x_shape), torch.randn(*w_shape), torch.randn(w_shape[0])
    for bias in (None, b):
        out, ref = d.linear(x, w, bias), cpu.linear(x, w, bias)
        assert out.shape == ref.shape and torch.equal(out, ref)
    assert torch.equal(d.linear(x, w, b, activation="relu"), torch.relu(cpu.linear(x, w, b)))
    if case != "no rows":
        assert d.tiles_in_use == 0  # an empty weight takes no tile


@pytest.mark.parametrize("case", sorted(EMPTY_MATMUL))
def test_matmul_with_an_empty_dimension_returns_what_the_cpu_returns(case):
    d, cpu = fresh("memristor:0"), hal.device("cpu:0")
    a, b = (torch.randn(*shape) for shape in EMPTY_MATMUL[case])
    out, ref = d.matmul(a, b), cpu.matmul(a, b)
    assert out.shape == ref.shape and torch.equal(out, ref)


def test_conv2d_with_an_empty_batch_returns_an_empty_result():
    d = fresh("memristor:0")
    x, w, b = torch.randn(0, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    out = d.conv2d(x, w, b, padding=1)
    assert out.shape == (0, 4, 8, 8)


# ---------------------------------------------------------------------------- tolerance honesty


def test_tolerance_is_derived_from_the_configuration_and_below_one():
    d = fresh("memristor:0?adc_bits=6&dac_bits=6")
    caps = d.capabilities
    tolerance = caps.ops["linear"].tolerance["float32"]
    expected = caps.sections["analog"].accuracy["expected_error"]
    assert expected.kind == "derived" and "Gaussian" in expected.source
    assert tolerance == pytest.approx(2 * expected.value + 1e-3) and tolerance < 1
    assert fresh("memristor:0").capabilities.ops["linear"].tolerance["float32"] < tolerance  # coarser converters declare more


@pytest.mark.parametrize("uri, option", [("memristor:0?adc_bits=2", "adc_bits"), ("memristor:0?dac_bits=2", "dac_bits"), ("memristor:0?t=31500000&drift_compensation=0", "drift_compensation")])
def test_configurations_too_noisy_to_declare_a_tolerance_below_one_are_refused(uri, option):
    with pytest.raises(InvalidInput, match=option):
        hal.device(uri)


@pytest.mark.parametrize("uri", ["memristor:0?seed=4", "memristor:0?seed=4&dac_bits=4&adc_bits=6&tile=64", "memristor:0?seed=4&t=3600&levels=16"])
def test_derived_expected_error_matches_the_emulator(uri):
    d = fresh(uri)
    x, w = torch.randn(128, 96), torch.randn(48, 96)
    measured = rel(d.linear(x, w), x.double() @ w.double().T)
    expected = d.expected_error(96, 48).error
    assert 0.6 < measured / expected < 1.6
