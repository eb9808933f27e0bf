"""Epilogue: ``linear -> activation`` and ``linear (-> activation) -> + residual`` -> one ``norm_linear`` call.

The activation (GELU exact or tanh, SiLU, ReLU) and then the residual add run on the accumulator before the one
store. Matched on a plain ``F.linear`` or on a single-output kernel call an earlier pass made (a ``gated_linear``
takes a residual, not a second activation). It fires only where the value before the activation (or before the
add) feeds nothing else, and the residual has the sum's exact shape and dtype (no broadcast, no type promotion).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import fx

from hal.drivers.nvidia.passes.linears import Fusable, build, insert, problem, read
from hal.drivers.nvidia.passes.nodes import activation_of, add_operands, describe, erase_unused, value
from hal.drivers.nvidia.passes.report import DEFAULT_MAX_ROWS, Log, PassResult, run_pass


def fuse_epilogue(gm: fx.GraphModule, example_inputs: Sequence[Any], *, max_rows: int = DEFAULT_MAX_ROWS) -> PassResult:
    """Fold every exact activation, then residual add, of a linear with at most ``max_rows`` rows into its kernel call."""
    return run_pass("epilogue", gm, example_inputs, max_rows, _rewrite)


def _rewrite(graph: fx.Graph, log: Log, max_rows: int) -> None:
    for node in list(graph.nodes):
        act = activation_of(node)
        operands = None if act else add_operands(node)
        if act:
            _activation(graph, log, node, act[0], read(act[1]), max_rows)
        elif operands:
            _residual(graph, log, node, operands, max_rows)


def _activation(graph: fx.Graph, log: Log, act: fx.Node, kind: str, f: Fusable | None, max_rows: int) -> None:
    if f is None:
        return
    where = f"{kind}({f.label()}) at {act.name!r}"
    why = _epilogue_problem(f, act) or (f"it already applies {f.activation}" if f.activation else None)
    fused = dataclasses.replace(f, node=act, activation=kind)
    _commit(graph, log, f, fused, act, where, why or problem(fused, act, max_rows))


def _residual(graph: fx.Graph, log: Log, add: fx.Node, operands: tuple[Any, Any], max_rows: int) -> None:
    reasons = []
    for source, residual in (operands, operands[::-1]):
        f = read(source) if isinstance(source, fx.Node) else None
        if f is None or value(residual) is None:
            continue
        why = _epilogue_problem(f, add)
        if residual is source:
            why = "it adds the linear's output to itself"
        elif why is None and tuple(value(source).shape) != tuple(value(add).shape):
            why = f"the sum {tuple(value(add).shape)} broadcasts the linear's output {tuple(value(source).shape)}"
        elif why is None and value(residual).dtype != value(source).dtype:
            why = f"the residual is {value(residual).dtype} and the linear's output {value(source).dtype}: the add promotes"
        fused = dataclasses.replace(f, node=add, residual=residual)
        why = why or problem(fused, add, max_rows)
        if why is None:
            _commit(graph, log, f, fused, add, f"{f.label()} + {residual.name!r} at {add.name!r}", None)
            return
        reasons.append(f"{f.label()} + {residual.name!r} at {add.name!r}: {why}")
    if reasons:
        log.skip(reasons[0])


def _epilogue_problem(f: Fusable, consumer: fx.Node) -> str | None:
    """Why ``consumer`` (an activation or add reading ``f``) cannot become part of ``f``'s epilogue."""
    if not f.single_output:
        return "its output holds several linears side by side"
    if f.residual is not None:
        return "it already adds a residual; what follows the add is not an epilogue the kernel has"
    if f.gated and activation_of(consumer):
        return "gated_linear applies its activation to the gate; one of the product is not fused"
    others = [u for u in f.node.users if u is not consumer]
    if others:
        return f"the value before {describe(consumer)} is also read by {describe(others[0])}: it would still be computed"
    return None


def _commit(graph: fx.Graph, log: Log, f: Fusable, fused: Fusable, anchor: fx.Node, where: str, why: str | None) -> None:
    """Replace ``anchor`` (and ``f``'s node) with the call computing ``fused``, or log why not."""
    call = build(fused) if why is None else why
    if isinstance(call, str):
        log.skip(f"{where}: {call}")
        return
    anchor.replace_all_uses_with(insert(graph, call, before=anchor, like=anchor))
    erase_unused(graph, [anchor, f.node])
    log.fired(f"{where} -> {fused.kernel()}")
