"""Subgraph claims in a plan: each stage of two or more nodes on a device is offered to it as one ``Subgraph``.

After placement the runtime describes every device stage (the executor's maximal run of consecutive nodes on
one device, ``hal.runtime.executor.build_stages``) as a ``hal.subgraph.Subgraph``: the stage's ops in order,
each input wired to the op of the stage that produces it or to an external input (a value made elsewhere),
and as outputs the nodes whose values another stage or the plan's outputs read. It asks ``device.claim(sub)``.
When the device claims it, and its ``estimate_subgraph`` is no worse under the plan's policy than the sum of
the ops' own estimates, the stage runs as one Program (``prepare_subgraph``) whose intermediates stay on the
device; otherwise op by op, as before, and the plan says why.

Placement itself still minimises per-node costs: a claim can make a stage cheaper than the plan's placement
assumed, never dearer, and it never moves a node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hal.device import Cost, Device
from hal.runtime.capture import Graph
from hal.subgraph import Subgraph

#: Which Cost component each policy compares (the placement's primary objective).
_COMPONENT = {"latency": "latency_s", "energy": "energy_j", "accuracy": "error"}


@dataclass(frozen=True)
class StageClaim:
    """What a device answered for one stage, and what the runtime made of it.

    ``inputs`` name the values the subgraph takes, in its external-input order; ``outputs`` the nodes whose
    values leave it, in the order its Program returns them (``subgraph`` is None when none do). ``claimed`` is
    true when the stage runs as one Program; ``reason`` says why not otherwise. ``cost`` is the device's
    ``estimate_subgraph`` (None when it declined or failed to answer), ``per_op`` the sum of the nodes' own estimates.
    """

    device: str
    nodes: tuple[int, ...]
    names: tuple[str, ...]
    subgraph: Subgraph | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    claimed: bool
    reason: str
    cost: Cost | None
    per_op: Cost

    @property
    def stage_cost(self) -> Cost:
        """The cost the plan counts for this stage: the claim's when claimed, else the per-op sum."""
        return self.cost if self.claimed and self.cost is not None else self.per_op


def readers_of(graph: Graph) -> dict[str, list[int]]:
    """Value name -> indices of the nodes that read it (once per node)."""
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.nodes):
        for r in dict.fromkeys(node.inputs):
            readers.setdefault(r, []).append(i)
    return readers


def stage_subgraph(graph: Graph, nodes: Sequence[int], readers: dict[str, list[int]]) -> tuple[Subgraph | None, tuple[str, ...], tuple[str, ...]]:
    """The Subgraph of ``nodes`` (device nodes in topological order), its external input names and its output names.

    The Subgraph is None when no value of the stage is read outside it (nothing would leave the Program).
    """
    members = set(nodes)
    position = {graph.nodes[i].name: k for k, i in enumerate(nodes)}
    externals: dict[str, int] = {}
    sources = []
    for i in nodes:
        wired = []
        for r in graph.nodes[i].inputs:
            k = position.get(r)
            wired.append(k if k is not None else -(externals.setdefault(r, len(externals)) + 1))
        sources.append(tuple(wired))
    leaving = set(graph.outputs)
    outputs = tuple(k for k, i in enumerate(nodes) if graph.nodes[i].name in leaving or any(u not in members for u in readers.get(graph.nodes[i].name, ())))
    names = tuple(graph.nodes[nodes[k]].name for k in outputs)
    if not outputs:
        return None, tuple(externals), names
    return Subgraph(tuple(graph.nodes[i].op for i in nodes), tuple(sources), outputs), tuple(externals), names


class Claims:
    """The claims of one plan's graph under one policy: each stage's answer, kept by (device, nodes), and each
    device's answer for a subgraph, kept by value (repeated layers make equal subgraphs: a device is asked once)."""

    def __init__(self, graph: Graph, policy: str):
        self.graph = graph
        self.policy = policy
        self.readers = readers_of(graph)
        self._stages: dict[tuple[str, tuple[int, ...]], StageClaim] = {}
        self._answers: dict[tuple[str, Subgraph], tuple[bool, str, Cost | None]] = {}

    def of(self, device: Device, nodes: Sequence[int], node_costs: Sequence[Cost]) -> StageClaim:
        """The claim for the stage ``nodes`` on ``device``, asked on first use (see the module docstring)."""
        key = (str(device), tuple(nodes))
        found = self._stages.get(key)
        if found is None:
            found = self._ask(device, key[1], node_costs)
            self._stages[key] = found
        return found

    def _ask(self, device: Device, nodes: tuple[int, ...], node_costs: Sequence[Cost]) -> StageClaim:
        sub, inputs, outputs = stage_subgraph(self.graph, nodes, self.readers)
        costs = [node_costs[i] for i in nodes]
        per_op = Cost(sum(c.latency_s for c in costs), sum(c.energy_j for c in costs), sum(c.error for c in costs), "sum of the ops' estimates")
        names = tuple(self.graph.nodes[i].name for i in nodes)
        if sub is None:
            claimed, reason, cost = False, "no value of this stage is read outside it; it runs op by op", None
        else:
            answer = self._answers.get((str(device), sub))
            if answer is None:
                answer = _answer(device, sub)
                self._answers[(str(device), sub)] = answer
            claimed, reason, cost = answer
        field = _COMPONENT[self.policy]
        if claimed and getattr(cost, field) > getattr(per_op, field):
            claimed, reason = False, f"{device} claims it, but estimates the group at {getattr(cost, field):.3g} {field}, above the ops' sum {getattr(per_op, field):.3g}"
        return StageClaim(str(device), nodes, names, sub, inputs, outputs, claimed, reason, cost, per_op)


def _answer(device: Device, sub: Subgraph) -> tuple[bool, str, Cost | None]:
    """(claims it, why not, its estimate) from the device; a driver that raises declines, with the error as the reason."""
    try:
        support = device.claim(sub)
        if not support:
            return False, support.reason, None
        return True, "", device.estimate_subgraph(sub)
    except Exception as exc:  # noqa: BLE001 (a driver bug must not sink the plan: the stage just runs op by op)
        return False, f"{device} failed to answer for the group: {type(exc).__name__}: {exc}", None
