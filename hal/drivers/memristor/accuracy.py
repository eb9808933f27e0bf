"""The expected error of the crossbar, derived from its configuration: an error budget, not a measurement.

Every non-ideality of the signal chain adds an independent error to an output ``y = x W``; for inputs and weights
drawn independently with zero mean, the relative Frobenius error of the product is the square root of the sum of
the relative variances of the terms (cross terms vanish in expectation). Each term is a closed formula of the
configuration (converter bits, conductance levels, PCM statistics, tolerances, fault rates, wire resistance, read
age) averaged over the operands the declaration is made for: Gaussian weights (each tile column scaled by its
largest magnitude, as ``tile.Crossbar`` maps them) and Gaussian inputs (each vector scaled by its largest
magnitude, or by the static DAC range with inputs assumed N(0, (range / 3)^2)). The averages over the operand
distribution use a fixed sample of standard normal draws (``SAMPLE_COLUMNS`` columns), never the emulator's
output, so a broken signal chain cannot declare its own brokenness as its tolerance.

Terms, in weight units (normalised weights ``u = |w| / max|w|`` in [0, 1], conductance span S = g_max - g_min):

* conductance quantisation: ``E[(u - round(u (L-1)) / (L-1))^2]``;
* programming after write-verify (per device, std ``sigma(g)`` of one attempt, tolerance tau, r rounds, the
  verify read's 1/f noise ``sigma_v`` widening the tolerance to ``tau' = sqrt(tau^2 + sigma_v^2)``): a fraction
  ``q^r`` (``q = P(|e| > tau')``) keeps a fresh draw, the rest a normal truncated to +-tau';
* 1/f read noise at the read age: ``(g Q(g) sqrt(ln((t0 + t + t_read) / (2 t_read))))^2``;
* drift and IR drop as a gain ``f F / c`` per device, ``f = ((t0 + t) / t0)^-nu`` with ``nu ~ |N(mu(g), sigma(g))|``
  (Gauss-Hermite over nu), ``F`` the first-order IR-drop factor of a tile of mean conductances, ``c`` the global
  compensation (the least-squares gain over the tile; 1 without compensation): ``E[g^2 (f F / c - 1)^2]``;
* stuck devices: a weight is lost when its active device sticks at g_min or its idle partner at g_max, ``p_gmin
  + p_gmax`` of ``E[u^2]``;
* DAC rounding (and static-range clipping): ``E[(x~ - Q(x~))^2] / E[x~^2]``;
* output noise, and the ADC (saturation at +-FS, rounding to FS / steps) averaged over a Gaussian read, against
  the signal ``k E[x~^2] E[u^2]`` of a k-row tile read times the gain drift and IR drop leave (squared), which
  compensation divides out again, amplifying these read errors by the same factor.

A claimed chain of layers (``chain.py``) rounds at the DAC of its first layer and the ADC of its last only:
``chain_budget`` sums every layer's terms (each without the rounding it skips; output noise and the swing limit
stay), since a relative error of one layer's output passes the next layer's Gaussian weight (and a ReLU, which
keeps the active half of both signal and error) at the same relative size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hal.capability.error_budget import ErrorBudget
from hal.drivers.memristor import pcm
from hal.drivers.memristor.config import CrossbarConfig
from hal.drivers.memristor.tile import TileGrid

#: Gaussian columns (weights) and vectors (inputs) the operand averages run over; fixed draws.
SAMPLE_COLUMNS = 128
#: At most this many input values per reduction length (long vectors get fewer of them).
INPUT_SAMPLES = 1 << 16
#: Gauss-Hermite nodes for the average over a device's drift exponent.
HERMITE_NODES = 24
#: The ADC error is averaged over a Gaussian read on this many points within this many standard deviations.
ADC_GRID_POINTS, ADC_GRID_SIGMAS = 4001, 10.0

FORMULA = (
    "sqrt(sum of relative variances: conductance quantisation E[(u-Q(u))^2], write-verify residual "
    "((1-q^r) trunc(tau') + q^r) sigma(g)^2, read noise (g Q(g) sqrt(ln((t0+t+t_read)/(2 t_read))))^2, drift and "
    "IR drop E[g^2 (f F/c - 1)^2], stuck p_gmin+p_gmax, each over E[u^2] S^2; DAC E[(x-Q(x))^2]/E[x^2]; output noise, "
    "ADC (FS/steps)^2/12 and saturation over k E[x^2] E[u^2]) for Gaussian weights and inputs (docs/memristor.md)"
)


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def _truncated_variance(c: torch.Tensor) -> torch.Tensor:
    """Variance of a standard normal truncated to [-c, c]: 1 - 2 c phi(c) / (2 Phi(c) - 1)."""
    phi = torch.exp(-0.5 * c * c) / math.sqrt(2 * math.pi)
    mass = (2 * _normal_cdf(c) - 1).clamp(min=1e-300)
    return (1 - 2 * c * phi / mass).clamp(min=0.0)


class AccuracyModel:
    """The error budget of one crossbar configuration for products of a given reduction length and width."""

    def __init__(self, config: CrossbarConfig, read_age_s: float = 0.0):
        self.config = config
        self.read_age_s = read_age_s
        """Seconds after the drift reference time t0 at which reads happen (the device's ``?t``)."""
        generator = torch.Generator().manual_seed(0)
        self._weights = torch.randn(SAMPLE_COLUMNS, config.tile.rows, generator=generator, dtype=torch.float64)
        self._inputs_generator_seed = 1
        self._budgets: dict[tuple[int, int, bool, bool], ErrorBudget] = {}
        self._weight_budgets: dict[tuple[int, int], tuple[dict[str, float], float]] = {}
        self._mean_squares: dict[int, float] = {}

    # ------------------------------------------------------------------ operand averages
    def _magnitudes(self, rows: int) -> torch.Tensor:
        """Normalised weight magnitudes u = |w| / max|w| of Gaussian tile columns of ``rows`` used rows."""
        block = self._weights[:, :rows].abs()
        return (block / block.amax(dim=1, keepdim=True)).reshape(-1)

    def _mean_square_magnitude(self, rows: int) -> float:
        """E[u^2] for tile columns of ``rows`` used rows."""
        if rows not in self._mean_squares:
            self._mean_squares[rows] = float(self._magnitudes(rows).square().mean())
        return self._mean_squares[rows]

    def _inputs(self, inputs: int) -> torch.Tensor:
        """Gaussian input vectors of length ``inputs`` as the DAC sees them (scaled to [-1, 1], clipped if static)."""
        tile = self.config.tile
        vectors = max(1, min(SAMPLE_COLUMNS, INPUT_SAMPLES // max(inputs, 1)))
        generator = torch.Generator().manual_seed(self._inputs_generator_seed)
        x = torch.randn(vectors, inputs, generator=generator, dtype=torch.float64)
        if tile.input_range > 0:
            return (x / 3).clamp(-1.0, 1.0)  # inputs assumed N(0, (range/3)^2): x / range = z / 3
        return x / x.abs().amax(dim=1, keepdim=True)

    # ------------------------------------------------------------------ budget
    def budget(self, inputs: int, outputs: int, dac_rounding: bool = True, adc_rounding: bool = True) -> ErrorBudget:
        """The error budget of a product with ``inputs`` (reduction length) and ``outputs`` (columns); without
        ``dac_rounding`` / ``adc_rounding`` for a layer inside a chain that takes / gives analog values."""
        key = (max(inputs, 1), max(outputs, 1), dac_rounding, adc_rounding)
        if key not in self._budgets:
            self._budgets[key] = self._budget(*key)
        return self._budgets[key]

    def chain_budget(self, shapes: list[tuple[int, int]]) -> ErrorBudget:
        """The error budget of a chain of products of (inputs, outputs) ``shapes`` rounded at its two ends only; one
        shape gives ``budget``'s numbers. Terms are named ``effect`` for one layer, ``effect (layer j)`` for several."""
        terms: dict[str, float] = {}
        last = len(shapes) - 1
        for j, (inputs, outputs) in enumerate(shapes):
            layer = self.budget(inputs, outputs, dac_rounding=j == 0, adc_rounding=j == last)
            terms.update({(name if last == 0 else f"{name} (layer {j})"): value for name, value in layer.terms.items()})
        return ErrorBudget(terms, inputs=shapes[0][0])

    def worst(self, max_inputs: int) -> ErrorBudget:
        """The largest expected error over reduction lengths 1, 2, 4, ... up to ``max_inputs`` on full-width tiles."""
        lengths = sorted({1 << i for i in range(max(max_inputs, 1).bit_length())} | {max(max_inputs, 1), self.config.tile.rows})
        return max((self.budget(k, self.config.tile.cols) for k in lengths if k <= max(max_inputs, 1)), key=lambda b: b.error)

    def _budget(self, inputs: int, outputs: int, dac_rounding: bool, adc_rounding: bool) -> ErrorBudget:
        tile, effects = self.config.tile, self.config.effects
        grid = TileGrid(1, inputs, outputs, tile.rows, tile.cols)
        rows_used = min(inputs, tile.rows)
        cols_used = min(outputs, tile.cols)
        if (rows_used, cols_used) not in self._weight_budgets:
            u2 = self._mean_square_magnitude(rows_used)
            weight_terms, read_gain = self._weight_terms(self._magnitudes(rows_used), rows_used, cols_used)
            self._weight_budgets[rows_used, cols_used] = ({name: value / u2 for name, value in weight_terms.items()}, read_gain)
        weight_terms, read_gain = self._weight_budgets[rows_used, cols_used]
        terms = dict(weight_terms)
        x = self._inputs(inputs)
        x2 = float(x.square().mean())
        if effects.quantization and dac_rounding:
            steps = tile.dac_steps
            terms["dac_rounding"] = float((x - torch.round(x * steps) / steps).square().mean()) / x2
        elif tile.input_range > 0:
            terms["dac_clipping"] = 0.0
        # one tile read: the sum of the row blocks' partial sums; each block adds its own read errors
        full, last = divmod(inputs, tile.rows)
        blocks = [(tile.rows, full)] + ([(last, 1)] if last else [])
        signal = sum(k * x2 * self._mean_square_magnitude(k) * count for k, count in blocks) / grid.row_blocks
        terms.update(self._read_terms(signal, read_gain, adc_rounding))
        return ErrorBudget(terms, inputs=inputs)

    def _weight_terms(self, u: torch.Tensor, rows: int, cols: int) -> tuple[dict[str, float], float]:
        """Variances (normalised weight units^2) the conductances add, averaged over the magnitudes ``u``, and the
        mean gain drift and IR drop leave on the currents the ADC reads (1 without them)."""
        cfg = self.config
        tile, effects, model = cfg.tile, cfg.effects, cfg.pcm
        span = tile.g_max_us - tile.g_min_us
        terms: dict[str, float] = {}
        if effects.quantization:
            steps = tile.conductance_levels - 1
            terms["conductance_levels"] = float((u - torch.round(u * steps) / steps).square().mean())
            u = torch.round(u * steps) / steps
        active = tile.g_min_us + span * u
        idle = torch.full((1,), tile.g_min_us, dtype=active.dtype)  # every idle device sits at g_min
        if effects.programming_noise:
            terms["programming"] = float((self._programming_variance(active) + self._programming_variance(idle)).mean()) / span**2
        age = cfg.pcm.drift_reference_time_s + self.read_age_s
        if effects.read_noise:
            read = [g * pcm.read_noise_sigma(g, tile.g_max_us, self.read_age_s, model) for g in (active, idle)]
            terms["read_noise"] = float((read[0].square() + read[1].square()).mean()) / span**2
        drift_on = effects.drift and self.read_age_s > 0
        ir_on = effects.ir_drop and tile.wire_resistance_ohm > 0
        read_gain = 1.0
        if drift_on or ir_on:
            f1a, f2a = self._drift_moments(active, age) if drift_on else (torch.ones_like(active), torch.ones_like(active))
            f1i, f2i = self._drift_moments(idle, age) if drift_on else (torch.ones_like(idle), torch.ones_like(idle))
            F1, F2 = self._ir_moments(float(active.mean() + idle.mean()), rows, cols) if ir_on else (1.0, 1.0)
            diff = active - idle
            power = float(diff.square().mean())
            # least-squares gain of the drifted, attenuated pairs: what the currents keep, what compensation divides by
            read_gain = F1 * float((diff * (active * f1a - idle * f1i)).mean()) / power if power > 0 else 1.0
            gain = read_gain if effects.drift_compensation else 1.0
            # E[(g_a (f_a F / c - 1) - g_i (f_i F / c - 1))^2], devices independent, F shared by a position
            mean_a = active * (f1a * F1 / gain - 1)
            mean_i = idle * (f1i * F1 / gain - 1)
            second_a = active.square() * (f2a * F2 / gain**2 - 2 * f1a * F1 / gain + 1)
            second_i = idle.square() * (f2i * F2 / gain**2 - 2 * f1i * F1 / gain + 1)
            terms["drift_and_ir_drop"] = float((second_a + second_i - 2 * mean_a * mean_i).mean()) / span**2
        if effects.stuck_faults:
            terms["stuck_devices"] = (tile.stuck_at_gmin_rate + tile.stuck_at_gmax_rate) * float(u.square().mean())
        return terms, read_gain

    def _programming_variance(self, g: torch.Tensor) -> torch.Tensor:
        """Mean squared error (uS^2) of a device programmed to ``g`` after write-verify."""
        cfg = self.config
        tile, effects, model = cfg.tile, cfg.effects, cfg.pcm
        sigma = pcm.programming_sigma_us(g, tile.g_max_us, model).clamp(min=1e-12)
        if g.min() <= 0:
            # an attempt is clamped at 0 S: below the target only the clamp remains
            sigma = torch.where(g <= 0, sigma / math.sqrt(2), sigma)
        rounds = tile.write_verify_iterations
        if rounds == 0:
            return sigma.square()
        verify_noise = g * pcm.read_noise_sigma_after(g, tile.g_max_us, cfg.energy.program_pulse_time_s, model) if effects.read_noise else torch.zeros_like(g)
        tolerance = torch.sqrt(tile.write_verify_tolerance_us**2 + verify_noise.square())
        c = tolerance / sigma
        outside = 2 * (1 - _normal_cdf(c))
        fresh = outside**rounds
        return sigma.square() * ((1 - fresh) * _truncated_variance(c) + fresh)

    def _drift_moments(self, g: torch.Tensor, age_s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """E[f] and E[f^2] of the drift factor f = (age / t0)^-nu, nu ~ |N(mu(g), sigma(g))| (Gauss-Hermite)."""
        model = self.config.pcm
        mu, sigma = pcm.drift_exponent_statistics(g, self.config.tile.g_max_us, model)
        nodes, weights = _hermite()
        nu = (mu[:, None] + sigma[:, None] * nodes[None, :]).abs()
        log_ratio = math.log(age_s / model.drift_reference_time_s)
        f = torch.exp(-nu * log_ratio)
        return (f * weights).sum(dim=1), (f.square() * weights).sum(dim=1)

    def _ir_moments(self, pair_us: float, rows: int, cols: int) -> tuple[float, float]:
        """Mean and mean square of the first-order IR-drop factor (``tile.ir_drop_factor``) over the used
        ``rows`` x ``cols`` cells of a tile whose device pairs all hold ``pair_us`` (G+ + G-, split evenly).

        On such a uniform tile the factor separates, ``F(i, c) = 1 - word(c) - bit(i)``, with the word-line drop
        ``r G c (c + 1) / 2 + r G c (cols - c)`` (pair conductance G) and the bit-line drop
        ``r g ((n + 1 - i) i + sum_{i < m <= rows} (n + 1 - m))`` (device conductance g = G / 2, n tile rows).
        """
        r, n = self.config.tile.wire_resistance_ohm, self.config.tile.rows
        pair_s = pair_us * 1e-6
        c = torch.arange(1, cols + 1, dtype=torch.float64)
        word = r * pair_s * (c * (c + 1) / 2 + c * (cols - c))
        i = torch.arange(1, rows + 1, dtype=torch.float64)
        far = n + 1 - i
        downstream = far.sum() - torch.cumsum(far, dim=0)
        bit = r * (pair_s / 2) * (far * i + downstream)
        mean_w, mean_b = float(word.mean()), float(bit.mean())
        mean_square = 1 + float(word.square().mean()) + float(bit.square().mean()) - 2 * mean_w - 2 * mean_b + 2 * mean_w * mean_b
        return 1 - mean_w - mean_b, mean_square

    def _read_terms(self, signal: float, read_gain: float, rounding: bool = True) -> dict[str, float]:
        """Relative variances of output noise and of the ADC (rounding and saturation) for tile reads of mean square
        ``signal`` at full conductance, of which the currents keep ``read_gain`` (drift, IR drop). The ADC error is
        averaged over a Gaussian read (the kept signal plus output noise) on a fine grid. Drift compensation divides
        the outputs by the gain again, and so the read errors too: against the reference they grow by 1 / gain^2."""
        tile, effects = self.config.tile, self.config.effects
        terms: dict[str, float] = {}
        reference = signal * (read_gain**2 if effects.drift_compensation else 1.0)
        noise = tile.output_noise if effects.output_noise else 0.0
        if noise > 0:
            terms["output_noise"] = noise**2 / reference
        z = torch.linspace(-ADC_GRID_SIGMAS, ADC_GRID_SIGMAS, ADC_GRID_POINTS, dtype=torch.float64)
        density = torch.exp(-0.5 * z * z)
        density = density / density.sum()
        read = z * math.sqrt(signal * read_gain**2 + noise**2)
        digitised = read.clamp(-tile.adc_full_scale, tile.adc_full_scale)
        if effects.quantization and rounding:
            step = tile.adc_full_scale / tile.adc_steps
            digitised = torch.round(digitised / step) * step
        terms["adc" if rounding else "output_swing"] = float(((read - digitised).square() * density).sum()) / reference
        return terms


def _hermite() -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of E[h(z)], z ~ N(0, 1) (probabilists' Gauss-Hermite)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(HERMITE_NODES)
    return torch.as_tensor(nodes), torch.as_tensor(weights / weights.sum())
