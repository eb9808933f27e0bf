"""Triton device functions both scan kernels use: softplus and its derivative, and the launch helpers."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

SOFTPLUS_THRESHOLD = tl.constexpr(20.0)  # linear above it, as mamba_ssm's kernels and the float64 reference


@triton.jit
def log1p_small(e):
    """log(1 + e) for 0 <= e <= 1, accurate for tiny e (Goldberg's trick: log(w) * e / (w - 1) with w = 1 + e)."""
    w = 1.0 + e
    return tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))


@triton.jit
def softplus(x):
    """log(1 + exp(x)), linear above the threshold; stable for very negative x."""
    return tl.where(x <= SOFTPLUS_THRESHOLD, tl.maximum(x, 0.0) + log1p_small(tl.exp(-tl.abs(x))), x)


@triton.jit
def softplus_grad(x):
    """d softplus / dx at the pre-activation x (1 above the threshold)."""
    return tl.where(x <= SOFTPLUS_THRESHOLD, tl.sigmoid(x), 1.0)


def zero_buffers(*names: str):
    """A Config pre_hook zeroing the named accumulation buffers before every launch (autotune trials included)."""
    def hook(nargs: dict) -> None:
        for name in names:
            if nargs.get(name) is not None:
                nargs[name].zero_()
    return hook


def next_pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, triton.next_power_of_2(n))


def dummy(device: torch.device) -> torch.Tensor:
    """A placeholder pointer for an absent optional input (the kernel never reads it: its HAS_* flag is off)."""
    return torch.empty(1, device=device, dtype=torch.float32)


@triton.jit
def mm(a, b, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """tl.dot, with both operands upcast to fp32 when DOT_F32 is set: only under the CPU interpreter, whose bf16 dot
    is wrong (seen with triton 3.9); the operands were already rounded to their I/O dtype, so results match a GPU."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=DOT_PRECISION)
