"""Norm: LayerNorm or RMSNorm over the last dim, feeding linears -> the norm computed in each linear's prologue.

Matched norms:

* ``F.layer_norm(x, (K,), weight, bias, eps)`` (``nn.LayerNorm``);
* ``F.rms_norm(x, (K,), weight, eps)`` (``nn.RMSNorm``; ``eps=None`` is ``torch.finfo(x.dtype).eps``, as torch takes it);
* the RMSNorm Hugging Face Llama, Mistral and Qwen write out::

      h = x.to(torch.float32)
      h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
      y = weight * h.to(x.dtype)          # or without the weight

  all three the same math: statistics in float32, the normalised value rounded to x's dtype, then the weight.

The consumers may be plain linears or kernel calls earlier passes made (Q/K/V side by side, a gated MLP, an
activation or residual epilogue); each gets ``norm=...`` and reads ``x``. It fires only where *every* reader of
the normalised tensor is such a linear reading it as its input: one other reader (the graph's output, a residual,
an elementwise op) and the norm stays, since it would be computed anyway.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from hal.drivers.nvidia.passes.linears import Call, Fusable, build, insert, problem, read
from hal.drivers.nvidia.passes.nodes import add_operands, arg, describe, erase_unused, is_call, is_leaf, mul_operands, value
from hal.drivers.nvidia.passes.report import DEFAULT_MAX_ROWS, Log, PassResult, run_pass


@dataclass(frozen=True)
class Norm:
    """A matched norm: ``out`` (the normalised tensor) = norm ``kind`` of ``x``; ``inner`` are the pattern's other
    nodes (erased once nothing reads them); ``problem`` says why it cannot be fused at all, when it cannot."""

    out: fx.Node
    x: fx.Node
    kind: str
    weight: fx.Node | None
    bias: fx.Node | None
    eps: float
    inner: tuple[fx.Node, ...] = ()
    problem: str | None = None


def fuse_norm(gm: fx.GraphModule, example_inputs: Sequence[Any], *, max_rows: int = DEFAULT_MAX_ROWS) -> PassResult:
    """Move every LayerNorm / RMSNorm over the last dim whose readers are all linears (at most ``max_rows`` rows)
    into their kernel calls' prologue."""
    return run_pass("norm", gm, example_inputs, max_rows, _rewrite)


def _rewrite(graph: fx.Graph, log: Log, max_rows: int) -> None:
    erased: set[fx.Node] = set()
    for node in list(graph.nodes):
        m = None if node in erased else match(node)
        if m is None or not m.out.users:
            continue
        where = f"{'LayerNorm' if m.kind == 'layer' else 'RMSNorm'} {m.out.name!r}"
        why, plans = (m.problem, []) if m.problem else _plan(m, max_rows)
        if why:
            log.skip(f"{where}: {why}")
            continue
        for f, _, call in plans:
            f.node.replace_all_uses_with(insert(graph, call, before=f.node, like=f.node))
            graph.erase_node(f.node)
            erased.add(f.node)
        erased.update(erase_unused(graph, [m.out, *m.inner]))
        log.fired(f"{where} -> prologue of {', '.join(fused.kernel() for _, fused, _ in plans)}")


def _plan(m: Norm, max_rows: int) -> tuple[str | None, list[tuple[Fusable, Fusable, Call]]]:
    """The kernel call each reader of ``m.out`` becomes with the norm in its prologue, or why one cannot."""
    plans = []
    for user in m.out.users:
        f = read(user)
        if f is None or f.x is not m.out or m.out in f.operands()[1:]:
            return f"its output is also read by {describe(user)}, not as the input of a linear it can be fused into", []
        fused = dataclasses.replace(f, x=m.x, norm=m.kind, norm_weight=m.weight, norm_bias=m.bias, eps=m.eps)
        why = problem(fused, user, max_rows)
        call = build(fused) if why is None else why
        if isinstance(call, str):
            return f"into {f.label()}: {call}", []
        plans.append((f, fused, call))
    return None, plans


# --------------------------------------------------------------------------- matching


def match(node: fx.Node) -> Norm | None:
    """The norm whose normalised tensor ``node`` is, or None."""
    return _layer_norm(node) or _rms_norm(node) or _written_rms_norm(node)


def _layer_norm(node: fx.Node) -> Norm | None:
    if not is_call(node, (F.layer_norm, torch.layer_norm)) or not isinstance(arg(node, 0, "input"), fx.Node):
        return None
    x, shape = arg(node, 0, "input"), arg(node, 1, "normalized_shape")
    m = Norm(node, x, "layer", arg(node, 2, "weight"), arg(node, 3, "bias"), float(arg(node, 4, "eps", 1e-5)))
    return dataclasses.replace(m, problem=_last_dim_problem(m, shape))


def _rms_norm(node: fx.Node) -> Norm | None:
    if not is_call(node, (F.rms_norm, torch.rms_norm)) or not isinstance(arg(node, 0, "input"), fx.Node):
        return None
    x, shape, eps = arg(node, 0, "input"), arg(node, 1, "normalized_shape"), arg(node, 3, "eps")
    xv = value(x)
    if eps is None and xv is not None:
        eps = torch.finfo(xv.dtype).eps
    m = Norm(node, x, "rms", arg(node, 2, "weight"), None, float(eps if eps is not None else 0.0))
    return dataclasses.replace(m, problem=_last_dim_problem(m, shape))


def _last_dim_problem(m: Norm, shape: Any) -> str | None:
    xv, yv = value(m.x), value(m.out)
    if xv is None or yv is None:
        return "it carries no tensor values to check"
    dims = tuple(shape) if isinstance(shape, (list, tuple, torch.Size)) else (shape,)
    if len(dims) != 1 or dims[0] != xv.shape[-1]:
        return f"it normalises over the last {len(dims)} dims {dims} of {tuple(xv.shape)}, not the last dim alone"
    if yv.dtype != xv.dtype:
        return f"it turns a {xv.dtype} input into {yv.dtype}: the kernels normalise in the input's dtype"
    return None


def _written_rms_norm(node: fx.Node) -> Norm | None:
    """The Hugging Face RMSNorm, ending at ``weight * h.to(dtype)`` or, with no weight, at ``h.to(dtype)``."""
    operands = mul_operands(node)
    for weight, cast in (operands, operands[::-1]) if operands else ():
        wv = value(weight) if is_leaf(weight) else None
        core = _rms_core(cast) if isinstance(cast, fx.Node) and wv is not None and wv.dim() == 1 else None
        if core:
            x, eps, inner, why = core
            return Norm(node, x, "rms", weight, None, eps, (cast, *inner), why or _dtype_problem(node, x))
    core = _rms_core(node)
    if core is None or any(_written_rms_norm(u) for u in node.users):
        return None  # not the pattern, or the weight multiply after it is the normalised tensor
    x, eps, inner, why = core
    return Norm(node, x, "rms", None, None, eps, inner, why or _dtype_problem(node, x))


def _rms_core(cast: fx.Node) -> tuple[fx.Node, float, tuple[fx.Node, ...], str | None] | None:
    """``(x, eps, nodes, problem)`` when ``cast`` is ``(h * rsqrt(mean(h ** 2, dim, keepdim=True) + eps)).to(dtype)``
    with ``h = x.to(torch.float32)``; ``problem`` names a dim other than the last."""
    scaled = _cast_source(cast, None)
    pair = mul_operands(scaled) if isinstance(scaled, fx.Node) else None
    for h, rsqrt in (pair, pair[::-1]) if pair else ():
        if not isinstance(rsqrt, fx.Node) or not is_call(rsqrt, (torch.rsqrt,), ("rsqrt",)):
            continue
        shifted = rsqrt.args[0]
        terms = add_operands(shifted) if isinstance(shifted, fx.Node) else None
        for mean, eps in (terms, terms[::-1]) if terms else ():
            if not isinstance(eps, (int, float)) or not isinstance(mean, fx.Node) or not is_call(mean, (torch.mean,), ("mean",)):
                continue
            square = mean.args[0]
            if not arg(mean, 2, "keepdim", False) or not _is_square_of(square, h):
                continue
            x = _cast_source(h, torch.float32)
            if not isinstance(x, fx.Node):
                continue
            nodes = (scaled, rsqrt, shifted, mean, square, h)
            return x, float(eps), nodes, _mean_dim_problem(mean, x)
    return None


def _cast_source(node: Any, dtype: torch.dtype | None) -> Any:
    """What ``node`` casts when it is ``t.to(dtype)`` (any dtype when ``dtype`` is None; ``t.float()`` for float32)."""
    if not isinstance(node, fx.Node) or node.op != "call_method" or not node.args:
        return None
    if node.target == "float" and len(node.args) == 1 and not node.kwargs and dtype in (None, torch.float32):
        return node.args[0]
    if node.target != "to" or set(node.kwargs) - {"dtype"}:
        return None
    target = arg(node, 1, "dtype")
    if len(node.args) > 2 or not isinstance(target, torch.dtype) or (dtype is not None and target != dtype):
        return None
    return node.args[0]


def _is_square_of(square: Any, h: Any) -> bool:
    if not isinstance(square, fx.Node):
        return False
    if is_call(square, (torch.pow, operator.pow), ("pow",)):
        return square.args[0] is h and arg(square, 1, "exponent") == 2
    return mul_operands(square) == (h, h)


def _mean_dim_problem(mean: fx.Node, x: fx.Node) -> str | None:
    xv = value(x)
    dim = arg(mean, 1, "dim")
    dims = tuple(dim) if isinstance(dim, (list, tuple)) else (dim,)
    if xv is None or len(dims) != 1 or not isinstance(dims[0], int) or dims[0] % xv.dim() != xv.dim() - 1:
        return f"its mean runs over dim {dim} of {tuple(xv.shape) if xv is not None else '?'}, not the last dim alone"
    return None


def _dtype_problem(out: fx.Node, x: fx.Node) -> str | None:
    xv, yv = value(x), value(out)
    if xv is None or yv is None:
        return "it carries no tensor values to check"
    if yv.dtype != xv.dtype:
        return f"it turns a {xv.dtype} input into {yv.dtype}: the kernels cast the normalised value back to the input's dtype"
    return None
