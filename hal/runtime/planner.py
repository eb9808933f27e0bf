"""``plan(model, example_inputs, policy, pins, devices, allow_simulated)``: capture, place, and return an inspectable, runnable Plan.

Which devices take part: the ones named (``devices=``, and every pinned device); by default every available
device the registry probes that is real hardware (the CPU included). Emulators (``DeviceInfo.simulated`` or
``capabilities.simulated``) take part only when named or with ``allow_simulated=True``: a plan never moves a
model onto a device that computes it by simulation, often orders of magnitude slower, unless asked. A GPU
listed under a second name (``cuda:N`` for ``hopper:N``: its probe entry's ``summary["alias_of"]``) is one
location, under the name it aliases, unless the alias is named.

After placement every stage of two or more nodes on a device is offered to that device as one subgraph
(``hal.runtime.claims``); a claimed stage runs as one Program.

A Plan may be run from several threads at once: re-planning for a new batch size, preparing Programs and
dropping a failed device each happen under a lock of the plan, and every run keeps its own values and report.
"""

from __future__ import annotations

import difflib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hal import registry
from hal.device import Cost, Device, DeviceURI, Program
from hal.errors import HalError, InvalidInput, ShapeError
from hal.runtime.capture import Graph, UntraceableModel, capture, graph_of
from hal.runtime.claims import Claims, StageClaim
from hal.runtime.costs import HOST, HostModel
from hal.runtime.executor import Executor, Report, Stage, build_stages
from hal.runtime.placement import Placement, _Queries, place

#: Left-out emulators named one by one in the plan's note before "and N more".
LISTED_SKIPPED = 6


def available_devices(allow_simulated: bool = False) -> tuple[list[Device], list[str]]:
    """Open every available device the registry probes, and notes on what was left out or failed to open.

    Left out: board transports, a GPU's second name (a probe entry with ``summary["alias_of"]``: one physical
    GPU is one location) and, unless ``allow_simulated``, emulators (``DeviceInfo.simulated`` or, once opened,
    ``capabilities.simulated``).
    """
    devices, notes, emulators = [], [], []
    for info in registry.probe_all():
        if not info.available or info.kind == registry.BOARD_DRIVER or info.summary.get("alias_of"):
            continue
        if info.simulated and not allow_simulated:
            emulators.append(info.uri)
            continue
        try:
            device = registry.open_device(info.uri)
            simulated = device.capabilities.simulated
        except Exception as exc:  # noqa: BLE001 (a driver that fails to open or describe itself must not sink the plan)
            notes.append(f"{info.uri} was probed available but did not open: {type(exc).__name__}: {exc}")
            continue
        if simulated and not allow_simulated:
            emulators.append(info.uri)
            continue
        devices.append(device)
    if emulators:
        listed = ", ".join(emulators[:LISTED_SKIPPED]) + (f" and {len(emulators) - LISTED_SKIPPED} more" if len(emulators) > LISTED_SKIPPED else "")
        notes.append(f"left out {len(emulators)} simulated device(s): {listed}; emulators take part only when named "
                     "(devices=[...] or a pin) or with allow_simulated=True")
    return devices, notes


def _open(devices: Iterable[Device | str]) -> list[Device]:
    """Open the named devices (a device string that names no device here raises, naming it), one per URI, sorted."""
    opened: dict[str, Device] = {}
    for d in devices:
        device = d if isinstance(d, Device) else registry.open_device(d)
        opened[str(device)] = device
    return [opened[k] for k in sorted(opened)]


def _shared_gpus(devices: Sequence[Device]) -> list[str]:
    """A note per torch device (a GPU) that two planned devices compute on (an alias was named, so both stay)."""
    by_home: dict[str, list[str]] = {}
    for d in devices:
        if d.torch_device.type != "cpu":
            by_home.setdefault(str(d.torch_device), []).append(str(d))
    return [f"{' and '.join(names)} are one GPU ({home}), planned as {len(names)} locations because an alias of it was named; "
            "name only one of them to plan the GPU once" for home, names in sorted(by_home.items()) if len(names) > 1]


def _host_model(devices: Sequence[Device]) -> HostModel:
    for d in devices:
        if d.kind == "cpu":
            return HostModel.from_device(d)
    try:
        return HostModel.from_device(registry.open_device("cpu:0"))
    except HalError:
        return HostModel.default()


def _as_inputs(inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    raise InvalidInput(f"example inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}")


def _capture_with_pins(model: torch.nn.Module, example_inputs: tuple, pins: Mapping[str, str]) -> Graph:
    """Capture; where tracing fails inside a pinned module (or one under a pinned prefix), keep that module whole."""
    leaves: list[str] = []
    while True:
        try:
            return capture(model, example_inputs, leaves)
        except UntraceableModel as exc:
            covering = [p for p in pins if exc.module and (exc.module == p or exc.module.startswith(p + "."))]
            if not covering or min(covering, key=len) in leaves:
                raise
            leaves.append(min(covering, key=len))


def _expand_pins(graph: Graph, pins: Mapping[str, str]) -> dict[str, str]:
    """Node pins from user pins: exact node names, fused-node aliases, or module prefixes ('block' pins 'block.*')."""
    names = graph.node_names()
    expanded: dict[str, str] = {}
    for key, uri in pins.items():
        target = graph.aliases.get(key, key)
        matched = [n for n in names if n == target or n.startswith(target + ".")]
        if not matched:
            close = difflib.get_close_matches(key, names, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise InvalidInput(f"pin {key!r}={uri!r} names no node of the captured graph{hint} Nodes: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
        for n in matched:
            expanded[n] = uri
    return expanded


def _canonical_pin(uri: str) -> str:
    return HOST if uri == HOST else str(DeviceURI.parse(uri))


def plan(
    model: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    policy: str = "latency",
    pins: Mapping[str, str] | None = None,
    devices: Iterable[Device | str] | None = None,
    overlap: bool = True,
    allow_simulated: bool = False,
) -> Plan:
    """Trace ``model`` on ``example_inputs`` and place it across ``devices``.

    ``devices`` lists device strings or Devices; by default every available device that is real hardware (the
    CPU included), and emulators too with ``allow_simulated=True`` (see the module docstring). ``policy`` is
    "latency", "energy" or "accuracy"; ``pins`` maps node names (module names such as "fc2", or prefixes such
    as "encoder") to device strings ("memristor:0", or "cpu:0"/"host" for the CPU reference); a pinned device
    joins the plan. A device string that names no device here raises before anything is traced, and
    UnsupportedOp is raised before anything runs if a pinned device cannot run its node.
    """
    inputs = _as_inputs(example_inputs)
    if isinstance(devices, (str, Device)):
        raise InvalidInput(f"devices= takes a list of devices, got the single {type(devices).__name__} {str(devices)!r}; write devices=[{str(devices)!r}]")
    pins = {k: _canonical_pin(v) for k, v in (pins or {}).items()}
    chosen = _open(devices or [])
    chosen = _open([*chosen, *(uri for uri in sorted(set(pins.values())) if uri != HOST and not any(d == uri for d in chosen))])
    notes: list[str] = []
    if devices is None:
        gathered, notes = available_devices(allow_simulated)
        chosen = _open([*gathered, *chosen])
    notes += _shared_gpus(chosen)
    graph = _capture_with_pins(model, inputs, pins)
    return Plan(model, graph, chosen, policy, pins, overlap, notes)


@dataclass(frozen=True)
class _StageProgram:
    """A claimed stage's Program and each weight it was prepared from, with that weight's ``_version`` and
    ``data_ptr()`` then: a weight written in place (``_version``) or re-pointed (``w.data = other``) since, or
    a node bound to another tensor, makes the Program stale, so it is prepared again (as the eager cache does)."""

    program: Program
    weights: tuple[tuple[torch.Tensor, int, int], ...]

    def fresh(self, weights: Sequence[torch.Tensor]) -> bool:
        return len(weights) == len(self.weights) and all(
            t is w and t._version == version and t.data_ptr() == pointer for t, (w, version, pointer) in zip(weights, self.weights)
        )


class Plan:
    """A placed graph: print it (table), ``to_json()``, ``save_plot(path)``, ``run(*inputs, profile=False)``.

    ``programs`` holds the per-node Programs by (node, device); ``stage_programs`` the Programs of claimed
    stages by (node names, device). Safe to run from several threads; ``last_report`` is the report of the
    run that finished last.
    """

    def __init__(self, model: torch.nn.Module, graph: Graph, devices: list[Device], policy: str, pins: Mapping[str, str], overlap: bool = True, notes: Iterable[str] = ()):
        self.model = model
        self.graph = graph
        self.devices = list(devices)
        self.policy = policy
        self.pins = dict(pins)
        self.overlap = overlap
        self._device_notes = list(notes)
        self.notes = [*self._device_notes, *graph.notes]
        self.host = _host_model(self.devices)
        self.programs: dict[tuple[str, str], Program] = {}
        self.stage_programs: dict[tuple[tuple[str, ...], str], _StageProgram] = {}
        self._claims = Claims(graph, policy)
        self.dropped: list[str] = []
        self.last_report: Report | None = None
        self._queries = _Queries()
        self.node_pins = _expand_pins(graph, self.pins)
        self._index = {n.name: i for i, n in enumerate(graph.nodes)}
        self.placement: Placement = place(graph, self.devices, policy, self.node_pins, self.host, queries=self._queries)
        self._variants: dict[tuple, Plan] = {}
        self.lock = threading.RLock()  # guards programs, claims, devices and placement across threads
        self._variants_lock = threading.Lock()  # held while a variant is made, so each batch size is planned once
        for stage in self.stages:  # ask every device for its stages now, so that the plan shows the answers
            self.claim(stage, self.placement)

    # ---- inspection
    @property
    def stages(self) -> list[Stage]:
        return build_stages(self.graph, self.placement, set())

    def device_of(self, node: str) -> str:
        """Where a node runs ('host' for the CPU reference)."""
        name = self.graph.aliases.get(node, node)
        for i, n in enumerate(self.graph.nodes):
            if n.name == name:
                return self.placement.label(self.placement.assignment[i])
        raise InvalidInput(f"no node {node!r} in this plan; nodes: {', '.join(self.graph.node_names())}")

    def claim(self, stage: Stage, placement: Placement) -> StageClaim | None:
        """The device's answer for ``stage`` of ``placement`` (asked once per device and node set), or None for
        a stage on the host or of one node (a single op is its own Program already)."""
        device = placement.locations[stage.location]
        if device is None or len(stage.nodes) < 2:
            return None
        with self.lock:
            return self._claims.of(device, stage.nodes, placement.node_costs)

    def claims(self) -> list[StageClaim | None]:
        """The answer for each stage of the plan's placement (None for host and single-node stages)."""
        return [self.claim(stage, self.placement) for stage in self.stages]

    def totals(self) -> Cost:
        """Estimated cost of one run, serial: the placement's node and transfer costs, each claimed stage
        counted at its claim's estimate instead of the sum of its ops."""
        base = self.placement.totals()
        latency, energy, error = base.latency_s, base.energy_j, base.error
        for c in self.claims():
            if c is not None and c.claimed:
                latency += c.stage_cost.latency_s - c.per_op.latency_s
                energy += c.stage_cost.energy_j - c.per_op.energy_j
                error += c.stage_cost.error - c.per_op.error
        return Cost(latency, energy, error, "sum over stages (claimed ones at their claim's estimate) and transfers")

    def to_dict(self) -> dict[str, Any]:
        from hal.runtime.explain import plan_to_dict

        return plan_to_dict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self):
        """The plan as a rich Table."""
        from hal.runtime.explain import plan_table

        return plan_table(self)

    def __rich__(self):
        return self.table()

    def __str__(self) -> str:
        from hal.runtime.explain import render_text

        return render_text(self)

    def save_plot(self, path: str, report: Report | None = None) -> None:
        """PNG: Gantt of stages by device (estimated, or measured from ``report``) and energy by device."""
        from hal.runtime.explain import save_plot

        save_plot(self, path, report)

    # ---- execution
    def prepare(self) -> None:
        """Prepare every device Program now, one per claimed stage and one per other device node (otherwise the first run does it)."""
        placement = self.placement
        for stage in self.stages:
            device = placement.locations[stage.location]
            if device is None:
                continue
            claim = self.claim(stage, placement)
            if claim is not None and claim.claimed:
                self.stage_program(claim, device)
                continue
            for i in stage.nodes:
                self.program(self.graph.nodes[i].name, device)

    def program(self, node: str, device: Device) -> Program:
        """The plan's Program of ``node`` on ``device``, prepared on first use and again once invalidated."""
        key = (node, str(device))
        with self.lock:
            program = self.programs.get(key)
            if program is None or not program.valid:
                spec = self.graph.nodes[self._index[node]]
                program = device.prepare(spec.op, spec.params)
                self.programs[key] = program
            return program

    def stage_program(self, claim: StageClaim, device: Device) -> Program:
        """The Program of a claimed stage (``device.prepare_subgraph``), prepared on first use and again once
        invalidated or once one of its weights changed (``_StageProgram``)."""
        nodes = [self.graph.nodes[i] for i in claim.nodes]
        weights = [t for node in nodes for t in node.params.values()]
        key = (claim.names, str(device))
        with self.lock:
            entry = self.stage_programs.get(key)
            if entry is None or not entry.program.valid or not entry.fresh(weights):
                program = device.prepare_subgraph(claim.subgraph, [node.params for node in nodes])
                entry = _StageProgram(program, tuple((t, t._version, t.data_ptr()) for t in weights))
                self.stage_programs[key] = entry
            return entry.program

    def run(self, *inputs: Any, profile: bool = False) -> Any:
        """Run the plan on ``inputs``; with ``profile=True`` return ``(outputs, report)``.

        A run is inference: it records no gradients (``torch.no_grad()``), so a GPU stage can replay as a CUDA graph
        and no device is asked for a backward it cannot give. Train through ``torch.compile(model, backend="hal")``.

        Inputs of a new batch size (same dtype and other dimensions) are re-planned with the same policy and
        pins (the new plan is cached); any other shape is refused with ShapeError.
        """
        if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)):
            inputs = tuple(inputs[0])
        target = self._plan_for(inputs)
        with torch.no_grad():
            outputs, report = Executor(target).run(tuple(inputs), profile)
        if target is not self:
            report.replanned_for = [list(t.shape) for t in inputs]
        self.last_report = report
        return (outputs, report) if profile else outputs

    def _plan_for(self, inputs: tuple) -> Plan:
        specs = self.graph.input_specs
        if len(inputs) != len(specs):
            raise ShapeError(f"this plan takes {len(specs)} input(s), got {len(inputs)}")
        same = True
        for i, (t, spec) in enumerate(zip(inputs, specs)):
            if not isinstance(t, torch.Tensor):
                raise InvalidInput(f"input {i} must be a torch.Tensor, got {type(t).__name__}")
            if spec.mismatch(t) is None:
                continue
            same = False
            if t.dtype != spec.dtype or t.dim() != len(spec.shape) or tuple(t.shape[1:]) != tuple(spec.shape[1:]):
                raise ShapeError(
                    f"input {i} is {str(t.dtype)[6:]}{list(t.shape)} but the plan was made for {str(spec.dtype)[6:]}{list(spec.shape)}; "
                    "only the batch (first) dimension may change: plan again with example inputs of this shape"
                )
        if same:
            return self
        key = tuple(tuple(t.shape) for t in inputs)
        with self._variants_lock:
            variant = self._variants.get(key)
            if variant is None:
                graph = graph_of(self.graph.traced, inputs)
                variant = Plan(self.model, graph, self.devices, self.policy, self.pins, self.overlap, self._device_notes)
                variant.notes.append(f"re-planned for input shapes {[list(s) for s in key]}")
                self._variants[key] = variant
            return variant

    def drop_device(self, device: Device | None, done: set[str], used: Placement) -> Placement:
        """Remove ``device`` from the plan and return where a run that used ``used`` finishes: the nodes in
        ``done`` keep their place at zero cost, the rest are re-placed on the remaining devices.

        The plan's own placement, for later runs, is re-made from scratch without the device.
        """
        with self.lock:
            if str(device) not in self.dropped:
                self.devices = [d for d in self.devices if d != device]
                self.dropped.append(str(device))
                self.node_pins = {n: uri for n, uri in self.node_pins.items() if uri != str(device)}
                self.placement = place(self.graph, self.devices, self.policy, self.node_pins, self.host, queries=self._queries)
                self.notes.append(f"{device} was dropped after a failure; remaining nodes re-placed")
            new_locations = [None, *sorted(self.devices, key=str)]
            fixed: dict[str, int] = {}
            for i, node in enumerate(self.graph.nodes):
                if node.name in done:
                    where = used.locations[used.assignment[i]]
                    fixed[node.name] = new_locations.index(where) if where in new_locations else 0
            return place(self.graph, self.devices, self.policy, self.node_pins, self.host, fixed, self._queries)
