"""Claimed chains: linear layers run as one Program whose activations stay analog between tiles.

The runtime offers a device a chain of ops (``hal.subgraph``); the crossbar claims a chain of ``linear`` ops, each
with activation ``none`` or ``relu`` (the runtime's capture fuses a ReLU into the linear before it), every layer's
output the next layer's input. Op by op, every layer converts twice: a DAC rounds its inputs, an ADC its outputs.
In a claimed chain only the first layer's DAC and the last layer's ADC round:

The analog transfer (the physical assumption): a tile's output stage turns its column currents into the pulse durations
that drive the next tile's word lines, with no ADC / DAC pair between them, as IBM's analog-AI chip moves activations
between tiles as durations (Ambrogio et al., "An analog-AI chip for energy-efficient speech recognition and
transcription", Nature 620, 768 (2023)). The per-column weight scale, the drift-compensation gain, the bias and the
ReLU are applied by that analog periphery, taken as exact (the digital periphery of a single op is exact too); the
partial sums of a layer's row blocks add as currents. Every other non-ideality stays, layer by layer: conductance
levels, programming noise, drift, read noise, IR drop, stuck devices, output noise and the output stage's swing
(+-``adc_full_scale``, saturating as the ADC would). Inputs of an inner layer are scaled per vector as the DAC's are
(or clipped to ``?input_range``). The output stage is charged the DAC drive it replaces (no new figure), so a chain
saves exactly the ADC conversions, and their conversion time, of every layer but the last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hal.drivers.memristor.compiler import weight_grid
from hal.drivers.memristor.tile import TileGrid
from hal.subgraph import Subgraph, linear_chain_problem

if TYPE_CHECKING:
    from hal.drivers.memristor.driver import MemristorDevice

def chain_grids(device: MemristorDevice, sub: Subgraph) -> list[TileGrid]:
    """The tiles each layer of a chain of linear ops stores."""
    return [weight_grid(op, device.config, str(device.uri)) for op in sub.ops]


def chain_problem(device: MemristorDevice, sub: Subgraph) -> str | None:
    """Why ``device`` does not run ``sub`` as one analog chain, or None when it does."""
    problem = linear_chain_problem(device, sub)
    if problem:
        return problem
    grids = chain_grids(device, sub)
    tiles = sum(g.tiles for g in grids)
    if tiles > device.allocator.count:
        return (
            f"{device.uri} holds {device.allocator.count} tiles; this chain of {len(grids)} layers keeps every layer resident and needs "
            f"{tiles} ({' + '.join(str(g.tiles) for g in grids)}). Pass ?tiles={tiles} or claim a shorter chain"
        )
    return None
