"""Subgraph claims: a connected group of ops that one device runs as one Program.

The runtime places a model node by node, but a device often does better with a group: Loihi keeps spikes
between layers instead of decoding and re-encoding them, an analog crossbar chain converts once at each
end instead of at every layer, a GPU fuses a chain into fewer kernels. The contract's smallest addition
for that (the idea of ONNX Runtime's ``GetCapability``): the runtime describes a group as a ``Subgraph``,
asks ``device.claim(subgraph)``, and if the answer is yes, ``device.prepare_subgraph(subgraph, params)``
returns one Program whose intermediates never leave the device.

Wiring. ``ops`` are in topological order. ``sources[j]`` says where each input of ``ops[j]`` comes from:
``i >= 0`` is the output of ``ops[i]`` (``i < j``), ``-(k + 1)`` is the subgraph's external input ``k``.
``outputs`` lists the ops whose results leave the group, in the order the Program returns them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hal.device import Device, OpSpec, TensorSpec
from hal.errors import ShapeError


@dataclass(frozen=True)
class Subgraph:
    """A connected group of ops, its wiring and its outputs (see the module docstring). Hashable."""

    ops: tuple[OpSpec, ...]
    sources: tuple[tuple[int, ...], ...]
    outputs: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.ops:
            raise ShapeError("a subgraph needs at least one op")
        if len(self.sources) != len(self.ops):
            raise ShapeError(f"a subgraph of {len(self.ops)} ops needs one source tuple per op, got {len(self.sources)}")
        for j, (op, srcs) in enumerate(zip(self.ops, self.sources)):
            if len(srcs) != len(op.inputs):
                raise ShapeError(f"subgraph op {j} ({op.name}) takes {len(op.inputs)} input(s) but {len(srcs)} source(s) are wired")
            bad = [s for s in srcs if s >= j]
            if bad:
                raise ShapeError(f"subgraph op {j} ({op.name}) reads op(s) {bad}, which do not come before it: list ops in topological order")
        if not self.outputs or any(not 0 <= o < len(self.ops) for o in self.outputs):
            raise ShapeError(f"subgraph outputs {self.outputs} must name ops 0..{len(self.ops) - 1}")
        externals = sorted({-s - 1 for srcs in self.sources for s in srcs if s < 0})
        if externals != list(range(len(externals))):
            raise ShapeError(f"subgraph external inputs must be numbered 0..n-1 without gaps, got {externals}")

    @classmethod
    def chain(cls, ops: Sequence[OpSpec]) -> Subgraph:
        """A linear chain: each op's only input is the previous op's output; the first takes external input 0."""
        for op in ops:
            if len(op.inputs) != 1:
                raise ShapeError(f"a chain links single-input ops; {op.name} takes {len(op.inputs)}")
        return cls(tuple(ops), tuple(((i - 1) if i else -1,) for i in range(len(ops))), (len(ops) - 1,))

    @property
    def is_chain(self) -> bool:
        """Whether every op reads only the previous op's output (the first reads external input 0)."""
        return self.outputs == (len(self.ops) - 1,) and all(srcs == ((i - 1) if i else -1,) for i, srcs in enumerate(self.sources))

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        """The spec of each external input, taken from the first op that reads it."""
        specs: dict[int, TensorSpec] = {}
        for op, srcs in zip(self.ops, self.sources):
            for spec, s in zip(op.inputs, srcs):
                if s < 0:
                    specs.setdefault(-s - 1, spec)
        return tuple(specs[k] for k in range(len(specs)))

    def as_opspec(self) -> OpSpec:
        """The OpSpec a subgraph Program carries: op ``subgraph``, the external input specs, the op names."""
        return OpSpec("subgraph", self.input_specs, attrs={"ops": tuple(op.name for op in self.ops)})

    def __str__(self) -> str:
        return " -> ".join(op.name for op in self.ops)


def run_wired(sub: Subgraph, steps: Sequence[Callable[..., torch.Tensor]], inputs: Sequence[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Run ``steps[j]`` (one callable per op) in order along the subgraph's wiring; return its outputs.

    The reference composition: what a claimed Program must compute, within each op's tolerance. A driver
    whose gain is fewer checks or calls (not a different representation of intermediates) can use it as is.
    """
    values: list[torch.Tensor] = []
    for step, srcs in zip(steps, sub.sources):
        values.append(step(*[inputs[-s - 1] if s < 0 else values[s] for s in srcs]))
    out = tuple(values[o] for o in sub.outputs)
    return out[0] if len(out) == 1 else out


#: Why a separate relu op breaks a claimable chain: the runtime's capture fuses it into the linear before it.
RELU_NOT_FUSED = "a relu between two layers is claimed fused into the linear before it (linear(activation='relu'), as the runtime's capture writes it)"


def linear_chain_problem(device: Device, sub: Subgraph) -> str | None:
    """Why ``sub`` is not a chain of linear ops that ``device`` runs and that link up, or None when it is.

    The checks every device that claims linear chains needs (crossbars, meshes): chain wiring, each op a
    ``linear`` with a weight spec that ``device.supports``, one input dtype, each op reading what the one
    before it gives. The device adds its own (capacity, loss).
    """
    if not sub.is_chain:
        return f"{device.uri} claims chains only (each op reading the previous op's output, the last one's result leaving); {sub} is wired otherwise"
    for j, op in enumerate(sub.ops):
        if op.name != "linear":
            return f"op {j} is {op.name}: {RELU_NOT_FUSED if op.name == 'relu' else 'it claims chains of linear ops only'}"
        if op.param("weight") is None:
            return f"op {j} (linear) carries no weight spec; describe its weight in the OpSpec's params"
        support = device.supports(op)
        if not support:
            return f"op {j} (linear) does not run on {device.uri}: {support.reason}"
    dtypes = {op.inputs[0].dtype for op in sub.ops}
    if len(dtypes) > 1:
        return f"the chain mixes input dtypes {sorted(str(d) for d in dtypes)}; a chain passes one dtype through, cast the layers alike"
    for j in range(1, len(sub.ops)):
        before, after = sub.ops[j - 1], sub.ops[j]
        reads, lead_before = after.inputs[0].shape, before.inputs[0].shape[:-1]
        gives = (*lead_before, before.param("weight").shape[0])
        if reads[-1] not in (None, gives[-1]) or len(lead_before) != len(reads[:-1]) or any(
            a is not None and b is not None and a != b for a, b in zip(lead_before, reads[:-1])
        ):
            return f"op {j} (linear) reads {reads} but op {j - 1} gives {gives}"
    return None
