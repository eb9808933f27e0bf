"""Sample operands for vocabulary ops and the error measure the conformance kit and `hal demo` share (no pytest here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Sample:
    """Inputs, bound parameters and attributes for one op call."""

    inputs: list[torch.Tensor]
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def default_sample(name: str, dtype: torch.dtype, gen: torch.Generator) -> Sample:
    """Small random operands (<= 32 features) for a vocabulary op."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    if name == "matmul":
        return Sample([randn(4, 16), randn(16, 8)])
    if name == "linear":
        return Sample([randn(4, 16)], {"weight": randn(8, 16) / 4, "bias": randn(8)})
    if name == "conv2d":
        return Sample([randn(2, 3, 8, 8)], {"weight": randn(4, 3, 3, 3) / 3, "bias": randn(4)}, {"padding": (1, 1)})
    if name in ("add", "mul"):
        return Sample([randn(4, 8), randn(8)])
    if name in ("relu", "gelu", "silu", "softmax"):
        return Sample([randn(4, 8)])
    if name == "layer_norm":
        return Sample([randn(4, 16)], {"weight": randn(16), "bias": randn(16)})
    if name == "rms_norm":
        return Sample([randn(4, 16)], {"weight": randn(16)})
    if name == "attention":
        return Sample([randn(1, 4, 8, 16), randn(1, 2, 8, 16), randn(1, 2, 8, 16)], attrs={"causal": True})
    if name == "selective_scan":
        u, delta = randn(2, 4, 6), torch.rand(2, 4, 6, generator=gen, dtype=torch.float64).to(dtype) * 0.5
        a = -torch.rand(4, 3, generator=gen, dtype=torch.float64).to(dtype)
        return Sample([u, delta, a, randn(2, 3, 6), randn(2, 3, 6), randn(4)])
    raise KeyError(name)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_F / ||ref||_F in float64 (NaN in ``out`` gives inf)."""
    out64, ref64 = out.detach().cpu().to(torch.float64), ref.detach().cpu().to(torch.float64)
    if not bool(torch.isfinite(out64).all()):
        return float("inf")
    return float(torch.linalg.vector_norm(out64 - ref64) / torch.linalg.vector_norm(ref64).clamp_min(1e-300))
