"""Gated: ``act(F.linear(x, W_gate, b_gate)) * F.linear(x, W_up, b_up)`` -> one ``gated_linear`` call.

SwiGLU (Llama, Mistral, Qwen: SiLU) and GeGLU (GELU, exact or tanh) MLPs. Both projections read ``x`` once, in
one launch, and the product is formed in the epilogue. It fires only where the gate's pre-activation, the
activation's output and the up projection feed nothing but the product, and the three have one shape (no
broadcast).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import fx

from hal.drivers.nvidia.passes.linears import Fusable, build, insert, problem, read
from hal.drivers.nvidia.passes.nodes import activation_of, describe, erase_unused, mul_operands, value
from hal.drivers.nvidia.passes.report import DEFAULT_MAX_ROWS, Log, PassResult, run_pass


def fuse_gated(gm: fx.GraphModule, example_inputs: Sequence[Any], *, max_rows: int = DEFAULT_MAX_ROWS) -> PassResult:
    """Rewrite every exact ``act(linear(x, Wg)) * linear(x, Wu)`` with at most ``max_rows`` rows into ``gated_linear``."""
    return run_pass("gated", gm, example_inputs, max_rows, _rewrite)


def _rewrite(graph: fx.Graph, log: Log, max_rows: int) -> None:
    for mul in list(graph.nodes):
        operands = mul_operands(mul)
        match = _match(operands) if operands else None
        if match is None:
            continue
        act, kind, gate, up = match
        where = f"{kind}({gate.node.name}) * {up.node.name} at {mul.name!r}"
        why = _shape_problem(mul, act, gate, up)
        fused = Fusable(mul, gate.x, (gate.weights[0], up.weights[0]), (gate.biases[0], up.biases[0]), gated=True, activation=kind)
        why = why or problem(fused, mul, max_rows)
        call = build(fused) if why is None else why
        if isinstance(call, str):
            log.skip(f"{where}: {call}")
            continue
        mul.replace_all_uses_with(insert(graph, call, before=mul, like=mul))
        erase_unused(graph, [mul, act, gate.node, up.node])
        log.fired(f"{where} -> gated_linear({kind}) over {gate.weights[0].name!r}, {up.weights[0].name!r}")


def _match(operands: tuple[Any, Any]) -> tuple[fx.Node, str, Fusable, Fusable] | None:
    """``(activation node, its kind, gate linear, up linear)`` when one operand is an activation of a plain linear
    and the other a plain linear."""
    for a, b in (operands, operands[::-1]):
        if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
            continue
        act = activation_of(a)
        gate = read(act[1]) if act else None
        up = read(b)
        if act and gate and up and gate.plain and up.plain:
            return a, act[0], gate, up
    return None


def _shape_problem(mul: fx.Node, act: fx.Node, gate: Fusable, up: Fusable) -> str | None:
    if gate.node is up.node:
        return "gate and up are one linear (act(y) * y is no gated MLP)"
    if gate.x is not up.x:
        return f"gate and up read different inputs ({gate.x.name!r}, {up.x.name!r})"
    for node, only in ((gate.node, act), (act, mul), (up.node, mul)):
        others = [u for u in node.users if u is not only]
        if others:
            return f"the value of {describe(node)} is also read by {describe(others[0])}: it would still be computed"
    shapes = {tuple(v.shape) if v is not None else None for v in (value(gate.node), value(up.node), value(mul))}
    if len(shapes) != 1 or None in shapes:
        return f"gate, up and product have different shapes {sorted(map(str, shapes))} (a broadcast)"
    return None
