"""Detection of the mesh's output fields: coherent (homodyne) or intensity, shot and thermal noise, ADC.

Fields are in normalised amplitude units: amplitude 1 at a detector carries the signal power
``signal_power_w`` (set by the required SNR, see ``Receiver``). With a local oscillator of power P_LO on
a balanced pair, the difference photocurrent for a field E is 2 R sqrt(P_LO P_sig) Re(E e^{-i psi});
its noise has variance 2 q R P_LO B (LO shot noise) + i_n^2 B (TIA). In amplitude units the noise is

    sigma_amp^2 = (2 q R P_LO B + i_n^2 B) / (4 R^2 P_LO P_sig)

(as P_LO grows this tends to h nu B / (2 eta P_sig), the vacuum-noise limit of homodyne detection).
Intensity detection measures |E|^2 P_sig with shot noise 2 q R P B and the same TIA noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hal.drivers.photonic.imperfections import ELEMENTARY_CHARGE_C, DetectorConfig

DETECTIONS = ("coherent", "intensity")


@dataclass
class Detection:
    """Digitised detector readings and how many of them the ADC clipped."""

    values: torch.Tensor
    clipped: int


class Receiver:
    """One detector (pair) + TIA + ADC per output port, with the signal power the SNR requirement sets."""

    def __init__(self, config: DetectorConfig, noise_on: bool = True):
        if config.detection not in DETECTIONS:
            raise ValueError(f"unknown detection {config.detection!r}; use one of {', '.join(DETECTIONS)}")
        self.config = config
        self.noise_on = noise_on
        self.signal_power_w = self._signal_power_for_snr()

    # ---- noise budget
    def _shot_variance_coeff(self) -> float:
        """Shot-noise current variance per watt on the detector: 2 q R B (A^2 / W)."""
        c = self.config
        return 2 * ELEMENTARY_CHARGE_C * c.responsivity_a_per_w * c.bandwidth_hz

    def _thermal_variance(self) -> float:
        """TIA noise current variance i_n^2 B (A^2)."""
        c = self.config
        return c.tia_noise_a_per_rthz**2 * c.bandwidth_hz

    def _signal_power_for_snr(self) -> float:
        """Signal power per port (W) at which a full-amplitude output reaches ``snr_db`` with both noises present."""
        c = self.config
        sigma = 10 ** (-c.snr_db / 20)
        r = c.responsivity_a_per_w
        if c.detection == "coherent":
            return (self._shot_variance_coeff() * c.lo_power_w + self._thermal_variance()) / (4 * r**2 * c.lo_power_w * sigma**2)
        # intensity: sigma^2 (R P)^2 = 2 q R B P + i_n^2 B, a quadratic in P
        a, b, k = (sigma * r) ** 2, -self._shot_variance_coeff(), -self._thermal_variance()
        return (-b + math.sqrt(b * b - 4 * a * k)) / (2 * a)

    def noise_std(self, intensity: torch.Tensor | None = None) -> torch.Tensor | float:
        """Noise standard deviation in normalised units (amplitude for coherent, power for intensity readings)."""
        if not self.noise_on:
            return 0.0
        c = self.config
        r, p = c.responsivity_a_per_w, self.signal_power_w
        thermal = self._thermal_variance() if c.thermal_noise else 0.0
        if c.detection == "coherent":
            shot = self._shot_variance_coeff() * c.lo_power_w if c.shot_noise else 0.0
            return math.sqrt((shot + thermal) / (4 * r**2 * c.lo_power_w * p))
        assert intensity is not None
        shot = self._shot_variance_coeff() * p * intensity if c.shot_noise else torch.zeros_like(intensity)
        return torch.sqrt(shot + thermal) / (r * p)

    # ---- detection
    def detect(self, field: torch.Tensor, lo_phase: torch.Tensor, full_scale: torch.Tensor, generator: torch.Generator | None) -> Detection:
        """Read fields (vectors, ports) against each vector's LO phase (vectors,) with ADC full scales broadcastable to the fields.

        Coherent: Re(E e^{-i lo_phase}) in [-full_scale, full_scale]. Intensity: |E|^2 in [0, full_scale].
        Readings beyond the ADC range are clipped to it and counted.
        """
        real_dtype = field.real.dtype
        if self.config.detection == "coherent":
            reading = (field * torch.polar(torch.ones_like(lo_phase), -lo_phase)[..., None].to(field.dtype)).real
            std = self.noise_std()
            low = -full_scale
        else:
            reading = field.real**2 + field.imag**2
            std = self.noise_std(reading)
            low = torch.zeros_like(full_scale)
        if self.noise_on:
            noise = torch.randn(reading.shape, generator=generator, dtype=real_dtype, device=reading.device)
            reading = reading + noise * std
        return self._digitise(reading, low, full_scale)

    def _digitise(self, reading: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> Detection:
        """ADC: clip to [low, high] (counting clipped readings), then round to the nearest level.

        Mid-tread quantiser (zero is a level): a signed reading has 2^(bits-1) - 1 steps each side of
        zero, an intensity reading 2^bits - 1 steps above it.
        """
        outside = (reading < low) | (reading > high)
        clipped = int(outside.sum())
        reading = torch.minimum(torch.maximum(reading, low), high)
        bits = self.config.adc_bits
        if bits is not None:
            steps = 2 ** (bits - 1) - 1 if self.config.detection == "coherent" else 2**bits - 1
            step = high / max(steps, 1)
            reading = torch.round(reading / step) * step
        return Detection(reading, clipped)
