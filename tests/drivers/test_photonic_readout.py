"""Readout (hal/drivers/photonic/readout.py), SVD processor and energy model of the photonic driver."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from hal.drivers.photonic.energy import EnergyConfig
from hal.drivers.photonic.imperfections import ELEMENTARY_CHARGE_C, DetectorConfig, PhotonicConfig
from hal.drivers.photonic.processor import Fabrication, PhotonicMatrix
from hal.drivers.photonic.readout import Receiver


def test_coherent_noise_std_meets_the_required_snr():
    config = replace(DetectorConfig(), adc_bits=None, snr_db=40.0)
    receiver = Receiver(config)
    assert receiver.noise_std() == pytest.approx(1e-2, rel=1e-12)
    zeros = torch.zeros(20000, 4, dtype=torch.complex128)
    reading = receiver.detect(zeros, torch.zeros(20000, dtype=torch.float64), torch.full((4,), 10.0, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert float(reading.values.std()) == pytest.approx(1e-2, rel=0.03)


def test_signal_power_follows_the_homodyne_formula():
    config = DetectorConfig()
    receiver = Receiver(config)
    r, b, lo = config.responsivity_a_per_w, config.bandwidth_hz, config.lo_power_w
    sigma = 10 ** (-config.snr_db / 20)
    expected = (2 * ELEMENTARY_CHARGE_C * r * lo * b + config.tia_noise_a_per_rthz**2 * b) / (4 * r**2 * lo * sigma**2)
    assert receiver.signal_power_w == pytest.approx(expected)
    shot_only = Receiver(replace(config, thermal_noise=False))
    assert shot_only.noise_std() < receiver.noise_std()
    assert Receiver(config, noise_on=False).noise_std() == 0.0


def test_intensity_receiver_meets_snr_at_full_power():
    config = replace(DetectorConfig(), detection="intensity", adc_bits=None, snr_db=30.0)
    receiver = Receiver(config)
    assert float(receiver.noise_std(torch.ones(1, dtype=torch.float64))) == pytest.approx(10 ** (-1.5), rel=1e-9)


def test_adc_clips_and_counts_and_quantises():
    receiver = Receiver(replace(DetectorConfig(), adc_bits=2), noise_on=False)
    fields = torch.tensor([[0.1 + 0j, 2.0 + 0j, -3.0 + 0j]], dtype=torch.complex128)
    out = receiver.detect(fields, torch.zeros(1, dtype=torch.float64), torch.ones(3, dtype=torch.float64), None)
    assert out.clipped == 2
    assert out.values.tolist() == [[0.0, 1.0, -1.0]]  # 2-bit signed mid-tread ADC: levels -1, 0, 1
    fine = Receiver(replace(DetectorConfig(), adc_bits=8), noise_on=False)
    zero = fine.detect(torch.zeros(1, 3, dtype=torch.complex128), torch.zeros(1, dtype=torch.float64), torch.ones(3, dtype=torch.float64), None)
    assert zero.values.abs().max() == 0.0  # zero is a level: no offset for a dark output


def test_unknown_detection_is_refused():
    with pytest.raises(ValueError, match="coherent"):
        Receiver(replace(DetectorConfig(), detection="heterodyne"))


def _matrix(weight: np.ndarray, n: int, config: PhotonicConfig) -> PhotonicMatrix:
    return PhotonicMatrix(weight, n, "clements", config, Fabrication.draw(n, config.coupler.splitting_error_rad, 0), torch.complex128)


@pytest.mark.parametrize("shape", [(5, 8), (8, 3), (8, 8), (19, 11)])
def test_ideal_processor_is_exact_including_tiles(shape):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(shape) * 3
    matrix = _matrix(weight, 8, PhotonicConfig.ideal())
    x = torch.randn(13, shape[1], dtype=torch.float64)
    out = matrix.apply(x)
    assert torch.allclose(out, x @ torch.as_tensor(weight).T, atol=1e-11)
    assert matrix.tile_count == math.ceil(shape[0] / 8) * math.ceil(shape[1] / 8)


def test_singular_values_beyond_the_attenuators_are_scaled_and_reported():
    weight = np.diag([5.0, 0.5, 0.1])
    matrix = _matrix(weight, 4, PhotonicConfig.ideal())
    assert matrix.stats.scale == [pytest.approx(5.0)]
    x = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(matrix.apply(x), torch.as_tensor(weight), atol=1e-12)


def test_default_processor_error_is_percent_level_and_measured():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((16, 16))
    matrix = _matrix(weight, 16, PhotonicConfig())
    x = torch.randn(256, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = matrix.apply(x, torch.Generator().manual_seed(0))
    ref = x @ torch.as_tensor(weight).T
    error = float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))
    assert 0.005 < error < 0.2
    assert error >= 0.9 * matrix.stats.matrix_error  # noise only adds to the static matrix error
    assert matrix.stats.readings == 256 * 16 and matrix.stats.clipped_readings >= 0


def test_wdm_vectors_ride_on_different_wavelengths():
    """With dispersion, the same vector read on two channels gives (slightly) different results."""
    config = replace(PhotonicConfig(), noise_on=False, detector=replace(DetectorConfig(), adc_bits=None))
    matrix = _matrix(np.random.default_rng(0).standard_normal((8, 8)), 8, config)
    x = torch.randn(1, 8, dtype=torch.float64).expand(8, -1)
    out = matrix.apply(x)
    assert (out[0] - out[7]).abs().max() > 1e-9
    assert torch.allclose(out[0], out[1], atol=0.05)


def test_intensity_processor_reads_squared_amplitudes_and_refuses_tiles():
    config = PhotonicConfig.ideal("intensity")
    weight = np.random.default_rng(0).standard_normal((4, 6))
    x = torch.randn(5, 6, dtype=torch.float64)
    out = _matrix(weight, 8, config).apply(x)
    assert torch.allclose(out, (x @ torch.as_tensor(weight).T) ** 2, atol=1e-10)
    with pytest.raises(ValueError, match="tiles"):
        _matrix(np.ones((9, 4)), 8, config)


def test_nan_weight_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        _matrix(np.array([[1.0, np.nan]]), 4, PhotonicConfig.ideal())


def test_cost_model_components():
    config = PhotonicConfig()
    matrix = _matrix(np.random.default_rng(0).standard_normal((8, 8)), 8, config)
    cost = matrix.cost(batch=64, programmings=0, energy=EnergyConfig())
    assert cost.streaming_s == pytest.approx(64 / config.wdm.channels / config.detector.sample_rate_hz)
    assert cost.settling_s == 0.0
    assert 0 < cost.propagation_s < 1e-9
    assert cost.heater_power_w == pytest.approx(config.phase.p_pi_w * matrix.heater_phase_sum() / math.pi)
    assert cost.energy_j > 64 * cost.per_sample_energy_j
    reprogrammed = matrix.cost(batch=64, programmings=1, energy=EnergyConfig())
    assert reprogrammed.settling_s == pytest.approx(config.phase.settle_time_s)
    assert cost.formula().startswith("latency")
