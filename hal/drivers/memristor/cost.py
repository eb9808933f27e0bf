"""The cost model: latency, energy and expected error of one call, before running (``estimate``, ``chain``) or
for programmed weights (``programmed``, ``chain_read``), and the error at a read age (``with_error``).

Latency and energy come from the read model of ``energy.py`` (inputs at half the DAC range on average); before
programming, device pairs are taken at a typical ``0.3 (g_max - g_min) + 2 g_min`` (Gaussian weights have mean
|w| / max|w| of about 0.3 over a 256-row tile column), after programming at the conductances actually written.
The error is the configuration's derived expected error (``accuracy.AccuracyModel``) at the op's reduction length
and the read age (``?t`` for an estimate, the program's age after ``elapse``).

A claimed chain (``chain.py``) reads every layer as a single op would, except that only its last layer converts
with ADCs: the estimate of a chain is the sum of its layers' reads minus the ADC conversions (energy and time) of
every layer but the last; the word-line drive of a layer fed in analog form is charged as the DAC drive it replaces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hal.capability import Figure
from hal.device import Cost, OpSpec
from hal.drivers.memristor.accuracy import AccuracyModel, ErrorBudget
from hal.drivers.memristor.config import CrossbarConfig
from hal.drivers.memristor.energy import ProgrammingReport, ReadCounters, expected_read_counters
from hal.drivers.memristor.tile import TileGrid

#: Mean |w| / max|w| of a Gaussian tile column, the typical device-pair conductance before programming.
TYPICAL_WEIGHT_FRACTION = 0.3
#: Fraction of the devices pulsed again in each write-verify round, for estimates made before programming.
EXPECTED_REPULSE_FRACTION = 0.5

#: The cost of a product with an empty dimension: no tile is programmed or read.
EMPTY = Cost(0.0, 0.0, 0.0, "empty product: no tile is programmed or read, the result is exact")

READ_FORMULA = "read: v_read^2 * G * |x| * t_pulse per device + DAC bits * 3.3 fJ + ADC conversions * 2.6 pJ; latency = vectors * (PWM pulse + ADC conversion)"


def conv_out(size: tuple[int, int], kernel: tuple[int, int], op: OpSpec) -> tuple[int, int]:
    """Output height and width of a conv2d op on an input of ``size``."""
    (sh, sw), (ph, pw), (dh, dw) = op.attr("stride"), op.attr("padding"), op.attr("dilation")
    return ((size[0] + 2 * ph - dh * (kernel[0] - 1) - 1) // sh + 1, (size[1] + 2 * pw - dw * (kernel[1] - 1) - 1) // sw + 1)


def vectors_per_call(op: OpSpec) -> int:
    """Input vectors one call streams through the tiles (open dimensions count as one)."""
    sizes = [1 if s is None else s for s in op.inputs[0].shape]
    if op.name == "linear":
        return math.prod(sizes[:-1])
    if op.name == "matmul":
        return sizes[-2]
    w = op.param("weight").shape
    out = conv_out((sizes[2], sizes[3]), (w[2], w[3]), op)
    return sizes[0] * max(out[0], 1) * max(out[1], 1)


class CostModel:
    """Costs of one crossbar configuration."""

    def __init__(self, config: CrossbarConfig, accuracy: AccuracyModel):
        self.config = config
        self.accuracy = accuracy
        """The accuracy model at the device's read age ``?t`` (the age of a freshly programmed weight)."""

    def typical_pair_us(self) -> float:
        """G+ + G- of a typical device pair before programming."""
        tile = self.config.tile
        return TYPICAL_WEIGHT_FRACTION * (tile.g_max_us - tile.g_min_us) + 2 * tile.g_min_us

    def estimate(self, op: OpSpec, grid: TileGrid) -> Cost:
        """Cost of one call before programming; matmul pays for programming ``b`` on every call."""
        if grid.tiles == 0:
            return EMPTY
        counters = expected_read_counters(self.config, grid.stack, vectors_per_call(op), grid.inputs, grid.outputs, self.typical_pair_us())
        read = self._read_cost(counters, self.expected_programming(grid) if op.name == "matmul" else None)
        return self.with_error(read, self.accuracy.budget(grid.inputs, grid.outputs), self.accuracy.read_age_s)

    def programmed(self, op: OpSpec, grid: TileGrid, mean_pair_us: float) -> Cost:
        """Latency and energy (error 0, see ``with_error``) of one call of a programmed weight whose device pairs hold
        ``mean_pair_us`` on average."""
        counters = expected_read_counters(self.config, grid.stack, vectors_per_call(op), grid.inputs, grid.outputs, mean_pair_us)
        return self._read_cost(counters)

    def chain(self, ops: Sequence[OpSpec], grids: Sequence[TileGrid]) -> Cost:
        """Cost of one call of a claimed chain before programming (typical device pairs)."""
        read = self.chain_read(ops, grids, [self.typical_pair_us()] * len(grids))
        return self.with_error(read, self.accuracy.chain_budget([(g.inputs, g.outputs) for g in grids]), self.accuracy.read_age_s)

    def chain_read(self, ops: Sequence[OpSpec], grids: Sequence[TileGrid], pairs_us: Sequence[float]) -> Cost:
        """Latency and energy (error 0) of a chain whose layers' device pairs hold ``pairs_us``: every layer read as a
        single op reads it, the ADC conversions of all but the last layer left out."""
        last = len(grids) - 1
        layers = [
            expected_read_counters(self.config, g.stack, vectors_per_call(op), g.inputs, g.outputs, pair, adc_used=j == last)
            for j, (op, g, pair) in enumerate(zip(ops, grids, pairs_us))
            if g.tiles
        ]
        saved = sum(expected_read_counters(self.config, g.stack, vectors_per_call(op), g.inputs, g.outputs, pair).adc_conversions for op, g, pair in zip(ops[:last], grids[:last], pairs_us[:last]) if g.tiles)
        formula = (
            f"{READ_FORMULA}, summed over {len(grids)} layers; ADC conversions only at the last layer ({saved} fewer than "
            f"op by op, {saved} x {self.config.energy.adc_energy_j:.3g} J and their conversion time saved); word lines fed "
            "in analog form charged as the DAC drive they replace (the analog transfer of chain.py)"
        )
        return Cost(sum(c.latency_s for c in layers), sum(c.energy_j for c in layers), 0.0, formula)

    def with_error(self, read: Cost, budget: ErrorBudget, age_s: float) -> Cost:
        """``read``'s latency and energy with the expected error ``budget`` of reads ``age_s`` seconds after t0."""
        if read is EMPTY:
            return EMPTY
        where = f"K={budget.inputs}" + (f", read {age_s:g} s after t0" if age_s else "")
        return Cost(read.latency_s, read.energy_j, budget.error, f"{read.formula}; error derived from the configuration at {where} (accuracy.FORMULA)")

    def expected_programming(self, grid: TileGrid) -> ProgrammingReport:
        """Programming cost of a weight before writing it: every device pulsed once, then a fixed fraction of them
        again in each write-verify round (about what the default tolerance gives), every device read per round."""
        tile, energy = self.config.tile, self.config.energy
        devices = 2 * grid.stack * grid.inputs * grid.outputs
        pulses = int(devices * (1 + EXPECTED_REPULSE_FRACTION * tile.write_verify_iterations))
        rounds = 1 + tile.write_verify_iterations
        return ProgrammingReport(
            devices=devices,
            pulses=pulses,
            verify_reads=devices * tile.write_verify_iterations,
            energy_j=pulses * energy.program_pulse_energy_j,
            time_s=rounds * energy.program_pulse_time_s * tile.rows,
        )

    @staticmethod
    def _read_cost(counters: ReadCounters, programming: ProgrammingReport | None = None) -> Cost:
        energy, latency = counters.energy_j, counters.latency_s
        formula = READ_FORMULA
        if programming is not None:
            energy += programming.energy_j
            latency += programming.time_s
            formula += "; plus reprogramming b (pulses * pulse energy, write-verify time) on every call"
        return Cost(latency, energy, 0.0, formula)

    def energy_per_mac(self) -> Figure:
        """Read energy per multiply-accumulate of one full tile: inputs at half range, typical device pairs."""
        tile = self.config.tile
        counters = expected_read_counters(self.config, 1, 1, tile.rows, tile.cols, self.typical_pair_us())
        return Figure.derived(
            counters.energy_j / (tile.rows * tile.cols),
            "J/MAC",
            "(v_read^2 * 0.3 g_max * 1/2 * t_pulse * rows * cols + DAC + ADC energy) / (rows * cols)",
            "array and converters only; IBM's HERMES core measured 10.5 TOPS/W with its digital periphery (JSSC 2022)",
        )
