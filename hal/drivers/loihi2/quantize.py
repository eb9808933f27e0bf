"""Loihi 2 number formats: 8-bit synaptic weights with a shared weight exponent, 13-bit bias mantissas with a
3-bit exponent, 17-bit threshold mantissas, 12-bit decays.

Two jobs, kept apart:

- ``hardware_weights``: what a neuro core actually stores for given integer weights. Lava's bit-accurate Dense
  model (``PyDenseModelBitAcc``, via ``clip_weights``/``truncate_weights`` in ``lava/utils/weightutils.py``)
  clips to the 8-bit range of the sign mode and, for mixed-sign matrices, drops the least significant bit
  (one bit is spent on the sign). The engine applies exactly this, and reports how many weights it changed.
- ``quantize_weights`` / ``quantize_bias``: turn float parameters into those integer formats with the error
  reported (or refused with ``strict=True``), for the driver and the ANN-to-SNN conversion.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from hal.errors import InvalidInput

#: Synaptic weight mantissa width (Intel Loihi 2 brief / lava Dense ``num_weight_bits`` default: 8).
WEIGHT_BITS = 8
#: Weight exponent range of a synapse group (Loihi ``weightExponent``: signed, -8..7).
WEIGHT_EXP_RANGE = (-8, 7)
#: Bias mantissa is a signed 13-bit integer, its exponent unsigned 3-bit (lava ``PyLifModelBitAcc`` docstring).
BIAS_MANT_RANGE = (-(2**12), 2**12 - 1)
BIAS_EXP_RANGE = (0, 7)
#: Threshold mantissa: unsigned 17-bit, MSB-aligned by << 6 (lava ``PyLifModelBitAcc``).
VTH_RANGE = (0, 2**17 - 1)
#: Current and voltage decays: unsigned 12-bit.
DECAY_RANGE = (0, 2**12 - 1)


class SignMode(enum.Enum):
    """How a weight matrix uses the sign bit; decides the 8-bit range a core stores."""

    EXCITATORY = "excitatory"  # all >= 0: 0..255
    INHIBITORY = "inhibitory"  # all <= 0: -255..0
    MIXED = "mixed"  # both signs: -256..254 in steps of 2 (one bit is the sign)

    @classmethod
    def of(cls, weights: torch.Tensor) -> SignMode:
        if bool((weights >= 0).all()):
            return cls.EXCITATORY
        if bool((weights <= 0).all()):
            return cls.INHIBITORY
        return cls.MIXED


@dataclass(frozen=True)
class HardwareWeights:
    """Integer weights as a core stores them, and how many of the given weights had to change to get there."""

    weights: torch.Tensor  # int32, same shape as given
    sign_mode: SignMode
    clipped: int  # weights outside the 8-bit range of the sign mode, set to the range end
    truncated: int  # mixed-sign weights whose least significant bit was dropped


def hardware_weights(weights: torch.Tensor, num_weight_bits: int = WEIGHT_BITS) -> HardwareWeights:
    """Clip integer ``weights`` to the 8-bit range of their sign mode and truncate to ``num_weight_bits``.

    Matches lava's bit-accurate Dense: clip to [-256, 255] (mixed), [0, 255] (excitatory) or [-255, 0]
    (inhibitory), then drop ``8 - num_weight_bits (+1 if mixed)`` low bits by an arithmetic shift (toward -inf
    on the magnitude's sign-adjusted value, as the hardware does).
    """
    if weights.is_floating_point() and not bool((weights == weights.round()).all()):
        raise InvalidInput("hardware_weights takes integer weights; quantise float weights with quantize_weights first")
    if not 1 <= num_weight_bits <= WEIGHT_BITS:
        raise InvalidInput(f"num_weight_bits must be 1..{WEIGHT_BITS}, got {num_weight_bits}")
    mode = SignMode.of(weights)
    flip = mode is SignMode.INHIBITORY
    w = -weights if flip else weights
    low = -(2**WEIGHT_BITS) if mode is SignMode.MIXED else 0
    high = 2**WEIGHT_BITS - 1
    clipped = int(((w < low) | (w > high)).sum())
    clipped_w = w.clamp(low, high).to(torch.int32)  # 9-bit values: int32 keeps large matrices small
    drop = WEIGHT_BITS - num_weight_bits + (1 if mode is SignMode.MIXED else 0)
    truncated_w = (clipped_w >> drop) << drop
    truncated = int((truncated_w != clipped_w).sum())
    if flip:
        truncated_w = -truncated_w
    return HardwareWeights(truncated_w, mode, clipped, truncated)


@dataclass(frozen=True)
class QuantizedWeights:
    """Float weights as Loihi integers: ``value ~= mantissa * 2**weight_exp * unit``.

    ``unit`` is the float value of one integer step at ``weight_exp = 0`` (the caller's scale), ``rel_error``
    the relative Frobenius error ||w - w_q|| / ||w|| the quantisation introduced.
    """

    mantissa: torch.Tensor  # int64, valid hardware weights (hardware_weights leaves them unchanged)
    weight_exp: int
    unit: float
    rel_error: float
    clipped: int

    def dequantize(self) -> torch.Tensor:
        return self.mantissa.to(torch.float64) * (2.0**self.weight_exp) * self.unit


def _mantissa_limit(mode: SignMode) -> int:
    """Largest magnitude representable without clipping, and the step, in each sign mode."""
    return 254 if mode is SignMode.MIXED else 255


def quantize_weights(weights: torch.Tensor, unit: float, *, max_rel_error: float | None = None) -> QuantizedWeights:
    """Express ``weights / unit`` as 8-bit mantissas times ``2**weight_exp``, choosing the smallest exponent that fits.

    With ``max_rel_error`` set (strict mode), a quantisation error above it raises InvalidInput naming the
    error and the fix; otherwise the error is reported in the result.
    """
    if not bool(torch.isfinite(weights).all()):
        raise InvalidInput("weights hold NaN/inf; Loihi stores finite integers only")
    if unit <= 0:
        raise InvalidInput(f"the weight unit must be positive, got {unit}")
    w = weights.detach().to(torch.float64) / unit
    mode = SignMode.of(w)
    limit = _mantissa_limit(mode)
    step = 2 if mode is SignMode.MIXED else 1
    peak = float(w.abs().max()) if w.numel() else 0.0
    exp = WEIGHT_EXP_RANGE[0]
    while exp < WEIGHT_EXP_RANGE[1] and peak / 2.0**exp > limit:
        exp += 1
    scaled = w / 2.0**exp
    mantissa = (torch.round(scaled / step) * step).to(torch.int64)
    clipped = int((mantissa.abs() > limit).sum())
    mantissa = mantissa.clamp(-limit if mode is not SignMode.EXCITATORY else 0, limit)
    if mode is SignMode.MIXED:
        mantissa = mantissa.clamp(-(2**WEIGHT_BITS), 2**WEIGHT_BITS - 2)
    result = QuantizedWeights(mantissa, exp, unit, 0.0, clipped)
    norm = float(torch.linalg.vector_norm(weights.to(torch.float64)))
    error = float(torch.linalg.vector_norm(result.dequantize() - weights.to(torch.float64))) / norm if norm > 0 else 0.0
    if max_rel_error is not None and error > max_rel_error:
        raise InvalidInput(
            f"8-bit weight quantisation error {error:.3g} exceeds the strict limit {max_rel_error:.3g} "
            f"({clipped} weight(s) clipped); rescale the layer or lift strict mode"
        )
    return QuantizedWeights(mantissa, exp, unit, error, clipped)


@dataclass(frozen=True)
class QuantizedBias:
    """A per-neuron bias as 13-bit mantissa << 3-bit exponent (in voltage units), with its relative error."""

    mantissa: torch.Tensor  # int64
    exponent: int
    rel_error: float
    clipped: int


def quantize_bias(bias_v: torch.Tensor) -> QuantizedBias:
    """Express a per-step voltage increment (integer voltage units, float allowed) as ``mant << exp``."""
    if not bool(torch.isfinite(bias_v).all()):
        raise InvalidInput("bias holds NaN/inf; Loihi stores finite integers only")
    b = bias_v.detach().to(torch.float64)
    peak = float(b.abs().max()) if b.numel() else 0.0
    exp = BIAS_EXP_RANGE[0]
    while exp < BIAS_EXP_RANGE[1] and peak / 2.0**exp > BIAS_MANT_RANGE[1]:
        exp += 1
    mant = torch.round(b / 2.0**exp)
    clipped = int(((mant < BIAS_MANT_RANGE[0]) | (mant > BIAS_MANT_RANGE[1])).sum())
    mant = mant.clamp(*BIAS_MANT_RANGE).to(torch.int64)
    norm = float(torch.linalg.vector_norm(b))
    error = float(torch.linalg.vector_norm(mant.to(torch.float64) * 2.0**exp - b)) / norm if norm > 0 else 0.0
    return QuantizedBias(mant, exp, error, clipped)


def check_range(name: str, value: int, bounds: tuple[int, int]) -> int:
    """Refuse a hardware field outside its bit width, naming the field and its range."""
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise InvalidInput(f"{name}={value!r} is outside its Loihi 2 range {bounds[0]}..{bounds[1]}; choose a value in range")
    return value
