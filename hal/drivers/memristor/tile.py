"""The crossbar tile model: weights -> differential conductance pairs on tiles -> DAC -> analog MVM -> ADC.

A stack of P matrices (K inputs x N outputs each) is cut into R x C blocks of ``rows x cols``; every block is
one tile holding a G+ and a G- device per weight. The tiles are one batched tensor ``(P*R, rows, C*cols)``, so
programming, drift and reads are single tensor operations on CPU or CUDA: Python loops run only over
write-verify rounds, never over rows, columns or tiles.

Signal chain of one read (all in units of ``v_read * g_max`` for currents and of the DAC full scale for
inputs, as in aihwkit's IO model):

1. input scaling: each input vector by its largest magnitude, or by a static range (values beyond clip, counted);
2. DAC: rounding to ``2^(dac_bits-1) - 1`` levels per polarity;
3. analog MVM per tile: ``I = x (G+ - G-) / g_max`` with conductances drifted to the read time, 1/f noise and
   first-order IR drop;
4. additive output noise, ADC saturation at +-``adc_full_scale`` (counted) and rounding;
5. digital periphery: per-column weight scale, drift compensation factor, sum of the partial sums of the R
   row blocks, input scale.

Inside a claimed chain (``chain.py``) a layer may skip the converter rounding: ``read(dac_rounding=False)`` takes
analog inputs from the previous layer's output stage, ``read(adc_rounding=False)`` hands its outputs on in analog
form (output noise and the +-full-scale swing limit stay; only the rounding to levels goes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hal.drivers.memristor import pcm
from hal.drivers.memristor.config import CrossbarConfig
from hal.drivers.memristor.energy import SIEMENS_PER_US, ProgrammingReport, ReadCounters, read_counters
from hal.drivers.memristor.rng import add_gaussian_

#: Number of random +-1 reference vectors read per tile for global drift compensation.
COMPENSATION_VECTORS = 16


@dataclass(frozen=True)
class TileGrid:
    """How P stacked K x N matrices are cut into R x C tiles of ``rows x cols``."""

    stack: int
    inputs: int
    outputs: int
    rows: int
    cols: int

    @property
    def row_blocks(self) -> int:
        return -(-self.inputs // self.rows)

    @property
    def col_blocks(self) -> int:
        return -(-self.outputs // self.cols)

    @property
    def tiles(self) -> int:
        return self.stack * self.row_blocks * self.col_blocks


@dataclass
class _State:
    """Conductances as seen at one read time, folded into what one read needs.

    ``g_read`` = (G+ - G-) / g_max / ADC step * DAC step: DAC codes times ``g_read`` are currents in ADC LSBs.
    ``digital_scale`` = ADC step * per-column weight scale * drift compensation * pair gain, per tile column.
    """

    age_s: float
    g_read: torch.Tensor  # (P*R, rows, C*cols)
    g_sum_rows: torch.Tensor  # (P, R*rows): sum over a row's devices of G+ + G- (siemens), for read energy
    digital_scale: torch.Tensor  # (P*R, 1, C*cols)


def state_generator(device: torch.device, seed: int, age_s: float) -> torch.Generator:
    """A generator for the conductance state at one age: the same (program, age) always gives the same state."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + round(age_s * 1000)) % (2**63 - 1))
    return generator


def ir_drop_factor(g_us: torch.Tensor, grid: TileGrid, r_ohm: float) -> torch.Tensor:
    """First-order IR drop: each device's effective conductance is reduced by the voltage lost on the lines.

    Word line i is driven from column 0; the current of every device beyond column c crosses the wire
    segments before c, so the voltage at (i, c) drops by ``r * sum_c' G_ic' min(c, c')`` per volt.
    Bit line j is held at virtual ground after the last row; its node at row k rises by
    ``r * sum_m G_mj x_m (rows + 1 - max(k, m))``, which takes from input m the current
    ``r * G_mj * sum_k G_kj (rows + 1 - max(k, m))``. Both are linear in the inputs (currents at ideal
    voltages), so they become a conductance factor computed once per read time with cumulative sums.
    ``g_us`` is (2, tiles, rows, col_blocks * cols): the G+ and G- planes of every tile, in microsiemens.
    """
    g = g_us * SIEMENS_PER_US  # (2, P*R, rows, C*cols)
    tiles = g.view(2, g.shape[1], grid.rows, grid.col_blocks, grid.cols)
    # word line: G+ and G- of a column sit side by side on the row
    pair = tiles.sum(dim=0)  # (P*R, rows, C, cols)
    col_index = torch.arange(1, grid.cols + 1, device=g.device, dtype=g.dtype)
    weighted = torch.cumsum(pair * col_index, dim=-1)
    beyond = pair.sum(dim=-1, keepdim=True) - torch.cumsum(pair, dim=-1)
    word_drop = r_ohm * (weighted + col_index * beyond)  # (P*R, rows, C, cols)
    # bit line: each device column of each tile separately
    n = grid.rows
    row_index = torch.arange(1, n + 1, device=g.device, dtype=g.dtype).view(1, 1, n, 1, 1)
    upstream = torch.cumsum(tiles, dim=2)
    far = tiles * (n + 1 - row_index)
    downstream = far.sum(dim=2, keepdim=True) - torch.cumsum(far, dim=2)
    bit_drop = r_ohm * ((n + 1 - row_index) * upstream + downstream)  # (2, P*R, rows, C, cols)
    factor = (1.0 - word_drop.unsqueeze(0) - bit_drop).clamp(min=0.0)
    return factor.view_as(g)


class Crossbar:
    """P weight matrices programmed onto tiles, read at a given age after programming.

    ``weights`` is (P, K, N): K inputs (word lines) by N outputs (bit lines), e.g. a linear layer's
    ``weight.T``. ``seed`` fixes every device draw (programming, faults, drift exponents, 1/f noise per age).
    """

    def __init__(self, weights: torch.Tensor, config: CrossbarConfig, seed: int):
        if weights.dim() != 3:
            raise ValueError(f"Crossbar takes (P, K, N) weights, got shape {tuple(weights.shape)}")
        self.config = config
        self.seed = seed
        self.device = weights.device
        tile = config.tile
        self.grid = TileGrid(weights.shape[0], weights.shape[1], weights.shape[2], tile.rows, tile.cols)
        self.report = ProgrammingReport()
        self._state: _State | None = None
        self._program(weights.detach().to(torch.float32))

    # ------------------------------------------------------------------ programming
    def _program(self, weights: torch.Tensor) -> None:
        cfg, grid = self.config, self.grid
        tile, effects = cfg.tile, cfg.effects
        P, R, C, rows, cols = grid.stack, grid.row_blocks, grid.col_blocks, grid.rows, grid.cols
        padded = torch.zeros(P, R * rows, C * cols, device=self.device)
        padded[:, : grid.inputs, : grid.outputs] = weights
        blocks = padded.view(P * R, rows, C * cols)
        scale = blocks.abs().amax(dim=1, keepdim=True)  # per-column weight scale of each tile
        self.column_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        normalized = blocks / self.column_scale
        if effects.quantization:
            steps = tile.conductance_levels - 1
            normalized = torch.round(normalized * steps) / steps
        used = torch.zeros(P, R * rows, C * cols, dtype=torch.bool, device=self.device)
        used[:, : grid.inputs, : grid.outputs] = True
        self.used = used.view(P * R, rows, C * cols)
        span = tile.g_max_us - tile.g_min_us
        # targets of the pair, stacked on a leading axis: 0 = G+, 1 = G-
        self.g_target = torch.stack([tile.g_min_us + span * normalized.clamp(min=0), tile.g_min_us + span * (-normalized).clamp(min=0)])
        self.g_target = torch.where(self.used, self.g_target, torch.full_like(self.g_target, tile.g_min_us))
        generator = state_generator(self.device, self.seed, -1.0)
        self.stuck = self._draw_faults(generator)
        if self.stuck is not None:
            self._map_around_faults()
        self.g_programmed = self._write_verify(generator)
        self.nu = pcm.drift_exponents(self.g_target, tile.g_max_us, cfg.pcm, generator) if effects.drift else None

    def _write_verify(self, generator: torch.Generator) -> torch.Tensor:
        """Program every used device, then re-pulse those read outside the tolerance, a fixed number of rounds."""
        cfg = self.config
        tile, energy = cfg.tile, cfg.energy
        used = self.used.expand_as(self.g_target)
        n_used = int(used.sum())
        healthy = used if self.stuck is None else used & (self.stuck == 0)  # the mapping knows the stuck ones
        if not cfg.effects.programming_noise:
            g = self.g_target.clone()
            pulses, reads = n_used, 0
        else:
            sigma = pcm.programming_sigma_us(self.g_target, tile.g_max_us, cfg.pcm)
            g = self._pin_stuck(pcm.program_attempt(self.g_target, sigma, generator))
            pulses, reads = n_used, 0
            for _ in range(tile.write_verify_iterations):
                read = g
                if cfg.effects.read_noise:
                    noise = pcm.read_noise_sigma_after(g, tile.g_max_us, energy.program_pulse_time_s, cfg.pcm)
                    read = g + g.abs() * noise * torch.randn(g.shape, generator=generator, device=g.device)
                off = healthy & ((read - self.g_target).abs() > tile.write_verify_tolerance_us)
                reads += n_used
                count = int(off.sum())
                if count == 0:
                    break
                g = torch.where(off, pcm.program_attempt(self.g_target, sigma, generator), g)
                pulses += count
        g = torch.where(used, g, self.g_target)  # padding devices stay in their RESET state, never pulsed
        error = (g - self.g_target)[used]
        rms = float(error.square().mean().sqrt()) if n_used else 0.0
        rounds = 1 + (reads // n_used if n_used else 0)
        self.report = ProgrammingReport(
            stuck_at_gmin=self.report.stuck_at_gmin,
            stuck_at_gmax=self.report.stuck_at_gmax,
            devices=n_used,
            pulses=pulses,
            verify_reads=reads,
            residual_rms_us=rms,
            residual_relative=rms / tile.g_max_us,
            energy_j=pulses * energy.program_pulse_energy_j + reads * self._verify_read_energy_j(),
            time_s=rounds * energy.program_pulse_time_s * tile.rows,  # rows are programmed one after another
        )
        return g

    def _verify_read_energy_j(self) -> float:
        """Energy of reading one device for verification: v_read^2 * g * t_read at the mean target conductance."""
        energy = self.config.energy
        g_mean_s = float(self.g_target.mean()) * SIEMENS_PER_US
        return energy.read_voltage_v**2 * g_mean_s * self.config.pcm.read_time_s

    def _pin_stuck(self, g: torch.Tensor) -> torch.Tensor:
        """Stuck devices keep their stuck conductance whatever is applied to them."""
        return g if self.stuck is None else torch.where(self.stuck != 0, self._stuck_values(), g)

    def _stuck_values(self) -> torch.Tensor:
        tile = self.config.tile
        return torch.where(self.stuck == 2, torch.full_like(self.g_target, tile.g_max_us), torch.full_like(self.g_target, tile.g_min_us))

    def _map_around_faults(self) -> None:
        """Fault-aware mapping: stuck devices are found by a test before programming (a march test, as in Chen et
        al., IEEE Trans. Comput. 2015) and the healthy partner of each stuck device is retargeted so that the pair's
        difference G+ - G- still equals the weight when the conductance range allows it."""
        tile = self.config.tile
        stuck = self.stuck != 0
        stuck_value = self._stuck_values()
        wanted = self.g_target[0] - self.g_target[1]
        positive_only = stuck[0] & ~stuck[1]
        negative_only = stuck[1] & ~stuck[0]
        g_neg = torch.where(positive_only, (stuck_value[0] - wanted).clamp(tile.g_min_us, tile.g_max_us), self.g_target[1])
        g_pos = torch.where(negative_only, (stuck_value[1] + wanted).clamp(tile.g_min_us, tile.g_max_us), self.g_target[0])
        self.g_target = torch.where(stuck, stuck_value, torch.stack([g_pos, g_neg]))

    def _draw_faults(self, generator: torch.Generator) -> torch.Tensor | None:
        """Per device: 0 healthy, 1 stuck at g_min, 2 stuck at g_max (drawn once, at programming)."""
        tile = self.config.tile
        if not self.config.effects.stuck_faults or tile.stuck_at_gmin_rate + tile.stuck_at_gmax_rate == 0:
            return None
        u = torch.rand(self.g_target.shape, generator=generator, device=self.device)
        stuck = torch.zeros_like(u, dtype=torch.uint8)
        stuck[u < tile.stuck_at_gmin_rate] = 1
        stuck[(u >= tile.stuck_at_gmin_rate) & (u < tile.stuck_at_gmin_rate + tile.stuck_at_gmax_rate)] = 2
        used = self.used.expand_as(self.g_target)
        self.report.stuck_at_gmin = int(((stuck == 1) & used).sum())
        self.report.stuck_at_gmax = int(((stuck == 2) & used).sum())
        return stuck

    # ------------------------------------------------------------------ state at a read time
    def state(self, age_s: float) -> _State:
        """Conductances ``age_s`` seconds after the drift reference time (cached per age)."""
        if self._state is not None and self._state.age_s == age_s:
            return self._state
        cfg = self.config
        tile, effects = cfg.tile, cfg.effects
        generator = state_generator(self.device, self.seed, age_s)
        g = pcm.conductance_at(self.g_programmed, self.nu, age_s, tile.g_max_us, cfg.pcm, generator if effects.read_noise else None)
        g = self._pin_stuck(g)
        if effects.ir_drop and tile.wire_resistance_ohm > 0:
            g = g * ir_drop_factor(g, self.grid, tile.wire_resistance_ohm)
        g_diff = (g[0] - g[1]) / tile.g_max_us
        g_sum_rows = (g[0] + g[1]).sum(dim=-1).view(self.grid.stack, -1) * SIEMENS_PER_US
        compensation = self._compensation(g_diff, generator) if effects.drift_compensation else torch.ones_like(self.column_scale)
        adc_step = self._adc_step()
        digital_scale = self.column_scale * compensation * (adc_step * tile.g_max_us / (tile.g_max_us - tile.g_min_us))
        self._state = _State(age_s, g_diff * (self._dac_step() / adc_step), g_sum_rows, digital_scale)
        return self._state

    def _dac_step(self) -> float:
        """Input value of one DAC code (1 without quantization: codes are then the scaled inputs)."""
        return 1.0 / self.config.tile.dac_steps if self.config.effects.quantization else 1.0

    def _adc_step(self) -> float:
        """Current (units of v_read g_max) of one ADC LSB (1 without quantization)."""
        tile = self.config.tile
        return tile.adc_full_scale / tile.adc_steps if self.config.effects.quantization else 1.0

    def _compensation(self, g_diff: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Global drift compensation per tile: read random +-1 reference vectors, compare the mean absolute output
        with the one the programmed targets give, rescale by the ratio (aihwkit's global compensation against an
        exact reference)."""
        tile = self.config.tile
        cols = self.grid.cols
        used_rows = self.used.any(dim=2, keepdim=True).transpose(1, 2).to(g_diff.dtype)  # (P*R, 1, rows)
        used_cols = self.used.any(dim=1).to(g_diff.dtype).view(g_diff.shape[0], 1, self.grid.col_blocks, cols)
        signs = torch.randint(0, 2, (g_diff.shape[0], COMPENSATION_VECTORS, g_diff.shape[1]), generator=generator, device=self.device)
        reference = (signs.to(g_diff.dtype) * 2 - 1) * used_rows
        target = (self.g_target[0] - self.g_target[1]) / tile.g_max_us
        adc_step = self._adc_step()
        measured = self._convert(torch.bmm(reference, g_diff / adc_step), generator)[0]
        expected = torch.bmm(reference, target / adc_step)
        shape = (g_diff.shape[0], COMPENSATION_VECTORS, self.grid.col_blocks, cols)
        measured_mean = (measured.view(shape).abs() * used_cols).sum(dim=(1, 3))
        expected_mean = (expected.view(shape).abs() * used_cols).sum(dim=(1, 3))
        ratio = torch.where(measured_mean > 0, expected_mean / measured_mean.clamp(min=1e-12), torch.ones_like(measured_mean))
        return ratio.repeat_interleave(cols, dim=1).unsqueeze(1)

    # ------------------------------------------------------------------ reading
    def _convert(self, currents: torch.Tensor, generator: torch.Generator, rounding: bool = True) -> tuple[torch.Tensor, int]:
        """Output noise, saturation at the full scale (counted) and, with ``rounding``, the ADC's rounding to levels,
        in place on ``currents`` given in ADC LSBs."""
        tile, effects = self.config.tile, self.config.effects
        step = self._adc_step()
        if effects.output_noise and tile.output_noise > 0:
            add_gaussian_(currents, tile.output_noise / step, generator)
        full_scale = tile.adc_full_scale / step
        low, high = torch.aminmax(currents)
        saturated = 0
        if float(high) > full_scale or float(low) < -full_scale:  # count only when something saturates
            saturated = int(torch.count_nonzero(currents.abs() > full_scale))
            currents.clamp_(-full_scale, full_scale)
        if effects.quantization and rounding:
            currents.round_()
        return currents, saturated

    def read(
        self,
        x: torch.Tensor,
        age_s: float,
        generator: torch.Generator,
        bias: torch.Tensor | None = None,
        dac_rounding: bool = True,
        adc_rounding: bool = True,
    ) -> tuple[torch.Tensor, ReadCounters]:
        """Apply the stacked matrices to ``x`` (P, B, K) and add ``bias`` (N,): returns (P, B, N) and this read's
        counters. ``dac_rounding`` / ``adc_rounding`` False: the inputs arrive, the outputs leave, in analog form."""
        cfg, grid = self.config, self.grid
        tile = cfg.tile
        state = self.state(age_s)
        P, B, R, C = grid.stack, x.shape[1], grid.row_blocks, grid.col_blocks
        x = x.to(torch.float32)
        clipped = 0
        if tile.input_range > 0:
            input_scale = torch.full((P, B, 1), tile.input_range, device=x.device)
            clipped = int(torch.count_nonzero(x.abs() > tile.input_range))
            codes = (x * (1.0 / (tile.input_range * self._dac_step()))).clamp_(-1.0 / self._dac_step(), 1.0 / self._dac_step())
        else:
            low, high = torch.aminmax(x, dim=-1, keepdim=True)
            input_scale = torch.maximum(high, -low)
            input_scale = torch.where(input_scale > 0, input_scale, torch.ones_like(input_scale))
            codes = x * (1.0 / self._dac_step() / input_scale)
        if cfg.effects.quantization and dac_rounding:
            codes.round_()
        padded = torch.nn.functional.pad(codes, (0, R * grid.rows - grid.inputs)) if R * grid.rows != grid.inputs else codes
        words = padded.view(P, B, R, grid.rows).transpose(1, 2).reshape(P * R, B, grid.rows)
        currents = torch.bmm(words, state.g_read)  # (P*R, B, C*cols) in ADC LSBs: every tile's analog MVM at once
        currents, saturated = self._convert(currents, generator, adc_rounding)
        currents.mul_(state.digital_scale)
        summed = currents.view(P, R, B, C * grid.cols).sum(dim=1) if R > 1 else currents.view(P, B, C * grid.cols)
        summed = summed[:, :, : grid.outputs]
        out = torch.addcmul(bias, summed, input_scale) if bias is not None else summed * input_scale
        counters = self._counters(codes, state, B, clipped, saturated, adc_rounding)
        return out, counters

    def _counters(self, codes: torch.Tensor, state: _State, batch: int, clipped: int, saturated: int, adc: bool) -> ReadCounters:
        grid = self.grid
        # sum over vectors and word lines of PWM pulse fraction x the line's conductance (siemens)
        g_rows = state.g_sum_rows[:, : grid.inputs].unsqueeze(-1)  # (P, K, 1)
        duty_conductance_s = float(torch.bmm(codes.abs(), g_rows).sum()) * self._dac_step()
        return read_counters(self.config, grid.stack, batch, grid.inputs, grid.outputs, grid.row_blocks, grid.col_blocks, duty_conductance_s, clipped, saturated, adc)
