"""Planner scaling and executor overhead (issue 9), side by side with the simple alternatives.

Planning: chains and DAGs (blocks h = linear(x), y = add(h, gelu(h)): every linear fans out) of 100,
1,000 and 10,000 nodes across 5 fake devices of different paradigms, supports and costs. Timed: the
whole ``place()`` call from a captured graph (asking every device ``supports``/``estimate``, cached per
distinct op, the DP, the backward pass, coordinate descent and the cost report), best of several runs,
for "repeated" layers (4 distinct widths, as in real stacks) and "distinct" layers (every linear a new
shape, so every node costs 5 fresh supports/estimate queries). Also at 1,000 nodes with 2, 5 and 10
devices, to show the growth in devices. Alternative, side by side: a greedy placement (each node on its
own cheapest device, transfers ignored), whose exact objective is reported beside ours. fx capture time
of a Linear/GELU stack is reported separately (it is not planning).

Subgraph claims: the same 1,000-node graphs planned as a whole ``Plan`` on devices that claim every stage
(placement, then one ``claim``/``estimate_subgraph`` per stage of two or more nodes), beside ``place()`` alone.

Executor: a chain of stages alternating between two fake devices (one small relu per stage); per-stage
overhead = (plan.run time - time of calling the same prepared Programs directly in a loop) / stages,
median over interleaved rounds. Again with two relus per stage on devices that claim them, each stage then
one Program (direct: calling the same stage Programs in a loop).

Growth ratios use the thread's CPU time, which other processes on the shared cores do not inflate; the
headline times are wall time. Targets: 1,000 nodes planned in < 100 ms (claims included); growth no worse than linear in nodes x devices^2;
executor overhead < 50 us per stage, claimed or not.

    python -m benchmarks.planner_scaling
"""

from __future__ import annotations

import os
import statistics
import time
from typing import ClassVar

import torch
from torch import nn

from benchmarks.common import environment, write_result
from hal import ops as vocabulary
from hal.capability import Capabilities, OpSupport, Paradigm
from hal.device import Cost, Device, DeviceInfo, OpSpec, Program, Support, TensorSpec
from hal.kernels.torch_ops import TORCH_OPS
from hal.runtime import Plan, capture, plan
from hal.runtime.capture import Graph, Node
from hal.runtime.costs import HostModel
from hal.runtime.placement import place
from hal.subgraph import Subgraph, run_wired

SIZES = (100, 1_000, 10_000)
PLAN_TARGET_MS = 100.0
OVERHEAD_TARGET_US = 50.0
PARADIGMS = (Paradigm.DIGITAL, Paradigm.ANALOG, Paradigm.SPIKING, Paradigm.PHOTONIC, Paradigm.DIGITAL)


class BenchDevice(Device):
    """A fake device with a chosen paradigm, op set and per-flop costs (the runtime only sees the contract)."""

    kind = "bench"
    paradigm = Paradigm.DIGITAL
    ops: tuple[str, ...] = ("linear", "gelu", "add", "relu")
    s_per_flop = 1e-12
    j_per_flop = 1e-12
    error = 1e-5
    #: Per-op speed factors, so that each device is best at something and transfers decide the split.
    op_factor: ClassVar[dict[str, float]] = {}
    #: Whether it claims every subgraph of its ops (run as one Program through ``run_wired``).
    claims: ClassVar[bool] = False

    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        return []

    def _build_capabilities(self) -> Capabilities:
        return Capabilities(str(self.uri), self.kind, self.paradigm, True, {}, {n: OpSupport(("float32",), {"float32": 1e-3}) for n in self.ops})

    def estimate(self, op: OpSpec) -> Cost:
        flops = vocabulary.flops(op) * self.op_factor.get(op.name, 1.0)
        return Cost(1e-8 + flops * self.s_per_flop, flops * self.j_per_flop, self.error, "bench")

    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        fn, attrs = TORCH_OPS[op.name], dict(op.attrs)
        return Program(op, self, self.estimate(op), lambda *inputs: fn(inputs, params, attrs))

    def claim(self, sub: Subgraph) -> Support:
        if self.claims and all(op.name in self.ops for op in sub.ops):
            return Support.yes()
        return super().claim(sub)

    def _compile_subgraph(self, sub: Subgraph, params: list[dict[str, torch.Tensor]]) -> Program:
        steps = [lambda *xs, op=op, p=p: TORCH_OPS[op.name](xs, p, dict(op.attrs)) for op, p in zip(sub.ops, params)]
        return Program(sub.as_opspec(), self, self.estimate_subgraph(sub), lambda *inputs: run_wired(sub, steps, inputs))


def devices(count: int, claims: bool = False) -> list[Device]:
    out = []
    for i in range(count):
        ops = ("linear", "gelu", "add", "relu") if i % 3 != 2 else ("linear", "relu")
        factors = {"linear": 1 + i % 5, "gelu": 5 - i % 5, "add": 1 + (i + 2) % 5, "relu": 1.0}
        attrs = {"kind": f"bench{i}", "paradigm": PARADIGMS[i % len(PARADIGMS)], "ops": ops, "op_factor": factors, "claims": claims,
                 "s_per_flop": 1e-12 * (1 + i % 3), "j_per_flop": 1e-12 * (1 + (3 * i) % 5), "error": 1e-5 * (1 + (2 * i) % 3)}
        out.append(type(f"Bench{i}", (BenchDevice,), attrs)(f"bench{i}:0"))
    return out


def synthetic_graph(n: int, shape: str, distinct: bool, batch: int = 8) -> Graph:
    """n nodes: a chain (linear, gelu, linear, gelu...) or a DAG of blocks h = linear(x), y = add(h, gelu(h)).

    Widths cycle through 4 values ("repeated" layers) or change at every linear ("distinct": 64 + i mod 97).
    """
    nodes: list[Node] = []
    x, width, i = "x", 64, 0
    while len(nodes) < n:
        out_w = 64 + (i * 31) % 97 if distinct else (64, 96, 128, 160)[(i + 1) % 4]
        lin = OpSpec("linear", [TensorSpec((batch, width))], {"weight": TensorSpec((out_w, width))})
        nodes.append(Node(f"l{i}", lin, (x,), {}, TensorSpec((batch, out_w)), "bench"))
        nodes.append(Node(f"g{i}", OpSpec("gelu", [TensorSpec((batch, out_w))]), (f"l{i}",), {}, TensorSpec((batch, out_w)), "bench"))
        x = f"g{i}"
        if shape == "dag":
            add = OpSpec("add", [TensorSpec((batch, out_w)), TensorSpec((batch, out_w))])
            nodes.append(Node(f"a{i}", add, (f"l{i}", f"g{i}"), {}, TensorSpec((batch, out_w)), "bench"))
            x = f"a{i}"
        width, i = out_w, i + 1
    nodes = nodes[:n]
    return Graph(["x"], [TensorSpec((batch, 64))], {}, nodes, [nodes[-1].name], lambda v: v[0])


def time_place(graph: Graph, devs: list[Device], repeats: int) -> tuple[float, float, object]:
    """Best wall time and best CPU time of this thread (insensitive to other processes on the cores) of place()."""
    host = HostModel.default()
    best, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        result = place(graph, devs, "latency", host=host)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.thread_time() - start_cpu)
    return best, best_cpu, result


def greedy_objective(graph: Graph, devs: list[Device]) -> float:
    """The exact serial latency of placing each node on its own fastest device, transfers ignored when choosing."""
    host = HostModel.default()
    pins = {}
    for node in graph.nodes:
        options = [(d.estimate(node.op).latency_s, str(d)) for d in sorted(devs, key=str) if d.supports(node.op)]
        if options:
            pins[node.name] = min(options)[1]
    return place(graph, devs, "latency", pins, host).totals().latency_s


def planning() -> tuple[list[dict], dict]:
    rows = []
    devs = devices(5)
    for shape in ("chain", "dag"):
        for distinct in (False, True):
            for n in SIZES:
                graph = synthetic_graph(n, shape, distinct)
                seconds, cpu_seconds, result = time_place(graph, devs, 3 if n >= 10_000 else 9)
                row = {"shape": shape, "layers": "distinct" if distinct else "repeated", "nodes": n, "devices": 5,
                       "plan_ms": seconds * 1e3, "plan_cpu_ms": cpu_seconds * 1e3, "us_per_node_device2": seconds * 1e6 / (n * 25),
                       "objective_latency_s": result.totals().latency_s,
                       "locations_used": sorted({result.label(a) for a in result.assignment})}
                if n == 1_000:
                    row["greedy_objective_latency_s"] = greedy_objective(graph, devs)
                rows.append(row)
                print(f"{shape:5} {row['layers']:8} n={n:6}: {row['plan_ms']:8.2f} ms wall, {row['plan_cpu_ms']:8.2f} ms cpu")
    device_rows = []
    for count in (2, 5, 10):
        graph = synthetic_graph(1_000, "dag", False)
        seconds, cpu_seconds, _ = time_place(graph, devices(count), 9)
        device_rows.append({"nodes": 1_000, "devices": count, "plan_ms": seconds * 1e3, "plan_cpu_ms": cpu_seconds * 1e3})
        print(f"dag 1000 nodes, {count} devices: {seconds * 1e3:.2f} ms")
    return rows, {"by_devices": device_rows}


def claim_times(repeats: int = 9) -> list[dict]:
    """A whole Plan (placement + one claim per multi-node stage) on claiming devices, beside place() alone."""
    devs = devices(5, claims=True)
    host = HostModel.default()
    rows = []
    for shape in ("chain", "dag"):
        graph = synthetic_graph(1_000, shape, False)
        best_plan = best_place = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            place(graph, devs, "latency", host=host)
            best_place = min(best_place, time.perf_counter() - start)
            start = time.perf_counter()
            the_plan = Plan(None, graph, devs, "latency", {})
            best_plan = min(best_plan, time.perf_counter() - start)
        claims = [c for c in the_plan.claims() if c is not None]
        rows.append({"shape": shape, "nodes": 1_000, "devices": 5, "place_ms": best_place * 1e3, "plan_with_claims_ms": best_plan * 1e3,
                     "stages": len(the_plan.stages), "stages_offered": len(claims), "stages_claimed": sum(c.claimed for c in claims)})
        print(f"{shape} 1000 nodes: place {best_place * 1e3:.2f} ms, Plan with claims {best_plan * 1e3:.2f} ms "
              f"({rows[-1]['stages_claimed']} of {len(the_plan.stages)} stages claimed)")
    return rows


def capture_times() -> list[dict]:
    capture(nn.Sequential(nn.Linear(4, 4)), (torch.randn(1, 4),))  # warm-up: fx imports and caches
    out = []
    for n in (100, 1_000):
        layers = []
        for _ in range(n // 2):
            layers += [nn.Linear(32, 32), nn.GELU()]
        model = nn.Sequential(*layers)
        start = time.perf_counter()
        graph = capture(model, (torch.randn(4, 32),))
        out.append({"nodes": len(graph.nodes), "capture_ms": (time.perf_counter() - start) * 1e3})
        print(f"fx capture of {len(graph.nodes)} nodes: {out[-1]['capture_ms']:.1f} ms")
    return out


def executor_overhead(stages: int = 200, rounds: int = 30, claimed: bool = False) -> dict:
    """Per-stage overhead of plan.run over calling its Programs directly: one relu per stage, or two claimed as one Program."""
    a, b = devices(2, claims=claimed)
    per_stage = 2 if claimed else 1
    model = nn.Sequential(*[nn.ReLU() for _ in range(stages * per_stage)])
    x = torch.randn(1, 16)
    pins = {str(i): str(a if (i // per_stage) % 2 == 0 else b) for i in range(stages * per_stage)}
    the_plan = plan(model, x, pins=pins, devices=[a, b])
    assert len(the_plan.stages) == stages
    the_plan.prepare()
    if claimed:
        assert all(c is not None and c.claimed for c in the_plan.claims())
        programs = [entry.program for entry in the_plan.stage_programs.values()]
    else:
        programs = [the_plan.programs[(node.name, the_plan.device_of(node.name))] for node in the_plan.graph.nodes]
    assert len(programs) == stages

    def direct() -> torch.Tensor:
        y = x
        for p in programs:
            y = p(y)
        return y

    assert torch.equal(direct(), the_plan.run(x))
    via_plan, via_direct = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        direct()
        via_direct.append(time.perf_counter() - start)
        start = time.perf_counter()
        the_plan.run(x)
        via_plan.append(time.perf_counter() - start)
    overhead = statistics.median(p - d for p, d in zip(via_plan, via_direct)) / stages
    return {
        "stages": stages, "rounds": rounds, "ops_per_stage": per_stage, "claimed": claimed,
        "run_us_per_stage_median": statistics.median(via_plan) / stages * 1e6,
        "direct_us_per_stage_median": statistics.median(via_direct) / stages * 1e6,
        "overhead_us_per_stage": overhead * 1e6,
    }


def main() -> None:
    torch.set_num_threads(1)
    rows, by_devices = planning()
    claims = claim_times()
    captured = capture_times()
    executor = executor_overhead()
    executor_claimed = executor_overhead(claimed=True)
    print(f"executor overhead: {executor['overhead_us_per_stage']:.2f} us per stage, "
          f"{executor_claimed['overhead_us_per_stage']:.2f} us per claimed stage")
    at = {(r["shape"], r["layers"], r["nodes"]): r["plan_ms"] for r in rows}
    cpu = {(r["shape"], r["layers"], r["nodes"]): r["plan_cpu_ms"] for r in rows}
    plan_ms_1000 = max(at[("chain", "repeated", 1_000)], at[("dag", "repeated", 1_000)])
    growth = {
        f"{shape}_{layers}_10000_over_1000": cpu[(shape, layers, 10_000)] / cpu[(shape, layers, 1_000)]
        for shape in ("chain", "dag") for layers in ("repeated", "distinct")
    }
    summary = {
        "plan_ms_1000": plan_ms_1000,
        "plan_ms_1000_distinct_layers": max(at[("chain", "distinct", 1_000)], at[("dag", "distinct", 1_000)]),
        "plan_ms_10000": max(at[("chain", "repeated", 10_000)], at[("dag", "repeated", 10_000)]),
        "plan_target_ms": PLAN_TARGET_MS,
        "plan_target_met": plan_ms_1000 < PLAN_TARGET_MS,
        "growth_10x_nodes_cpu_time": growth,
        "growth_devices_10_over_2_cpu_time": by_devices["by_devices"][2]["plan_cpu_ms"] / by_devices["by_devices"][0]["plan_cpu_ms"],
        "plan_with_claims_ms_1000": max(r["plan_with_claims_ms"] for r in claims),
        "plan_with_claims_target_met": max(r["plan_with_claims_ms"] for r in claims) < PLAN_TARGET_MS,
        "executor_overhead_us_per_stage": executor["overhead_us_per_stage"],
        "executor_overhead_us_per_claimed_stage": executor_claimed["overhead_us_per_stage"],
        "executor_target_us": OVERHEAD_TARGET_US,
        "executor_target_met": max(executor["overhead_us_per_stage"], executor_claimed["overhead_us_per_stage"]) < OVERHEAD_TARGET_US,
    }
    document = {
        "environment": {**environment("cpu (fake devices through the Device contract)"), "load_average_1_5_15": list(os.getloadavg())},
        "setup": {"devices": 5, "paradigms": [p.value for p in PARADIGMS], "batch": 8, "widths": [64, 96, 128, 160], "policy": "latency", "torch_threads": 1},
        "planning": rows,
        "planning_by_devices": by_devices["by_devices"],
        "claims": claims,
        "capture": captured,
        "executor": executor,
        "executor_claimed": executor_claimed,
        "summary": summary,
    }
    path = write_result("planner_scaling", document)
    print(f"summary: {summary}\nwrote {path}")


if __name__ == "__main__":
    main()
