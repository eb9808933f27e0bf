"""The tensor-core precision policy of matmul, linear and conv2d: ``?matmul_precision=native|tf32|bf16|fp16|fp8``.

- ``native``: compute in the inputs' dtype; float32 runs in full IEEE float32 (TF32 off for cuBLAS and cuDNN,
  whatever the process-wide torch setting), float64 on the FP64 units.
- ``tf32``: float32 operands go through the tensor cores as TF32 (10-bit mantissa), float32 accumulation.
- ``bf16`` / ``fp16``: operands are rounded to bfloat16 / float16 (weights once, at prepare time), products
  accumulate in float32, the result is returned in the inputs' dtype.
- ``fp8``: operands are scaled per tensor to the e4m3 range (quantisation scale 448 / amax: weights once at prepare,
  inputs on every call) by hal.kernels.fp8 (on the GPU its Triton kernel: an amax pass and a cast pass writing
  straight into the zero-padded operand ``torch._scaled_mm`` reads; the torch reference inside compiled graphs),
  multiplied with ``torch._scaled_mm`` (fp8 tensor cores, float32 accumulation) and unscaled by the same call.
  Only matmul and linear have an fp8 path; conv2d runs in bf16 under this policy.

The result always has the inputs' dtype, so a policy changes speed and error, never the program's interface.

Each builder's float32 path sets the TF32/IEEE mode for its own call (``float32_mode``); ``set_float32_mode=False``
leaves that to the caller, which sets it once around a composition of several ops (a claimed subgraph, compiled
by ``torch.compile``, which cannot trace the mode switch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from hal.kernels import fp8 as fp8_cast

PRECISIONS = ("native", "tf32", "bf16", "fp16", "fp8")
FP8 = torch.float8_e4m3fn
#: torch._scaled_mm wants both operand dimensions (K, N) and the rows of A padded to multiples of 16.
FP8_ALIGNMENT = 16

#: Unit roundoff (half an ulp at 1) of each format the tensor cores read: float32 2^-24, tf32 2^-11 (10 stored mantissa
#: bits), bf16 2^-8, fp16 2^-11, fp8 e4m3 2^-4.
UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "tfloat32": 2.0**-11,
    "bfloat16": 2.0**-8,
    "float16": 2.0**-11,
    "float8_e4m3fn": 2.0**-4,
}
#: Minimum cc for each policy (bf16 tensor cores: Ampere 8.0; fp8: Ada 8.9 / Hopper 9.0; tf32: Ampere 8.0).
MIN_COMPUTE_CAPABILITY = {"native": (0, 0), "tf32": (8, 0), "bf16": (8, 0), "fp16": (7, 0), "fp8": (8, 9)}


def unsupported_reason(precision: str, compute_capability: tuple[int, int]) -> str | None:
    """Why a GPU of ``compute_capability`` cannot run ``precision`` (None if it can)."""
    need = MIN_COMPUTE_CAPABILITY[precision]
    if compute_capability < need:
        return f"matmul_precision={precision} needs tensor cores of compute capability {need[0]}.{need[1]} or newer; this GPU is {compute_capability[0]}.{compute_capability[1]}"
    return None


def compute_format(precision: str, dtype: torch.dtype, op_name: str = "matmul") -> str:
    """The format the tensor cores read for ``dtype`` operands of ``op_name`` under ``precision``."""
    name = str(dtype).removeprefix("torch.")
    if precision == "native" or (precision == "tf32" and dtype != torch.float32):
        return name
    if precision == "tf32":
        return "tfloat32"
    if precision == "fp8" and op_name in ("matmul", "linear"):
        return "float8_e4m3fn"
    return "float16" if precision == "fp16" else "bfloat16"


def expected_error(precision: str, dtype: torch.dtype, reduction_length: int, op_name: str = "matmul") -> float:
    """Expected relative Frobenius error of a product of random operands vs float64.

    Rounding both operands to the compute format adds sqrt(2/3) u_c (two independent uniform rounding errors);
    a length-K sum adds sqrt(K/3) u_acc (float32 accumulation on tensor cores, the dtype's own otherwise);
    rounding the result to the output dtype adds u_out / sqrt(3).
    """
    name = str(dtype).removeprefix("torch.")
    fmt = compute_format(precision, dtype, op_name)
    u_out = UNIT_ROUNDOFF.get(name, UNIT_ROUNDOFF["float32"])
    u_acc = UNIT_ROUNDOFF["float64"] if name == "float64" and fmt == "float64" else UNIT_ROUNDOFF["float32"]
    operand = math.sqrt(2 / 3) * UNIT_ROUNDOFF[fmt] if fmt != name else 0.0
    return operand + math.sqrt(reduction_length / 3) * u_acc + u_out / math.sqrt(3)


@contextmanager
def float32_mode(tf32: bool) -> Iterator[None]:
    """Run float32 matmuls and convolutions in TF32 (``True``) or full IEEE float32 (``False``), then restore.

    torch has no per-call switch, so this sets the process-wide ``fp32_precision`` flags for the duration of the
    call (about 2 us when they differ from the wanted mode); threads computing float32 meanwhile see it too.
    """
    want = "tf32" if tf32 else "ieee"
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    if before == (want, want):
        yield
        return
    matmul.fp32_precision, conv.fp32_precision = want, want
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


# --------------------------------------------------------------------------- fp8


def fp8_quantize(t: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor dynamic scaling of the 2-D ``t`` to e4m3: (data, dequantisation scale as a float32 0-d tensor),
    ``t ~= data * scale``.

    The quantisation scale is 448 / amax(|t|) (float64 division rounded once to float32; amax floored at
    448 * 2^-126, so an all-zero tensor keeps a finite scale), so the largest magnitude lands on the largest e4m3
    value and nothing saturates. Each ``t * s`` is rounded once to e4m3 from ``t``'s own dtype. ``out``: an e4m3
    tensor of ``t``'s shape to write into (any strides: a view into a zero-padded buffer); a new one otherwise.
    """
    out = torch.empty(t.shape, dtype=FP8, device=t.device) if out is None else out
    scale, _ = fp8_cast.quantize_into(t.detach(), out)
    return out, scale


def _aligned(n: int) -> int:
    return -(-n // FP8_ALIGNMENT) * FP8_ALIGNMENT


def _operand_buffer(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """An e4m3 (rows, cols) buffer padded to multiples of 16, the padding zero (it leaves the product unchanged)."""
    shape = (_aligned(rows), _aligned(cols))
    if shape == (rows, cols):
        return torch.empty(shape, dtype=FP8, device=device)
    return torch.zeros(shape, dtype=torch.uint8, device=device).view(FP8)


class Fp8Weight:
    """The right operand (K, N) of an fp8 product, quantised once and laid out column-major as _scaled_mm needs."""

    def __init__(self, b: torch.Tensor):
        self.k, self.n = b.shape
        # (K, N) column-major == the transpose of a row-major (N, K): the cast writes b's transpose view of it
        rows = _operand_buffer(self.n, self.k, b.device)
        _, self.scale = fp8_quantize(b, out=rows[: self.n, : self.k].t())
        self.data = rows.t()

    def left_multiply(self, a: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """a (M, K) @ this, in ``out_dtype`` (bf16, fp16 or float32)."""
        m = a.shape[0]
        qa = _operand_buffer(m, self.k, a.device)
        _, scale_a = fp8_quantize(a, out=qa[:m, : self.k])
        out = torch._scaled_mm(qa, self.data, scale_a=scale_a, scale_b=self.scale, out_dtype=out_dtype)
        return out[:m, : self.n]


def _fp8_out_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.float32


def fp8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (..., M, K) @ b (..., K, N) on fp8 tensor cores with per-tensor scales (batched operands: one product each)."""
    out_dtype = _fp8_out_dtype(a.dtype)
    if b.dim() == 2:
        flat = a.reshape(-1, a.shape[-1])
        return Fp8Weight(b).left_multiply(flat, out_dtype).reshape(*a.shape[:-1], b.shape[-1]).to(a.dtype)
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a_all = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b_all = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    outs = [Fp8Weight(bi).left_multiply(ai, out_dtype) for ai, bi in zip(a_all, b_all)]
    return torch.stack(outs).reshape(*batch, a.shape[-2], b.shape[-1]).to(a.dtype)


# --------------------------------------------------------------------------- op builders


def matmul_fn(precision: str, dtype: torch.dtype, *, set_float32_mode: bool = True) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The matmul of two ``dtype`` operands under ``precision``."""
    fmt = compute_format(precision, dtype, "matmul")
    if fmt == "float8_e4m3fn":
        return fp8_matmul
    if dtype == torch.float32 and fmt in ("float32", "tfloat32") and set_float32_mode:
        tf32 = fmt == "tfloat32"

        def matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            with float32_mode(tf32):
                return torch.matmul(a, b)

        return matmul_fp32
    if fmt in ("bfloat16", "float16") and fmt != str(dtype).removeprefix("torch."):
        compute = getattr(torch, fmt)
        return lambda a, b: torch.matmul(a.to(compute), b.to(compute)).to(dtype)
    return torch.matmul


def linear_fn(
    precision: str, dtype: torch.dtype, weight: torch.Tensor, bias: torch.Tensor | None, activation: str, *, set_float32_mode: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> activation(x @ weight.T + bias) with the weight prepared once for ``precision``."""
    relu = activation == "relu"
    fmt = compute_format(precision, dtype, "linear")
    if fmt == "float8_e4m3fn":
        prepared = Fp8Weight(weight.t())
        out_dtype = _fp8_out_dtype(dtype)

        def linear_fp8(x: torch.Tensor) -> torch.Tensor:
            y = prepared.left_multiply(x.reshape(-1, x.shape[-1]), out_dtype).reshape(*x.shape[:-1], prepared.n)
            y = y + bias.to(y.dtype) if bias is not None else y
            return (F.relu(y) if relu else y).to(dtype)

        return linear_fp8
    if dtype == torch.float32 and fmt in ("float32", "tfloat32") and set_float32_mode:
        tf32 = fmt == "tfloat32"

        def linear_fp32(x: torch.Tensor) -> torch.Tensor:
            with float32_mode(tf32):
                y = F.linear(x, weight, bias)
            return F.relu(y) if relu else y

        return linear_fp32
    if fmt in ("bfloat16", "float16") and fmt != str(dtype).removeprefix("torch."):
        compute = getattr(torch, fmt)
        w, b = weight.to(compute), bias.to(compute) if bias is not None else None

        def linear_cast(x: torch.Tensor) -> torch.Tensor:
            y = F.linear(x.to(compute), w, b)
            return (F.relu(y) if relu else y).to(dtype)

        return linear_cast

    def linear_native(x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, weight, bias)
        return F.relu(y) if relu else y

    return linear_native


def conv2d_fn(
    precision: str, dtype: torch.dtype, weight: torch.Tensor, bias: torch.Tensor | None, attrs: dict, *, set_float32_mode: bool = True,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """conv2d with the weight prepared once for ``precision`` (fp8 runs as bf16: there is no fp8 convolution here)."""
    stride, padding, dilation, groups = attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"]
    fmt = compute_format(precision, dtype, "conv2d")
    if dtype == torch.float32 and fmt in ("float32", "tfloat32") and set_float32_mode:
        tf32 = fmt == "tfloat32"

        def conv_fp32(x: torch.Tensor) -> torch.Tensor:
            with float32_mode(tf32):
                return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

        return conv_fp32
    compute = getattr(torch, fmt) if fmt in ("bfloat16", "float16") else dtype
    w, b = weight.to(compute), bias.to(compute) if bias is not None else None
    return lambda x: F.conv2d(x.to(compute), w, b, stride, padding, dilation, groups).to(dtype)
