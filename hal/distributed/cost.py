"""Which context-parallel method to use: bytes each rank moves, against link bandwidth and attention compute.

For ``n`` ranks, batch ``B``, ``H`` query heads, ``H_kv`` key/value heads, sequence ``S``, head dim ``D`` and
``e`` bytes per element (``a`` per accumulator element, 4 for float32):

- attention work ``F = 4·B·H·S²·D·m`` FLOPs forward (two matmuls; ``m = 1/2`` causal, 1 full), ``3.5·F`` with the
  backward pass (five matmuls, 2.5x the forward), ``F/n`` per rank with zig-zag shards;
- ring: each of ``n - 1`` steps moves one K/V block, ``2·B·H_kv·(S/n)·D·e`` bytes, while the block in hand is
  computed (``F/n²`` FLOPs a step); the backward pass moves the K/V blocks again and ``n`` dK/dV accumulators
  (``2·B·H_kv·(S/n)·D·a``). Time ``≈ c + (n - 1)·max(c, m)`` for step compute ``c`` and step transfer ``m``:
  communication is free while it hides behind compute;
- all-to-all: q, k, v in and the output back, each rank sending ``(n-1)/n`` of its shard of each,
  ``(n-1)/n·B·(S/n)·D·e·(2H + 2H_kv)`` bytes; the backward pass sends as much again (dO in; dQ, dK, dV back). The
  exchanges do not overlap compute: time ``≈ F/(n·R) + bytes / bandwidth``; it needs ``H`` and ``H_kv`` divisible
  by ``n``.

So all-to-all moves less data (independent of ``n`` per rank, where the ring's is nearly the whole K/V) but cannot
hide it; the ring hides its transfers once a step's compute, which grows with ``(S/n)²``, outlasts a block's
transfer, which grows with ``S/n``: long sequences favour the ring, short ones and many ranks all-to-all.
"""

from __future__ import annotations

from dataclasses import dataclass

from hal.capability import Figure
from hal.errors import InvalidInput


@dataclass(frozen=True)
class MethodCost:
    """The cost model's figures for one method (``time_s`` is None when the method cannot run the shapes)."""

    method: str
    bytes_per_rank: Figure
    compute_s: Figure
    communication_s: Figure
    time_s: Figure | None
    note: str = ""


@dataclass(frozen=True)
class MethodChoice:
    """The method to use, the costs it was chosen from, and why, in words."""

    method: str
    costs: dict[str, MethodCost]
    reason: str


def choose_method(*, batch: int, heads: int, kv_heads: int, seq_len: int, head_dim: int, n: int,
                  element_bytes: int, link_bandwidth_b_per_s: Figure, attention_flop_per_s: Figure,
                  causal: bool = True, backward: bool = False, accumulator_bytes: int = 4) -> MethodChoice:
    """Predict ring and all-to-all times per call with the formulas of this module's docstring; pick the faster.

    ``link_bandwidth_b_per_s`` is one rank's send bandwidth to its peers (NVLink per direction within an H100 /
    H200 host); ``attention_flop_per_s`` the rate of the per-block attention kernel on one device. Both carry
    their provenance (measured, datasheet, ...), which the predicted figures cite.
    """
    for name, value in (("batch", batch), ("heads", heads), ("kv_heads", kv_heads), ("seq_len", seq_len),
                        ("head_dim", head_dim), ("n", n), ("element_bytes", element_bytes),
                        ("accumulator_bytes", accumulator_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"choose_method needs {name} as a positive whole number, got {value!r}")
    for name, figure in (("link_bandwidth_b_per_s", link_bandwidth_b_per_s),
                         ("attention_flop_per_s", attention_flop_per_s)):
        if not isinstance(figure, Figure) or not figure.value > 0:
            raise InvalidInput(f"{name} must be a positive hal.capability.Figure (its source says where the number "
                               f"comes from), got {figure!r}")
    bandwidth, rate = link_bandwidth_b_per_s.value, attention_flop_per_s.value
    inputs = f"bandwidth {link_bandwidth_b_per_s.source}; rate {attention_flop_per_s.source}"
    mask_share = 0.5 if causal else 1.0
    passes = 3.5 if backward else 1.0
    flops_rank = 4 * batch * heads * seq_len ** 2 * head_dim * mask_share * passes / n
    compute_s = flops_rank / rate
    work = "4·B·H·S²·D·m" + ("·3.5" if backward else "") + "/n / rate"
    local = seq_len // n
    costs = {"ring": _ring(batch, kv_heads, local, head_dim, n, element_bytes, accumulator_bytes, backward,
                           compute_s, bandwidth, work, inputs),
             "all_to_all": _all_to_all(batch, heads, kv_heads, local, head_dim, n, element_bytes, backward,
                                       compute_s, bandwidth, work, inputs)}
    feasible = {m: c for m, c in costs.items() if c.time_s is not None}
    method = min(feasible, key=lambda m: feasible[m].time_s.value)
    ring, a2a = costs["ring"], costs["all_to_all"]
    if a2a.time_s is None:
        reason = f"ring: all-to-all cannot run here ({a2a.note})"
    else:
        reason = (f"{method}: ring {ring.time_s} (moves {ring.bytes_per_rank} per rank, hidden behind compute where "
                  f"a step's compute outlasts its transfer) vs all-to-all {a2a.time_s} (moves "
                  f"{a2a.bytes_per_rank} per rank, not overlapped); compute alone {ring.compute_s}")
    return MethodChoice(method, costs, reason)


def _ring(batch: int, kv_heads: int, local: int, head_dim: int, n: int, e: int, a: int, backward: bool,
          compute_s: float, bandwidth: float, work: str, inputs: str) -> MethodCost:
    block_bytes = 2 * batch * kv_heads * local * head_dim * e
    steps = n - 1
    # the backward pass shifts each dK/dV accumulator n times (n - 1 steps, then home); a ring of one shifts nothing
    accumulator_shifts = n if backward and n > 1 else 0
    moved = steps * block_bytes * (2 if backward else 1) + accumulator_shifts * 2 * batch * kv_heads * local * head_dim * a
    step_compute = compute_s / n
    step_comm = moved / steps / bandwidth if steps else 0.0
    time_s = step_compute + steps * max(step_compute, step_comm)
    bytes_formula = "(n-1)·2·B·H_kv·(S/n)·D·e" + (" ·2 + n·2·B·H_kv·(S/n)·D·a" if backward else "")
    return MethodCost(
        "ring",
        Figure.derived(moved, "B", bytes_formula),
        Figure.derived(compute_s, "s", work, inputs),
        Figure.derived(moved / bandwidth, "s", f"({bytes_formula}) / bandwidth", inputs),
        Figure.derived(time_s, "s", "c + (n-1)·max(c, m), c = compute / n, m = bytes / (n-1) / bandwidth", inputs))


def _all_to_all(batch: int, heads: int, kv_heads: int, local: int, head_dim: int, n: int, e: int, backward: bool,
                compute_s: float, bandwidth: float, work: str, inputs: str) -> MethodCost:
    moved = (n - 1) / n * batch * local * head_dim * e * (2 * heads + 2 * kv_heads) * (2 if backward else 1)
    bytes_formula = "(n-1)/n·B·(S/n)·D·e·(2H + 2H_kv)" + (" ·2" if backward else "")
    comm_s = moved / bandwidth
    note = ""
    time_s: Figure | None = Figure.derived(compute_s + comm_s, "s", "compute + bytes / bandwidth", inputs)
    if heads % n or kv_heads % n:
        note = f"{heads} query / {kv_heads} key-value heads are not both divisible by {n} ranks"
        time_s = None
    return MethodCost("all_to_all", Figure.derived(moved, "B", bytes_formula),
                      Figure.derived(compute_s, "s", work, inputs),
                      Figure.derived(comm_s, "s", f"({bytes_formula}) / bandwidth", inputs), time_s, note)
