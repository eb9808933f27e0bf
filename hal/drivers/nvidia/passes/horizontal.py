"""Horizontal: linears that read one input (Q/K/V projections) -> one ``norm_linear`` call over their weights.

The call returns the linears' outputs side by side ([..., N_1 + N_2 + N_3]); each linear's users read its columns
through a slice (``y[..., a:b]``), a view, so nothing is copied. A slice is strided where the linear's own output
was contiguous, so the pass fires only where that cannot show: every view taken of a slice (``view``, ``transpose``,
...) is evaluated on the strided slice first (a ``view`` that would fail leaves the group unfused), and no slice, nor
a view of one, is an output of the graph (the caller would see strides eager never gives); a linear that fails
this leaves its group, and the others are grouped without it. Up to three linears per call, in graph order;
weights of one dtype with the input (the kernels compute in the input's dtype).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx

from hal.drivers.nvidia.passes.linears import Fusable, build, insert, problem, read
from hal.drivers.nvidia.passes.nodes import describe, evaluate, is_linear, set_value, value
from hal.drivers.nvidia.passes.report import DEFAULT_MAX_ROWS, Log, PassResult, run_pass

#: The most linears one call takes (the kernel's limit: Q, K and V).
MAX_WEIGHTS = 3

#: Tensor methods and torch functions that return a view of their first operand (or views, for split/chunk/unbind).
VIEW_METHODS = frozenset(
    {"view", "view_as", "reshape", "transpose", "permute", "unsqueeze", "squeeze", "flatten", "unflatten", "expand", "narrow", "select", "split", "chunk", "unbind", "t", "__getitem__"}
)
VIEW_FUNCTIONS = (operator.getitem, torch.transpose, torch.permute, torch.reshape, torch.unsqueeze, torch.squeeze, torch.flatten, torch.narrow, torch.select, torch.split, torch.chunk, torch.unbind, torch.t)


def fuse_horizontal(gm: fx.GraphModule, example_inputs: Sequence[Any], *, max_rows: int = DEFAULT_MAX_ROWS) -> PassResult:
    """Rewrite groups of up to three plain linears that read one input (with at most ``max_rows`` rows) into one
    ``norm_linear`` call each, their outputs read back as slices."""
    return run_pass("horizontal", gm, example_inputs, max_rows, _rewrite)


def _rewrite(graph: fx.Graph, log: Log, max_rows: int) -> None:
    by_input: dict[fx.Node, list[Fusable]] = {}
    for node in graph.nodes:
        f = read(node) if is_linear(node) else None
        if f is not None:
            by_input.setdefault(f.x, []).append(f)
    for x, linears in by_input.items():
        if len(linears) < 2:
            continue
        ready = []
        for f in linears:
            why = problem(f, f.node, max_rows)
            if why:
                log.skip(f"linear {f.node.name!r} reading {x.name!r} with {len(linears) - 1} other(s): {why}")
            else:
                ready.append(f)
        while len(ready) > 1:  # groups in graph order; a linear whose readers cannot take a slice leaves the group
            group = ready[:MAX_WEIGHTS]
            left_out = _fuse(graph, log, group)
            ready = [f for f in ready if f is not left_out] if left_out else ready[len(group) :]


def _fuse(graph: fx.Graph, log: Log, group: list[Fusable]) -> Fusable | None:
    """Rewrite ``group`` as one call; or return the linear whose readers cannot read a slice (nothing rewritten)."""
    names = ", ".join(repr(f.node.name) for f in group)
    fused = Fusable(group[0].node, group[0].x, tuple(f.weights[0] for f in group), tuple(f.biases[0] for f in group))
    call = build(fused)
    if isinstance(call, str):
        log.skip(f"linears {names} reading {fused.x.name!r}: {call}")
        return None
    columns = _columns(group)
    slices = [evaluate(operator.getitem, (call.result, (Ellipsis, cols)), {}) for cols in columns]
    views: dict[fx.Node, Any] = {}
    for f, sliced in zip(group, slices):
        why = _strided_problem(f.node, sliced, views)
        if why:
            log.skip(f"linear {f.node.name!r} reading {fused.x.name!r} with {len(group) - 1} other(s): {why}")
            return f
    first = group[0].node
    node = insert(graph, call, before=first, like=first)
    _hoist_attributes(graph, node, fused)
    parts = []
    for f, cols, sliced in zip(group, columns, slices):
        with graph.inserting_before(first):
            parts.append(graph.call_function(operator.getitem, (node, (Ellipsis, cols))))
        set_value(parts[-1], sliced, like=f.node)
    for f, part in zip(group, parts):
        f.node.replace_all_uses_with(part)
        graph.erase_node(f.node)
    for view, computed in views.items():
        set_value(view, computed, like=view)
    log.fired(f"linears {names} reading {fused.x.name!r} -> norm_linear over {len(group)} weights, outputs sliced at columns {[(c.start, c.stop) for c in columns]}")
    return None


def _columns(group: list[Fusable]) -> list[slice]:
    """Each linear's columns of the side-by-side output."""
    out, start = [], 0
    for f in group:
        n = value(f.weights[0]).shape[0]
        out.append(slice(start, start + n))
        start += n
    return out


def _strided_problem(linear: fx.Node, sliced: torch.Tensor, views: dict[fx.Node, Any]) -> str | None:
    """Why the users of ``linear`` cannot read the strided ``sliced`` in its place; None when they can. The value of
    every view taken of it (transitively) is recomputed on the slice into ``views``."""
    pending: list[tuple[fx.Node, Any]] = [(linear, sliced)]
    while pending:
        source, computed = pending.pop()
        for user in source.users:
            if user.op == "output":
                return f"the output of {linear.name!r} reaches the graph's output through {describe(source)}: the caller would get a strided view"
            if not _is_view(user):
                continue
            try:
                args, kwargs = fx.node.map_arg((user.args, user.kwargs), lambda n: computed if n is source else n)
                views[user] = _evaluate_user(user, args, kwargs)
            except (RuntimeError, ValueError) as exc:  # torch's view refusal, raised as either by the fake kernels
                return f"{describe(user)} cannot take that view of a strided slice ({str(exc).splitlines()[0][:200]})"
            pending.append((user, views[user]))
    return None


def _evaluate_user(user: fx.Node, args: Any, kwargs: Any) -> Any:
    """``user``'s value with some operands replaced by fake values (the rest read from their nodes)."""
    target = getattr(torch.Tensor, user.target) if user.op == "call_method" else user.target
    return evaluate(target, args, kwargs)


def _is_view(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in VIEW_METHODS
    return node.op == "call_function" and any(node.target is f for f in VIEW_FUNCTIONS)


def _hoist_attributes(graph: fx.Graph, node: fx.Node, fused: Fusable) -> None:
    """Move get_attr weights read by ``node`` that come after it (symbolic_trace places them at first use) before it."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for operand in fused.operands():
        if isinstance(operand, fx.Node) and operand.op == "get_attr" and order[operand] > order[node]:
            node.prepend(operand)
