"""Scaling to FP8, in plain torch: the reference the Triton kernels are tested against, and the path that runs
wherever they do not (CPU without the interpreter, torch.compile graphs, which inductor fuses itself).

Conventions (the same as torchao's float8 training and ``torch._scaled_mm``):

- the *quantisation scale* ``s`` multiplies the high-precision tensor before the cast, ``q = sat(x * s)``;
- the *dequantisation scale* ``1 / s`` is what travels with the FP8 data (``Fp8Tensor.scale``) and what
  ``torch._scaled_mm`` takes, so ``x ~= q * scale``;
- ``s = fmt.max / amax``, so the largest magnitude lands on the largest finite FP8 value and nothing saturates
  under dynamic scaling. ``amax`` is floored at ``fmt.max * 2^-126`` so ``s <= 2^126`` and ``1 / s`` stays a normal
  float32: an all-zero tensor gets a finite scale (its FP8 data is all zeros).
- power-of-two scales (``power_of_2=True``) round ``s`` down to a power of two: scaling and unscaling are then exact
  in binary floating point, and the largest magnitude lands in ``(fmt.max / 2, fmt.max]``.

Axes: ``axis=None`` is one scale per tensor (tensorwise); ``axis=k`` reduces ``amax`` along dimension ``k`` (kept,
size 1), one scale per slice: for a matmul operand that is the reduction dimension ("rowwise" scaling).

Non-finite values are never turned into finite ones: inf becomes NaN in both formats (E4M3 has no infinity, and
torch's own cast would saturate it to 448), finite values beyond the range saturate and are counted. A NaN or inf
in the input makes ``amax`` non-finite, so the dequantised result is NaN and gradient checks see it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hal.errors import InvalidInput
from hal.precision.formats import FloatFormat

#: ``s`` never exceeds 2^126, so ``1 / s`` is a normal float32 (smallest normal: 2^-126).
MAX_SCALE_EXPONENT = 126
#: The exponent field of a float32 (sign and mantissa cleared).
EXPONENT_MASK = 0x7F800000


class Fp8Tensor(NamedTuple):
    """FP8 data with the float32 dequantisation scale that broadcasts against it (``x ~= data * scale``).

    ``clipped`` counts the finite values that were out of range and saturated (int32, 0-d); always 0 under dynamic
    scaling, non-zero only when a scale came from elsewhere (delayed scaling's history).
    """

    data: torch.Tensor
    scale: torch.Tensor
    clipped: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """data * scale in ``dtype`` (computed in float32, or float64 when asked for)."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return (self.data.to(work) * self.scale.to(work)).to(dtype)


def amax(x: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """max |x| in float32, over the whole tensor (0-d) or along ``axis`` (kept, size 1); NaN propagates."""
    a = x.detach().abs()
    out = a.amax() if axis is None else a.amax(dim=axis, keepdim=True)
    return out.float()


def amax_floor(fmt: FloatFormat) -> float:
    """The smallest amax the scale is computed from: fmt.max * 2^-126, so the scale stays <= 2^126."""
    return fmt.max_value * 2.0**-MAX_SCALE_EXPONENT


def amax_to_scale(amax_value: torch.Tensor, fmt: FloatFormat, power_of_2: bool = False) -> torch.Tensor:
    """Quantisation scale ``fmt.max / max(amax, floor)`` in float32 (rounded down to a power of two if asked).

    Computed in float64 and rounded once to float32, so eager, compiled and Triton paths agree bit for bit.
    An infinite amax gives 0 (the data then dequantises to NaN); a NaN amax gives NaN.
    """
    a = amax_value.to(torch.float64)
    a = torch.where(a < amax_floor(fmt), torch.full_like(a, amax_floor(fmt)), a)  # keeps NaN (comparison is False)
    scale = (fmt.max_value / a).to(torch.float32)
    return round_down_to_power_of_2(scale) if power_of_2 else scale


def round_down_to_power_of_2(scale: torch.Tensor) -> torch.Tensor:
    """The largest power of two <= ``scale`` (positive normal float32), by clearing the mantissa bits.

    Exact, unlike exp2(floor(log2(s))) on hardware whose log2 is approximate; the Triton kernels do the same.
    """
    return (scale.view(torch.int32) & EXPONENT_MASK).view(torch.float32)


def dequant_scale(scale: torch.Tensor) -> torch.Tensor:
    """1 / scale in float32 (IEEE division: the Triton kernels compute the same bits)."""
    return 1.0 / scale


def cast_saturated(x: torch.Tensor, scale: torch.Tensor, fmt: FloatFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """``sat(x * scale)`` in ``fmt``'s dtype and the count of finite values that saturated.

    ``x * scale`` is formed in float32 whatever ``x``'s dtype (a bf16 product would round twice). inf becomes NaN.
    """
    y = x.float() * scale
    limit = fmt.max_value
    clipped = ((y.abs() > limit) & torch.isfinite(y)).sum(dtype=torch.int32)
    y = torch.where(torch.isinf(y), torch.full_like(y, float("nan")), y)
    y = torch.clamp(y, -limit, limit)  # NaN stays NaN
    return y.to(fmt.dtype), clipped


def quantize(x: torch.Tensor, fmt: FloatFormat, axis: int | None = None, power_of_2: bool = False,
             amax_value: torch.Tensor | None = None) -> Fp8Tensor:
    """Scale ``x`` into ``fmt`` (dynamic: from its own amax; or from ``amax_value``, e.g. a delayed history's max).

    Returns the FP8 data, the dequantisation scale (0-d, or size 1 along ``axis``) and the saturation count.
    """
    if fmt.dtype is None:
        raise InvalidInput(f"{fmt.name} has no torch dtype; use hal.precision.blockscaled for block formats")
    if axis is not None and amax_value is not None:
        raise InvalidInput("a given amax (delayed scaling) is per tensor; pass axis=None")
    a = amax(x, axis) if amax_value is None else amax_value.float()
    scale = amax_to_scale(a, fmt, power_of_2)
    data, clipped = cast_saturated(x, scale, fmt)
    return Fp8Tensor(data, dequant_scale(scale), clipped)
