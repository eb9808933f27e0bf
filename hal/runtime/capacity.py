"""What a device can hold resident, read from its capabilities, and how much of it each placed node takes.

A placed node keeps its Program, and with it its weights, resident on its device for the plan's lifetime, so the
nodes placed on one device must fit it together. Two capacities are declared generically:

* ``Capabilities.memory_bytes``: the bytes of bound weights (``Node.params``) of the nodes on the device;
* an analog crossbar (``Capabilities.sections["analog"].tiles``, ``hal.capability.analog.CrossbarTiles``):
  ``count`` tiles of ``rows`` x ``cols`` weights. A node that stores a K x N matrix in the crossbar takes
  ``stack * ceil(K / rows) * ceil(N / cols)`` tiles: ``linear`` its weight (K = in_features), ``conv2d`` its
  weight unrolled per group (K = in_channels / groups * kernel area, N = out_channels / groups, stacked by
  groups), ``matmul`` its ``b`` operand per broadcast batch (written on every call, into tiles it holds).

Placement moves nodes off a device until each capacity holds (``hal.runtime.placement``); without this a crossbar
with fewer tiles than layers overwrites its oldest layers on every run and reprograms them, at a cost the
estimates (which assume resident weights) do not show.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hal.capability import Figure
from hal.capability.analog import AnalogSection
from hal.device import Device, OpSpec
from hal.runtime.capture import Node


@dataclass(frozen=True)
class Capacity:
    """One resource of a device that placed nodes hold: what it is counted in (``what``: "B of weights",
    "crossbar tiles of 256x256"), how much there is, where that figure comes from, and what a node takes."""

    what: str
    available: float
    source: str
    need: Callable[[Node], float]


def weight_bytes(node: Node) -> float:
    """Bytes of the node's bound weights."""
    return float(sum(t.numel() * t.element_size() for t in node.params.values()))


def stored_matrix(op: OpSpec) -> tuple[int | None, int | None, int | None] | None:
    """(stack, K, N) of the matrices a crossbar stores for ``op`` (None for a size left open), or None when it stores none."""
    if op.name == "linear":
        out_features, in_features = op.param("weight").shape
        return 1, in_features, out_features
    if op.name == "conv2d":
        out_channels, per_group, kh, kw = op.param("weight").shape
        groups = op.attr("groups")
        return groups, per_group * kh * kw, out_channels // groups
    if op.name == "matmul":
        a, b = op.inputs[0].shape, op.inputs[1].shape
        if any(s is None for s in (*a[:-2], *b[:-2])):
            return None, b[-2], b[-1]
        return math.prod(torch.broadcast_shapes(a[:-2], b[:-2])), b[-2], b[-1]
    return None


def tiles_needed(op: OpSpec | None, rows: int, cols: int) -> float:
    """Crossbar tiles of ``rows`` x ``cols`` the op holds; infinite when a size it stores is open (cannot be shown to fit)."""
    matrix = stored_matrix(op) if op is not None else None
    if matrix is None:
        return 0.0
    if any(s is None for s in matrix):
        return math.inf
    stack, k, n = matrix
    return float(stack * -(-k // rows) * -(-n // cols))


def capacities(device: Device) -> list[Capacity]:
    """The capacities ``device`` declares (none for a device that declares neither)."""
    caps = device.capabilities
    out = []
    if caps.memory_bytes is not None:
        out.append(Capacity("B of weights", caps.memory_bytes.value, caps.memory_bytes.source, weight_bytes))
    section = caps.sections.get("analog")
    if isinstance(section, AnalogSection):
        tiles = section.tiles
        rows, cols, count = int(_number(tiles.rows)), int(_number(tiles.cols)), _number(tiles.count)
        source = "capabilities.sections['analog'].tiles.count" + (f", {tiles.count.source}" if isinstance(tiles.count, Figure) else "")

        def tiles_of(node: Node) -> float:
            return tiles_needed(node.op, rows, cols)

        out.append(Capacity(f"crossbar tiles of {rows}x{cols}", float(count), source, tiles_of))
    return out


def _number(value: Figure | float) -> float:
    """A tile figure's value (the analog section declares them as Figures; plain numbers are read as given)."""
    return value.value if isinstance(value, Figure) else value
