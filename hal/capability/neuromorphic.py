"""The neuromorphic section of a capability: chips, neuro cores, per-core and per-chip limits, number formats.

Stored under ``Capabilities.sections["neuromorphic"]``. Pure data (standard library only). Every number is a
Figure saying where it comes from: Intel's published Loihi 2 figures (``datasheet:``), the bit widths of lava's
bit-accurate models (``datasheet:lava-nc ...``), a formula over those (``derived:``), or an engineering choice of
the emulator (``assumed:``, e.g. the system size the device string declares).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hal.capability.figures import Figure


@dataclass(frozen=True)
class NeuroCoreLimits:
    """What one neuro core holds: neurons, synaptic memory, and the synapses that memory stores at a weight width."""

    neurons: Figure
    synaptic_memory_bytes: Figure
    synapses_at_weight_bits: Figure


@dataclass(frozen=True)
class ChipLimits:
    """What one chip holds: its neuro cores, neurons and synapses."""

    neuro_cores: Figure
    neurons: Figure
    synapses: Figure


@dataclass(frozen=True)
class NumberFormats:
    """Bit widths of the neuron and synapse state (signed unless named unsigned)."""

    weight_bits: Figure
    weight_exponent_bits: Figure
    current_bits: Figure
    voltage_bits: Figure
    threshold_mantissa_bits_unsigned: Figure
    decay_bits_unsigned: Figure
    bias_mantissa_bits: Figure
    bias_exponent_bits_unsigned: Figure
    graded_spike_payload_bits: Figure


@dataclass(frozen=True)
class NeuromorphicSection:
    """A spiking system: how many chips, what each chip and core holds, the number formats, the neuron model.

    ``neuron_model`` names the dynamics the device computes; ``backends`` maps each execution back end (the
    bit-accurate engine, lava's simulator, lava on Loihi 2 hardware) to whether it is usable here and why not.
    """

    chips: Figure
    neuron_model: str
    core: NeuroCoreLimits
    chip: ChipLimits
    system: ChipLimits
    formats: NumberFormats
    backends: dict[str, str] = field(default_factory=dict)
