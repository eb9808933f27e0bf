"""Placing LIF layers onto Loihi 2 neuro cores and chips, within each core's and chip's limits.

A core holds up to ``neurons_per_core`` neurons and, in its synaptic memory, the fan-in synapses of those
neurons (8-bit weights by default). Each layer gets its own cores (a layer's neurons are spread evenly over
``ceil(neurons / per_core)`` cores, where ``per_core`` is the smaller of the neuron limit and what the synaptic
memory holds at that layer's fan-in). The cores fill chips of ``neuro_cores_per_chip``; a system of
``chips`` chips (the ``?chips=`` option) is a multi-chip board. What does not fit raises CapacityExceeded
naming the limit it hit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hal.errors import CapacityExceeded

INTEL_BRIEF = "Intel Labs, 'Taking Neuromorphic Computing to the Next Level with Loihi 2', technology brief, 2021"


@dataclass(frozen=True)
class Loihi2Spec:
    """Per-chip and per-core resources of Intel Loihi 2.

    Source: Intel Labs' Loihi 2 technology brief (2021): 128 neuro cores per chip, up to 1,048,576 neurons and
    120 million synapses per chip, 8-bit weights (lava's ``num_weight_bits`` default). The 128 KiB of synaptic
    memory per core is hal's assumption: Loihi 2 partitions a core's memory flexibly between synapses, neuron
    state and routing. Neurons per core is derived: neurons_per_chip / neuro_cores_per_chip.
    """

    neuro_cores_per_chip: int = 128
    neurons_per_chip: int = 1_048_576
    synapses_per_chip: int = 120_000_000
    synaptic_memory_per_core_bytes: int = 128 * 1024
    weight_bits: int = 8

    @property
    def neurons_per_core(self) -> int:
        return self.neurons_per_chip // self.neuro_cores_per_chip

    @property
    def synapses_per_core(self) -> int:
        """Dense synapses a core's memory stores at ``weight_bits`` each."""
        return self.synaptic_memory_per_core_bytes * 8 // self.weight_bits


@dataclass(frozen=True)
class LayerShape:
    """What the mapper needs of a layer: its neurons and each neuron's fan-in (synapses stored per neuron)."""

    neurons: int
    fan_in: int


@dataclass(frozen=True)
class LayerPlacement:
    """Where one layer went: cores used, neurons per core, synapses it stores."""

    layer: int
    neurons: int
    synapses: int
    cores: int
    neurons_per_core: int


@dataclass(frozen=True)
class Mapping:
    """A placed network: per-layer placements, and the cores and chips the whole network uses."""

    layers: tuple[LayerPlacement, ...]
    cores: int
    chips: int
    neurons: int
    synapses: int


def map_layers(shapes: Sequence[LayerShape], spec: Loihi2Spec, chips: int) -> Mapping:
    """Place ``shapes`` on a ``chips``-chip Loihi 2 system, or raise CapacityExceeded naming the limit."""
    per_neuron_limit = spec.synapses_per_core
    placements = []
    for i, shape in enumerate(shapes):
        if shape.fan_in > per_neuron_limit:
            raise CapacityExceeded(
                f"layer {i}: one neuron has {shape.fan_in} input synapses, more than a neuro core's synaptic memory holds "
                f"({spec.synaptic_memory_per_core_bytes} bytes = {per_neuron_limit} synapses at {spec.weight_bits} bits); split the layer's inputs",
                needed=shape.fan_in,
                available=per_neuron_limit,
            )
        per_core = min(spec.neurons_per_core, per_neuron_limit // max(shape.fan_in, 1))
        cores = math.ceil(shape.neurons / per_core)
        placements.append(LayerPlacement(i, shape.neurons, shape.neurons * shape.fan_in, cores, math.ceil(shape.neurons / cores)))
    cores = sum(p.cores for p in placements)
    available_cores = chips * spec.neuro_cores_per_chip
    if cores > available_cores:
        need_chips = math.ceil(cores / spec.neuro_cores_per_chip)
        raise CapacityExceeded(
            f"the network needs {cores} neuro cores ({need_chips} chip(s) of {spec.neuro_cores_per_chip}); this system has {chips} chip(s) = "
            f"{available_cores} cores. Pass ?chips={need_chips} for a multi-chip system or shrink the network",
            needed=cores,
            available=available_cores,
        )
    synapses = sum(p.synapses for p in placements)
    if synapses > chips * spec.synapses_per_chip:
        raise CapacityExceeded(
            f"the network stores {synapses} synapses; {chips} chip(s) hold {chips * spec.synapses_per_chip} "
            f"({spec.synapses_per_chip} per chip). Pass ?chips={math.ceil(synapses / spec.synapses_per_chip)} or prune",
            needed=synapses,
            available=chips * spec.synapses_per_chip,
        )
    return Mapping(tuple(placements), cores, math.ceil(cores / spec.neuro_cores_per_chip), sum(p.neurons for p in placements), synapses)
