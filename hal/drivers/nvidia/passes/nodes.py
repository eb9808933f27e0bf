"""Reading the torch-level FX graphs Dynamo hands a backend: which node is which op, with what operands and values.

Dynamo records torch calls as they were written: ``F.linear`` is ``call_function`` on ``torch._C._nn.linear``,
``x.pow(2)`` is ``call_method`` ``pow``, ``a * b`` is ``operator.mul``. Every node carries the fake tensor it
computes in ``meta["example_value"]`` (Dynamo) or ``meta["val"]`` (make_fx, torch.export); ``ensure_values`` computes
them from the example inputs for a graph that has none (``torch.fx.symbolic_trace``).

Modules are matched as Dynamo records them, inlined into torch calls; a ``call_module`` node (``symbolic_trace``
keeps ``nn.Linear`` as one) is not a linear the passes see.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

VALUE_KEYS = ("example_value", "val")

#: Parameters and buffers reach a Dynamo graph as placeholders (lifted) or get_attr nodes (torch.fx.symbolic_trace).
PARAMETER_OPS = ("placeholder", "get_attr")


# --------------------------------------------------------------------------- operands


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Operand ``name`` of a call, given at position ``index`` or by keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def is_call(node: fx.Node, functions: Sequence[Callable[..., Any]] = (), methods: Sequence[str] = ()) -> bool:
    """Whether ``node`` calls one of ``functions`` or one of the tensor ``methods``."""
    if node.op == "call_function":
        return any(node.target is f for f in functions)
    return node.op == "call_method" and node.target in methods


def is_leaf(node: Any) -> bool:
    """Whether ``node`` is a graph input or attribute (how parameters reach the graph), not computed in it."""
    return isinstance(node, fx.Node) and node.op in PARAMETER_OPS


def is_linear(node: fx.Node) -> bool:
    """``F.linear(x, w, b)`` (the builtin ``torch._C._nn.linear``, which ``nn.Linear`` calls)."""
    return is_call(node, (F.linear,))


def binary_operands(node: fx.Node, functions: Sequence[Callable[..., Any]], method: str) -> tuple[Any, Any] | None:
    """The two operands of ``a op b`` (``operator.add``, ``torch.add``, ``a.add(b)``), with no keyword (``alpha``,
    ``out``) that would change what it computes."""
    if not is_call(node, functions, (method,)) or len(node.args) != 2 or node.kwargs:
        return None
    return node.args[0], node.args[1]


def add_operands(node: fx.Node) -> tuple[Any, Any] | None:
    """``a + b`` out of place (``operator.iadd`` and ``add_`` write their first operand: not matched)."""
    return binary_operands(node, (operator.add, torch.add), "add")


def mul_operands(node: fx.Node) -> tuple[Any, Any] | None:
    """``a * b`` out of place."""
    return binary_operands(node, (operator.mul, torch.mul), "mul")


def activation_of(node: fx.Node) -> tuple[str, fx.Node] | None:
    """``(kernel activation name, input node)`` when ``node`` is GELU (exact or tanh), SiLU or ReLU, out of place."""
    if node.op not in ("call_function", "call_method") or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    if is_call(node, (F.gelu,), ("gelu",)):
        names = {"none": "gelu", "tanh": "gelu_tanh"}
        approximate = arg(node, 1, "approximate", "none")
        return (names[approximate], node.args[0]) if approximate in names else None
    for name, functions in (("silu", (F.silu,)), ("relu", (F.relu, torch.relu))):
        if is_call(node, functions, (name,)) and not arg(node, 1, "inplace", False):
            return name, node.args[0]
    return None


def describe(node: fx.Node) -> str:
    """A short name for a node in a report line: ``'linear_3' (linear)``."""
    if node.op == "output":
        return "the graph's output"
    what = node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    return f"{node.name!r} ({what})"


# --------------------------------------------------------------------------- values


def raw_value(node: Any) -> Any:
    """What ``node`` computes as its fake value (a tensor, a tuple, a number), or ``node`` itself for a constant."""
    if not isinstance(node, fx.Node):
        return node
    for key in VALUE_KEYS:
        if key in node.meta:
            return node.meta[key]
    return None


def value(node: Any) -> torch.Tensor | None:
    """The fake tensor ``node`` computes, or None (a constant, a non-tensor, or a graph without values)."""
    v = raw_value(node) if isinstance(node, fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def set_value(node: fx.Node, computed: Any, like: fx.Node) -> None:
    """Store ``computed`` on ``node`` under the key(s) ``like`` uses, with ``like``'s source location and module stack."""
    keys = [k for k in VALUE_KEYS if k in like.meta] or ["val"]
    for key in keys:
        node.meta[key] = computed
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
        if key in like.meta:
            node.meta[key] = like.meta[key]


def ensure_values(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """Give every node its fake value, computed from ``example_inputs``, when the graph carries none at all."""
    if any(key in n.meta for n in gm.graph.nodes for key in VALUE_KEYS):
        return
    FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*example_inputs)


def evaluate(target: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """Run ``target`` on the fake values of the nodes in ``args`` / ``kwargs``: what it would compute, shapes and
    strides included, without computing anything.

    It runs in the fake mode those values were made in, which is not the one Dynamo gives the backend (it makes a
    fresh one for the backend's own tracing, so ``detect_fake_mode`` would pick that and refuse to mix them), and
    without recording gradients: the passes only replace values that record none (the kernels have no backward)."""
    fake_args, fake_kwargs = fx.node.map_aggregate((args, kwargs), raw_value)
    leaves: list[Any] = []
    fx.node.map_aggregate((fake_args, fake_kwargs), leaves.append)
    modes = [t.fake_mode for t in leaves if isinstance(t, FakeTensor)]
    if not modes:
        raise ValueError(f"no fake tensor among the operands of {getattr(target, '__name__', target)}: the graph carries no values")
    with modes[0], torch.no_grad():
        return target(*fake_args, **fake_kwargs)


def static_rows(t: torch.Tensor) -> int | None:
    """Rows of the activation ``t`` ([..., K]): the product of its leading sizes; None when one is symbolic."""
    rows = 1
    for size in t.shape[:-1]:
        if not isinstance(size, int):
            return None
        rows *= size
    return rows


def erase_unused(graph: fx.Graph, nodes: Sequence[fx.Node]) -> list[fx.Node]:
    """Erase those of ``nodes`` (live nodes of ``graph``, in any order) that nothing reads any more, readers first;
    return the erased ones."""
    pending, erased = list(dict.fromkeys(nodes)), []
    while True:
        unread = [n for n in pending if not n.users]
        if not unread:
            return erased
        for n in unread:
            graph.erase_node(n)
            pending.remove(n)
            erased.append(n)
