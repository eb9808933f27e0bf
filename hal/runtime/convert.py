"""Boundary converters between torch tensors and the native data of non-digital paradigms.

Every vocabulary op takes and returns tensors on every device: each driver converts at its own edge.
These converters are the same conversions as pure functions, for three uses:

* the planner's cost of crossing a paradigm boundary (``traffic_per_byte``): how much host memory
  traffic an encode or decode takes, turned into latency and energy in ``hal.runtime.costs``;
* users and drivers that chain paradigm-native ops (spike trains into a ``lif_layer``) and need the
  encoded form and its inverse;
* documentation of the error each coding adds (``*_error`` functions, checked by the tests).

Codings (each with an inverse and a documented error):

=========== =============================== ===========================================================
paradigm    tensor -> native                error of decode(encode(x)) per element
=========== =============================== ===========================================================
spiking     rate coding, ``steps`` T        regular trains: < scale / T; Bernoulli trains:
                                            std scale * sqrt(p (1 - p) / T)  (Rueckauer et al. 2017)
spiking     latency (time-to-first-spike)   <= scale / (2 (T - 1))
photonic    amplitudes, unit power per row, <= 2**-bits per amplitude times the row scale (exact
            optional DAC of ``bits``        without a DAC); photodetected intensity has no inverse
quantum     RY angles in [0, pi]            exact from angles; from a <Z> estimate of S shots:
                                            std (hi - lo) / (pi sqrt(S))
analog      max-abs normalisation to the    exact (the DAC's own quantisation is the driver's)
            DAC range, scale carried
=========== =============================== ===========================================================

The spike codes are ``hal.kernels.spike_coding``'s (shared with the Loihi 2 driver). Signed values are
carried as two spike trains (relu(x), relu(-x)), as a pi phase on an optical amplitude, and
as the (lo, hi) range of an angle map; no coding clips silently: values outside an angle range
are refused, and the count of values that would clip is reported by ``OutOfRange``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hal.capability import Paradigm
from hal.errors import InvalidInput
from hal.kernels import spike_coding

#: Default spike-train length: the rate-code error bound scale / T is 3.1 % of full scale at T = 32.
DEFAULT_STEPS = 32


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InvalidInput(f"{what} takes a floating-point torch.Tensor, got {type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise InvalidInput(f"{what}: {bad} NaN/inf value(s) cannot be encoded; clean or mask them first")


def _check_steps(steps: int, least: int) -> None:
    if not isinstance(steps, int) or steps < least:
        raise InvalidInput(f"a spike train needs steps >= {least} (an int), got {steps!r}")


# --------------------------------------------------------------------------- spikes


@dataclass(frozen=True)
class SpikeTrain:
    """A signed tensor as two spike trains ``(steps, *shape)`` (uint8): one for relu(x), one for relu(-x).

    ``scale`` is the value of one spike per step (rate) or of a spike at step 0 (latency); ``coding`` is
    ``"rate"`` or ``"latency"``. The codes are ``hal.kernels.spike_coding``'s; spikes carry no sign, so a
    signed value needs the second train (two populations, as in Rueckauer et al. 2017).
    """

    positive: torch.Tensor
    negative: torch.Tensor
    scale: float
    coding: str

    @property
    def steps(self) -> int:
        return int(self.positive.shape[0])

    def decode(self) -> torch.Tensor:
        """The tensor this train stands for (float32)."""
        return rate_decode(self) if self.coding == "rate" else latency_decode(self)


def _scale_of(x: torch.Tensor) -> float:
    scale = float(x.abs().max()) if x.numel() else 0.0
    return scale if scale > 0 else 1.0


def rate_encode(x: torch.Tensor, steps: int = DEFAULT_STEPS, generator: torch.Generator | None = None) -> SpikeTrain:
    """Rate coding: each value becomes floor(T |x| / max|x|) evenly spaced spikes (on the train of its sign).

    Without a generator the trains are regular: the error per element is below scale / T. With a
    generator each step spikes with probability |x| / scale (Bernoulli, the usual Poisson-like code):
    unbiased, standard deviation scale * sqrt(p (1 - p) / T).
    """
    _check_finite(x, "rate_encode")
    _check_steps(steps, 1)
    scale = _scale_of(x)
    if generator is None:
        pos, neg = spike_coding.rate_encode(x.clamp(min=0), steps, scale), spike_coding.rate_encode((-x).clamp(min=0), steps, scale)
    else:
        pos = spike_coding.poisson_encode(x.clamp(min=0), steps, scale, generator)
        neg = spike_coding.poisson_encode((-x).clamp(min=0), steps, scale, generator)
    return SpikeTrain(pos, neg, scale, "rate")


def rate_decode(train: SpikeTrain) -> torch.Tensor:
    """Inverse of rate coding: spike count / T * scale, positive train minus negative train."""
    return spike_coding.rate_decode(train.positive, train.scale) - spike_coding.rate_decode(train.negative, train.scale)


def rate_error(x: torch.Tensor, steps: int = DEFAULT_STEPS, stochastic: bool = False) -> float:
    """Expected relative Frobenius error of rate_decode(rate_encode(x)) (regular: worst case; stochastic: rms)."""
    scale = _scale_of(x)
    norm = float(torch.linalg.vector_norm(x.double())) or 1.0
    if stochastic:
        p = (x.abs() / scale).double()
        return scale * math.sqrt(float((p * (1 - p)).sum()) / steps) / norm
    return scale / steps * math.sqrt(x.numel()) / norm


def latency_encode(x: torch.Tensor, steps: int = DEFAULT_STEPS) -> SpikeTrain:
    """Latency (time-to-first-spike) coding: one spike at step round((1 - |x| / scale) (T - 1)); zeros stay silent.

    The error per element is at most scale / (2 (T - 1)).
    """
    _check_finite(x, "latency_encode")
    _check_steps(steps, 2)
    scale = _scale_of(x)
    pos, neg = spike_coding.latency_encode(x.clamp(min=0), steps, scale), spike_coding.latency_encode((-x).clamp(min=0), steps, scale)
    return SpikeTrain(pos, neg, scale, "latency")


def latency_decode(train: SpikeTrain) -> torch.Tensor:
    """Inverse of latency coding: scale * (1 - t / (T - 1)) from the first spike of each train."""
    return spike_coding.latency_decode(train.positive, train.scale) - spike_coding.latency_decode(train.negative, train.scale)


def latency_error(x: torch.Tensor, steps: int = DEFAULT_STEPS) -> float:
    """Worst-case relative Frobenius error of latency_decode(latency_encode(x))."""
    norm = float(torch.linalg.vector_norm(x.double())) or 1.0
    return _scale_of(x) / (2 * (steps - 1)) * math.sqrt(x.numel()) / norm


# --------------------------------------------------------------------------- light


@dataclass(frozen=True)
class OpticalField:
    """Field amplitudes ``(..., modes)`` of unit power per row, and the per-row scale (the row's L2 norm).

    A mesh is lossless at best, so the input power is normalised and the scale carried past the mesh.
    """

    amplitudes: torch.Tensor
    scale: torch.Tensor

    def decode(self) -> torch.Tensor:
        return optical_decode(self)


def optical_encode(x: torch.Tensor, dac_bits: int | None = None) -> OpticalField:
    """Normalise each row (last dimension) to unit power; optionally quantise amplitudes to a ``dac_bits`` DAC.

    Negative values are amplitudes with a pi phase. Without a DAC the round trip is exact to float32
    rounding; with one each amplitude is off by at most 2**-dac_bits (half a step of a signed DAC over [-1, 1]).
    """
    _check_finite(x, "optical_encode")
    if dac_bits is not None and (not isinstance(dac_bits, int) or dac_bits < 1):
        raise InvalidInput(f"dac_bits must be a positive int or None, got {dac_bits!r}")
    scale = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    amplitudes = x / scale
    if dac_bits is not None:
        levels = 2 ** (dac_bits - 1)
        amplitudes = torch.round(amplitudes * levels) / levels
    return OpticalField(amplitudes, scale)


def optical_decode(field_: OpticalField) -> torch.Tensor:
    """Inverse of optical_encode: amplitudes times the carried scale."""
    return field_.amplitudes * field_.scale


def optical_error(x: torch.Tensor, dac_bits: int | None) -> float:
    """Worst-case relative Frobenius error of the optical round trip (0 without a DAC)."""
    if dac_bits is None:
        return 0.0
    rows = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
    scales = torch.linalg.vector_norm(rows.double(), dim=-1)
    worst = float(torch.sqrt((scales**2).sum() * rows.shape[-1])) * 2.0 ** (-dac_bits)
    return worst / (float(torch.linalg.vector_norm(x.double())) or 1.0)


def intensity(field_: OpticalField) -> torch.Tensor:
    """What a photodetector reads: |a|^2 times the carried power scale. Signs are lost: this has no inverse."""
    return field_.amplitudes.abs() ** 2 * field_.scale**2


# --------------------------------------------------------------------------- qubits


@dataclass(frozen=True)
class QubitAngles:
    """RY rotation angles in [0, pi], one per value, and the (lo, hi) range mapped onto them."""

    angles: torch.Tensor
    lo: float
    hi: float

    def decode(self) -> torch.Tensor:
        return angles_decode(self)


def angles_encode(x: torch.Tensor, lo: float | None = None, hi: float | None = None) -> QubitAngles:
    """Angle encoding: theta = pi (x - lo) / (hi - lo), so RY(theta)|0> has <Z> = cos(theta).

    ``lo``/``hi`` default to the tensor's min/max. Values outside a given range are refused (InvalidInput
    with the count), never clipped.
    """
    _check_finite(x, "angles_encode")
    lo = float(x.min()) if lo is None else float(lo)
    hi = float(x.max()) if hi is None else float(hi)
    if not hi > lo:
        hi = lo + 1.0
    outside = int(((x < lo) | (x > hi)).sum())
    if outside:
        raise InvalidInput(f"angles_encode: {outside} value(s) lie outside [{lo:g}, {hi:g}]; widen lo/hi (the map would have to clip them)")
    return QubitAngles(math.pi * (x - lo) / (hi - lo), lo, hi)


def angles_decode(encoded: QubitAngles) -> torch.Tensor:
    """Inverse of angles_encode."""
    return encoded.lo + encoded.angles * (encoded.hi - encoded.lo) / math.pi


def expectation_decode(z: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Values from measured <Z> = cos(theta) estimates (e.g. from shots): theta = arccos(z), then angles_decode.

    Estimates a hair outside [-1, 1] (shot noise) are refused with their count rather than clipped.
    """
    outside = int(((z < -1) | (z > 1)).sum())
    if outside:
        raise InvalidInput(f"expectation_decode: {outside} <Z> value(s) outside [-1, 1]; they are not expectations of Z")
    return angles_decode(QubitAngles(torch.arccos(z), lo, hi))


def angles_error(shots: int, lo: float, hi: float) -> float:
    """Standard deviation per value of expectation_decode from S shots: (hi - lo) / (pi sqrt(S)).

    derived: std(<Z>) = sin(theta) / sqrt(S) and d theta = d<Z> / sin(theta), so the sines cancel.
    """
    if shots < 1:
        raise InvalidInput(f"shots must be >= 1, got {shots}")
    return (hi - lo) / (math.pi * math.sqrt(shots))


# --------------------------------------------------------------------------- analog


def analog_encode(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Max-abs normalisation to the DAC range [-1, 1]; returns (normalised, scale). Exact inverse: analog_decode."""
    _check_finite(x, "analog_encode")
    scale = _scale_of(x)
    return x / scale, scale


def analog_decode(normalised: torch.Tensor, scale: float) -> torch.Tensor:
    return normalised * scale


# --------------------------------------------------------------------------- costs at a boundary


@dataclass(frozen=True)
class Coding:
    """How a paradigm's data crosses the host: bytes the encode and decode touch per tensor byte.

    ``traffic_per_byte`` counts host memory traffic per float32 input byte: reading the tensor, the
    reductions for the scale, and writing the encoded form (two uint8 spike trains: 2 T bytes per
    value = T/2 per float32 input byte).
    """

    name: str
    encode_traffic_per_byte: float
    decode_traffic_per_byte: float
    formula: str


CODINGS: dict[Paradigm, Coding] = {
    Paradigm.SPIKING: Coding(
        "rate coding",
        2 + DEFAULT_STEPS / 2,
        1 + DEFAULT_STEPS / 2,
        f"encode: read x twice (scale, rates) + write 2 trains of T={DEFAULT_STEPS} uint8 steps per value; decode: read the trains, write x",
    ),
    Paradigm.PHOTONIC: Coding("unit-power amplitudes", 3, 2, "encode: read x for the row norms, read again and write amplitudes; decode: read, write"),
    Paradigm.QUANTUM: Coding("RY angles", 4, 2, "encode: min/max pass, read and write angles, refuse-outside pass; decode: read, write"),
    Paradigm.ANALOG: Coding("max-abs DAC normalisation", 3, 2, "encode: max-abs pass, read and write; decode: read, write"),
}


def traffic_per_byte(paradigm: Paradigm, direction: str) -> float:
    """Host memory traffic per tensor byte to encode into ``paradigm`` ("in") or decode out of it ("out"); 0 for digital."""
    coding = CODINGS.get(paradigm)
    if coding is None:
        return 0.0
    return coding.encode_traffic_per_byte if direction == "in" else coding.decode_traffic_per_byte
