"""Tests of hal/kernels/spike_coding.py: rate and latency codes round-trip within their resolution."""

from __future__ import annotations

import pytest
import torch

from hal.kernels.spike_coding import golden_phases, latency_decode, latency_encode, poisson_encode, rate_decode, rate_encode, saturated


def test_rate_code_counts_are_exact_to_one_spike() -> None:
    x = torch.rand(5, 7, generator=torch.Generator().manual_seed(0)) * 3
    spikes = rate_encode(x, 100, max_value=3.0)
    assert spikes.shape == (100, 5, 7) and spikes.dtype == torch.uint8
    assert torch.equal(spikes.sum(0).long(), torch.floor(x.double() / 3.0 * 100).long())
    assert (rate_decode(spikes, 3.0) - x).abs().max() < 3.0 / 100


def test_phases_keep_counts_within_one_and_spread_spikes() -> None:
    x = torch.full((64,), 0.25)
    aligned = rate_encode(x, 64, 1.0)
    staggered = rate_encode(x, 64, 1.0, golden_phases((64,)))
    assert aligned.sum(1).max() == 64  # every train spikes on the same steps
    assert staggered.sum(1).max() < 32
    assert ((staggered.sum(0).long() - 16).abs() <= 1).all()


def test_poisson_code_is_seeded_and_unbiased() -> None:
    x = torch.full((2000,), 0.3)
    a = poisson_encode(x, 50, 1.0, generator=torch.Generator().manual_seed(1))
    b = poisson_encode(x, 50, 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert abs(float(rate_decode(a).mean()) - 0.3) < 0.01


def test_latency_code_round_trips() -> None:
    x = torch.tensor([0.0, 0.1, 0.5, 1.0])
    spikes = latency_encode(x, 11, 1.0)
    assert spikes.sum(0).tolist() == [0, 1, 1, 1]
    assert torch.allclose(latency_decode(spikes, 1.0), x, atol=0.05)


def test_bad_inputs_are_refused_and_saturation_counted() -> None:
    with pytest.raises(ValueError, match="sign"):
        rate_encode(torch.tensor([-1.0]), 10)
    with pytest.raises(ValueError, match="NaN"):
        rate_encode(torch.tensor([float("nan")]), 10)
    assert saturated(torch.tensor([0.5, 1.5, 2.0]), 1.0) == 2
