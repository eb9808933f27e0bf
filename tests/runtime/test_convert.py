"""hal.runtime.convert: each coding round-trips within its documented error, and bad input is refused."""

from __future__ import annotations

import math

import pytest
import torch

from hal.capability import Paradigm
from hal.errors import InvalidInput
from hal.runtime import convert


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(40, 24, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("steps", [4, 32, 256])
def test_rate_coding_error_is_below_scale_over_steps(x, steps):
    train = convert.rate_encode(x, steps)
    assert train.positive.shape == (steps, *x.shape) and train.positive.dtype == torch.uint8
    assert int((train.positive & train.negative).sum()) == 0  # a value spikes on one train only
    y = train.decode()
    assert float((y - x).abs().max()) < train.scale / steps
    assert rel(y, x) <= convert.rate_error(x, steps)


def test_rate_error_shrinks_with_more_steps(x):
    assert rel(convert.rate_encode(x, 256).decode(), x) < rel(convert.rate_encode(x, 8).decode(), x)


def test_bernoulli_rate_coding_matches_its_rms_error(x):
    g = torch.Generator().manual_seed(0)
    err = rel(convert.rate_encode(x, 128, g).decode(), x)
    expected = convert.rate_error(x, 128, stochastic=True)
    assert 0.7 * expected < err < 1.3 * expected


@pytest.mark.parametrize("steps", [2, 16, 64])
def test_latency_coding_round_trip(x, steps):
    train = convert.latency_encode(x, steps)
    assert int(train.positive.sum() + train.negative.sum()) <= x.numel()  # at most one spike per value
    y = train.decode()
    assert float((y - x).abs().max()) <= train.scale / (2 * (steps - 1)) + 1e-6
    assert rel(y, x) <= convert.latency_error(x, steps) + 1e-6


def test_optical_amplitudes_have_unit_power_and_carry_the_scale(x):
    field = convert.optical_encode(x)
    assert torch.allclose(field.amplitudes.norm(dim=-1), torch.ones(x.shape[0]))
    assert rel(field.decode(), x) < 1e-6
    quantised = convert.optical_encode(x, dac_bits=6)
    assert float((quantised.amplitudes - field.amplitudes).abs().max()) <= 2.0**-6 + 1e-7
    assert 0 < rel(quantised.decode(), x) <= convert.optical_error(x, 6)
    assert torch.allclose(convert.intensity(field), x**2, atol=1e-5)


def test_qubit_angles_round_trip_and_refuse_out_of_range(x):
    enc = convert.angles_encode(x)
    assert float(enc.angles.min()) >= 0 and float(enc.angles.max()) <= math.pi + 1e-6
    assert rel(enc.decode(), x) < 1e-6
    z = torch.cos(enc.angles)
    assert rel(convert.expectation_decode(z, enc.lo, enc.hi), x) < 1e-4
    with pytest.raises(InvalidInput, match=r"\d+ value\(s\) lie outside"):
        convert.angles_encode(x, lo=-0.5, hi=0.5)
    with pytest.raises(InvalidInput, match="outside"):
        convert.expectation_decode(torch.tensor([1.01]), 0.0, 1.0)


def test_shot_noise_error_of_angle_decoding():
    g = torch.Generator().manual_seed(3)
    values = torch.full((4000,), 0.3)
    enc = convert.angles_encode(values, lo=0.0, hi=1.0)
    shots = 100
    p_one = (1 - torch.cos(enc.angles)) / 2  # probability of measuring |1>
    ones = torch.binomial(torch.full_like(p_one, float(shots)), p_one, generator=g)
    z = 1 - 2 * ones / shots
    decoded = convert.expectation_decode(z, 0.0, 1.0)
    assert abs(float(decoded.std()) / convert.angles_error(shots, 0.0, 1.0) - 1) < 0.15


def test_nan_is_refused_by_every_encoder():
    bad = torch.tensor([1.0, float("nan")])
    for encode in (convert.rate_encode, convert.latency_encode, convert.optical_encode, convert.angles_encode, convert.analog_encode):
        with pytest.raises(InvalidInput, match="NaN"):
            encode(bad)


def test_analog_round_trip_and_boundary_traffic():
    x = torch.randn(10)
    normalised, scale = convert.analog_encode(x)
    assert float(normalised.abs().max()) == pytest.approx(1.0)
    assert torch.allclose(convert.analog_decode(normalised, scale), x)
    assert convert.traffic_per_byte(Paradigm.DIGITAL, "in") == 0
    assert convert.traffic_per_byte(Paradigm.SPIKING, "in") > convert.traffic_per_byte(Paradigm.PHOTONIC, "in") > 0
