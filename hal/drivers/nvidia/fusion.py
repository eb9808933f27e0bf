"""One Program for a claimed subgraph on an NVIDIA GPU: the ops composed along the wiring, fused by Inductor.

The composition (``hal.subgraph.run_wired`` over each op's own function: the precision policy's matmul / linear
/ conv2d, SDPA or hal's attention kernel, torch's elementwise ops) keeps every intermediate on the GPU. Where
``torch.compile`` can build Inductor kernels for the GPU (Dynamo runs on this Python and Triton imports),
the composition is compiled with it, which fuses elementwise ops into their neighbours' kernels; the compile
happens at the first call (seconds) and again for new input shapes. Otherwise, or with ``?fuse=none``, the
plain composition runs; ``path`` says which, and why.

If Inductor fails to compile the composition, the plain composition runs from then on and ``path`` carries the
failure: the result is the same computation either way, only the kernels differ.

With a graph policy (the driver's ``?graphs=``), the composition, fused or not, runs through a
``graphs.GraphedCallable``: each input layout is captured as a CUDA graph after warm-up and replayed where the
measured cost-benefit says it pays (or always, or never); ``path`` then ends with that decision and ``decision``
holds it with its numbers. Every graph of one Composition allocates from one ``graphs.GraphPool`` (its own unless
one is passed, e.g. one per plan).

Dynamo keeps its compiled graphs on the code object of the function it compiles, at most 8 per code object (its
``recompile_limit``); past that it runs the function uncompiled, silently. Every subgraph's composition is a closure
of the same driver function, so each Composition compiles a copy of it with a code object of its own: its cache
holds that subgraph's graphs only (one per input shape).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch

from hal.drivers.nvidia.graphs import GraphDecision, GraphedCallable, GraphPolicy, GraphPool
from hal.errors import InvalidInput

PLAIN = "ops composed in order (no fusion)"
FUSED = "torch.compile (Inductor) of the composed ops"


def inductor_unavailable(torch_device: torch.device) -> str | None:
    """Why ``torch.compile``'s Inductor cannot build kernels for ``torch_device`` here; None when it can."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (Dynamo) does not support this Python version"
    if torch_device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Inductor builds CUDA kernels with Triton, which is not importable here (pip install triton)"
    return None


def _with_own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a plain function or closure) with a fresh copy of its code object, so Dynamo's cache for it is its own."""
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


class Composition:
    """Calls ``composed`` compiled by Inductor, or as it is when ``why_not`` (or a failed compile) says so; through a
    GraphedCallable on ``device`` when ``graph_policy`` is given."""

    def __init__(
        self,
        composed: Callable[..., Any],
        why_not: str | None,
        *,
        graph_policy: GraphPolicy | None = None,
        device: torch.device | None = None,
        pool: GraphPool | None = None,
    ):
        self._composed = composed
        self._compiled = None if why_not else torch.compile(_with_own_code(composed), backend="inductor")
        self._fusion = f"{PLAIN}: {why_not}" if why_not else FUSED
        self.graphed: GraphedCallable | None = None
        if graph_policy is not None:
            if device is None:
                raise InvalidInput("Composition: a graph policy needs the torch device the composition runs on (device=...)")
            self.graphed = GraphedCallable(self._run, device=device, policy=graph_policy, pool=pool)

    @property
    def path(self) -> str:
        """How the composition runs: fused or not and why, then (with graphs) the last call's graph decision."""
        return self._fusion if self.graphed is None else f"{self._fusion}; {self.graphed.last_decision.reason}"

    @property
    def decision(self) -> GraphDecision | None:
        """The graph decision of the last call's input layout (None without a graph policy)."""
        return None if self.graphed is None else self.graphed.last_decision

    def __call__(self, *inputs: torch.Tensor) -> Any:
        return self._run(*inputs) if self.graphed is None else self.graphed(*inputs)

    def _run(self, *inputs: torch.Tensor) -> Any:
        if self._compiled is None:
            return self._composed(*inputs)
        try:
            return self._compiled(*inputs)
        except torch._dynamo.exc.BackendCompilerFailed as exc:  # Inductor could not build the kernels: run unfused
            self._compiled = None
            self._fusion = f"{PLAIN}: Inductor failed to compile it ({str(exc).splitlines()[0][:300]})"
            return self._composed(*inputs)
