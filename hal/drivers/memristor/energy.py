"""Energy and latency of the crossbar: what one read and one programming cost, from cited constants.

A read drives each word line with a pulse-width-modulated voltage (duration proportional to the input, full
scale ``dac_steps`` clock periods), so a device of conductance G under input fraction |x| dissipates
``v_read^2 * G * |x| * t_pulse``. Every tile's inputs are driven by its own DACs (charged per input bit) and
every tile column is digitised by an ADC (charged per conversion). Programming costs one pulse energy per
pulse plus the verify reads. The constants and their sources are in ``config.EnergyConstants``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from hal.drivers.memristor.config import CrossbarConfig

SIEMENS_PER_US = 1e-6


@dataclass
class ProgrammingReport:
    """What writing the conductances cost and how close they came to their targets."""

    devices: int = 0
    pulses: int = 0
    verify_reads: int = 0
    stuck_at_gmin: int = 0
    stuck_at_gmax: int = 0
    residual_rms_us: float = 0.0
    """RMS of (programmed - target) conductance over programmed devices, right after write-verify."""
    residual_relative: float = 0.0
    """``residual_rms_us / g_max``."""
    energy_j: float = 0.0
    time_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class ReadCounters:
    """Accumulated read statistics: conversions, clipping, saturation, energy and time."""

    calls: int = 0
    vectors: int = 0
    dac_conversions: int = 0
    dac_clipped: int = 0
    """Input values beyond the static DAC range, clipped to it (0 when inputs are scaled per vector)."""
    adc_conversions: int = 0
    adc_saturated: int = 0
    """Partial sums beyond the ADC full scale, saturated."""
    array_energy_j: float = 0.0
    dac_energy_j: float = 0.0
    adc_energy_j: float = 0.0
    latency_s: float = 0.0

    @property
    def energy_j(self) -> float:
        return self.array_energy_j + self.dac_energy_j + self.adc_energy_j

    def add(self, other: ReadCounters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, float]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["energy_j"] = self.energy_j
        return out


def pulse_time_s(config: CrossbarConfig) -> float:
    """Duration of a full-scale PWM input pulse: ``dac_steps`` clock periods."""
    return config.tile.dac_steps * config.energy.clock_period_s


def read_time_s(config: CrossbarConfig) -> float:
    """Time of one input vector through a tile: the full-scale PWM pulse plus one ADC conversion (one ADC per
    column, as on the HERMES core; all tiles work in parallel)."""
    return pulse_time_s(config) + config.energy.adc_conversion_time_s


def read_counters(
    config: CrossbarConfig,
    stack: int,
    batch: int,
    inputs: int,
    outputs: int,
    row_blocks: int,
    col_blocks: int,
    duty_conductance_s: float,
    clipped: int = 0,
    saturated: int = 0,
    adc_used: bool = True,
) -> ReadCounters:
    """Counters of one read of ``batch`` vectors through a (stack, inputs, outputs) weight on its tiles.

    ``duty_conductance_s`` is sum over vectors and devices of |x| * G (siemens), the array's Joule term.
    ``adc_used`` False: the outputs leave in analog form inside a claimed chain (no conversion, no conversion time);
    the word-line drive is charged as the DAC's either way (the analog transfer of ``chain.py``).
    """
    energy = config.energy
    dac = stack * batch * inputs * col_blocks
    adc = stack * batch * row_blocks * outputs if adc_used else 0
    return ReadCounters(
        calls=1,
        vectors=stack * batch,
        dac_conversions=dac,
        dac_clipped=clipped,
        adc_conversions=adc,
        adc_saturated=saturated,
        array_energy_j=duty_conductance_s * energy.read_voltage_v**2 * pulse_time_s(config),
        dac_energy_j=dac * (config.tile.dac_bits - 1) * energy.dac_energy_per_bit_j,
        adc_energy_j=adc * energy.adc_energy_j,
        latency_s=batch * (read_time_s(config) if adc_used else pulse_time_s(config)),
    )


def expected_read_counters(
    config: CrossbarConfig, stack: int, batch: int, inputs: int, outputs: int, mean_pair_conductance_us: float, adc_used: bool = True
) -> ReadCounters:
    """Read counters before running: inputs assumed to use half the DAC range on average (duty 1/2), every
    used device pair at ``mean_pair_conductance_us`` (G+ + G-)."""
    tile = config.tile
    row_blocks = -(-inputs // tile.rows)
    col_blocks = -(-outputs // tile.cols)
    duty_conductance = stack * batch * inputs * outputs * 0.5 * mean_pair_conductance_us * SIEMENS_PER_US
    return read_counters(config, stack, batch, inputs, outputs, row_blocks, col_blocks, duty_conductance, adc_used=adc_used)
