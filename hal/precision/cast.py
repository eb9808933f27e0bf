"""Casting 2-D tensors to FP8 for a scaled matmul: one entry point, two backends that give the same bits.

``quantize_2d`` picks the Triton kernels (hal.kernels.fp8) where they run (a CUDA tensor, or a CPU tensor under
TRITON_INTERPRET=1) and plain torch (hal.precision.scaling) elsewhere, and inside torch.compile graphs, where
inductor fuses the torch ops into its own kernels. It can write the FP8 data row-major, column-major or both in one
pass, and return the amax of what it cast (delayed scaling's history).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hal.errors import DTypeError, InvalidInput, ShapeError
from hal.kernels import fp8 as fp8_kernels
from hal.precision import scaling
from hal.precision.formats import FloatFormat
from hal.precision.scaling import Fp8Tensor

BACKENDS = ("auto", "triton", "torch")


class Quantized2d(NamedTuple):
    """The FP8 forms of one 2-D tensor that share a scale: ``row`` (row-major) and/or ``col`` (column-major),
    and ``amax`` of the tensor (float32 0-d) when it was asked for."""

    row: Fp8Tensor | None
    col: Fp8Tensor | None
    amax: torch.Tensor | None


def resolve_backend(x: torch.Tensor, backend: str) -> str:
    """"triton" or "torch" for casting ``x``; "auto" picks Triton where it runs, outside torch.compile graphs."""
    if backend not in BACKENDS:
        raise InvalidInput(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    runs = fp8_kernels.triton_runs(x.device) and x.dtype in fp8_kernels.KERNEL_DTYPES
    if backend == "auto":
        return "triton" if runs and not torch.compiler.is_compiling() else "torch"
    if not runs:
        raise InvalidInput(
            f"backend='triton' cannot cast a {x.dtype} tensor on {x.device}: the kernel needs triton, a CUDA tensor "
            "(or TRITON_INTERPRET=1 set before triton is imported, for CPU tensors) and float16/bfloat16/float32 "
            "input; use backend='auto' or 'torch'")
    return "triton"


def _check(x: torch.Tensor, fmt: FloatFormat, axis: int | None) -> None:
    if x.dim() != 2:
        raise ShapeError(f"quantize_2d takes a 2-D tensor, got shape {tuple(x.shape)}; reshape to (-1, features)")
    if not x.dtype.is_floating_point or x.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        raise DTypeError(f"cannot scale a {x.dtype} tensor to FP8: pass float16, bfloat16, float32 or float64")
    if fmt.dtype is None:
        raise InvalidInput(f"{fmt.name} is not an FP8 storage format; use e4m3 or e5m2")
    if axis not in (None, 0, 1):
        raise InvalidInput(f"axis must be None (one scale per tensor), 0 or 1, got {axis!r}")


def _col_major(t: torch.Tensor) -> torch.Tensor:
    return t.t().contiguous().t()


def quantize_2d(x: torch.Tensor, fmt: FloatFormat, *, axis: int | None = None, power_of_2: bool = False,
                row: bool = True, col: bool = False, amax_value: torch.Tensor | None = None,
                return_amax: bool = False, backend: str = "auto") -> Quantized2d:
    """Scale the 2-D ``x`` into ``fmt`` and lay it out for ``torch._scaled_mm``.

    ``axis``: None for one scale per tensor, or the axis the scale is shared along (the matmul's reduction axis).
    ``amax_value``: take the tensorwise scale from this amax instead of ``x``'s own (delayed scaling); values beyond
    the range then saturate and are counted in ``clipped``. ``return_amax``: also return ``x``'s amax (one pass with
    the cast on the Triton path). ``row`` / ``col``: which layouts to write.
    """
    _check(x, fmt, axis)
    if not (row or col):
        raise InvalidInput("ask for at least one layout (row=True and/or col=True)")
    if axis is not None and amax_value is not None:
        raise InvalidInput("a given amax_value (delayed scaling) is per tensor; pass axis=None")
    if resolve_backend(x, backend) == "torch":
        return _quantize_torch(x, fmt, axis, power_of_2, row, col, amax_value, return_amax)
    return _quantize_triton(x, fmt, axis, power_of_2, row, col, amax_value, return_amax)


def _quantize_torch(x, fmt, axis, power_of_2, row, col, amax_value, return_amax) -> Quantized2d:
    q = scaling.quantize(x, fmt, axis, power_of_2, amax_value)
    own_amax = scaling.amax(x) if return_amax else None
    col_q = Fp8Tensor(_col_major(q.data), q.scale, q.clipped) if col else None
    return Quantized2d(q if row else None, col_q, own_amax)


def _quantize_triton(x, fmt, axis, power_of_2, row, col, amax_value, return_amax) -> Quantized2d:
    n, m = x.shape
    out_row = torch.empty((n, m), dtype=fmt.dtype, device=x.device) if row else None
    out_col = torch.empty((m, n), dtype=fmt.dtype, device=x.device).t() if col else None
    if axis is None:
        result = fp8_kernels.cast_tensorwise(x, fmt.dtype, out_row=out_row, out_col=out_col, amax_value=amax_value,
                                             power_of_2=power_of_2, return_amax=return_amax)
        own_amax = result.amax
    else:
        result = fp8_kernels.cast_rowwise(x, fmt.dtype, axis, out_row=out_row, out_col=out_col, power_of_2=power_of_2)
        own_amax = scaling.amax(x) if return_amax else None
    return Quantized2d(Fp8Tensor(out_row, result.scale, result.clipped) if row else None,
                       Fp8Tensor(out_col, result.scale, result.clipped) if col else None, own_amax)
