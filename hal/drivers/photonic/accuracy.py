"""The expected error of the photonic processor, derived from its configuration: an error budget, not a measurement.

Three independent errors add in quadrature to the relative Frobenius error of ``y = W x``:

* mesh: the programmed optics apply, per wavelength, ``T / g`` (the calibrated transfer matrices of the meshes
  and attenuators: quantised phases, crosstalk, coupler errors, losses, dispersion) instead of ``W / s``;
  coherent detection keeps the in-phase part. ``Tile.matrix_error`` is that distance over the nominal matrix,
  computed from the transfer matrices when the phases are written, never from detector readings;
* detector noise: std ``sigma = 10^(-snr_db / 20)`` of a full-amplitude output per reading, against the mean
  output power ``E[x~^2] ||W~||^2 / rows`` (``W~ = W / s``, inputs scaled per vector to max |x~| = 1);
* ADC: rounding to ``FS_i / (2^(bits-1) - 1)`` (full scale ``FS_i = sum_j |W~_ij|`` per output, the largest
  output the matrix can give, so the signal never clips), averaged over a Gaussian output of that power plus the noise.

Intensity detection reads ``I = |y|^2``: relative errors of y count ``4/3`` times in I (``E[y^4] = 3 v^2``), the
readout noise has variance ``(2 q R B P I + i_n^2 B) / (R P)^2`` and the ADC spans [0, FS^2] in ``2^bits - 1``
steps. Averages over the inputs use a fixed sample of Gaussian vectors.
"""

from __future__ import annotations

import torch

from hal.capability.error_budget import ErrorBudget
from hal.drivers.photonic.imperfections import ELEMENTARY_CHARGE_C
from hal.drivers.photonic.processor import PhotonicMatrix, Tile
from hal.drivers.photonic.readout import Receiver

#: Gaussian input values the mean square of a per-vector-scaled input is averaged over (fixed draws).
INPUT_SAMPLES = 1 << 16
#: The ADC error is averaged over a Gaussian output on this many points within this many standard deviations.
ADC_GRID_POINTS, ADC_GRID_SIGMAS = 4001, 10.0

FORMULA = (
    "sqrt(mesh^2 + noise^2 + adc^2): mesh = ||Re(T/g) - W/s||_F / ||W/s||_F of the programmed transfer matrices "
    "(RMS over wavelengths), noise = 10^(-snr_db/20) sqrt(rows / (E[x~^2] ||W/s||_F^2)), adc = E[(v - Q(v))^2] over "
    "Gaussian outputs with FS_i = sum_j |W_ij/s| (intensity detection: |y|^2 readings); docs/photonic.md"
)


class AccuracyModel:
    """Error budgets of programmed matrices on one processor configuration."""

    def __init__(self, receiver: Receiver):
        self.receiver = receiver
        self._input_power: dict[int, float] = {}

    def input_power(self, length: int) -> float:
        """E[x~^2] of Gaussian inputs of ``length`` values scaled per vector to max |x~| = 1."""
        if length not in self._input_power:
            vectors = max(1, INPUT_SAMPLES // max(length, 1))
            x = torch.randn(vectors, length, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            self._input_power[length] = float((x / x.abs().amax(dim=1, keepdim=True)).square().mean())
        return self._input_power[length]

    def budget(self, matrix: PhotonicMatrix) -> ErrorBudget:
        """The expected error of ``matrix`` on Gaussian inputs: mesh, detector noise and ADC terms."""
        tiles = [t for row in matrix.tiles for t in row]
        coherent = self.receiver.config.detection == "coherent"
        mesh = matrix.stats.matrix_error**2 * (1.0 if coherent else 4.0 / 3.0)
        noise = adc = signal = 0.0
        for tile in tiles:
            tile_noise, tile_adc, tile_signal = self._readout(tile, coherent)
            weight = tile.scale**2 if coherent else tile.scale**4
            noise, adc, signal = noise + weight * tile_noise, adc + weight * tile_adc, signal + weight * tile_signal
        terms = {"mesh": mesh}
        if signal > 0:
            if self.receiver.noise_on:
                terms["detector_noise"] = noise / signal
            terms["adc"] = adc / signal
        return ErrorBudget(terms)

    def _readout(self, tile: Tile, coherent: bool) -> tuple[float, float, float]:
        """Summed noise variance, ADC error and signal power over a tile's outputs, in the tile's reading units."""
        nominal = tile.normalised  # (rows, cols) W / s
        power = self.input_power(tile.cols) * nominal.square().sum(dim=1)  # E|y_i|^2 per output
        full_scale = nominal.abs().sum(dim=1).clamp(min=1e-12)
        config = self.receiver.config
        if coherent:
            sigma = float(self.receiver.noise_std())
            noise = sigma**2 * torch.ones_like(power)
            steps = 2 ** (config.adc_bits - 1) - 1 if config.adc_bits is not None else None
            adc = self._adc_error(power + noise, full_scale, steps)
            return float(noise.sum()), float(adc.sum()), float(power.sum())
        r, p = config.responsivity_a_per_w, self.receiver.signal_power_w
        shot = 2 * ELEMENTARY_CHARGE_C * r * config.bandwidth_hz * p if config.shot_noise else 0.0
        thermal = config.tia_noise_a_per_rthz**2 * config.bandwidth_hz if config.thermal_noise else 0.0
        noise = (shot * power + thermal) / (r * p) ** 2
        steps = 2**config.adc_bits - 1 if config.adc_bits is not None else None
        adc = self._adc_error_intensity(power, full_scale.square(), steps)
        return float(noise.sum()), float(adc.sum()), float((3 * power.square()).sum())

    @staticmethod
    def _grid() -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.linspace(-ADC_GRID_SIGMAS, ADC_GRID_SIGMAS, ADC_GRID_POINTS, dtype=torch.float64)
        density = torch.exp(-0.5 * z * z)
        return z, density / density.sum()

    def _adc_error(self, variance: torch.Tensor, full_scale: torch.Tensor, steps: int | None) -> torch.Tensor:
        """E[(v - round(v / step) step)^2] per output for v ~ N(0, variance), step = full_scale / steps. No clipping:
        the full scale is the largest output the matrix can give, so only noise beyond it clips (counted, rare)."""
        if steps is None:
            return torch.zeros_like(variance)
        z, density = self._grid()
        v = z[None, :] * variance.sqrt()[:, None]
        step = full_scale[:, None] / max(steps, 1)
        return ((v - torch.round(v / step) * step).square() * density).sum(dim=1)

    def _adc_error_intensity(self, power: torch.Tensor, full_scale: torch.Tensor, steps: int | None) -> torch.Tensor:
        """E[(I - ADC(I))^2] per output for I = y^2, y ~ N(0, power): [0, full_scale] in ``steps`` steps."""
        if steps is None:
            return torch.zeros_like(power)
        z, density = self._grid()
        intensity = (z[None, :] * power.sqrt()[:, None]).square()
        step = full_scale[:, None] / max(steps, 1)
        digitised = torch.round(intensity / step) * step
        return ((intensity - digitised).square() * density).sum(dim=1)
