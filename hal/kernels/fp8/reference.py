"""FP8 scaling in plain torch: the reference the Triton kernels are tested against, and the path that runs wherever
they do not (a CPU without the interpreter, float64 input, torch.compile graphs, which inductor fuses itself).

Conventions (the same as torchao's float8 training and ``torch._scaled_mm``):

- the *quantisation scale* ``s`` multiplies the high-precision tensor before the cast, ``q = sat(x * s)``;
- the *dequantisation scale* ``1 / s`` is what travels with the FP8 data and what ``torch._scaled_mm`` takes;
- ``s = fmt_max / amax`` (computed in float64, rounded once to float32), ``amax`` floored at ``fmt_max * 2^-126`` so
  ``s <= 2^126`` and ``1 / s`` stays a normal float32: an all-zero tensor gets a finite scale;
- power-of-two scales round ``s`` down to a power of two by clearing its mantissa bits (exact, unlike
  ``exp2(floor(log2(s)))`` on hardware whose log2 is approximate).

One rounding: each ``x * s`` is rounded to FP8 once, from ``x``'s own dtype. Rounding the product to float32 first and
then to FP8 rounds twice, which is wrong where the float32 product lands exactly on a midpoint between two FP8 values
that the exact product is not on (``3 * 0.35416669`` in bfloat16 x float32 is ``1.0625 + 2^-24``: one rounding to E4M3
gives 1.125, two give 1.0). So the product is rounded to float32 *to odd* (the float32 neighbour with an odd last
bit when the product is inexact), and that to FP8 to nearest even: since float32 carries more than two bits beyond
FP8's mantissa, this equals one rounding of the exact product. The rounding direction needs the exact product's
error, found without an FMA (torch has none) and unchanged if a compiler contracts a multiply and an add into one:
for bfloat16 / float16 inputs in float32, splitting the scale into two 12-bit halves (each partial product is
exact); for float32 / float64 inputs in float64, splitting ``x`` into a 24-bit head and its tail.

Non-finite values are never turned into finite ones: an infinite ``x``, or any ``x`` under a non-finite scale,
becomes NaN in both formats (E4M3 has no infinity, and torch's own cast would saturate inf to 448); finite values
beyond the range saturate and are counted (``clipped``: the float32-rounded product beyond fmt_max), also where the
product overflows float32.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from hal.kernels.fp8.errors import Fp8CastError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
#: ``s`` never exceeds 2^126, so ``1 / s`` is a normal float32 (smallest normal: 2^-126).
MAX_SCALE_EXPONENT = 126
#: The exponent field of a float32 (sign and mantissa cleared).
EXPONENT_MASK = 0x7F800000
#: Clears the low 12 of a float32's 23 mantissa bits: the head keeps 12 significant bits, the tail at most 12.
FLOAT32_HEAD_MASK = -(1 << 12)
#: Clears the low 29 of a float64's 52 mantissa bits: the head keeps 24 significant bits, the tail at most 29.
FLOAT64_HEAD_MASK = -(1 << 29)
NARROW_INPUTS = (torch.float16, torch.bfloat16)


class Fp8Constants(NamedTuple):
    """What the casts need of an FP8 format: its largest finite value, stored mantissa bits and exponent bias."""

    max_value: float
    mantissa_bits: int
    bias: int


def fp8_constants(dtype: torch.dtype) -> Fp8Constants:
    """The constants of ``torch.float8_e4m3fn`` (448, 3, 7) or ``torch.float8_e5m2`` (57344, 2, 15), from torch.finfo."""
    if dtype not in FP8_DTYPES:
        raise Fp8CastError(f"{dtype} is not an FP8 format the casts write; use torch.float8_e4m3fn or torch.float8_e5m2")
    info = torch.finfo(dtype)
    return Fp8Constants(float(info.max), round(-math.log2(info.eps)), 1 - round(math.log2(info.smallest_normal)))


def amax(x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """max |x| in float32, over the whole tensor (0-d) or along ``axis`` (kept, size 1); NaN propagates."""
    a = x.detach().abs()
    out = a.amax() if axis is None else a.amax(dim=axis, keepdim=True)
    return out.float()


def amax_floor(dtype: torch.dtype) -> float:
    """The smallest amax a scale is computed from: fmt_max * 2^-126, so the scale stays <= 2^126."""
    return fp8_constants(dtype).max_value * 2.0**-MAX_SCALE_EXPONENT


def round_down_to_power_of_2(scale: torch.Tensor) -> torch.Tensor:
    """The largest power of two <= ``scale`` (positive normal float32), by clearing the mantissa bits."""
    return (scale.view(torch.int32) & EXPONENT_MASK).view(torch.float32)


def amax_to_scale(amax_value: torch.Tensor, dtype: torch.dtype, power_of_2: bool = False) -> torch.Tensor:
    """Quantisation scale ``fmt_max / max(amax, floor)`` in float32 (rounded down to a power of two if asked).

    Computed in float64 and rounded once to float32, so eager, compiled and Triton paths agree bit for bit.
    An infinite amax gives 0 (the data then dequantises to NaN); a NaN amax gives NaN.
    """
    floor = amax_floor(dtype)
    a = amax_value.to(torch.float64)
    a = torch.where(a < floor, torch.full_like(a, floor), a)  # keeps NaN (the comparison is False)
    scale = (fp8_constants(dtype).max_value / a).to(torch.float32)
    return round_down_to_power_of_2(scale) if power_of_2 else scale


def dequant_scale(scale: torch.Tensor) -> torch.Tensor:
    """1 / scale in float32 (IEEE division: the Triton kernels compute the same bits)."""
    return 1.0 / scale


def _head(v: torch.Tensor, int_dtype: torch.dtype, mask: int) -> torch.Tensor:
    """``v`` with its low mantissa bits cleared (the bits ``mask`` clears); ``v - head`` is exact."""
    return (v.view(int_dtype) & mask).view(v.dtype)


def scaled_product(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, residual)``: ``hi`` is ``x * scale`` rounded to nearest float32, ``residual`` has the sign of the
    exact ``x * scale - hi`` (0 when ``hi`` is exact). Not meaningful where ``hi`` is not finite."""
    if x.dtype in NARROW_INPUTS:  # <= 11 significant bits: each product with a 12-bit half of s is exact in float32
        xf = x.float()
        s_head = _head(scale, torch.int32, FLOAT32_HEAD_MASK)
        hi = xf * scale
        return hi, (xf * s_head - hi) + xf * (scale - s_head)
    xd, sd = x.double(), scale.double()  # scale holds 24 bits: head * s (48 bits) and tail * s (<= 53) are exact
    x_head = _head(xd, torch.int64, FLOAT64_HEAD_MASK)
    hi64 = xd * sd
    error64 = (x_head * sd - hi64) + (xd - x_head) * sd  # the exact x * s - hi64 (Dekker)
    hi = hi64.float()
    return hi, (hi64 - hi.double()) + error64


def round_to_odd(hi: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The float32 neighbour of ``hi + residual`` whose last bit is odd when ``residual`` is not 0, else ``hi``.

    ``hi`` is one of the two float32 neighbours of the exact value; if its last bit is even, the other one is a step
    of one unit in the last place towards the residual. Zero, inf and NaN are left as they are (a product that
    rounds to float32 zero is far below every FP8 subnormal)."""
    bits = hi.view(torch.int32)
    inexact = (residual != 0) & torch.isfinite(hi) & (hi != 0) & ((bits & 1) == 0)
    away_from_zero = (residual > 0) == (hi > 0)
    step = torch.where(away_from_zero, torch.ones_like(bits), -torch.ones_like(bits))
    return torch.where(inexact, bits + step, bits).view(torch.float32)


def cast_saturated(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``sat(x * scale)`` rounded once to ``dtype`` and the count of finite values that saturated (int32, 0-d)."""
    limit = fp8_constants(dtype).max_value
    hi, residual = scaled_product(x, scale)
    clipped = ((hi.abs() > limit) & torch.isfinite(x)).sum(dtype=torch.int32)
    y = round_to_odd(hi, residual)
    poisoned = torch.isinf(x) | ~torch.isfinite(scale)  # a NaN amax's power-of-two scale is inf
    y = torch.where(poisoned, torch.full_like(y, float("nan")), y)
    y = torch.clamp(y, -limit, limit)  # NaN stays NaN; a float32 overflow of a finite x saturates
    return y.to(dtype), clipped


def quantize(x: torch.Tensor, dtype: torch.dtype, axis: int | None = None, power_of_2: bool = False,
             amax_value: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale ``x`` into ``dtype`` (dynamic: from its own amax, per tensor or along ``axis``; or from ``amax_value``,
    e.g. a delayed history's max): ``(data, dequantisation scale, clipped)``, with ``x ~= data * scale``."""
    if axis is not None and amax_value is not None:
        raise Fp8CastError("a given amax (delayed scaling) is per tensor; pass axis=None")
    a = amax(x, axis) if amax_value is None else amax_value.float()
    scale = amax_to_scale(a, dtype, power_of_2)
    data, clipped = cast_saturated(x, scale, dtype)
    return data, dequant_scale(scale), clipped
