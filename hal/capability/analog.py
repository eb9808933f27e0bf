"""The analog section of a capability: crossbar tiles, device conductances, converters, non-idealities.

Stored under ``Capabilities.sections["analog"]``. Pure data (standard library only). Every number is a Figure
that says whether it comes from a paper (device statistics, converter energies, tile sizes), is derived from
other figures (weight counts, peak rates, the expected error), or is an assumption of the emulator (fault rates,
pulse energies, values set by a device option).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hal.capability.figures import Figure


@dataclass(frozen=True)
class CrossbarTiles:
    """How many crossbar tiles a device has and what one holds (a weight = a differential pair G+ / G-)."""

    rows: Figure
    cols: Figure
    count: Figure
    devices_per_weight: Figure
    weights_total: Figure


@dataclass(frozen=True)
class Converters:
    """Input DACs and output ADCs of a tile: resolution (bits incl. sign), ranges and cost per conversion."""

    dac_bits: Figure
    adc_bits: Figure
    input_scaling: str
    """``per-vector`` (each input vector scaled by its largest magnitude) or ``static`` (a fixed range; beyond it
    inputs are clipped and counted)."""
    input_range: Figure | None
    adc_full_scale: Figure
    dac_energy_per_bit: Figure
    adc_energy_per_conversion: Figure
    read_time: Figure


@dataclass(frozen=True)
class AnalogSection:
    """What an analog in-memory-computing device is: technology, tiles, conductances, converters, physics."""

    technology: str
    """Memory device the model emulates, e.g. ``PCM``."""
    device_model: str
    """The statistical model and where it comes from."""
    tiles: CrossbarTiles
    conductance_min: Figure
    conductance_max: Figure
    conductance_levels: Figure
    converters: Converters
    nonidealities: dict[str, bool]
    """Which non-idealities are simulated (programming_noise, drift, read_noise, ...)."""
    physics: dict[str, Figure] = field(default_factory=dict)
    """Device statistics and line parameters (programming noise at g_max, drift exponent, wire resistance...)."""
    write_verify: dict[str, Figure] = field(default_factory=dict)
    read_age: Figure | None = None
    """Time after the drift reference t0 at which reads are simulated."""
    accuracy: dict[str, Figure] = field(default_factory=dict)
    """The expected relative error of a product and the share of each effect in it, derived from the configuration
    (``expected_error``, then one root-variance figure per effect)."""
