"""Linear-like nodes, plain or fused, as one record: what the passes read, check and write.

A ``Fusable`` is a torch ``F.linear`` node or a call of ``hal.kernels.gemm.norm_linear`` / ``gated_linear`` that an
earlier pass made: its input, weights, biases, and the prologue (norm) and epilogue (activation, residual) it
applies. A pass reads one (``read``), changes fields (``dataclasses.replace``), checks that the kernel computes
exactly that (``problem``), and writes it back as one kernel call (``build`` then ``insert``).

The kernel call is the Python API ``hal.kernels.gemm.norm_linear(x, weights, biases, *, norm, norm_weight,
norm_bias, eps, activation, residual)`` (and ``gated_linear``), every keyword given, so a later pass reads the
node back by name; tracing it (AOTAutograd, under Inductor) records the ``hal::`` custom op it calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from hal.drivers.nvidia.passes.nodes import arg, describe, evaluate, is_leaf, is_linear, set_value, static_rows, value
from hal.kernels.gemm import gated_linear, norm_linear
from hal.kernels.gemm.errors import GemmInputError
from hal.kernels.gemm.inputs import DTYPES


@dataclass(frozen=True)
class Fusable:
    """One linear-like node: ``act(norm(x) @ W_i.T + b_i)`` side by side over ``weights`` (+ ``residual``), or with
    ``gated`` the two weights combined as ``act(norm(x) @ W_gate.T + b_gate) * (norm(x) @ W_up.T + b_up)``."""

    node: fx.Node
    x: fx.Node
    weights: tuple[fx.Node, ...]
    biases: tuple[fx.Node | None, ...]
    gated: bool = False
    norm: str | None = None
    norm_weight: fx.Node | None = None
    norm_bias: fx.Node | None = None
    eps: float = 1e-5
    activation: str | None = None
    residual: fx.Node | None = None

    @property
    def plain(self) -> bool:
        """Whether this is a torch ``F.linear``, not yet a fused kernel call."""
        return is_linear(self.node)

    @property
    def single_output(self) -> bool:
        """Whether its output is one linear's (or the gated product), not linears side by side."""
        return self.gated or len(self.weights) == 1

    def operands(self) -> list[Any]:
        """Every node it reads."""
        return [self.x, *self.weights, *self.biases, self.norm_weight, self.norm_bias, self.residual]

    def kernel(self) -> str:
        """The kernel call it is (or would be) and what it fuses: ``norm_linear(rms, 3 weights, silu, residual)``."""
        name = "gated_linear" if self.gated else "norm_linear"
        weights = f"{len(self.weights)} weights" if len(self.weights) > 1 and not self.gated else None
        parts = [self.norm, weights, self.activation, "residual" if self.residual is not None else None]
        return f"{name}({', '.join(p for p in parts if p)})"

    def label(self) -> str:
        """How a report names it: ``'linear_3'`` for a plain linear, ``'norm_linear_1' = norm_linear(gelu)`` else."""
        return repr(self.node.name) if self.plain else f"{self.node.name!r} = {self.kernel()}"


def read(node: fx.Node) -> Fusable | None:
    """The ``Fusable`` a node is, or None when it is no linear-like node."""
    if is_linear(node):
        x, weight, bias = arg(node, 0, "input"), arg(node, 1, "weight"), arg(node, 2, "bias")
        if not isinstance(x, fx.Node) or not isinstance(weight, fx.Node):
            return None
        return Fusable(node, x, (weight,), (bias,))
    if node.op != "call_function" or node.target not in (norm_linear, gated_linear):
        return None
    kw = node.kwargs
    common = dict(norm=kw["norm"], norm_weight=kw["norm_weight"], norm_bias=kw["norm_bias"], eps=kw["eps"], activation=kw["activation"], residual=kw["residual"])
    if node.target is gated_linear:
        x, w_gate, w_up, b_gate, b_up = node.args
        return Fusable(node, x, (w_gate, w_up), (b_gate, b_up), gated=True, **common)
    x, weights, biases = node.args
    return Fusable(node, x, tuple(weights), tuple(biases), **common)


# --------------------------------------------------------------------------- checks


def problem(f: Fusable, out: fx.Node, max_rows: int) -> str | None:
    """Why the kernel would not compute exactly what ``out`` (the node ``f`` replaces) computes, or would not pay
    (rows above ``max_rows``); None when ``f`` can replace it."""
    y, x = value(out), value(f.x)
    if y is None or x is None:
        return f"{describe(out)} carries no tensor value (shape, dtype) to check"
    if x.dtype not in DTYPES:
        return f"its input {f.x.name!r} is {x.dtype}; the fused kernels compute in float16, bfloat16 or float32"
    if y.requires_grad:
        return "the graph records gradients (training); the fused kernels have no backward: compile under torch.no_grad() or inference_mode()"
    if y.dtype != x.dtype:
        return f"it computes {y.dtype} from a {x.dtype} input (autocast): the kernels compute in the input's dtype"
    if x.dim() < 2:
        return f"its input {f.x.name!r} has {x.dim()} dim(s); the kernels take [..., K] with at least one row dim"
    rows = static_rows(x)  # before anything reads a symbolic size (which would add guards to Dynamo's shape env)
    if rows is None:
        return f"its rows {tuple(x.shape[:-1])} are dynamic: the graph would also run at sizes above max_rows={max_rows}"
    if rows > max_rows:
        return f"{rows} rows > max_rows={max_rows}: the fused kernels are built for launch-bound small batches; cuBLAS stays"
    if not x.is_contiguous():
        return f"its input {f.x.name!r} is not contiguous (strides {tuple(x.stride())}); the kernels read rows of K contiguous elements"
    k = x.shape[-1]
    for w, b in zip(f.weights, f.biases):
        why = _weight_problem(w, b, x, k)
        if why:
            return why
    for name, param in (("norm weight", f.norm_weight), ("norm bias", f.norm_bias)):
        if param is not None:
            why = _vector_problem(name, param, x, k)
            if why:
                return why
    if f.residual is not None:
        r = value(f.residual)
        if r is None or tuple(r.shape) != tuple(y.shape) or r.dtype != y.dtype or r.device != y.device:
            got = "no tensor" if r is None else f"{r.dtype} {tuple(r.shape)}"
            return f"the residual {f.residual.name!r} is {got}, not {y.dtype} {tuple(y.shape)} like the sum (a broadcast or promoting add)"
        if not r.is_contiguous():
            return f"the residual {f.residual.name!r} is not contiguous (strides {tuple(r.stride())})"
    return None


def _weight_problem(w: fx.Node, b: fx.Node | None, x: torch.Tensor, k: int) -> str | None:
    if not is_leaf(w):
        return f"its weight is computed in the graph by {describe(w)} (a transposed or derived weight); the kernels read parameters in place"
    wv = value(w)
    if wv is None or wv.dim() != 2 or wv.shape[1] != k or wv.dtype != x.dtype or wv.device != x.device:
        got = "no tensor" if wv is None else f"{wv.dtype} {tuple(wv.shape)} on {wv.device}"
        return f"its weight {w.name!r} is {got}, not [N, {k}] {x.dtype} on {x.device}"
    if not wv.is_contiguous():
        return f"its weight {w.name!r} is not contiguous (strides {tuple(wv.stride())}, e.g. a transposed parameter)"
    if b is not None:
        return _vector_problem("bias", b, x, wv.shape[0])
    return None


def _vector_problem(name: str, node: Any, x: torch.Tensor, size: int) -> str | None:
    if not is_leaf(node):
        return f"its {name} is {describe(node) if isinstance(node, fx.Node) else repr(node)}, not a parameter of the graph"
    v = value(node)
    if v is None or tuple(v.shape) != (size,) or v.dtype != x.dtype or v.device != x.device or not v.is_contiguous():
        got = "no tensor" if v is None else f"{v.dtype} {tuple(v.shape)}"
        return f"its {name} {node.name!r} is {got}, not a contiguous [{size}] {x.dtype} vector"
    return None


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Call:
    """A kernel call to insert: its target, operands, and the fake value it computes."""

    target: Callable[..., Any]
    args: tuple
    kwargs: dict[str, Any]
    result: Any


def build(f: Fusable) -> Call | str:
    """The kernel call computing ``f``, its value evaluated on the fake operands; or the kernel's own reason
    (a GemmInputError it raises on those shapes) why it cannot."""
    kwargs = dict(norm=f.norm, norm_weight=f.norm_weight, norm_bias=f.norm_bias, eps=f.eps, activation=f.activation, residual=f.residual)
    if f.gated:
        target, args = gated_linear, (f.x, f.weights[0], f.weights[1], f.biases[0], f.biases[1])
    else:
        target, args = norm_linear, (f.x, list(f.weights), list(f.biases))
    try:
        result = evaluate(target, args, kwargs)
    except GemmInputError as exc:
        return f"the kernel refuses it: {exc}"
    return Call(target, args, kwargs, result)


def insert(graph: fx.Graph, call: Call, before: fx.Node, like: fx.Node) -> fx.Node:
    """Insert ``call`` before ``before``; it takes the value and source location of ``like`` (the node it replaces)."""
    with graph.inserting_before(before):
        node = graph.call_function(call.target, call.args, call.kwargs)
    set_value(node, call.result, like)
    return node

