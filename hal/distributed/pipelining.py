"""A model cut into stages across the ranks of a mesh, run as a micro-batched pipeline (GPipe's forward schedule).

    # torchrun --nproc-per-node 4 serve.py   (every rank runs the same lines)
    mesh = hal.distributed.mesh("hopper", 4)
    pipe = hal.distributed.pipeline(model, x, mesh=mesh, micro_batches=8)   # rank r runs stage r on its own GPU
    print(pipe)                                # stages, devices, estimated latency, bubble, bytes per boundary
    out = pipe.run(x)                          # every rank returns the whole output

Every rank traces the same model on one micro-batch (``hal.runtime.plan`` over this rank's device), the ranks share
their per-node latency estimates (one ``all_gather_object``), and each cuts the graph the same way
(``hal.distributed.partition``: only where exactly one tensor crosses, balancing the largest stage's estimate).
Rank ``r`` keeps a ``hal.runtime.Plan`` of its own stage on its own device. A run splits the batch into micro-batches
along dim 0; rank ``r`` receives micro-batch ``j``'s activation from rank ``r - 1`` (its receive for ``j + 1`` is posted
before it computes ``j``), runs its stage, and sends the result to rank ``r + 1`` without waiting (``isend``), so
transfers overlap the next micro-batch's compute. Shapes and dtypes come from the trace: no metadata messages.
The last rank concatenates the outputs and broadcasts them, so every rank returns the same result, on the host
as ``Plan.run`` does. The transport is torch.distributed's (gloo on CPUs, NCCL on GPUs).

Inference only (``torch.no_grad()``). The model must treat samples independently, so that micro-batches give the
batch's result: no BatchNorm in training mode (batch statistics), no buffers written in place per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from hal.capability import Figure
from hal.device import Device, TensorSpec
from hal.errors import HalError, InvalidInput, ShapeError
from hal.runtime import Graph, Plan, plan
from hal.runtime.capture import graph_of

from .partition import bubble_fraction, cut_points, linear_partition, stage_latency_s

#: Divisors of the batch an error about micro_batches lists before "...".
LISTED_DIVISORS = 12


@dataclass(frozen=True)
class Boundary:
    """The one tensor stage ``index`` sends to stage ``index + 1`` per micro-batch: its graph value, shape and size."""

    index: int
    value: str
    spec: TensorSpec
    nbytes: Figure


@dataclass(frozen=True)
class PipelineStage:
    """Stage ``index``: the mesh rank that runs it, that rank's hal device, its nodes and estimated latency."""

    index: int
    global_rank: int
    device: str
    nodes: tuple[str, ...]
    labels: tuple[str, ...]
    est_latency_s: Figure


@dataclass(frozen=True)
class _RankPlan:
    """What one rank tells the others after planning: its device, its graph's fingerprint, its node estimates."""

    failure: str | None
    device: str = ""
    fingerprint: tuple = ()
    latency_s: tuple[float, ...] = ()


class PipelinePlan:
    """The model's stages over the mesh, this rank's stage Plan, and the schedule that runs them.

    ``stages`` and ``boundaries`` describe every rank (identical on all); ``plan`` is this rank's ``hal.runtime.Plan``
    of its own stage; ``bubble`` the schedule's idle share. Build with :func:`pipeline`.
    """

    def __init__(self, mesh: DeviceMesh, graph: Graph, stages: list[PipelineStage], boundaries: list[Boundary],
                 stage_plan: Plan, micro_batches: int, input_specs: list[TensorSpec], policy: str):
        self.mesh = mesh
        self.graph = graph
        self.stages = stages
        self.boundaries = boundaries
        self.plan = stage_plan
        self.micro_batches = micro_batches
        self.input_specs = input_specs
        self.policy = policy
        self.index = mesh.get_local_rank()
        self.group = mesh.get_group()
        n = len(stages)
        self.bubble = Figure.derived(bubble_fraction(n, micro_batches), "1", "(n - 1) / (m + n - 1)",
                                     f"GPipe forward schedule, n = {n} stages, m = {micro_batches} micro-batches, "
                                     "equal stage times")
        slowest = max(s.est_latency_s.value for s in stages)
        self.est_latency_s = Figure.derived((micro_batches + n - 1) * slowest, "s", "(m + n - 1) * max stage latency",
                                            "fill, steady state and drain; transfers between ranks and the "
                                            "output's broadcast not counted")

    @property
    def stage(self) -> PipelineStage:
        """This rank's stage."""
        return self.stages[self.index]

    def run(self, *inputs: torch.Tensor) -> Any:
        """Run the pipeline on a batch; every rank calls it with inputs of the planned shapes and gets the output.

        Only the first rank's input values are read (the others' give the shapes they are checked against, so a
        wrong shape fails on every rank, before any transfer). The output is built like ``model(x)``'s, on the host.
        """
        if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)):
            inputs = tuple(inputs[0])
        self._check(inputs)
        with torch.no_grad():
            outputs = self._forward(inputs)
            return self.graph.build_output(self._broadcast(outputs))

    def _check(self, inputs: Sequence[Any]) -> None:
        if len(inputs) != len(self.input_specs):
            raise ShapeError(f"this pipeline takes {len(self.input_specs)} input(s), got {len(inputs)}")
        for i, (t, spec) in enumerate(zip(inputs, self.input_specs)):
            if not isinstance(t, torch.Tensor):
                raise InvalidInput(f"input {i} must be a torch.Tensor, got {type(t).__name__}")
            problem = spec.mismatch(t)
            if problem is not None:
                raise ShapeError(f"input {i} has {problem}: the pipeline's stages and transfers are fixed by its "
                                 "example inputs; build a new pipeline (on every rank) with example inputs of this shape")

    def _forward(self, inputs: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """GPipe's forward schedule on this rank; the last rank returns each micro-batch's outputs, the others []."""
        n, m, r = len(self.stages), self.micro_batches, self.index
        first, last = r == 0, r == n - 1
        chunks = list(zip(*(t.split(t.shape[0] // m) for t in inputs))) if first else []
        receiving = None if first else self._receive()
        sending: list[tuple[torch.Tensor, dist.Work]] = []
        outputs: list[list[torch.Tensor]] = []
        for j in range(m):
            if first:
                args = chunks[j]
            else:
                buffer, work = receiving
                work.wait()
                receiving = self._receive() if j + 1 < m else None
                args = (buffer,)
            result = self.plan.run(*args)
            if last:
                outputs.append(result)
            else:
                sent = result[0].to(self._comm_device()).contiguous()
                sending.append((sent, dist.isend(sent, self.stages[r + 1].global_rank, group=self.group)))
        for _, work in sending:
            work.wait()
        return outputs

    def _receive(self) -> tuple[torch.Tensor, dist.Work]:
        spec = self.boundaries[self.index - 1].spec
        buffer = torch.empty(spec.shape, dtype=spec.dtype, device=self._comm_device())
        return buffer, dist.irecv(buffer, self.stages[self.index - 1].global_rank, group=self.group)

    def _comm_device(self) -> torch.device:
        """Where this rank's transfers live: the host for gloo, the current GPU for NCCL."""
        if self.mesh.device_type == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(self.mesh.device_type)

    def _broadcast(self, outputs: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """The batch's outputs from the last rank to every rank (concatenated along dim 0), on the host."""
        source = self.stages[-1].global_rank
        specs = self.graph.specs()
        whole = []
        for i, name in enumerate(self.graph.outputs):
            spec = specs[name]
            shape = (spec.shape[0] * self.micro_batches, *spec.shape[1:])
            if outputs:
                t = torch.cat([o[i] for o in outputs]).to(self._comm_device()).contiguous()
            else:
                t = torch.empty(shape, dtype=spec.dtype, device=self._comm_device())
            if len(self.stages) > 1:
                dist.broadcast(t, source, group=self.group)
            whole.append(t.cpu())
        return whole

    def explain(self) -> str:
        """The stages (rank, device, estimated latency per micro-batch, nodes), boundaries, bubble and estimate."""
        n, m = len(self.stages), self.micro_batches
        batch = self.input_specs[0].shape[0] if self.input_specs else 0
        lines = [f"pipeline: {n} stage(s) over the mesh's {self.mesh.device_type} ranks, {m} micro-batch(es) of "
                 f"{batch // m} (batch {batch}), policy {self.policy}; this is rank {self.stage.global_rank}"]
        for s in self.stages:
            nodes = ", ".join(f"{name}:{label}" for name, label in zip(s.nodes, s.labels))
            lines.append(f"  stage {s.index}  rank {s.global_rank}  {s.device}  est. {_us(s.est_latency_s.value)} per "
                         f"micro-batch ({s.est_latency_s.source})  nodes: {nodes}")
        for b in self.boundaries:
            lines.append(f"  stage {b.index} -> {b.index + 1}: sends {b.value!r} {str(b.spec.dtype)[6:]}"
                         f"{list(b.spec.shape)}, {b.nbytes.value:.0f} B per micro-batch")
        lines.append(f"  bubble: {self.bubble.value:.3f} of each rank's time idle ({self.bubble.source}: "
                     f"{self.bubble.note})")
        lines.append(f"  est. {_us(self.est_latency_s.value)} per batch ({self.est_latency_s.source}; "
                     f"{self.est_latency_s.note})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.3g} us"


def pipeline(model: torch.nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *, mesh: DeviceMesh,
             micro_batches: int, devices: Sequence[Device | str] | None = None,
             policy: str = "latency") -> PipelinePlan:
    """Cut ``model`` into ``mesh.size()`` stages, stage ``r`` on mesh rank ``r``; a collective: every rank calls it.

    ``example_inputs``: the batch (every input batch-major, one batch size) the pipeline will run, split into
    ``micro_batches`` equal micro-batches along dim 0. ``devices[r]`` is rank ``r``'s hal device (default: ``cpu``
    on a gloo mesh, ``cuda:<current device>``, i.e. ``LOCAL_RANK`` under :func:`hal.distributed.mesh`, on NCCL).
    ``policy`` is the planner's, for each rank's own stage. The checks that need no other rank run first, so bad
    arguments fail alike on every rank; a rank that fails to plan makes every rank raise, naming it.
    """
    inputs = _as_inputs(example_inputs)
    index, n = _mesh_position(mesh)
    micro = _micro_batch(inputs, micro_batches)
    _check_samples_independent(model)
    device = _device_label(devices, mesh, n, index)
    mine, whole, error = _plan_rank(model, tuple(t[:micro] for t in inputs), device, policy)
    group = mesh.get_group()
    ranks: list[Any] = [None] * n
    dist.all_gather_object(ranks, mine, group=group)
    if error is not None:
        raise error
    failed = [r for r, p in enumerate(ranks) if p.failure is not None]
    if failed:
        raise HalError(f"pipeline rank {failed[0]} could not plan its stage: {ranks[failed[0]].failure}. Every rank "
                       f"stops so that none waits for it; fix the error rank {failed[0]} reports")
    if any(p.fingerprint != mine.fingerprint for p in ranks):
        raise InvalidInput("the ranks traced different graphs (node names or shapes differ): every rank must pass the "
                           "same model and example input shapes to pipeline()")
    graph = whole.graph
    _check_graph(graph, inputs, micro_batches)
    points = cut_points(graph)
    specs = graph.specs()
    sizes = {p: _nbytes(specs[v]) for p, v in points.items()}
    if len(graph.nodes) < n or len(points) < n - 1:
        where = ", ".join(f"before {graph.nodes[p].name!r}" for p in sorted(points)) or "nowhere"
        raise InvalidInput(f"the model cannot be cut into {n} stages: it has {len(graph.nodes)} node(s) and "
                           f"{len(points)} cut point(s) where exactly one tensor crosses ({where}); use a mesh of at "
                           f"most {min(len(graph.nodes), len(points) + 1)} rank(s), or a model with more such points")
    cuts = linear_partition([p.latency_s for p in ranks], list(points), sizes)
    bounds = [0, *cuts, len(graph.nodes)]
    stages = [PipelineStage(k, dist.get_global_rank(group, k), ranks[k].device,
                            tuple(node.name for node in graph.nodes[a:b]), tuple(node.label for node in graph.nodes[a:b]),
                            Figure.derived(stage_latency_s(ranks[k].latency_s, a, b), "s",
                                           f"sum of {ranks[k].device}'s estimate per node (device.estimate, planner)"))
              for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    boundaries = [Boundary(k, points[p], specs[points[p]],
                           Figure.derived(sizes[p], "B", f"numel x itemsize of {points[p]!r} per micro-batch"))
                  for k, p in enumerate(cuts)]
    stage_plan = _stage_plan(graph, whole, bounds[index], bounds[index + 1], [points[p] for p in cuts], index)
    return PipelinePlan(mesh, graph, stages, boundaries, stage_plan, micro_batches,
                        [TensorSpec.of(t) for t in inputs], policy)


def _as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(inputs, (tuple, list)) or not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise InvalidInput("example inputs must be a tensor or a non-empty tuple of tensors, got "
                           f"{type(example_inputs).__name__}")
    return tuple(inputs)


def _mesh_position(mesh: DeviceMesh) -> tuple[int, int]:
    """``(this rank's index in the mesh, mesh size)``, refusing what a pipeline cannot run over."""
    if not isinstance(mesh, DeviceMesh):
        raise InvalidInput(f"mesh= takes a torch DeviceMesh (hal.distributed.mesh(kind, n)), got {type(mesh).__name__}")
    if mesh.ndim != 1:
        raise InvalidInput(f"a pipeline runs over a one-dimensional mesh; this one has {mesh.ndim} dimensions: pass "
                           "the pipeline dimension's sub-mesh, e.g. mesh['pp']")
    if mesh.get_coordinate() is None:
        raise InvalidInput(f"this process (global rank {dist.get_rank()}) is not in the mesh of ranks "
                           f"{mesh.mesh.tolist()}; call pipeline() only on the mesh's ranks")
    return mesh.get_local_rank(), mesh.size()


def _micro_batch(inputs: Sequence[torch.Tensor], micro_batches: int) -> int:
    """The micro-batch size, after checking the inputs share a batch size that ``micro_batches`` divides."""
    if isinstance(micro_batches, bool) or not isinstance(micro_batches, int) or micro_batches < 1:
        raise InvalidInput(f"micro_batches must be a whole number >= 1, got {micro_batches!r}")
    sizes = {t.shape[0] if t.dim() else None for t in inputs}
    if len(sizes) != 1 or None in sizes:
        shapes = ", ".join(str(list(t.shape)) for t in inputs)
        raise ShapeError(f"a pipeline splits every input along dim 0, so all need one batch size; got shapes {shapes}")
    batch = sizes.pop()
    if batch % micro_batches:
        divisors = [d for d in range(1, batch + 1) if batch % d == 0]
        shown = ", ".join(map(str, divisors[:LISTED_DIVISORS])) + (", ..." if len(divisors) > LISTED_DIVISORS else "")
        raise ShapeError(f"micro_batches={micro_batches} does not divide the batch of {batch}: pick one of "
                         f"[{shown}], or pad the batch to a multiple of {micro_batches}")
    return batch // micro_batches


def _check_samples_independent(model: torch.nn.Module) -> None:
    """Refuse modules whose output mixes the samples of a batch, where micro-batches would change the result."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training:
            raise InvalidInput(f"{name or 'the model'} ({type(module).__name__}) is in training mode: it normalises with "
                               "the batch's statistics, so each micro-batch would get different ones; call model.eval()")


def _device_label(devices: Sequence[Device | str] | None, mesh: DeviceMesh, n: int, index: int) -> str:
    """This rank's hal device: ``devices[index]``, else the mesh's (``cpu`` for gloo, the current GPU for NCCL)."""
    if devices is None:
        return f"cuda:{torch.cuda.current_device()}" if mesh.device_type == "cuda" else mesh.device_type
    if isinstance(devices, (str, Device)):
        raise InvalidInput(f"devices= takes one device per rank, got the single {str(devices)!r}; write "
                           f"devices=[{str(devices)!r}, ...] with {n} entries")
    labels = [str(d) for d in devices]
    if len(labels) != n:
        raise InvalidInput(f"devices= names {len(labels)} device(s) but the mesh has {n} ranks: give one per rank, "
                           f"in mesh order, or build the mesh with hal.distributed.mesh(kind, {len(labels)})")
    return labels[index]


def _plan_rank(model: torch.nn.Module, micro_inputs: tuple[torch.Tensor, ...], device: str,
               policy: str) -> tuple[_RankPlan, Plan | None, Exception | None]:
    """Trace and place the whole model on this rank's device for one micro-batch: what the other ranks are told,
    the Plan, and the error planning raised (kept until every rank has heard of it)."""
    try:
        whole = plan(model, micro_inputs, policy=policy, devices=[device])
    except Exception as exc:  # noqa: BLE001 (every rank must learn of it, or the others wait for this one forever)
        return _RankPlan(f"{type(exc).__name__}: {exc}"), None, exc
    fingerprint = tuple((node.name, node.label, None if node.output is None else tuple(node.output.shape))
                        for node in whole.graph.nodes)
    latency_s = tuple(c.latency_s for c in whole.placement.node_costs)
    return _RankPlan(None, str(whole.devices[0]), fingerprint, latency_s), whole, None


def _check_graph(graph: Graph, inputs: Sequence[torch.Tensor], micro_batches: int) -> None:
    """Refuse graphs whose micro-batched run would differ from the batch's: per-call buffer writes, outputs that are
    not batch-major (checked against the whole batch's shapes when there is more than one micro-batch)."""
    written = sorted({node.writes for node in graph.nodes if node.writes in graph.constants})
    if written:
        raise InvalidInput(f"the model writes {', '.join(written)} in place on every call; micro-batches would write "
                           f"it {micro_batches} times per batch: keep that state out of the pipelined model")
    specs = graph.specs()
    micro = inputs[0].shape[0] // micro_batches
    outputs = [specs.get(name) for name in graph.outputs]
    if any(spec is None or not spec.shape or spec.shape[0] != micro for spec in outputs):
        raise ShapeError(f"every output must be a tensor whose dim 0 is the batch (micro-batch of {micro} traced); got "
                         f"{[None if s is None else list(s.shape) for s in outputs]}: the outputs are concatenated")
    if micro_batches > 1:
        full = graph_of(graph.traced, inputs).specs()
        wrong = [name for name in graph.outputs if full[name].shape[0] != inputs[0].shape[0]]
        if wrong:
            raise ShapeError(f"output(s) {', '.join(wrong)} do not grow with the batch (dim 0 is not the batch): the "
                             "micro-batches' outputs could not be concatenated into the batch's; use micro_batches=1")


def _nbytes(spec: TensorSpec) -> int:
    return (spec.numel() or 0) * spec.dtype.itemsize


def _stage_plan(graph: Graph, whole: Plan, start: int, stop: int, sent: list[str], index: int) -> Plan:
    """A ``hal.runtime.Plan`` of nodes ``start .. stop-1`` on this rank's device: it reads the tensor the previous
    stage sends (the graph's inputs on the first stage) and returns, as a list, what it sends on (the graph's
    outputs on the last stage)."""
    specs = graph.specs()
    inputs = list(graph.inputs) if index == 0 else [sent[index - 1]]
    outputs = list(graph.outputs) if index == len(sent) else [sent[index]]
    nodes = graph.nodes[start:stop]
    read = {ref for node in nodes for ref in node.inputs}
    stage = Graph(inputs=inputs, input_specs=[specs[name] for name in inputs],
                  constants={k: v for k, v in graph.constants.items() if k in read}, nodes=nodes, outputs=outputs,
                  build_output=list, notes=list(graph.notes), aliases=dict(graph.aliases))
    return Plan(whole.model, stage, whole.devices, whole.policy, {}, whole.overlap)
