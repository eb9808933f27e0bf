"""Scaling to FP8 in plain torch, in terms of hal.precision's formats: the reference the Triton kernels are tested
against, and the path that runs wherever they do not (CPU without the interpreter, torch.compile graphs, which
inductor fuses itself). The math is hal.kernels.fp8.reference's; this module names it by ``FloatFormat``.

Conventions (the same as torchao's float8 training and ``torch._scaled_mm``):

- the *quantisation scale* ``s`` multiplies the high-precision tensor before the cast, ``q = sat(x * s)``;
- the *dequantisation scale* ``1 / s`` is what travels with the FP8 data (``Fp8Tensor.scale``) and what
  ``torch._scaled_mm`` takes, so ``x ~= q * scale``;
- ``s = fmt.max / amax``, so the largest magnitude lands on the largest finite FP8 value and nothing saturates
  under dynamic scaling. ``amax`` is floored at ``fmt.max * 2^-126`` so ``s <= 2^126`` and ``1 / s`` stays a normal
  float32: an all-zero tensor gets a finite scale (its FP8 data is all zeros).
- power-of-two scales (``power_of_2=True``) round ``s`` down to a power of two: scaling and unscaling are then exact
  in binary floating point, and the largest magnitude lands in ``(fmt.max / 2, fmt.max]``.
- each ``x * s`` is rounded once to FP8, from ``x``'s own dtype (never through a bf16 or float32 rounding of the
  product first, which would round twice: see hal.kernels.fp8.reference).

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
from hal.kernels.fp8 import reference
from hal.precision.formats import FloatFormat


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


amax = reference.amax
round_down_to_power_of_2 = reference.round_down_to_power_of_2
dequant_scale = reference.dequant_scale


def _storage(fmt: FloatFormat) -> torch.dtype:
    if fmt.dtype is None:
        raise InvalidInput(f"{fmt.name} has no torch dtype; use hal.precision.blockscaled for block formats")
    return fmt.dtype


def amax_floor(fmt: FloatFormat) -> float:
    """The smallest amax the scale is computed from: fmt.max * 2^-126, so the scale stays <= 2^126."""
    return reference.amax_floor(_storage(fmt))


def amax_to_scale(amax_value: torch.Tensor, fmt: FloatFormat, power_of_2: bool = False) -> torch.Tensor:
    """Quantisation scale ``fmt.max / max(amax, floor)`` in float32 (rounded down to a power of two if asked).

    Computed in float64 and rounded once to float32, so eager, compiled and Triton paths agree bit for bit.
    An infinite amax gives 0 (the data then dequantises to NaN); a NaN amax gives NaN.
    """
    return reference.amax_to_scale(amax_value, _storage(fmt), power_of_2)


def cast_saturated(x: torch.Tensor, scale: torch.Tensor, fmt: FloatFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """``sat(x * scale)`` rounded once to ``fmt``'s dtype and the count of finite values that saturated.

    inf becomes NaN; a finite value whose product overflows float32 saturates (and is counted).
    """
    return reference.cast_saturated(x, scale, _storage(fmt))


def quantize(x: torch.Tensor, fmt: FloatFormat, axis: int | None = None, power_of_2: bool = False,
             amax_value: torch.Tensor | None = None) -> Fp8Tensor:
    """Scale ``x`` into ``fmt`` (dynamic: from its own amax; or from ``amax_value``, e.g. a delayed history's max).

    Returns the FP8 data, the dequantisation scale (0-d, or size 1 along ``axis``) and the saturation count.
    """
    dtype = _storage(fmt)
    if axis is not None and amax_value is not None:
        raise InvalidInput("a given amax (delayed scaling) is per tensor; pass axis=None")
    return Fp8Tensor(*reference.quantize(x, dtype, axis, power_of_2, amax_value))
