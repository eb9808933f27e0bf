"""Explain a plan: a rich table for the terminal, a JSON-ready dict, and a PNG (Gantt by device + energy by device).

Stage figures are the stage's estimate (its claim's ``estimate_subgraph`` when its device runs it as one
Program, else the sum of its node estimates) plus the transfers into it (link and paradigm conversion). The
table's "program" column says which: "one (claimed)" or "per op"; the notes give each claim's estimate beside
the per-op sum, and the reason of each device that declined. The Gantt places stages by list scheduling (a stage starts when its inputs are ready and
its device is free) with estimated latencies, or with measured times when a profiled Report is given.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from hal.device import Cost
from hal.runtime.costs import HOST
from hal.runtime.executor import Report, Stage

if TYPE_CHECKING:
    from hal.runtime.planner import Plan

#: Node names listed per stage in the table before eliding.
SHOWN_NODES = 4


def _si(value: float, unit: str) -> str:
    if value == 0:
        return f"0 {unit}"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def own_cost(plan: Plan, stage: Stage) -> Cost:
    """A stage's own estimate: its claim's when claimed, else the sum of its nodes' (transfers not included)."""
    claim = plan.claim(stage, plan.placement)
    if claim is not None:
        return claim.stage_cost
    costs = [plan.placement.node_costs[i] for i in stage.nodes]
    return Cost(sum(c.latency_s for c in costs), sum(c.energy_j for c in costs), sum(c.error for c in costs), "sum of the ops' estimates")


def stage_costs(plan: Plan, stages: list[Stage]) -> list[tuple[Cost, list[str]]]:
    """Per stage: its cost (own estimate + incoming transfers) and the conversions it needs, as text."""
    p = plan.placement
    stage_of = {}
    for s in stages:
        for i in s.nodes:
            stage_of[plan.graph.nodes[i].name] = s.index
    totals = []
    for s in stages:
        c = own_cost(plan, s)
        totals.append([c.latency_s, c.energy_j, c.error])
    conversions: list[list[str]] = [[] for _ in stages]
    for t in p.transfers:
        s = stage_of.get(t.consumer)
        if s is None:
            continue
        totals[s][0] += t.cost.latency_s
        totals[s][1] += t.cost.energy_j
        src, dst = p.locations[t.src], p.locations[t.dst]
        a = src.capabilities.paradigm.value if src is not None else "digital"
        b = dst.capabilities.paradigm.value if dst is not None else "digital"
        hop = f"{a}->{b}" if a != b else f"{p.label(t.src)}->{p.label(t.dst)}"
        conversions[s].append(f"{hop} {_si(t.nbytes, 'B')}")
    return [(Cost(*row, "nodes + incoming transfers"), conv) for row, conv in zip(totals, conversions)]


def _ops_text(plan: Plan, stage: Stage) -> str:
    parts = []
    for i in stage.nodes[:SHOWN_NODES]:
        node = plan.graph.nodes[i]
        parts.append(f"{node.name}:{node.label}")
    more = len(stage.nodes) - SHOWN_NODES
    return ", ".join(parts) + (f" (+{more})" if more > 0 else "")


def _program_text(plan: Plan, stage: Stage) -> str:
    """How a stage runs: one Program (claimed), one per op, or on the host."""
    if plan.placement.locations[stage.location] is None:
        return "host"
    claim = plan.claim(stage, plan.placement)
    return "one (claimed)" if claim is not None and claim.claimed else "per op"


def plan_table(plan: Plan) -> Table:
    stages = plan.stages
    totals = plan.totals()
    table = Table(title=f"hal plan - policy {plan.policy}", caption=f"total: {_si(totals.latency_s, 's')} (serial), {_si(totals.energy_j, 'J')}, error <= {totals.error:.3g}")
    for column in ("stage", "device", "ops", "program", "est. latency", "est. energy", "est. error", "conversions"):
        table.add_column(column, justify="right" if column.startswith("est") else "left")
    for stage, (cost, conv) in zip(stages, stage_costs(plan, stages)):
        table.add_row(
            str(stage.index), plan.placement.label(stage.location), _ops_text(plan, stage), _program_text(plan, stage),
            _si(cost.latency_s, "s"), _si(cost.energy_j, "J"), f"{cost.error:.2g}", ", ".join(conv) or "-",
        )
    return table


def claim_notes(plan: Plan) -> list[str]:
    """One note per claimed stage (its estimate beside the per-op sum), one per device and reason it declined for."""
    notes, declined = [], {}
    for stage in plan.stages:
        claim = plan.claim(stage, plan.placement)
        if claim is None:
            continue
        if claim.claimed:
            c, s = claim.stage_cost, claim.per_op
            notes.append(f"stage {stage.index} ({len(claim.nodes)} ops on {claim.device}) runs as one claimed Program: est. "
                         f"{_si(c.latency_s, 's')}, {_si(c.energy_j, 'J')}, error {c.error:.2g} vs {_si(s.latency_s, 's')}, "
                         f"{_si(s.energy_j, 'J')}, error {s.error:.2g} op by op ({c.formula or 'no formula given'})")
            entry = plan.stage_programs.get((claim.names, claim.device))
            path = getattr(entry.program, "path", None) if entry is not None else None
            if path:
                notes.append(f"stage {stage.index} ran as: {path}")  # the device's own account: fused or not, graphed or not and why
        else:
            declined.setdefault((claim.device, claim.reason), []).append(str(stage.index))
    for (device, reason), indices in declined.items():
        notes.append(f"stage{'s' if len(indices) > 1 else ''} {', '.join(indices)} on {device} run op by op: {reason}")
    return notes


def _notes(plan: Plan) -> list[str]:
    notes = list(plan.notes) + list(plan.placement.notes) + claim_notes(plan)
    steps = Counter(n.host_op for n in plan.graph.nodes if n.op is None)
    if steps:
        listed = ", ".join(f"{name} x{count}" for name, count in steps.most_common())
        notes.append(f"{sum(steps.values())} host step(s) with no vocabulary op run on the CPU reference: {listed}")
    by_name = {n.name: n for n in plan.graph.nodes}
    for name, reason in plan.placement.fallback_reasons.items():
        if by_name[name].op is not None:
            notes.append(f"{name}: {reason}")
    return notes


def render_text(plan: Plan, width: int = 140) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    console.print(plan_table(plan))
    for note in _notes(plan):
        console.print(f"note: {note}")
    return buffer.getvalue()


def render_report(report: Report, width: int = 140) -> str:
    """A run's stages, measured beside estimated, then its fallbacks and re-plan, as text."""
    table = Table(title="hal run", caption=f"total {_si(report.total_s, 's')}" if report.total_s is not None else None)
    for column in ("stage", "device", "nodes", "program", "est. latency", "measured"):
        table.add_column(column, justify="right" if column in ("est. latency", "measured") else "left")
    for r in report.stages:
        nodes = ", ".join(r.nodes[:SHOWN_NODES]) + (f" (+{len(r.nodes) - SHOWN_NODES})" if len(r.nodes) > SHOWN_NODES else "")
        program = "one (claimed)" if r.claimed else ("host" if r.device == HOST else "per op")
        table.add_row(str(r.stage), r.device, nodes, program, _si(r.est_latency_s, "s"), _si(r.measured_s, "s") if r.measured_s is not None else "-")
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    console.print(table)
    for f in report.fallbacks:
        moved = ", ".join(f"{k} -> {v}" for k, v in f.replaced_by.items())
        console.print(f"fallback: {f.device} failed at {f.node}: {f.error}; moved {moved or 'nothing'}")
    if report.replanned_for is not None:
        console.print(f"re-planned for input shapes {report.replanned_for}")
    return buffer.getvalue()


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    p = plan.placement
    stages = plan.stages
    totals = plan.totals()
    stage_rows = []
    for stage, (cost, conv) in zip(stages, stage_costs(plan, stages)):
        stage_rows.append({
            "stage": stage.index, "device": p.label(stage.location), "nodes": [plan.graph.nodes[i].name for i in stage.nodes],
            "depends_on": sorted(stage.deps), "latency_s": cost.latency_s, "energy_j": cost.energy_j, "error": cost.error,
            "conversions": conv,
        })
    nodes = []
    for i, node in enumerate(plan.graph.nodes):
        c = p.node_costs[i]
        nodes.append({
            "name": node.name, "op": str(node.op) if node.op is not None else None, "source": node.source,
            "device": p.label(p.assignment[i]), "pinned": node.name in plan.node_pins, "fused": list(node.fused),
            "latency_s": c.latency_s, "energy_j": c.energy_j, "error": c.error, "formula": c.formula,
        })
    transfers = [
        {"value": t.value, "to_node": t.consumer, "from": p.label(t.src), "to": p.label(t.dst), "bytes": t.nbytes,
         "latency_s": t.cost.latency_s, "energy_j": t.cost.energy_j}
        for t in p.transfers
    ]
    return {
        "policy": plan.policy,
        "devices": [str(d) for d in plan.devices],
        "dropped": list(plan.dropped),
        "totals": {"latency_s": totals.latency_s, "energy_j": totals.energy_j, "error": totals.error, "latency_is": "sum over stages (serial; a claimed stage at its claim's estimate)"},
        "energy_by_device_j": energy_by_device(plan),
        "stages": stage_rows,
        "nodes": nodes,
        "transfers": transfers,
        "host_fallbacks": dict(p.fallback_reasons),
        "notes": _notes(plan),
    }


def energy_by_device(plan: Plan) -> dict[str, float]:
    """Estimated joules per location: its stages (claimed ones at their claim's estimate) plus the transfers into it."""
    p = plan.placement
    energy: dict[str, float] = {}
    for stage in plan.stages:
        label = p.label(stage.location)
        energy[label] = energy.get(label, 0.0) + own_cost(plan, stage).energy_j
    for t in p.transfers:
        energy[p.label(t.dst)] = energy.get(p.label(t.dst), 0.0) + t.cost.energy_j
    return dict(sorted(energy.items()))


def schedule(plan: Plan, report: Report | None = None) -> list[tuple[str, float, float, int]]:
    """(device, start_s, duration_s, stage) per stage: measured from a profiled report, else list-scheduled estimates."""
    if report is not None and report.stages and all(r.start_s is not None for r in report.stages):
        return [(r.device, r.start_s, r.measured_s, r.stage) for r in report.stages]
    stages = plan.stages
    costs = stage_costs(plan, stages)
    end: dict[int, float] = {}
    free: dict[int, float] = {}
    rows = []
    for stage, (cost, _) in zip(stages, costs):
        start = max([end[d] for d in stage.deps] + [free.get(stage.location, 0.0)])
        end[stage.index] = start + cost.latency_s
        free[stage.location] = end[stage.index]
        rows.append((plan.placement.label(stage.location), start, cost.latency_s, stage.index))
    return rows


def save_plot(plan: Plan, path: str, report: Report | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = schedule(plan, report)
    devices = sorted({r[0] for r in rows} | set(energy_by_device(plan)))
    colours = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(devices)}
    fig, (gantt, bars) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.5 * len(devices)), gridspec_kw={"width_ratios": [3, 1]})
    for device, start, duration, stage in rows:
        y = devices.index(device)
        gantt.barh(y, duration, left=start, color=colours[device], edgecolor="black", linewidth=0.5)
        if len(rows) <= 40:
            gantt.text(start + duration / 2, y, str(stage), ha="center", va="center", fontsize=7)
    gantt.set_yticks(range(len(devices)), devices)
    gantt.set_xlabel("time (s, " + ("measured" if report is not None and report.stages else "estimated") + ")")
    gantt.set_title(f"stages by device - policy {plan.policy}")
    energy = energy_by_device(plan)
    bars.barh(range(len(devices)), [energy.get(d, 0.0) for d in devices], color=[colours[d] for d in devices])
    bars.set_yticks(range(len(devices)), [""] * len(devices))
    bars.set_xlabel("estimated energy (J)")
    bars.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    bars.set_title("energy by device")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
