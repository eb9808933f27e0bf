"""What a device can do, as plain data: identity, paradigm, ops with constraints, memory, rates, energy.

This module is pure data (standard library only) so that capability files can be read, written and
validated without torch. Paradigm-specific detail (GPU architecture, neuromorphic cores, qubits,
crossbar tiles, MZI meshes) lives in a section dataclass from the sibling modules, stored under
``Capabilities.sections[<paradigm name>]``.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from hal.capability.figures import Figure


class Paradigm(str, enum.Enum):
    """How a device computes."""

    DIGITAL = "digital"
    ANALOG = "analog"
    SPIKING = "spiking"
    QUANTUM = "quantum"
    PHOTONIC = "photonic"


@dataclass(frozen=True)
class OpSupport:
    """One op a device runs, and under what constraints.

    ``tolerance`` maps a dtype name to the largest relative error the device promises against the
    float64 reference, measured as ||out - ref||_F / ||ref||_F on random inputs; the conformance kit
    holds the device to it. ``limits`` holds named size limits (e.g. ``max_in_features``).
    """

    dtypes: tuple[str, ...]
    tolerance: dict[str, float]
    limits: dict[str, int] = field(default_factory=dict)
    notes: str = ""


@dataclass
class Capabilities:
    """Everything `hal query` shows about one device."""

    uri: str
    kind: str
    paradigm: Paradigm
    simulated: bool
    identity: dict[str, str]
    ops: dict[str, OpSupport]
    deterministic: bool = True
    #: True when every estimate of this device (``estimate``, ``estimate_subgraph``) already includes the conversion of
    #: tensors into and out of its paradigm at its edge (Loihi 2's rate encode and decode as host memory traffic); the
    #: planner then charges a crossing into or out of it the link only, so the conversion is counted once.
    estimates_include_edge_conversion: bool = False
    memory_bytes: Figure | None = None
    peak: dict[str, Figure] = field(default_factory=dict)
    energy: dict[str, Figure] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, valid against ``hal/capability/schema.json``."""
        return to_jsonable(self)


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, enums, tuples and nested containers into JSON-ready values."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        raise ValueError("a capability holds NaN; report an unknown figure as absent, not NaN")
    return obj
