"""Where a pipeline cuts a captured graph: the cut points one tensor crosses, the balanced linear partition, the bubble.

A cut at position ``p`` puts nodes ``0..p-1`` (topological order) in the earlier stage and ``p..`` in the later one.
The values that cross it are those defined before it (graph inputs and node outputs, not constants, which every
rank holds) and read after it (by a later node, or as a graph output). A pipeline cuts only where exactly one
tensor crosses: a skip connection (an activation read by a later stage than the next) then never spans a cut, so
each boundary sends one tensor, of a shape and dtype known from the trace, and no rank forwards what it does not use.

The partition rule (the classic linear partition): over those cut points, choose ``n - 1`` cuts that minimise the
largest stage's estimated latency (stage ``k``'s nodes priced on rank ``k``'s device); among the cuts that reach
that minimum (to a relative 1e-9, float sums differ by rounding), the fewest bytes sent per micro-batch in all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import accumulate

from hal.errors import InvalidInput
from hal.runtime.capture import Graph

#: Relative slack under which two stage latencies count as equal (prefix sums in another order differ by rounding).
TIE_TOLERANCE = 1e-9


def crossing_values(graph: Graph) -> list[list[str]]:
    """For each cut position ``p`` in ``1 .. len(nodes) - 1``, the values crossing it (index ``p - 1``), in graph order."""
    count = len(graph.nodes)
    defined = {name: -1 for name in graph.inputs}
    defined.update({node.name: i for i, node in enumerate(graph.nodes)})
    last_read: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for ref in node.inputs:
            last_read[ref] = i
    for name in graph.outputs:
        last_read[name] = count
    return [[name for name, at in defined.items() if at < p <= last_read.get(name, -1)] for p in range(1, count)]


def cut_points(graph: Graph) -> dict[int, str]:
    """Cut positions where exactly one tensor crosses, each with that tensor's value name."""
    specs = graph.specs()
    return {p: crossing[0] for p, crossing in enumerate(crossing_values(graph), start=1)
            if len(crossing) == 1 and specs.get(crossing[0]) is not None}


def stage_latency_s(latency_s: Sequence[float], start: int, stop: int) -> float:
    """Estimated latency of nodes ``start .. stop-1`` run one after another: the sum of their estimates."""
    return float(sum(latency_s[start:stop]))


def linear_partition(latency_s: Sequence[Sequence[float]], cuts: Sequence[int],
                     bytes_at: Mapping[int, int] | None = None) -> tuple[int, ...]:
    """The cut positions splitting the nodes into ``len(latency_s)`` contiguous stages by the rule in the module doc.

    ``latency_s[k][i]`` is node ``i``'s estimate on stage ``k``'s device (every row as long as the graph);
    ``cuts`` the allowed positions; ``bytes_at[p]`` what crosses cut ``p`` per micro-batch (0 when absent).
    Two passes, each a dynamic programme over (stage, end position): the least largest stage latency, then the
    fewest bytes among the cuts that keep every stage within it (a single lexicographic pass would not be exact:
    a prefix worse on latency can be better on bytes once a later stage sets the maximum).
    """
    stages = len(latency_s)
    if stages < 1:
        raise InvalidInput("a pipeline needs at least one stage")
    count = len(latency_s[0])
    if any(len(row) != count for row in latency_s):
        raise InvalidInput(f"every stage's latency row must price all {count} nodes; got rows of "
                           f"{sorted({len(row) for row in latency_s})} nodes")
    allowed = sorted({p for p in cuts if 0 < p < count})
    if count < stages or len(allowed) < stages - 1:
        raise InvalidInput(f"{count} node(s) with {len(allowed)} cut point(s) cannot make {stages} stages (each stage "
                           f"needs a node, and {stages - 1} cut(s) where exactly one tensor crosses)")
    sizes = dict(bytes_at or {})
    ends = [*allowed, count]
    prefix = [[0.0, *accumulate(float(v) for v in row)] for row in latency_s]

    def cost(k: int, start: int, stop: int) -> float:
        return prefix[k][stop] - prefix[k][start]

    # pass 1: best[k][stop] = least largest latency of stages 0..k with stage k ending at stop
    best: list[dict[int, float]] = [{stop: cost(0, 0, stop) for stop in ends}]
    for k in range(1, stages):
        best.append({stop: min((max(best[k - 1][start], cost(k, start, stop)) for start in allowed
                                if start < stop and start in best[k - 1]), default=float("inf")) for stop in ends})
    limit = best[-1][count] * (1 + TIE_TOLERANCE)

    # pass 2: fewest bytes (then the earliest cuts) with every stage within the limit
    fewest: list[dict[int, tuple[int, tuple[int, ...]]]] = [
        {stop: (0, ()) for stop in ends if cost(0, 0, stop) <= limit}]
    for k in range(1, stages):
        row: dict[int, tuple[int, tuple[int, ...]]] = {}
        for stop in ends:
            options = [(fewest[k - 1][start][0] + sizes.get(start, 0), (*fewest[k - 1][start][1], start))
                       for start in allowed if start < stop and start in fewest[k - 1] and cost(k, start, stop) <= limit]
            if options:
                row[stop] = min(options)
        fewest.append(row)
    return fewest[-1][count][1]


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """Idle share of each rank under the GPipe forward schedule with equal stage times: ``(n - 1) / (m + n - 1)``.

    With ``n`` stages each taking ``t`` per micro-batch and ``m`` micro-batches, the last micro-batch leaves the
    last stage at ``(m + n - 1)·t``, and each rank computes for ``m·t`` of it.
    """
    if stages < 1 or micro_batches < 1:
        raise InvalidInput(f"the bubble needs at least one stage and one micro-batch, got n={stages}, m={micro_batches}")
    return (stages - 1) / (micro_batches + stages - 1)
