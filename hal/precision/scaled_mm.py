"""The scaled FP8 matmul: ``(a.data @ b.data) * a.scale * b.scale`` with float32 accumulation.

On a CUDA GPU it is ``torch._scaled_mm`` (FP8 tensor cores; the operands are zero-padded to multiples of 16, which
the kernels require and which leaves the product unchanged). On the CPU it is ``torch._scaled_mm`` where this torch
build has a CPU kernel (probed once per process), else an exact emulation: cast the FP8 data up to float32, multiply
in float32, scale. The two CPU forms differ only in float32 summation order (FP8 x FP8 products are exact in
float32): the same bits in bfloat16, a few float32 ulps apart in float32 (tests/precision/test_scaled_mm.py); inside
torch.compile graphs the CPU takes the emulation (the probe is not traced).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from hal.errors import DTypeError, ShapeError
from hal.precision.hardware import require_fp8
from hal.precision.scaling import Fp8Tensor

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
#: torch._scaled_mm on CUDA needs every dimension of both operands to be a multiple of 16.
CUDA_ALIGNMENT = 16


@functools.cache
def cpu_scaled_mm_runs() -> bool:
    """Whether this torch build has a CPU kernel for torch._scaled_mm (tensorwise and rowwise scales)."""
    a = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        one = torch.ones((), dtype=torch.float32)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return True


def emulated_scaled_mm(a: Fp8Tensor, b: Fp8Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """The scaled matmul by definition: FP8 values up-cast to float32, float32 matmul, scales applied after."""
    return ((a.data.float() @ b.data.float()) * a.scale * b.scale).to(out_dtype)


def _check(a: Fp8Tensor, b: Fp8Tensor, out_dtype: torch.dtype) -> tuple[int, int, int]:
    if a.data.dim() != 2 or b.data.dim() != 2 or a.data.shape[1] != b.data.shape[0]:
        raise ShapeError(f"scaled_mm multiplies (M, K) by (K, N); got {tuple(a.data.shape)} and {tuple(b.data.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise DTypeError(f"scaled_mm writes bfloat16, float16 or float32, not {out_dtype}")
    m, k = a.data.shape
    n = b.data.shape[1]
    if not (a.scale.dim() == 0 or tuple(a.scale.shape) == (m, 1)) or not (b.scale.dim() == 0 or tuple(b.scale.shape) == (1, n)):
        raise ShapeError(f"scales must be per tensor or per row of a / per column of b; got {tuple(a.scale.shape)} "
                         f"for a {tuple(a.data.shape)} and {tuple(b.scale.shape)} for b {tuple(b.data.shape)}")
    return m, k, n


def scaled_mm(a: Fp8Tensor, b: Fp8Tensor, out_dtype: torch.dtype, use_fast_accum: bool = False) -> torch.Tensor:
    """a (M, K) @ b (K, N) in ``out_dtype``; ``a`` row-major, ``b`` column-major (as torch._scaled_mm wants).

    Scales: 0-d (tensorwise) or (M, 1) for ``a`` and (1, N) for ``b`` (rowwise; the dimension says which). ``use_fast_accum`` lets Hopper
    accumulate in its faster, less precise mode (torchao's default for the forward product); ignored on the CPU.
    """
    m, k, n = _check(a, b, out_dtype)
    device = a.data.device
    if device.type == "cuda":
        if not torch.compiler.is_compiling():  # checked eagerly; a compiled graph was built where it passed
            require_fp8(device)
        return _cuda_scaled_mm(a, b, out_dtype, use_fast_accum, m, k, n)
    if not torch.compiler.is_compiling() and cpu_scaled_mm_runs():
        return torch._scaled_mm(a.data, b.data, scale_a=_mm_scale(a.scale, m, 1), scale_b=_mm_scale(b.scale, 1, n),
                                out_dtype=out_dtype)
    return emulated_scaled_mm(a, b, out_dtype)


def _mm_scale(scale: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A scale in the shape torch._scaled_mm takes: 0-d for tensorwise, (rows, cols) with unit inner stride for
    rowwise (a transposed (1, N) scale is (N, 1) with stride (1, N), which torch._scaled_mm refuses)."""
    return scale if scale.dim() == 0 else scale.reshape(-1).view(rows, cols)


def _pad(n: int) -> int:
    return -(-n // CUDA_ALIGNMENT) * CUDA_ALIGNMENT


def _cuda_scaled_mm(a: Fp8Tensor, b: Fp8Tensor, out_dtype: torch.dtype, use_fast_accum: bool,
                    m: int, k: int, n: int) -> torch.Tensor:
    rowwise = a.scale.dim() != 0 or b.scale.dim() != 0
    if rowwise and out_dtype != torch.bfloat16:
        raise DTypeError(f"rowwise-scaled FP8 matmuls on CUDA write bfloat16 (torch._scaled_mm's rowwise kernel), "
                         f"not {out_dtype}; run the model in bfloat16 or use recipe='tensorwise'")
    pm, pk, pn = _pad(m), _pad(k), _pad(n)
    a_data, b_data = a.data, b.data
    scale_a, scale_b = _mm_scale(a.scale, m, 1), _mm_scale(b.scale, 1, n)
    if (pm, pk) != (m, k):
        a_data = F.pad(a_data.view(torch.uint8), (0, pk - k, 0, pm - m)).view(a.data.dtype)
    if (pk, pn) != (k, n):
        b_data = F.pad(b_data.t().view(torch.uint8), (0, pk - k, 0, pn - n)).view(b.data.dtype).t()
    if rowwise and pm != m:
        scale_a = F.pad(scale_a, (0, 0, 0, pm - m), value=1.0)
    if rowwise and pn != n:
        scale_b = F.pad(scale_b, (0, pn - n), value=1.0)
    out = torch._scaled_mm(a_data, b_data, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype,
                           use_fast_accum=use_fast_accum)
    return out[:m, :n] if (pm, pn) != (m, n) else out
