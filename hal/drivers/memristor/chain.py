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

from hal.device import OpSpec
from hal.drivers.memristor.compiler import weight_grid
from hal.drivers.memristor.tile import TileGrid
from hal.subgraph import Subgraph

if TYPE_CHECKING:
    from hal.drivers.memristor.driver import MemristorDevice

NOT_LINEAR = "a relu between two layers is claimed fused into the linear before it (linear(activation='relu'), as the runtime's capture writes it)"


def chain_grids(device: MemristorDevice, sub: Subgraph) -> list[TileGrid]:
    """The tiles each layer of a chain of linear ops stores."""
    return [weight_grid(op, device.config, str(device.uri)) for op in sub.ops]


def chain_problem(device: MemristorDevice, sub: Subgraph) -> str | None:
    """Why ``device`` does not run ``sub`` as one analog chain, or None when it does."""
    if not sub.is_chain:
        return f"{device.uri} claims chains only (each op reading the previous op's output, the last one's result leaving); {sub} is wired otherwise"
    for j, op in enumerate(sub.ops):
        if op.name != "linear":
            hint = NOT_LINEAR if op.name == "relu" else "it claims chains of linear ops only"
            return f"op {j} is {op.name}: {hint}"
        if op.param("weight") is None:
            return f"op {j} (linear) carries no weight spec; describe its weight in the OpSpec's params"
        support = device.supports(op)
        if not support:
            return f"op {j} (linear) does not run on {device.uri}: {support.reason}"
    dtypes = {op.inputs[0].dtype for op in sub.ops}
    if len(dtypes) > 1:
        return f"the chain mixes input dtypes {sorted(str(d) for d in dtypes)}; an analog chain passes one dtype through, cast the layers alike"
    for j in range(1, len(sub.ops)):
        problem = _link_problem(sub.ops[j - 1], sub.ops[j], j)
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


def _link_problem(before: OpSpec, after: OpSpec, j: int) -> str | None:
    """Why op ``j`` (``after``) cannot read op ``j - 1``'s (``before``) output, or None."""
    out_features = before.param("weight").shape[0]
    reads = after.inputs[0].shape
    lead_before, lead_after = before.inputs[0].shape[:-1], reads[:-1]
    if reads[-1] not in (None, out_features) or len(lead_before) != len(lead_after):
        return f"op {j} (linear) reads {reads} but op {j - 1} gives {(*lead_before, out_features)}"
    if any(a is not None and b is not None and a != b for a, b in zip(lead_before, lead_after)):
        return f"op {j} (linear) reads {reads} but op {j - 1} gives {(*lead_before, out_features)}"
    return None
