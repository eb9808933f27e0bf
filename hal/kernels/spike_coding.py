"""Tensor <-> spike-train coding: rate and latency codes and their decoders, as pure torch functions.

A spike train has time as its leading dimension: ``(T, *shape)``, one 0/1 entry per step (uint8).

- Rate code: a value ``x`` in ``[0, max_value]`` becomes ``floor(T * x / max_value)`` spikes, spread evenly
  (an integrate-and-fire encoder: a spike whenever the running sum ``t * r`` crosses an integer), so the count,
  and hence the decoded value, is exact to one spike: ``|decode(encode(x)) - x| < max_value / T``.
  ``poisson_encode`` is the stochastic variant (Bernoulli per step with probability ``r``).
- Latency code (time to first spike): larger values spike earlier; one spike at
  ``t = round((1 - r) * (T - 1))``; zero never spikes.

Negative values are refused (spikes carry no sign); code signed tensors as two trains, ``relu(x)`` and ``relu(-x)``.
Used by the runtime at paradigm boundaries and by the Loihi 2 driver at its edge.
"""

from __future__ import annotations

import torch


def _rates(x: torch.Tensor, max_value: float | torch.Tensor | None) -> torch.Tensor:
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("spike coding needs finite values; the tensor holds NaN/inf")
    if bool((x < 0).any()):
        raise ValueError("spike codes carry no sign: encode relu(x) and relu(-x) as two trains")
    scale = torch.as_tensor(x.max() if max_value is None else max_value, dtype=torch.float64, device=x.device)
    if bool((scale <= 0).any()):
        return torch.zeros_like(x, dtype=torch.float64)
    return (x.to(torch.float64) / scale).clamp(max=1.0)


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")


def rate_encode(x: torch.Tensor, steps: int, max_value: float | torch.Tensor | None = None, phase: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic rate code: (T, *x.shape) uint8 with ``T * x / max_value`` evenly spaced spikes (to within one).

    ``max_value`` (scalar or broadcastable tensor) maps to one spike per step; the default is ``x.max()``.
    Values above it saturate at one spike per step (``saturated`` counts them). ``phase`` (broadcastable, in
    [0, 1)) starts each encoder part-way to its first spike; ``golden_phases`` staggers a tensor's trains so that
    equal values do not all spike on the same steps.
    """
    _check_steps(steps)
    r = _rates(x, max_value)
    offset = torch.zeros((), dtype=torch.float64, device=x.device) if phase is None else phase.to(torch.float64).to(x.device)
    t = torch.arange(1, steps + 1, dtype=torch.float64, device=x.device).reshape(-1, *([1] * x.dim()))
    crossings = torch.floor(t * r + offset) - torch.floor((t - 1) * r + offset)
    return crossings.to(torch.uint8)


def golden_phases(shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """Phases frac(k * 0.618...) for the k-th element of ``shape``: a low-discrepancy spread over [0, 1)."""
    count = 1
    for size in shape:
        count *= size
    k = torch.arange(count, dtype=torch.float64, device=device)
    return torch.remainder(k * ((5**0.5 - 1) / 2), 1.0).reshape(shape)


def saturated(x: torch.Tensor, max_value: float | torch.Tensor) -> int:
    """How many values exceed ``max_value`` and so saturate a rate code at one spike per step."""
    return int((x > torch.as_tensor(max_value, dtype=x.dtype, device=x.device)).sum())


def poisson_encode(x: torch.Tensor, steps: int, max_value: float | torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stochastic rate code: each step spikes with probability ``x / max_value`` (seed with ``generator``)."""
    _check_steps(steps)
    r = _rates(x, max_value)
    draws = torch.rand((steps, *x.shape), generator=generator, dtype=torch.float64, device=x.device)
    return (draws < r).to(torch.uint8)


def rate_decode(spikes: torch.Tensor, max_value: float | torch.Tensor = 1.0, steps: int | None = None) -> torch.Tensor:
    """Spike counts over time (dim 0) scaled back: ``count / T * max_value`` (float32)."""
    count = spikes.to(torch.float64).sum(dim=0)
    total = spikes.shape[0] if steps is None else steps
    return (count / total * torch.as_tensor(max_value, dtype=torch.float64, device=spikes.device)).to(torch.float32)


def latency_encode(x: torch.Tensor, steps: int, max_value: float | torch.Tensor | None = None) -> torch.Tensor:
    """Time-to-first-spike code: one spike at ``round((1 - x / max_value) * (T - 1))``; zeros stay silent."""
    _check_steps(steps)
    r = _rates(x, max_value)
    when = torch.round((1.0 - r) * (steps - 1)).to(torch.int64)
    t = torch.arange(steps, device=x.device).reshape(-1, *([1] * x.dim()))
    return ((t == when) & (r > 0)).to(torch.uint8)


def latency_decode(spikes: torch.Tensor, max_value: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Invert ``latency_encode``: value from the first spike time; no spike decodes to 0 (float32)."""
    steps = spikes.shape[0]
    fired = spikes.to(torch.bool)
    any_spike = fired.any(dim=0)
    first = torch.argmax(fired.to(torch.uint8), dim=0).to(torch.float64)
    r = 1.0 - first / max(steps - 1, 1)
    value = torch.where(any_spike, r, torch.zeros_like(r)) * torch.as_tensor(max_value, dtype=torch.float64, device=spikes.device)
    return value.to(torch.float32)
