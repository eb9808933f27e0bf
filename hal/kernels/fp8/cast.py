"""FP8 casts of 2-D tensors with the amax fused in: the Triton launch sequences, and ``quantize_into``, which casts
with the kernels where they run and with the torch reference elsewhere (the same bits either way).

- ``cast_tensorwise``: one scale for the tensor. Dynamic: an amax pass (atomic max across programs) and a cast pass
  that computes the scale in-kernel from it (no host sync); with a given ``amax_value`` (delayed scaling), the cast
  pass only, which can also reduce the amax of what it casts.
- ``cast_rowwise``: one scale per slice along ``axis`` (amax, scale and cast in one program per slice).

Both write into FP8 tensors the caller allocated, row-major and/or column-major (any strides: a view into a
zero-padded buffer works), and can cast the result of the op before them (``op``: SiLU·mul or RMSNorm, see
hal.kernels.fp8.triton_cast). They need ``backend.kernel_takes(x)``; callers check it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hal.kernels.fp8 import reference
from hal.kernels.fp8.backend import kernel_takes
from hal.kernels.fp8.errors import Fp8CastError

BACKENDS = ("auto", "triton", "torch")


class CastResult(NamedTuple):
    """What a cast returns besides its FP8 data: the float32 dequantisation ``scale`` (0-d, or size 1 along the
    reduced axis), ``clipped`` (int32 0-d: finite values that saturated) and the ``amax`` of the cast tensor when
    it was asked for (float32 0-d, else None)."""

    scale: torch.Tensor
    clipped: torch.Tensor
    amax: torch.Tensor | None


def _common(x: torch.Tensor, dtype: torch.dtype, power_of_2: bool, out_row, out_col) -> dict:
    c = reference.fp8_constants(dtype)
    return dict(fmt_max=c.max_value, amax_floor=reference.amax_floor(dtype), mantissa_bits=c.mantissa_bits,
                bias=c.bias, power_of_2=power_of_2, out_row=out_row, out_col=out_col,
                clipped=torch.zeros((), dtype=torch.int32, device=x.device))


def cast_tensorwise(x: torch.Tensor, dtype: torch.dtype, *, out_row: torch.Tensor | None = None,
                    out_col: torch.Tensor | None = None, amax_value: torch.Tensor | None = None,
                    power_of_2: bool = False, return_amax: bool = False, **op_args) -> CastResult:
    """Cast the 2-D ``x`` (or ``op(x, ...)``, see ``op_args``) into ``out_row`` / ``out_col`` with one scale.

    ``op_args``: ``op`` (triton_cast.IDENTITY, SILU_MUL, RMSNORM), ``x2``, ``norm_weight``, ``eps``, ``rstd_out``.
    """
    from hal.kernels.fp8 import triton_cast as k

    common = _common(x, dtype, power_of_2, out_row, out_col)
    op_args.setdefault("op", k.IDENTITY)
    rstd_out = op_args.pop("rstd_out", None)
    device = x.device
    scale = torch.empty((), dtype=torch.float32, device=device)
    seen = None  # the amax the cast pass reduces (delayed scaling's history entry)
    if amax_value is None:
        amax_in = torch.zeros((), dtype=torch.float32, device=device)
        k.launch(x, mode=k.MODE_AMAX, reduce_dim=1, amax_in=amax_in, amax_out=None, scale_out=scale, **common,
                 **op_args)
        own_amax = amax_in if return_amax else None
    else:
        amax_in = amax_value.detach().float().reshape(())
        seen = torch.zeros((), dtype=torch.float32, device=device) if return_amax else None
        own_amax = seen
    k.launch(x, mode=k.MODE_CAST, reduce_dim=1, amax_in=amax_in, amax_out=seen, scale_out=scale, rstd_out=rstd_out,
             **common, **op_args)
    return CastResult(scale, common["clipped"], own_amax)


def cast_rowwise(x: torch.Tensor, dtype: torch.dtype, axis: int, *, out_row: torch.Tensor | None = None,
                 out_col: torch.Tensor | None = None, power_of_2: bool = False, **op_args) -> CastResult:
    """Cast the 2-D ``x`` (or ``op(x, ...)``) with one scale per slice along ``axis`` (the scale is shared along it);
    the returned scale has size 1 along ``axis``."""
    from hal.kernels.fp8 import triton_cast as k

    common = _common(x, dtype, power_of_2, out_row, out_col)
    op_args.setdefault("op", k.IDENTITY)
    scale = torch.empty(x.shape[1 - axis], dtype=torch.float32, device=x.device)
    k.launch(x, mode=k.MODE_ROWWISE, reduce_dim=axis, amax_in=None, amax_out=None, scale_out=scale, **common,
             **op_args)
    return CastResult(scale.unsqueeze(axis), common["clipped"], None)


def quantize_into(x: torch.Tensor, out: torch.Tensor, *, power_of_2: bool = False,
                  backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Cast the 2-D ``x`` into the FP8 tensor ``out`` (``x``'s shape, any strides) with one dynamic scale from ``x``'s
    own amax; returns (dequantisation scale, float32 0-d; clipped, int32 0-d, always 0 under dynamic scaling).

    ``backend``: "triton" (the kernels: an amax pass and a cast pass, no host sync), "torch" (the reference, then a
    copy into ``out``) or "auto" (the kernels where ``backend.kernel_takes(x)``, else the reference).
    """
    if backend not in BACKENDS:
        raise Fp8CastError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if x.dim() != 2 or not x.dtype.is_floating_point or x.dtype in reference.FP8_DTYPES:
        raise Fp8CastError(f"quantize_into casts a 2-D float16/bfloat16/float32/float64 tensor, got a {x.dtype} "
                           f"tensor of shape {tuple(x.shape)}")
    if out.dtype not in reference.FP8_DTYPES or out.shape != x.shape or out.device != x.device:
        raise Fp8CastError(f"out must be a float8_e4m3fn or float8_e5m2 tensor of x's shape {tuple(x.shape)} on "
                           f"{x.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    kernel = kernel_takes(x)
    if backend == "triton" and not kernel:
        raise Fp8CastError(f"the Triton cast cannot take a {x.dtype} tensor on {x.device} here: it needs triton, a "
                           "CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors), float16/bfloat16/float32 input, and "
                           "not a torch.compile graph; use backend='auto' or 'torch'")
    if kernel and backend != "torch":
        result = cast_tensorwise(x, out.dtype, out_row=out, power_of_2=power_of_2)
        return result.scale, result.clipped
    data, scale, clipped = reference.quantize(x, out.dtype, power_of_2=power_of_2)
    out.copy_(data)
    return scale, clipped
