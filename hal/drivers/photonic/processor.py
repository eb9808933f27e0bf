"""A weight matrix programmed onto the photonic processor: SVD onto two meshes and an attenuator column.

Shen et al., "Deep learning with coherent nanophotonic circuits", Nat. Photonics 11, 441 (2017): a real or
complex matrix W = U diag(s) V* is implemented as a mesh for V*, a column of attenuators for diag(s) and
a mesh for U. The attenuators are MZIs with one output used (amplitude transmission sin(theta/2),
passive, at most 1), so the largest singular value is mapped to full transmission: the optics implement
W / scale with ``scale = s_max`` and the receiver multiplies the digitised result back by ``scale``
(reported in ``stats``). A matrix larger than the N-port processor is cut into N x N tiles, each
programmed in turn (a heater settling time each) and the partial products summed after detection.

Inputs are encoded per vector on the modulators as amplitudes x / max|x| (signed, so a push-pull
modulator at null bias) and the per-vector scale is restored digitally. Each wavelength channel has its
own transfer matrix (heater phases scale with 1/lambda) and its own one-scalar calibration: the LO phase
and the electronic gain that remove the mesh's common loss and phase, as one reference measurement
per channel would find them. Everything else (quantisation, crosstalk residue, coupler errors, unequal
path losses, noise, ADC) stays in the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hal.drivers.photonic.decompose import decompose
from hal.drivers.photonic.energy import CallCost, EnergyConfig, call_cost
from hal.drivers.photonic.imperfections import PhotonicConfig, db_to_amplitude
from hal.drivers.photonic.mesh import Mesh, mzi_entries, program_heaters
from hal.drivers.photonic.readout import Receiver


@dataclass(frozen=True)
class Fabrication:
    """The chip's fixed coupler errors (radians): two meshes of (columns, n, 2) sites and the attenuator column (n, 2)."""

    v_mesh: np.ndarray
    u_mesh: np.ndarray
    attenuators: np.ndarray

    @classmethod
    def draw(cls, n: int, sigma_rad: float, seed: int) -> Fabrication:
        """Draw the errors of an n-port chip from ``seed`` (2n columns per mesh cover both layouts)."""
        rng = np.random.default_rng(seed)
        return cls(rng.normal(0.0, sigma_rad, (2 * n, n, 2)), rng.normal(0.0, sigma_rad, (2 * n, n, 2)), rng.normal(0.0, sigma_rad, (n, 2)))


@dataclass
class ProgramStats:
    """What programming and running a matrix did: scale applied, clipping, tiles, measured errors."""

    scale: list[float] = field(default_factory=list)
    tiles: int = 0
    clipped_readings: int = 0
    readings: int = 0
    matrix_error: float = 0.0

    def as_dict(self) -> dict:
        return {
            "scale": self.scale,
            "tiles": self.tiles,
            "clipped_readings": self.clipped_readings,
            "readings": self.readings,
            "matrix_error": self.matrix_error,
        }


class Tile:
    """One block (<= n x n) of a weight matrix programmed on the processor: V* mesh, attenuators, U mesh."""

    def __init__(self, block: np.ndarray, n: int, layout: str, config: PhotonicConfig, fabrication: Fabrication, dtype: torch.dtype, device: torch.device):
        rows, cols = block.shape
        self.rows, self.cols, self.n = rows, cols, n
        u, s, vh = np.linalg.svd(block)
        self.scale = float(s[0]) if s.size and s[0] > 0 else 1.0
        self.normalised = torch.as_tensor(block / self.scale, dtype=torch.float64)
        """The block the optics implement, W / s_max (real, on the host)."""
        u_full, v_full = np.eye(n, dtype=np.complex128), np.eye(n, dtype=np.complex128)
        u_full[:rows, :rows] = u
        v_full[:cols, :cols] = vh
        sigma = np.zeros(n)
        sigma[: s.size] = s / self.scale
        self.v_mesh = Mesh(decompose(v_full, layout), config, fabrication.v_mesh)
        self.u_mesh = Mesh(decompose(u_full, layout), config, fabrication.u_mesh)
        self.attenuator_theta, self.attenuator_phi = self._program_attenuators(sigma, config)
        scales = wavelength_scales(config)
        attenuation = self._attenuator_transmission(config, fabrication.attenuators, scales, device)
        v = self.v_mesh.transfer_matrix(scales, torch.complex128, device)
        uu = self.u_mesh.transfer_matrix(scales, torch.complex128, device)
        self.actual = uu @ (attenuation[:, :, None] * v)
        """The processor's transfer matrix over all n ports at every wavelength, (channels, n, n), as programmed."""
        self.gain, self.transmission, self.transfer, self.full_scale, self.matrix_error = calibrate(self.actual, self.normalised, config, dtype)

    @staticmethod
    def _program_attenuators(sigma: np.ndarray, config: PhotonicConfig) -> tuple[np.ndarray, np.ndarray]:
        """Heater phases for amplitude transmissions ``sigma`` in [0, 1]: theta = 2 asin(s), phi cancels the phase i e^{i theta/2}."""
        theta = 2 * np.arcsin(np.clip(sigma, 0.0, 1.0))
        phi = np.mod(-theta / 2 - np.pi / 2, 2 * np.pi)
        return program_heaters(theta, config, 1), program_heaters(phi, config, 1)

    def _attenuator_transmission(self, config: PhotonicConfig, errors: np.ndarray, scales: list[float], device: torch.device) -> torch.Tensor:
        """Field transmission top-in -> top-out of each attenuator MZI at each wavelength, (channels, n)."""
        k = torch.tensor(scales, dtype=torch.float64, device=device)[:, None]
        theta = torch.as_tensor(self.attenuator_theta, dtype=torch.float64, device=device) * k
        phi = torch.as_tensor(self.attenuator_phi, dtype=torch.float64, device=device) * k
        delta = torch.as_tensor(errors[: self.n] if config.fabrication_on else np.zeros((self.n, 2)), dtype=torch.float64, device=device)
        t00 = mzi_entries(theta, phi, delta.expand(len(scales), -1, -1))[0]
        return t00 * (db_to_amplitude(config.loss.mzi_loss_db) if config.loss_on else 1.0)

    def heater_phase_sum(self) -> float:
        """Sum of every programmed heater phase on the chip for this tile (radians)."""
        return float(self.v_mesh.heater_phases().sum() + self.u_mesh.heater_phases().sum() + self.attenuator_theta.sum() + self.attenuator_phi.sum())

    @property
    def depth(self) -> int:
        """Optical depth in columns: V* mesh, attenuator column, U mesh."""
        return self.v_mesh.depth + 1 + self.u_mesh.depth


def calibrate(actual: torch.Tensor, nominal: torch.Tensor, config: PhotonicConfig, dtype: torch.dtype) -> tuple[torch.Tensor, float, torch.Tensor, torch.Tensor, float]:
    """The one-scalar readout calibration of ``actual`` (channels, n, n) against the ``nominal`` (rows, cols) real
    matrix it should apply: (gain per channel, mean power transmission |gain|^2, transfer (channels, rows, cols) in
    ``dtype``, ADC full scale per output, matrix error of what the readout effectively applies)."""
    rows, cols = nominal.shape
    target = nominal.to(device=actual.device, dtype=torch.complex128)
    block = actual[:, :rows, :cols]
    norm = torch.sum(target.abs() ** 2)
    channels = actual.shape[0]
    gain = torch.sum(target.conj() * block, dim=(-1, -2)) / norm if norm > 0 else torch.ones(channels, dtype=torch.complex128, device=actual.device)
    gain = torch.where(gain.abs() > 0, gain, torch.ones_like(gain))
    transmission = float(torch.mean(gain.abs() ** 2))
    # ADC full scale per output: the largest |amplitude| the nominal matrix can give for |inputs| <= 1.
    full_scale = target.abs().sum(-1).clamp_min(1e-12).to(torch.float64)
    # The matrix the readout effectively applies: coherent detection keeps the in-phase quadrature.
    effective = block / gain[:, None, None]
    if config.detector.detection == "coherent":
        effective = effective.real.to(torch.complex128)
    error = float(torch.linalg.vector_norm(effective - target) / (math.sqrt(channels) * max(float(norm.sqrt()), 1e-300)))
    return gain, transmission, block.to(dtype), full_scale, error


def wavelength_scales(config: PhotonicConfig) -> list[float]:
    """Phase scale lambda_programmed / lambda of each WDM channel (all 1 without dispersion)."""
    wavelengths = config.wdm.wavelengths_nm()
    if not config.dispersion_on:
        return [1.0] * len(wavelengths)
    return [config.wdm.center_nm / w for w in wavelengths]


class PhotonicMatrix:
    """A (rows x cols) real weight programmed on an n-port processor, tiled if larger.

    ``apply(x)`` takes (batch, cols) inputs and returns (batch, rows) detector results in x's real
    dtype: coherent detection gives W x, intensity detection |W x|^2 per output (per tile for tiled
    matrices, which intensity detection cannot sum coherently, so it is refused for them).
    """

    def __init__(self, weight: np.ndarray, n: int, layout: str, config: PhotonicConfig, fabrication: Fabrication, dtype: torch.dtype = torch.complex64, device: torch.device | str = "cpu"):
        if weight.ndim != 2:
            raise ValueError(f"weight must be 2-D (rows, cols), got shape {weight.shape}")
        if not np.isfinite(weight).all():
            raise ValueError("weight holds NaN/inf; a photonic mesh cannot be programmed with it")
        rows, cols = weight.shape
        row_tiles, col_tiles = math.ceil(rows / n), math.ceil(cols / n)
        if config.detector.detection == "intensity" and row_tiles * col_tiles > 1:
            raise ValueError(f"intensity detection reads |W x|^2 per tile and cannot sum tiles; this {rows}x{cols} weight needs {row_tiles * col_tiles} tiles of {n}x{n}")
        device = torch.device(device)
        tiles = [[Tile(weight[r * n : (r + 1) * n, c * n : (c + 1) * n], n, layout, config, fabrication, dtype, device) for c in range(col_tiles)] for r in range(row_tiles)]
        self._setup(tiles, weight, n, config, dtype, device)

    @classmethod
    def of_tile(cls, tile: Any, weight: np.ndarray, n: int, config: PhotonicConfig, dtype: torch.dtype, device: torch.device | str) -> PhotonicMatrix:
        """A matrix of one programmed tile-like block (``chain.ComposedTile``: processors in series) applying ``weight``."""
        matrix = cls.__new__(cls)
        matrix._setup([[tile]], weight, n, config, dtype, torch.device(device))
        return matrix

    def _setup(self, tiles: list[list[Any]], weight: np.ndarray, n: int, config: PhotonicConfig, dtype: torch.dtype, device: torch.device) -> None:
        self.rows, self.cols = weight.shape
        self.n, self.config = n, config
        self.device = device
        self.dtype = dtype
        self.receiver = Receiver(config.detector, config.noise_on)
        self.row_tiles, self.col_tiles = len(tiles), len(tiles[0])
        self.tiles = tiles
        flat = [t for row in self.tiles for t in row]
        errors = np.array([t.matrix_error for t in flat])
        norms = np.array([np.linalg.norm(weight[r * n : (r + 1) * n, c * n : (c + 1) * n]) for r in range(self.row_tiles) for c in range(self.col_tiles)])
        total = float(np.linalg.norm(weight))
        self.stats = ProgramStats(
            scale=[t.scale for t in flat],
            tiles=len(flat),
            matrix_error=float(np.sqrt(np.sum((errors * norms) ** 2)) / total) if total > 0 else 0.0,
        )

    @property
    def tile_count(self) -> int:
        return self.row_tiles * self.col_tiles

    def depth(self) -> int:
        return max(t.depth for row in self.tiles for t in row)

    def heater_phase_sum(self) -> float:
        """Heater phases of one tile at a time (the processor holds one tile): the largest tile's sum."""
        return max(t.heater_phase_sum() for row in self.tiles for t in row)

    def transmission(self) -> float:
        return min(t.transmission for row in self.tiles for t in row)

    def cost(self, batch: int, programmings: int, energy: EnergyConfig) -> CallCost:
        """Energy and latency of one call on ``batch`` vectors (``programmings`` tile writes during the call)."""
        return call_cost(
            batch=batch,
            inputs=self.col_tiles * min(self.cols, self.n) * self.row_tiles,
            outputs=self.row_tiles * min(self.rows, self.n) * self.col_tiles,
            tiles=self.tile_count,
            programmings=programmings,
            depth_columns=self.depth(),
            heater_phase_sum_rad=self.heater_phase_sum(),
            signal_power_w=self.receiver.signal_power_w,
            transmission=self.transmission(),
            config=self.config,
            energy=energy,
        )

    def apply(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run (batch, cols) inputs through the processor; returns (batch, rows) in x's real dtype."""
        out_dtype = x.dtype
        x = x.to(self.device)
        batch = x.shape[0]
        channels = self.config.wdm.channels
        padded = math.ceil(batch / channels) * channels
        result = torch.zeros(batch, self.rows, dtype=torch.float64 if out_dtype == torch.float64 else torch.float32, device=self.device)
        for r in range(self.row_tiles):
            for c in range(self.col_tiles):
                tile = self.tiles[r][c]
                part = x[:, c * self.n : c * self.n + tile.cols]
                result[:, r * self.n : r * self.n + tile.rows] += self._run_tile(tile, part, padded, channels, generator).to(result.dtype)
        return result.to(out_dtype)

    def _run_tile(self, tile: Tile, x: torch.Tensor, padded: int, channels: int, generator: torch.Generator | None) -> torch.Tensor:
        batch = x.shape[0]
        span = x.abs().amax(-1, keepdim=True)
        span = torch.where(span > 0, span, torch.ones_like(span))
        amplitudes = torch.zeros(padded, tile.cols, dtype=self.dtype, device=self.device)
        amplitudes[:batch] = (x / span).to(self.dtype)
        # vector b rides on wavelength b % channels: (steps, channels, cols) x (channels, rows, cols)
        fields = torch.einsum("scj,cij->sci", amplitudes.reshape(-1, channels, tile.cols), tile.transfer).reshape(padded, tile.rows)[:batch]
        real = fields.real.dtype
        gain = tile.gain.to(self.device).repeat(padded // channels)[:batch]  # the channel of each vector
        # The lasers make up the mesh's mean loss (energy.laser_power_w divides by it), so a nominal
        # amplitude 1 arrives at the detector with the signal power the SNR requirement sets.
        fields = fields / gain.abs().to(real)[:, None]
        power = 1 if self.config.detector.detection == "coherent" else 2
        detection = self.receiver.detect(fields, gain.angle().to(real), tile.full_scale.to(real) ** power, generator)
        self.stats.clipped_readings += detection.clipped
        self.stats.readings += detection.values.numel()
        return detection.values * (tile.scale * span) ** power
