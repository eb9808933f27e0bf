"""PCM device physics on tensors of conductances (microsiemens): programming noise, drift, 1/f read noise.

Pure functions of torch tensors and a ``torch.Generator`` so that they run vectorised on CPU or CUDA and repeat
exactly under a seed. The statistics are those of ``config.PcmStatistics`` (Nandakumar et al., ICECS 2019).
"""

from __future__ import annotations

import math

import torch

from hal.drivers.memristor.config import PcmStatistics


def _normal(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def programming_sigma_us(g_target_us: torch.Tensor, g_max_us: float, pcm: PcmStatistics) -> torch.Tensor:
    """Std (uS) of the conductance one programming attempt reaches around ``g_target_us``."""
    c0, c1, c2 = pcm.programming_coefficients_us
    x = g_target_us / g_max_us
    return (c0 + c1 * x + c2 * x * x) * (g_max_us / pcm.programming_reference_g_max_us)


def program_attempt(g_target_us: torch.Tensor, sigma_us: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One programming attempt: the target plus Gaussian noise of std ``sigma_us`` (from ``programming_sigma_us``),
    never negative."""
    return (g_target_us + sigma_us * _normal(g_target_us, generator)).clamp_(min=0.0)


def drift_exponent_statistics(g_target_us: torch.Tensor, g_max_us: float, pcm: PcmStatistics) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and device-to-device std of the drift exponent at each target conductance."""
    log_g = torch.log((g_target_us.abs() / g_max_us).clamp(min=1e-7))
    mu = (pcm.drift_mu_slope * log_g + pcm.drift_mu_intercept).clamp(*pcm.drift_mu_range)
    sigma = (pcm.drift_sigma_slope * log_g + pcm.drift_sigma_intercept).clamp(*pcm.drift_sigma_range)
    return mu, sigma


def drift_exponents(g_target_us: torch.Tensor, g_max_us: float, pcm: PcmStatistics, generator: torch.Generator) -> torch.Tensor:
    """Per-device drift exponents nu ~ |N(mu(g), sigma(g))| (device-to-device variation of the power law)."""
    mu, sigma = drift_exponent_statistics(g_target_us, g_max_us, pcm)
    return (mu + sigma * _normal(g_target_us, generator)).abs()


def drift_factor(nu: torch.Tensor, age_s: float, pcm: PcmStatistics) -> torch.Tensor:
    """``(t / t0)^-nu`` with t = t0 + age: 1 right after programming (age 0), decaying with log time."""
    ratio = (pcm.drift_reference_time_s + age_s) / pcm.drift_reference_time_s
    return torch.exp(-nu * math.log(ratio))


def read_noise_sigma_after(g_us: torch.Tensor, g_max_us: float, elapsed_s: float, pcm: PcmStatistics) -> torch.Tensor:
    """Relative std of the 1/f noise integrated over ``elapsed_s`` seconds since programming (grows as sqrt(log t))."""
    q = (pcm.read_noise_coefficient / ((g_us.abs() / g_max_us) ** pcm.read_noise_exponent).clamp(min=pcm.read_noise_floor)).clamp(max=pcm.read_noise_max)
    return q * math.sqrt(max(math.log((elapsed_s + pcm.read_time_s) / (2 * pcm.read_time_s)), 0.0))


def read_noise_sigma(g_us: torch.Tensor, g_max_us: float, age_s: float, pcm: PcmStatistics) -> torch.Tensor:
    """Relative 1/f noise std of a read ``age_s`` after the drift reference time t0 (the model's time origin)."""
    return read_noise_sigma_after(g_us, g_max_us, pcm.drift_reference_time_s + age_s, pcm)


def conductance_at(
    g_programmed_us: torch.Tensor,
    nu: torch.Tensor | None,
    age_s: float,
    g_max_us: float,
    pcm: PcmStatistics,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Conductances ``age_s`` seconds after programming: drift (if ``nu`` is given), then 1/f noise (if a generator is)."""
    g = g_programmed_us if nu is None else g_programmed_us * drift_factor(nu, age_s, pcm)
    if generator is not None:
        g = g + g.abs() * read_noise_sigma(g_programmed_us, g_max_us, age_s, pcm) * _normal(g, generator)
    return g.clamp(min=0.0)
