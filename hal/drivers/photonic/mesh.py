"""An MZI mesh as programmed on a chip, simulated as a product of column layers.

``Mesh(phases, config, splitter_errors)`` takes the nominal phases of a decomposition (``decompose.py``)
and applies what happens when a controller writes them to real hardware: phase quantisation by the
heater DACs, thermal crosstalk between neighbouring heaters of a column, fabrication error of every
coupler, insertion loss per MZI and per idle crossing of a column, and the wavelength scaling of every
heater phase. The result is, for each column, three length-N vectors ``a``, ``b``, ``perm``:

    y[m] = a[m] * x[m] + b[m] * x[perm[m]]

(an MZI on modes (m, m+1) gives ``perm[m] = m+1``, ``perm[m+1] = m``; an idle mode has ``b = 0``). One
column is therefore one gather and two complex multiply-adds over all its MZIs and over the whole batch:
``propagate`` loops over the ~N columns only. ``transfer_matrix`` propagates the identity once (at
programming time), after which a call is one complex matmul. ``propagate_reference`` is the per-MZI
loop the vectorised path is tested and benchmarked against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hal.drivers.photonic.decompose import MeshPhases
from hal.drivers.photonic.imperfections import PhotonicConfig, db_to_amplitude


def quantise_phase(phase: np.ndarray, bits: int | None) -> np.ndarray:
    """Round phases in [0, 2 pi) to a DAC of ``bits`` bits over one period (None: unchanged)."""
    if bits is None:
        return np.mod(phase, 2 * np.pi)
    step = 2 * np.pi / 2**bits
    return np.mod(np.round(phase / step) * step, 2 * np.pi)


def neighbour_sum(grid: np.ndarray, distance: int) -> np.ndarray:
    """Sum of the values ``distance`` modes above and below each position, along the last axis (zero-padded)."""
    total = np.zeros_like(grid)
    total[..., distance:] += grid[..., :-distance]
    total[..., :-distance] += grid[..., distance:]
    return total


def program_heaters(nominal: np.ndarray, config: PhotonicConfig, distance: int) -> np.ndarray:
    """Phases the heaters actually produce for ``nominal`` phases on a grid (..., modes).

    Quantised to the DAC, then each heater picks up ``crosstalk * crosstalk_residual`` times the phase
    of the heaters ``distance`` modes away in the same column: heat spreads in proportion to dissipated
    power, phase is proportional to power, and the controller's pre-compensation cancels all but the
    residual fraction. Positions without a heater must hold 0.
    """
    written = quantise_phase(nominal, config.phase.dac_bits) if config.quantisation_on else np.mod(nominal, 2 * np.pi)
    coupling = config.phase.crosstalk * config.phase.crosstalk_residual
    if config.crosstalk_on and coupling:
        return written + coupling * neighbour_sum(written, distance)
    return written


def draw_splitter_errors(columns: int, n: int, sigma_rad: float, generator: np.random.Generator) -> np.ndarray:
    """Fabrication errors of the two couplers of every MZI site, shape (columns, n, 2), in radians."""
    return generator.normal(0.0, sigma_rad, size=(columns, n, 2))


def mzi_entries(theta: torch.Tensor, phi: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Entries (t00, t01, t10, t11) of MZIs with coupler angles pi/4 + delta[..., 0] (input) and [..., 1] (output).

    T = B(d2) diag(e^{i theta}, 1) B(d1) diag(e^{i phi}, 1), B(d) = [[cos(pi/4+d), i sin(pi/4+d)], [i sin, cos]].
    Elementwise over any shape; theta/phi/delta real, results complex.
    """
    c1, s1 = torch.cos(math.pi / 4 + delta[..., 0]), torch.sin(math.pi / 4 + delta[..., 0])
    c2, s2 = torch.cos(math.pi / 4 + delta[..., 1]), torch.sin(math.pi / 4 + delta[..., 1])
    inner = torch.polar(torch.ones_like(theta), theta)
    outer = torch.polar(torch.ones_like(phi), phi)
    t00 = outer * (c1 * c2 * inner - s1 * s2)
    t01 = 1j * (s1 * c2 * inner + c1 * s2)
    t10 = 1j * outer * (c1 * s2 * inner + s1 * c2)
    t11 = c1 * c2 - s1 * s2 * inner
    return t00, t01, t10, t11


@dataclass
class ColumnStack:
    """Per-column coefficients of a programmed mesh at one or more wavelengths.

    ``a``, ``b``: (channels, columns, n) complex; ``perm``: (columns, n) long; ``output``: (channels, n)
    complex phase-screen factors.
    """

    a: torch.Tensor
    b: torch.Tensor
    perm: torch.Tensor
    output: torch.Tensor


class Mesh:
    """An N-mode MZI mesh programmed with ``phases`` on a chip with the given imperfections."""

    def __init__(self, phases: MeshPhases, config: PhotonicConfig, splitter_errors: np.ndarray | None = None):
        n, depth = phases.n, phases.depth
        self.phases = phases
        self.config = config
        self.active = np.zeros((depth, n), dtype=bool)
        theta = np.zeros((depth, n))
        phi = np.zeros((depth, n))
        self.active[phases.columns, phases.modes] = True
        theta[phases.columns, phases.modes] = phases.theta
        phi[phases.columns, phases.modes] = phases.phi
        # MZIs of one column sit two modes apart; output shifters one mode apart.
        self.theta = program_heaters(theta, config, 2) * self.active
        self.phi = program_heaters(phi, config, 2) * self.active
        self.output_phases = program_heaters(phases.output_phases, config, 1)
        if splitter_errors is not None and config.fabrication_on:
            if splitter_errors.shape[0] < depth or splitter_errors.shape[1] < n:
                raise ValueError(f"splitter errors cover {splitter_errors.shape[:2]} sites, the mesh needs {(depth, n)}")
            self.splitter_errors = splitter_errors[:depth, :n]
        else:
            self.splitter_errors = np.zeros((depth, n, 2))

    @classmethod
    def from_unitary(cls, u: np.ndarray, config: PhotonicConfig, layout: str = "clements", splitter_errors: np.ndarray | None = None) -> Mesh:
        """Decompose ``u`` and program the phases (``Mesh.from_unitary(u)``)."""
        from hal.drivers.photonic.decompose import decompose

        return cls(decompose(u, layout), config, splitter_errors)

    @property
    def n(self) -> int:
        return self.phases.n

    @property
    def depth(self) -> int:
        return self.phases.depth

    def heater_phases(self) -> np.ndarray:
        """Every heater's programmed phase (radians, as written by the DACs): theta and phi of each MZI, output screen."""
        return np.concatenate([self.theta[self.active], self.phi[self.active], self.output_phases])

    def columns(self, wavelength_scales: list[float], dtype: torch.dtype = torch.complex128, device: torch.device | str = "cpu") -> ColumnStack:
        """Column coefficients at each wavelength (phase * scale, scale = lambda_programmed / lambda)."""
        real = torch.float64
        scales = torch.tensor(wavelength_scales, dtype=real, device=device)[:, None, None]
        active = torch.as_tensor(self.active, device=device)
        theta = torch.as_tensor(self.theta, dtype=real, device=device) * scales
        phi = torch.as_tensor(self.phi, dtype=real, device=device) * scales
        delta = torch.as_tensor(self.splitter_errors, dtype=real, device=device).expand(len(wavelength_scales), -1, -1, -1)
        t00, t01, t10, t11 = mzi_entries(theta, phi, delta)
        loss = self.config.loss if self.config.loss_on else None
        through = db_to_amplitude(loss.mzi_loss_db) if loss else 1.0
        idle = db_to_amplitude(loss.crossing_loss_db) if loss else 1.0
        lower = torch.roll(active, 1, dims=-1)  # mode m+1 of an MZI whose top mode is m
        a = torch.where(active, t00, torch.where(lower, torch.roll(t11, 1, dims=-1), torch.full_like(t00, idle / through))) * through
        b = torch.where(active, t01, torch.where(lower, torch.roll(t10, 1, dims=-1), torch.zeros_like(t01))) * through
        modes = torch.arange(self.n, device=device).expand(self.depth, -1)
        perm = torch.where(active, modes + 1, torch.where(lower, modes - 1, modes))
        screen = torch.as_tensor(self.output_phases, dtype=real, device=device)[None, :] * scales[:, :, 0]
        output = torch.polar(torch.ones_like(screen), screen)
        return ColumnStack(a.to(dtype), b.to(dtype), perm, output.to(dtype))

    @staticmethod
    def propagate(x: torch.Tensor, stack: ColumnStack) -> torch.Tensor:
        """Fields after the mesh for input fields ``x`` of shape (channels, batch, n): one step per column.

        The state is held mode-major, (channels, n, batch), so the partner gather of a column copies whole
        rows, and two buffers alternate so a step allocates nothing.
        """
        state = torch.empty(x.shape[:-2] + (x.shape[-1], x.shape[-2]), dtype=x.dtype, device=x.device)
        state.copy_(x.transpose(-1, -2))
        gathered, following = torch.empty_like(state), torch.empty_like(state)
        for c in range(stack.perm.shape[0]):
            torch.index_select(state, -2, stack.perm[c], out=gathered)
            torch.mul(stack.a[:, c, :, None], state, out=following)
            following.addcmul_(stack.b[:, c, :, None], gathered)
            state, following = following, state
        return (stack.output[:, :, None] * state).transpose(-1, -2)

    def transfer_matrix(self, wavelength_scales: list[float], dtype: torch.dtype = torch.complex128, device: torch.device | str = "cpu") -> torch.Tensor:
        """The mesh's transfer matrices, shape (channels, n, n): fields out = M @ fields in."""
        stack = self.columns(wavelength_scales, dtype, device)
        eye = torch.eye(self.n, dtype=dtype, device=device).expand(len(wavelength_scales), -1, -1)
        return self.propagate(eye, stack).transpose(-1, -2)

    def propagate_reference(self, x: torch.Tensor, wavelength_scale: float = 1.0) -> torch.Tensor:
        """The same physics one MZI at a time: a Python loop over all N(N-1)/2 MZIs, each updating its two modes.

        The reference the column path is checked and benchmarked against. Coefficients are computed up front
        (programming), the state is mode-major (contiguous rows), so the loop itself is the per-MZI cost only.
        """
        stack = self.columns([wavelength_scale], x.dtype, x.device)
        a, b = stack.a[0], stack.b[0]
        state = x.transpose(-1, -2).contiguous()
        for column in range(self.depth):
            for m in np.flatnonzero(self.active[column]).tolist():
                top, bottom = state[m].clone(), state[m + 1]
                state[m] = a[column, m] * top + b[column, m] * bottom
                state[m + 1] = a[column, m + 1] * bottom + b[column, m + 1] * top
            idle = np.flatnonzero(stack.perm[column].cpu().numpy() == np.arange(self.n)).tolist()
            for m in idle:
                state[m] = a[column, m] * state[m]
        return (stack.output[0, :, None] * state).transpose(-1, -2)
