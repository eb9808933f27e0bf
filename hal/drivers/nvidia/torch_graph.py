"""An NVIDIA GPU's own compilation of a whole Dynamo graph (``Device.compile_torch_graph``): what
``torch.compile(model, backend="hal")`` does with a graph whose tensors all live on this GPU.

Three steps, each stated in ``describe()``:

1. **Fusion passes** (``passes``, when ``?fuse_passes=on``): linear regions of small-batch inference graphs become
   calls of hal's fused kernels (``hal.kernels.gemm``: the norm in the GEMM's prologue, bias / activation / residual
   in its epilogue, Q/K/V and gate/up projections as one launch); every candidate that does not fire is listed with
   the reason.
2. **The delegate** (Inductor) compiles the rewritten graph: it fuses the remaining elementwise work and calls
   hal's kernels as the custom ops they are.
3. **CUDA graph** (``graphs.GraphedCallable``, ``?graphs=auto``): the compiled graph is captured after warm-up and
   replayed only where replay measured faster than the compiled graph's own launches (and holds no more than
   ``?graph_memory_mib``). Parameters and buffers (the inputs Dynamo marks static) and any input the graph writes
   in place (``written_inputs``: a cache passed as an argument) are read in place: an optimiser step or a KV cache
   written in place is seen by the next replay with no copy. Buffers and written inputs count as written (saved and
   restored around the first call's measurements, so the caller sees one call's effect). Dynamo's guards fix
   every input's layout before the graph is called, so the replay key is the static inputs' addresses alone.

When the passes fired, the graph is also compiled as it came (unfused), and the first call runs both, times each
as it will run (replayed or not, ``CHOICE_CALLS`` calls) and keeps the faster: hal's kernels replace cuBLAS only
where they measured faster on this GPU for this graph. That doubles the compile time of such graphs.

Training graphs (grad mode on and a graph input that requires grad) are the delegate's alone: the fused kernels
have no backward and graphs replay inference only. Graphs with symbolic sizes (``dynamic=True``, or Dynamo's
automatic dynamic shapes after a recompile) are fused and compiled but not graphed (their inputs include sizes,
not only tensors), with that reason.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from hal.capability import Figure
from hal.device import TorchGraph
from hal.drivers.nvidia import graphs
from hal.drivers.nvidia.passes import FusionReport, apply_passes


def _static(t: Any) -> bool:
    """Whether Dynamo lifted ``t`` from a module (a parameter or buffer): it marks those as static inputs."""
    return isinstance(t, torch.Tensor) and (isinstance(t, torch.nn.Parameter) or getattr(t, "_dynamo_static_input_type", None) is not None)


#: Methods and functions that return a view of their first operand (a write through the view writes the operand).
_VIEWS = frozenset({"view", "view_as", "__getitem__", "getitem", "transpose", "permute", "narrow", "select", "unsqueeze", "squeeze",
                    "expand", "expand_as", "t", "as_strided", "unflatten", "split", "chunk", "unbind", "diagonal", "movedim", "swapaxes",
                    "detach", "reshape", "flatten", "contiguous"})


#: Functions that write their first operand without a trailing underscore (``x[i] = v``, ``x += y``).
_WRITES = frozenset({"setitem", "iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior", "ixor"})


def _name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")


def written_inputs(gm: fx.GraphModule) -> set[int]:
    """Positions of the graph inputs an op writes in place (``x.add_(...)``, ``x[i] = v``, ``x.index_copy_(...)``),
    directly or through views of them. It over-approximates (``reshape`` and ``contiguous`` may copy): declaring an
    input written only makes the graph read it in place; an undeclared write would make its bucket run eager."""
    placeholders = {n: i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")}

    def root(node: Any) -> fx.Node | None:
        while isinstance(node, fx.Node) and node.op in ("call_method", "call_function") and _name(node) in _VIEWS and node.args:
            node = node.args[0]
        return node if isinstance(node, fx.Node) and node in placeholders else None

    written = set()
    for n in gm.graph.nodes:
        if n.op not in ("call_method", "call_function") or not n.args:
            continue
        name = _name(n)
        if name in _WRITES or (name.endswith("_") and not name.startswith("_")):
            target = root(n.args[0])
            if target is not None:
                written.add(placeholders[target])
    return written


def _tensors_out(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """``compiled`` (called as Dynamo calls a backend's callable: with the graph inputs as arguments) returning a
    tensor or a tuple of tensors, as ``graphs.GraphedCallable`` takes them (Inductor returns lists)."""

    def call(*args: Any) -> Any:
        out = compiled(*args)
        return tuple(out) if isinstance(out, list) else out

    return call


#: Calls timed per candidate when the fused and unfused graphs are compared (after each one's warm-up and graph
#: decision): enough to average launch jitter out at the 0.1-2 ms steps this path serves.
CHOICE_CALLS = Figure.assumed(20, "calls", "engineering choice: 20 calls of 0.1-2 ms take 2-40 ms, once per graph")


class _Candidate:
    """One compiled version of the graph (fused or not), run through its own GraphedCallable when graphs apply."""

    def __init__(self, name: str, compiled: Callable[..., Any], graphed: graphs.GraphedCallable | None):
        self.name, self.compiled, self.graphed = name, compiled, graphed

    def __call__(self, *args: Any) -> Any:
        if self.graphed is None:
            return self.compiled(*args)
        out = self.graphed(*args)
        return list(out) if isinstance(out, tuple) else [out]


class CompiledGraph:
    """One Dynamo graph as this GPU runs it: the fusion report, the delegate's callable(s), the CUDA graph decision,
    and (when the passes fired) the measured choice between the fused and the unfused graph."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], delegate: Callable[[fx.GraphModule, Sequence[Any]], Callable[..., Any]],
                 *, device: torch.device, policy: graphs.GraphPolicy, fuse: bool, pool: graphs.GraphPool | None = None,
                 backend: graphs.GraphBackend | None = None):
        sizes = [i for i, x in enumerate(example_inputs) if not isinstance(x, torch.Tensor)]
        plain = copy.deepcopy(gm) if fuse and not sizes else None
        self.fusion: FusionReport | None = apply_passes(gm, example_inputs) if fuse else None
        fired = self.fusion is not None and any(self.fusion.fired.values())
        mutated = written_inputs(gm)  # before the passes rewrite the graph
        static = [i for i, t in enumerate(example_inputs) if _static(t) or i in mutated]
        self._written = [i for i in static if not isinstance(example_inputs[i], torch.nn.Parameter) or i in mutated]
        self.not_graphed = f"eager: the graph takes sizes (inputs {sizes[:4]}{'...' if len(sizes) > 4 else ''}: dynamic shapes), not only tensors" if sizes else None

        def candidate(name: str, module: fx.GraphModule) -> _Candidate:
            compiled = delegate(module, example_inputs)
            if sizes:
                return _Candidate(name, compiled, None)
            graphed = graphs.GraphedCallable(
                _tensors_out(compiled), device=device, policy=policy, static_argnums=static, written_argnums=self._written,
                layouts_guarded=True, pool=pool, backend=backend,
            )
            return _Candidate(name, compiled, graphed)

        self._candidates = [candidate("fused" if fired else "compiled", gm)]
        if fired and plain is not None:
            self._candidates.append(candidate("unfused", plain))
        self._timer = backend if backend is not None else graphs.backend_for(torch.device(device))[0]
        self.chosen: _Candidate | None = self._candidates[0] if len(self._candidates) == 1 else None
        self._choosing = threading.Lock()
        self.choice = "" if self.chosen is not None else "fused or unfused: decided at the first call"

    @property
    def graphed(self) -> graphs.GraphedCallable | None:
        """The GraphedCallable of the graph that runs (the fused one until the choice is made)."""
        return (self.chosen or self._candidates[0]).graphed

    def __call__(self, *args: Any) -> Any:
        if self.chosen is None:
            with self._choosing:  # one thread compares the candidates; the others then run the one it kept
                if self.chosen is None:
                    return self._choose(args)
        return self.chosen(*args)

    def _choose(self, args: Sequence[Any]) -> Any:
        """Run both candidates once (each makes its graph decision), time each as it will run, keep the faster, and
        return one call's result: the inputs the graph writes (buffers) are restored before every run, so the caller
        sees the effect of one call."""
        written = [args[i] for i in self._written]
        saved = [t.clone() for t in written]

        def restore() -> None:
            for live, state in zip(written, saved):
                live.copy_(state)

        for c in self._candidates:
            restore()
            c(*args)
        if self._timer is None:
            self.chosen, self.choice = self._candidates[0], "fused kept: not timed (no CUDA timer here)"
        else:
            times = []
            for c in self._candidates:
                restore()
                times.append(self._timer.per_call_s(lambda c=c: c(*args), int(CHOICE_CALLS.value)))
            best = min(range(len(times)), key=times.__getitem__)
            self.chosen = self._candidates[best]
            timed = " vs ".join(f"{c.name} {t * 1e3:.3g} ms" for c, t in zip(self._candidates, times))
            self.choice = f"{self.chosen.name} kept: {timed} per call ({self._timer.clock}, mean of {int(CHOICE_CALLS.value)} calls)"
        for c in self._candidates:
            if c is not self.chosen and c.graphed is not None:
                c.graphed.clear()
        self._candidates = [self.chosen]
        restore()
        return self.chosen(*args)

    def describe(self) -> str:
        """The passes' rewrites and near-misses, the fused/unfused choice, then the graph decision of the last call."""
        lines = [f"fusion passes:\n{self.fusion}" if self.fusion is not None else "fusion passes: off (?fuse_passes=off)"]
        if self.choice:
            lines.append(f"fusion choice: {self.choice}")
        graphed = self.graphed
        if graphed is None:
            lines.append(f"CUDA graph: {self.not_graphed}")
        else:
            s = graphed.stats
            lines.append(f"CUDA graph: {graphed.last_decision.reason} ({s.calls} calls: {s.replays} replays, {s.eager_calls} eager)")
        return "\n".join(lines)


def compile_torch_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], delegate: Callable[[fx.GraphModule, Sequence[Any]], Callable[..., Any]],
                        *, device: torch.device, policy: graphs.GraphPolicy, fuse: bool, pool: graphs.GraphPool | None = None) -> TorchGraph | None:
    """This GPU's compilation of a Dynamo graph (module docstring), or None for a training graph (the delegate's)."""
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs):
        return None
    compiled = CompiledGraph(gm, example_inputs, delegate, device=device, policy=policy, fuse=fuse, pool=pool)
    return TorchGraph(compiled, compiled.describe)
