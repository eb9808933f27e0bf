"""Execution: prepared Programs chained stage by stage, overlapping independent stages, falling back on failure.

A stage is a maximal run of consecutive nodes (in topological order) on one location. A device stage its
device claimed (``hal.runtime.claims``) runs as one Program (``Plan.stage_program``): it takes the values the
stage reads from elsewhere and returns the ones read outside it, and its intermediates never reach the
host. Other device stages run one Program per node, prepared once per (node, device) and kept by the plan
(``Plan.program``). A Program that its device invalidated meanwhile (its tiles were reprogrammed) is
prepared again, not counted as a failure. Stages whose inputs are
ready, and whose in-place ordering (``Node.after``) allows, run as soon as their device is free; when the
stage graph is a chain (the common case) they run in the caller's thread with no scheduling at all.

If preparing or running a Program raises (``DeviceFailure`` from a lost link, or any other exception
except ``InvalidInput``, which is the data's fault, such as NaN given to a device that refuses it, and
propagates unchanged), that device is dropped from the plan, the nodes not yet executed are re-placed on the remaining
devices (executed nodes keep their results, at no cost), a ``RuntimeWarning`` says so, and the run
continues; the report records the device, the node and the error. Caller inputs are never mutated:
when a host step reads a caller's tensor, the run works on a copy of it (device Programs get tensors
and must not write to them, by the contract).

Each run keeps its values, its placement (the plan's, until a fallback re-places the rest of this run) and
its report to itself, so several threads may run one plan at once.
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from hal.device import Device
from hal.errors import DeviceFailure, InvalidInput, ProgramInvalidated, ShapeError
from hal.kernels.torch_ops import TORCH_OPS
from hal.runtime.capture import Graph, Node
from hal.runtime.claims import StageClaim
from hal.runtime.costs import HOST
from hal.runtime.placement import Placement

if TYPE_CHECKING:
    from hal.runtime.planner import Plan


@dataclass
class Stage:
    """Consecutive nodes on one location, the stages whose results they wait for, and (once a run has asked)
    the device's claim when the stage runs as one Program."""

    index: int
    location: int
    nodes: list[int]
    deps: set[int] = field(default_factory=set)
    claim: StageClaim | None = None


@dataclass
class StageRecord:
    """What one stage did in a run: where, which nodes, its estimate and (with profile=True) its measured time."""

    stage: int
    device: str
    nodes: list[str]
    est_latency_s: float
    start_s: float | None = None
    measured_s: float | None = None
    claimed: bool = False


@dataclass
class Fallback:
    """A device dropped mid-run: which, while running which node, the error, and where the rest went."""

    device: str
    node: str
    error: str
    replaced_by: dict[str, str]


@dataclass
class Report:
    """The record of one run: stages (measured when profiled), fallbacks, and a re-plan for new input shapes."""

    stages: list[StageRecord] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)
    replanned_for: list[list[int]] | None = None
    total_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        from hal.runtime.explain import render_report

        return render_report(self)


class _StageFailed(Exception):
    def __init__(self, location: int, node: str, error: BaseException):
        super().__init__(str(error))
        self.location, self.node, self.error = location, node, error


def build_stages(graph: Graph, placement: Placement, done: set[str]) -> list[Stage]:
    """Group the not-yet-executed nodes into stages and link each to the stages it depends on."""
    stages: list[Stage] = []
    stage_of: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        if node.name in done:
            continue
        loc = placement.assignment[i]
        if not stages or stages[-1].location != loc:
            stages.append(Stage(len(stages), loc, []))
        stage = stages[-1]
        stage.nodes.append(i)
        stage_of[node.name] = stage.index
        for r in (*node.inputs, *node.after):
            s = stage_of.get(r)
            if s is not None and s != stage.index:
                stage.deps.add(s)
    return stages


def is_chain(stages: list[Stage]) -> bool:
    """Whether each stage waits for the one before it (nothing could overlap)."""
    return all(s.index - 1 in s.deps for s in stages[1:])


class Executor:
    """One run of a Plan's graph on given inputs (make one per run); shares nothing with other runs but the plan's Programs.

    ``host_copies`` holds the host copy of each device value a host step read, so that every host step of the
    run sees one tensor, as eager torch would: views taken on the host and in-place writes there stay aliased.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.host_copies: dict[str, torch.Tensor] = {}

    # ---- one node
    def _on_host(self, name: str, values: dict[str, Any]) -> Any:
        value = values[name]
        if not isinstance(value, torch.Tensor) or value.device.type == "cpu":
            return value
        if name not in self.host_copies:
            self.host_copies[name] = value.cpu()
        return self.host_copies[name]

    def _run_node(self, node: Node, device: Device | None, values: dict[str, Any]) -> Any:
        if device is None:
            args = [self._on_host(r, values) for r in node.inputs]
            if node.op is None:
                result = node.host_fn(*args)
                if node.writes is not None:  # the write landed on the host copy: later device readers take that one
                    values[node.writes] = args[node.inputs.index(node.writes)]
                return result
            return TORCH_OPS[node.op.name](args, node.params, dict(node.op.attrs))
        target = device.torch_device
        args = [values[r] for r in node.inputs]
        args = [a if a.device.type == "cpu" or a.device == target else a.to(target) for a in args]
        try:
            return self.plan.program(node.name, device)(*args)
        except ProgramInvalidated:
            return self.plan.program(node.name, device)(*args)  # its resources were reprogrammed meanwhile

    def _prepare_all(self, stages: list[Stage], placement: Placement) -> None:
        """Prepare (or reuse) every device Program before anything runs, so stage times are run times; note on
        each stage the claim it runs under."""
        for stage in stages:
            device = placement.locations[stage.location]
            if device is None:
                continue
            claim = self.plan.claim(stage, placement)
            if claim is not None and claim.claimed:
                stage.claim = claim
                try:
                    self.plan.stage_program(claim, device)
                except Exception as exc:
                    raise _StageFailed(stage.location, claim.names[0], exc) from exc
                continue
            for i in stage.nodes:
                node = self.plan.graph.nodes[i]
                try:
                    self.plan.program(node.name, device)
                except Exception as exc:
                    raise _StageFailed(stage.location, node.name, exc) from exc

    def _run_claimed(self, claim: StageClaim, device: Device, values: dict[str, Any]) -> None:
        """Run a claimed stage's one Program on the values it reads; store the values that leave it."""
        target = device.torch_device
        args = [values[r] for r in claim.inputs]
        args = [a if a.device.type == "cpu" or a.device == target else a.to(target) for a in args]
        try:
            out = self.plan.stage_program(claim, device)(*args)
        except ProgramInvalidated:
            out = self.plan.stage_program(claim, device)(*args)  # its resources were reprogrammed meanwhile
        if len(claim.outputs) == 1:
            values[claim.outputs[0]] = out
            return
        if not isinstance(out, tuple) or len(out) != len(claim.outputs):
            got = f"{len(out)} values" if isinstance(out, tuple) else type(out).__name__
            raise ShapeError(f"{device}'s Program for the claimed stage {', '.join(claim.names)} returned {got}, not the {len(claim.outputs)} outputs of its subgraph")
        values.update(zip(claim.outputs, out))

    def _run_stage(self, stage: Stage, placement: Placement, values: dict[str, Any], done: set[str]) -> None:
        graph = self.plan.graph
        device = placement.locations[stage.location]
        if stage.claim is not None:
            try:
                self._run_claimed(stage.claim, device, values)
            except InvalidInput:
                raise  # the data's fault (NaN/inf where refused): any device would refuse it too
            except Exception as exc:
                raise _StageFailed(stage.location, stage.claim.names[0], exc) from exc
            done.update(stage.claim.names)
            return
        for i in stage.nodes:
            node = graph.nodes[i]
            try:
                values[node.name] = self._run_node(node, device, values)
            except InvalidInput:
                raise  # the data's fault (NaN/inf where refused): any device would refuse it too
            except Exception as exc:
                if device is None:
                    raise
                raise _StageFailed(stage.location, node.name, exc) from exc
            done.add(node.name)

    # ---- a whole run
    def run(self, inputs: tuple[torch.Tensor, ...], profile: bool) -> tuple[Any, Report]:
        graph = self.plan.graph
        values: dict[str, Any] = dict(zip(graph.inputs, inputs))
        values.update(graph.constants)
        # host steps may work in place (x.mul_(2)); later nodes then read the mutated tensor through
        # aliasing, as in torch: give them a private copy of the caller's tensor, once
        for name in {r for n in graph.nodes if n.op is None for r in n.inputs if r in values and r in graph.inputs}:
            if isinstance(values[name], torch.Tensor):
                values[name] = values[name].clone()
        done: set[str] = set()
        report = Report()
        t0 = time.perf_counter()
        placement = self.plan.placement
        while True:
            stages = build_stages(graph, placement, done)
            try:
                self._prepare_all(stages, placement)
                if is_chain(stages) or not self.plan.overlap:
                    self._run_serial(stages, placement, values, done, report if profile else None, t0)
                else:
                    self._run_overlapped(stages, placement, values, done, report if profile else None, t0)
                break
            except _StageFailed as failure:
                placement = self._fall_back(failure, placement, done, report)
        outputs = [values[name] for name in graph.outputs]
        outputs = [o.cpu() if isinstance(o, torch.Tensor) and o.device.type != "cpu" else o for o in outputs]
        if profile:
            report.total_s = time.perf_counter() - t0
        return graph.build_output(outputs), report

    def _record(self, stage: Stage, placement: Placement, start: float, end: float, t0: float) -> StageRecord:
        names = [self.plan.graph.nodes[i].name for i in stage.nodes]
        if stage.claim is not None:
            est = stage.claim.stage_cost.latency_s
        else:
            est = sum(placement.node_costs[i].latency_s for i in stage.nodes)
        return StageRecord(stage.index, placement.label(stage.location), names, est, start - t0, end - start, stage.claim is not None)

    def _run_serial(self, stages, placement, values, done, report, t0) -> None:
        for stage in stages:
            if report is None:
                self._run_stage(stage, placement, values, done)
                continue
            start = time.perf_counter()
            self._run_stage(stage, placement, values, done)
            report.stages.append(self._record(stage, placement, start, time.perf_counter(), t0))

    def _run_overlapped(self, stages, placement, values, done, report, t0) -> None:
        """Run ready stages concurrently, at most one per location (a device runs one stage at a time)."""
        waiting = {s.index: set(s.deps) for s in stages}
        busy: set[int] = set()
        running: dict[Future, tuple[Stage, float]] = {}
        failure: _StageFailed | None = None
        with ThreadPoolExecutor(max_workers=len({s.location for s in stages}), thread_name_prefix="hal-stage") as pool:
            while waiting or running:
                if failure is None:
                    for index in sorted(waiting):
                        stage = stages[index]
                        if not waiting[index] and stage.location not in busy:
                            del waiting[index]
                            busy.add(stage.location)
                            running[pool.submit(self._run_stage, stage, placement, values, done)] = (stage, time.perf_counter())
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: running[f][0].index):
                    stage, start = running.pop(future)
                    busy.discard(stage.location)
                    error = future.exception()
                    if error is not None:
                        if not isinstance(error, _StageFailed):
                            raise error
                        failure = failure or error
                        continue
                    if report is not None:
                        report.stages.append(self._record(stage, placement, start, time.perf_counter(), t0))
                    for deps in waiting.values():
                        deps.discard(stage.index)
        if failure is not None:
            raise failure

    def _fall_back(self, failure: _StageFailed, placement: Placement, done: set[str], report: Report) -> Placement:
        """Drop the failed device from the plan; returns where the rest of this run goes."""
        device = placement.locations[failure.location]
        error = failure.error
        kind = "device failure" if isinstance(error, DeviceFailure) else "error"
        new = self.plan.drop_device(device, done, placement)
        moved = {
            node.name: new.label(new.assignment[i])
            for i, node in enumerate(self.plan.graph.nodes)
            if node.name not in done and placement.assignment[i] == failure.location
        }
        message = f"{type(error).__name__}: {error}"
        report.fallbacks.append(Fallback(str(device), failure.node, message, moved))
        targets = ", ".join(sorted(set(moved.values()))) or HOST
        warnings.warn(f"{device} failed ({kind}) while running {failure.node!r}: {message}; dropped it and re-planned the remaining nodes onto {targets}", RuntimeWarning, stacklevel=4)
        return new
