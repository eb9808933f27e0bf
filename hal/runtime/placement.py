"""Placement: which device runs each node, minimising the policy's objective over the whole graph.

Objective. Every node on a location costs that device's ``estimate(op)``; every value crossing from one
location to another costs ``bytes * (egress[src] + ingress[dst])`` (``hal.runtime.costs``). The policy
picks the component minimised: ``latency`` (sum of latencies: the serial-execution time), ``energy``
(joules) or ``accuracy`` (sum of relative errors, the first-order bound on the output error of a chain).
The other two components break ties with a weight of 1e-6 relative to the primary, so equal-error
placements are still told apart by speed.

Algorithm, linear in nodes x locations:

1. Forward dynamic programming over the topological order: ``best[v][d]`` is the cheapest cost of v's
   inputs' subgraphs plus v on location d. Because transfers are hub-and-spoke, the minimum over the
   producer's location takes O(locations) per edge, not O(locations^2):
   ``min(best[p][d], min_e(best[p][e] + B egress[e]) + B ingress[d])``.
2. Backward choice in reverse topological order, each node taking the location that is cheapest given
   its own best and the locations its users already took.
3. Coordinate descent (at most 4 sweeps): each node moves to the location that lowers the exact objective
   with its neighbours fixed; the objective never increases.

On a chain step 1 is exact (the classical chain DP) and steps 2-3 keep the optimum. On a DAG with fan-out
the forward pass counts a shared producer once per user, so 2-3 repair the choice; the result is a local
optimum of the exact objective, deterministic for the same inputs (ties go to the lowest location index;
locations are the host first, then devices sorted by URI).

Constraints: pins (a node may only go where pinned; a pin to a device that cannot run the op fails here,
before anything runs, with the device's Support reason) and capacities (``hal.runtime.capacity``: the weight
bytes of the nodes on a device must fit its declared ``memory_bytes``, and the crossbar tiles they take its
declared tiles; the largest unpinned nodes are moved off until they fit, then placement reruns;
``CapacityExceeded`` when the pinned ones alone do not fit).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hal.device import Cost, Device, OpSpec, Support
from hal.errors import CapacityExceeded, InvalidInput, UnsupportedOp
from hal.runtime.capacity import Capacity, capacities
from hal.runtime.capture import Graph
from hal.runtime.costs import HOST, Edge, HostModel, edge_rates, transfer_cost

POLICIES = ("latency", "energy", "accuracy")
_COMPONENT = {"latency": 0, "energy": 1, "accuracy": 2}
#: Weight of the non-primary components relative to the primary (tie-breaking only).
TIE_WEIGHT = 1e-6
SWEEPS = 4
INF = math.inf


@dataclass
class Transfer:
    """One value crossing between locations: which value, from where to where, its size and cost."""

    value: str
    consumer: str
    src: int
    dst: int
    nbytes: int
    cost: Cost


@dataclass
class Placement:
    """Where each node runs (index into ``locations``; 0 is the host), with the costs that decided it."""

    policy: str
    locations: list[Device | None]
    assignment: list[int]
    node_costs: list[Cost]
    transfers: list[Transfer]
    notes: list[str] = field(default_factory=list)
    fallback_reasons: dict[str, str] = field(default_factory=dict)

    def label(self, index: int) -> str:
        device = self.locations[index]
        return HOST if device is None else str(device)

    def totals(self) -> Cost:
        """Sum of node and transfer costs (latency as if run serially)."""
        parts = self.node_costs + [t.cost for t in self.transfers]
        return Cost(sum(c.latency_s for c in parts), sum(c.energy_j for c in parts), sum(c.error for c in parts), "sum over nodes and transfers")


class _Queries:
    """Cached ``supports``/``estimate`` answers per device and op: repeated layers are asked once.

    Per device, a first cache by object identity (the graph holds its OpSpecs for the plan's lifetime)
    skips hashing and comparing OpSpecs; a second by value catches equal ops of repeated layers.
    """

    def __init__(self) -> None:
        self._devices: dict[str, tuple[dict[int, tuple[OpSpec, tuple]], dict[OpSpec, tuple]]] = {}

    def asker(self, device: Device):
        """A function ``op -> (Support, Cost | None)`` for one device, with its caches bound."""
        by_id, by_value = self._devices.setdefault(str(device), ({}, {}))

        def ask(op: OpSpec) -> tuple[Support, Cost | None]:
            fast = by_id.get(id(op))
            if fast is not None and fast[0] is op:
                return fast[1]
            answer = by_value.get(op)
            if answer is None:
                try:
                    support = device.supports(op)
                    cost = device.estimate(op) if support else None
                except Exception as exc:  # noqa: BLE001 (a driver bug must not sink the plan: that device just cannot take the node)
                    support, cost = Support.no(f"{device} failed to answer for {op.name}: {type(exc).__name__}: {exc}"), None
                answer = (support, cost)
                by_value[op] = answer
            by_id[id(op)] = (op, answer)
            return answer

        return ask


def _nbytes(spec) -> int:
    if spec is None:
        return 0
    return (spec.numel() or 0) * spec.dtype.itemsize


def resolve_pin(uri: str, locations: Sequence[Device | None]) -> int | None:
    """Location index of a pinned device string (``host`` is the CPU reference), or None if it is not a location."""
    for i, device in enumerate(locations):
        if device is None:
            if uri == HOST:
                return i
        elif device == uri:
            return i
    return None


def place(
    graph: Graph,
    devices: Sequence[Device],
    policy: str,
    pins: Mapping[str, str] | None = None,
    host: HostModel | None = None,
    fixed: Mapping[str, int] | None = None,
    queries: _Queries | None = None,
) -> Placement:
    """Place every node of ``graph`` on the host or one of ``devices``.

    ``pins`` maps node names to device strings; ``fixed`` maps node names to location indices that are
    already decided and paid for (nodes executed before a re-plan): they keep their location at zero cost.
    """
    if policy not in POLICIES:
        raise InvalidInput(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
    # The DP allocates a few small lists per node and creates no reference cycles; generational GC passes
    # over them were the one part of planning growing faster than the node count, so they wait until the end.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _place(graph, devices, policy, pins, host, fixed, queries)
    finally:
        if collecting:
            gc.enable()


def _place(graph, devices, policy, pins, host, fixed, queries) -> Placement:
    host = host or HostModel.default()
    locations: list[Device | None] = [None, *sorted(devices, key=str)]
    queries = queries or _Queries()
    pins = dict(pins or {})
    fixed = dict(fixed or {})
    rates = [edge_rates(d, host) for d in locations]
    specs = graph.specs()
    index = {n.name: i for i, n in enumerate(graph.nodes)}

    candidates, reasons = _candidates(graph, locations, pins, fixed, host, queries, specs)
    limits = [[], *(capacities(d) for d in locations[1:])]
    forbidden: set[tuple[int, int]] = set()
    notes: list[str] = []
    while True:
        allowed = [[(loc, c) for loc, c in cand if (v, loc) not in forbidden] or [(0, _host_cost(graph, v, host, specs))] for v, cand in enumerate(candidates)]
        weights = _weights(policy, allowed)
        assignment = _optimise(graph, allowed, rates, weights, specs)
        over = _over_capacity(graph, locations, limits, assignment, pins, fixed)
        if not over:
            break
        for loc, capacity, victims, needed in over:
            forbidden.update((v, loc) for v in victims)
            moved = ", ".join(graph.nodes[v].name for v in victims)
            notes.append(f"{locations[loc]}: the nodes placed there need {needed:.4g} {capacity.what}, which exceeds its "
                         f"{capacity.available:.4g} ({capacity.source}); moved {moved} elsewhere")

    node_costs = []
    for v, loc in enumerate(assignment):
        node_costs.append(next(c for where, c in allowed[v] if where == loc))
    transfers = _transfers(graph, assignment, rates, specs, index)
    fallback = {graph.nodes[v].name: reasons[v] for v in range(len(graph.nodes)) if assignment[v] == 0 and reasons[v]}
    return Placement(policy, locations, assignment, node_costs, transfers, notes, fallback)


def _host_cost(graph: Graph, v: int, host: HostModel, specs: dict) -> Cost:
    node = graph.nodes[v]
    return host.estimate(node.op, sum(_nbytes(specs.get(r)) for r in node.inputs), _nbytes(node.output))


def _candidates(graph, locations, pins, fixed, host, queries, specs):
    """Per node: the (location, cost) pairs it may take, and why it fell back to the host (if it did)."""
    candidates: list[list[tuple[int, Cost]]] = []
    reasons: list[str] = []
    free = Cost(0.0, 0.0, 0.0, "already executed")
    askers = [None, *(queries.asker(d) for d in locations[1:])]
    for v, node in enumerate(graph.nodes):
        if node.name in fixed:
            candidates.append([(fixed[node.name], free)])
            reasons.append("")
            continue
        pin = pins.get(node.name)
        pin_loc = None
        if pin is not None:
            pin_loc = resolve_pin(pin, locations)
            if pin_loc is None:
                raise InvalidInput(f"node {node.name!r} is pinned to {pin}, which is not among the planned devices: {', '.join(str(d) for d in locations[1:]) or 'none'}")
        if node.op is None:
            device = locations[pin_loc] if pin_loc else None
            if device is not None and device.kind != "cpu":
                raise UnsupportedOp(f"node {node.name!r} ({node.source}) is a host step with no vocabulary op; only the CPU reference runs it, not {device}. Pin it to 'cpu:0' or 'host'")
            candidates.append([(0, _host_cost(graph, v, host, specs))])
            reasons.append(f"{node.source} has no vocabulary op; it runs on the CPU reference")
            continue
        found: list[tuple[int, Cost]] = []
        why: list[str] = []
        for loc in range(1, len(locations)):
            if pin_loc is not None and loc != pin_loc:
                continue
            support, cost = askers[loc](node.op)
            if support:
                found.append((loc, cost))
            else:
                why.append(support.reason)
                if pin_loc == loc:
                    raise UnsupportedOp(f"node {node.name!r} is pinned to {locations[loc]}, which cannot run it: {support.reason}")
        if pin_loc == 0:
            found = [(0, _host_cost(graph, v, host, specs))]
        if not found:
            found = [(0, _host_cost(graph, v, host, specs))]
            reasons.append(f"no device supports {node.op.name} here ({'; '.join(why) or 'no devices'}); it runs on the CPU reference")
        else:
            reasons.append("")
        candidates.append(found)
    return candidates, reasons


def _weights(policy: str, allowed: list[list[tuple[int, Cost]]]) -> tuple[float, float, float]:
    """Scalar weights (latency, energy, error).

    The primary is divided by the sum of its per-node minima (the objective is then about 1); each other
    component by the sum of its per-node maxima times 1 / TIE_WEIGHT, so all tie-break terms together stay
    below about TIE_WEIGHT and never outweigh a real difference in the primary.
    """
    primary = _COMPONENT[policy]
    weights = []
    for i in range(3):
        pick = min if i == primary else max
        scale = sum(pick((c.latency_s, c.energy_j, c.error)[i] for _, c in cand) for cand in allowed)
        weights.append((1.0 if i == primary else TIE_WEIGHT) / (scale if scale > 0 else 1.0))
    return tuple(weights)  # type: ignore[return-value]


def _optimise(graph: Graph, allowed, rates: list[Edge], weights, specs: dict) -> list[int]:
    wl, we, wr = weights
    n_loc = len(rates)
    egress = [wl * r.egress_s + we * r.egress_j for r in rates]
    ingress = [wl * r.ingress_s + we * r.ingress_j for r in rates]
    nodes = graph.nodes
    n = len(nodes)
    own: list[list[float]] = []
    for cand in allowed:
        row = [INF] * n_loc
        for loc, c in cand:
            row[loc] = wl * c.latency_s + we * c.energy_j + wr * c.error
        own.append(row)
    # value name -> producer index (-1: host-resident graph input or constant) and size
    producer = {name: -1 for name in specs}
    for i, node in enumerate(nodes):
        producer[node.name] = i
    size = {name: _nbytes(spec) for name, spec in specs.items()}
    inputs = [tuple(dict.fromkeys(node.inputs)) for node in nodes]
    users: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i, refs in enumerate(inputs):
        for r in refs:
            p = producer[r]
            if p >= 0:
                users[p].append((i, size[r]))
    out_bytes = [0] * n
    for name in graph.outputs:
        p = producer.get(name, -1)
        if p >= 0:
            out_bytes[p] += size[name]
    locs = range(n_loc)

    # 1. forward DP
    best: list[list[float]] = []
    for i in range(n):
        row = list(own[i])
        for r in inputs[i]:
            p, b = producer[r], size[r]
            if p < 0:
                for d in locs:
                    row[d] += b * ingress[d]
                continue
            bp = best[p]
            leave = min(bp[e] + b * egress[e] for e in locs)
            for d in locs:
                row[d] += min(bp[d], leave + b * ingress[d])
        best.append(row)

    # 2. backward choice
    choice = [0] * n
    for i in range(n - 1, -1, -1):
        row = best[i]
        top, top_d = INF, 0
        for d in locs:
            if own[i][d] == INF:
                continue
            s = row[d] + out_bytes[i] * egress[d]
            for u, b in users[i]:
                if choice[u] != d:
                    s += b * (egress[d] + ingress[choice[u]])
            if s < top:
                top, top_d = s, d
        choice[i] = top_d

    # 3. coordinate descent on the exact objective
    for _ in range(SWEEPS):
        moved = False
        for i in range(n):
            top, top_d = INF, choice[i]
            for d in locs:
                s = own[i][d]
                if s == INF:
                    continue
                s += out_bytes[i] * egress[d]
                for r in inputs[i]:
                    p, b = producer[r], size[r]
                    src = choice[p] if p >= 0 else 0
                    if src != d:
                        s += b * (egress[src] + ingress[d])
                for u, b in users[i]:
                    if choice[u] != d:
                        s += b * (egress[d] + ingress[choice[u]])
                if s < top:
                    top, top_d = s, d
            if top_d != choice[i]:
                choice[i] = top_d
                moved = True
        if not moved:
            break
    return choice


def _transfers(graph: Graph, assignment: list[int], rates: list[Edge], specs: dict, index: dict[str, int]) -> list[Transfer]:
    """Every value crossing locations at a cost or across paradigms (graph inputs in, outputs back to the host);
    free hand-overs in host memory within one paradigm (host <-> cpu) are left out. A paradigm crossing priced in
    the device's own estimate (``costs.converts_in_estimates``) is listed at the cost of its link alone."""
    out: list[Transfer] = []
    for i, node in enumerate(graph.nodes):
        dst = assignment[i]
        for r in dict.fromkeys(node.inputs):
            p = index.get(r)
            src = assignment[p] if p is not None else 0
            if src != dst:
                b = _nbytes(specs.get(r))
                out.append(Transfer(r, node.name, src, dst, b, transfer_cost(b, rates[src], rates[dst])))
    for name in graph.outputs:
        p = index.get(name)
        if p is not None and assignment[p] != 0:
            b = _nbytes(specs.get(name))
            out.append(Transfer(name, "output", assignment[p], 0, b, transfer_cost(b, rates[assignment[p]], rates[0])))
    return [t for t in out if t.cost.latency_s or t.cost.energy_j or rates[t.src].paradigm != rates[t.dst].paradigm]


def _over_capacity(graph: Graph, locations, limits: list[list[Capacity]], assignment: list[int], pins: Mapping[str, str], fixed: Mapping[str, int]):
    """Per device capacity exceeded: (location, capacity, nodes to move off, total needed).

    Nodes to move off are the unpinned, not yet executed ones, largest first, until the rest fit; when the
    pinned and executed nodes alone do not fit, CapacityExceeded says so.
    """
    placed: dict[int, list[int]] = {}
    for v, loc in enumerate(assignment):
        if limits[loc]:
            placed.setdefault(loc, []).append(v)
    over = []
    for loc, members in sorted(placed.items()):
        for capacity in limits[loc]:
            needs = [(capacity.need(graph.nodes[v]), v) for v in members]
            total = sum(b for b, _ in needs)
            if total <= capacity.available:
                continue
            movable = sorted(((b, v) for b, v in needs if b and graph.nodes[v].name not in pins and graph.nodes[v].name not in fixed), key=lambda item: (-item[0], item[1]))
            victims, remaining = [], total
            for b, v in movable:
                if remaining <= capacity.available:
                    break
                victims.append(v)
                remaining -= b
            if remaining > capacity.available:
                kept = [graph.nodes[v].name for b, v in needs if b and (graph.nodes[v].name in pins or graph.nodes[v].name in fixed)]
                raise CapacityExceeded(
                    f"{locations[loc]} holds {capacity.available:.4g} {capacity.what} ({capacity.source}), but the nodes "
                    f"pinned to it or already run there ({', '.join(kept)}) need {remaining:.4g}; unpin some of them, or give the device more capacity",
                    remaining, capacity.available,
                )
            over.append((loc, capacity, victims, total))
    return over
