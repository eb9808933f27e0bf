"""Capture: a torch model traced with torch.fx into a graph of OpSpec nodes the planner can place.

Each fx node becomes a ``Node``:

* a vocabulary op (``linear``, ``conv2d``, ``relu``, ``softmax``, ``layer_norm``, ``attention``,
  ``selective_scan``...) when the module or function maps onto one and its weights are constants of
  the model: these are placed on devices;
* a host node otherwise (``flatten``, ``reshape``, indexing, Python arithmetic, modules with no
  vocabulary equivalent): it runs on the CPU reference through torch and is noted in the plan.

``linear`` followed by a ``relu`` that is its only user is fused into ``linear(activation="relu")``,
the form spiking and analog layers compute natively. Shapes and dtypes come from running the
traced graph once on copies of the example inputs (``graph_of``): the caller's tensors are never written.

In-place steps (``x.mul_(2)``, ``nn.ReLU(inplace=True)``) follow ``hal.runtime.inplace``: done out of place
when no later step could tell, else kept as host steps that write in place, ordered against the other
readers and writers of that storage.

Tracing patches ``torch.nn.Module.__call__`` and ``__getattr__`` process-wide for its duration (that is how
torch.fx works). ``trace`` therefore runs one trace at a time (a lock), and its tracer hands calls from other
threads straight to the real module, so a plan running in another thread, or the user's own eager code, is
unaffected while a model is being traced. A traced module is kept on its Graph: re-planning for a new batch
size re-runs ``graph_of`` on it and never traces again.

A model torch.fx cannot trace (control flow on tensor values, data-dependent shapes) is refused
with ``UntraceableModel``, which names the innermost module being traced and suggests pinning it,
which makes that module one opaque host node (``capture(..., leaf_modules=[name])``).
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from hal import ops as vocabulary
from hal.device import OpSpec, TensorSpec
from hal.errors import HalError, InvalidInput, ShapeError
from hal.kernels.selective_scan import selective_scan_reference
from hal.kernels.torch_ops import attention as attention_kernel
from hal.runtime.inplace import Aliases, order_writes, referenced, written_operand


class UntraceableModel(InvalidInput):
    """torch.fx could not trace the model; ``module`` names the submodule it failed in ('' for the root)."""

    def __init__(self, message: str, module: str):
        super().__init__(message)
        self.module = module


@dataclass
class Node:
    """One step of the captured graph.

    ``op`` is the vocabulary OpSpec (None for a host-only step); ``inputs`` name the values it consumes,
    in the op's operand order; ``params`` are its bound weights; ``host_fn(*input_values)`` computes it
    on the host when ``op`` is None. ``source`` says what it came from, ``fused`` which nodes were folded in.
    ``writes`` names the value a host step writes in place; ``after`` the steps it must wait for beyond its
    inputs (``hal.runtime.inplace.order_writes``).
    """

    name: str
    op: OpSpec | None
    inputs: tuple[str, ...]
    params: dict[str, torch.Tensor]
    output: TensorSpec | None
    source: str
    host_fn: Callable[..., Any] | None = None
    fused: tuple[str, ...] = ()
    host_op: str = ""
    after: tuple[str, ...] = ()
    writes: str | None = None

    @property
    def label(self) -> str:
        """Short op text: ``linear+relu``, ``softmax``, or ``host:<what>`` for a host step."""
        if self.op is None:
            return f"host:{self.host_op}"
        if self.op.name == "linear" and self.op.attr("activation") == "relu":
            return "linear+relu"
        return self.op.name


@dataclass
class Graph:
    """A captured model: named inputs, constants, nodes in topological order, and how outputs are built.

    ``traced`` is the fx module it was built from (None for a hand-built graph); ``graph_of(traced, inputs)``
    builds the graph of the same model for other input shapes.
    """

    inputs: list[str]
    input_specs: list[TensorSpec]
    constants: dict[str, torch.Tensor]
    nodes: list[Node]
    outputs: list[str]
    build_output: Callable[[list[Any]], Any]
    notes: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    traced: fx.GraphModule | None = None

    def specs(self) -> dict[str, TensorSpec | None]:
        """Shape/dtype of every value (graph inputs, constants, node outputs); None where it is not a tensor."""
        specs: dict[str, TensorSpec | None] = dict(zip(self.inputs, self.input_specs))
        specs.update({k: TensorSpec.of(v) for k, v in self.constants.items()})
        specs.update({n.name: n.output for n in self.nodes})
        return specs

    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]


# --------------------------------------------------------------------------- tracing


#: One fx trace at a time: each trace patches torch.nn.Module process-wide and restores what it found, so two
#: overlapping traces would restore each other's patches and leave them installed.
_TRACING = threading.Lock()


class _Tracer(fx.Tracer):
    """fx tracer that keeps vocabulary kernels whole, honours extra leaf modules and remembers where it failed.

    Buffers are traced as graph values like parameters (``proxy_buffer_attributes``): otherwise fx hands the
    forward the real buffer, and an in-place write to it (``self.count.add_(1)``) would run once, at trace time,
    instead of being recorded. Calls reaching the tracer from a thread other than the tracing one (through the
    process-wide patches) run the real module and attribute, untouched.
    """

    proxy_buffer_attributes = True

    def __init__(self, leaf_modules: Iterable[str]):
        super().__init__(autowrap_functions=(selective_scan_reference, attention_kernel))
        self.leaves = set(leaf_modules)
        self.stack: list[str] = []
        self.failed_in: str | None = None
        self.owner = threading.get_ident()

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        if threading.get_ident() != self.owner:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: torch.nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        if threading.get_ident() != self.owner:
            return forward(*args, **kwargs)
        name = self.path_of_module(m)
        self.stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = name
            raise
        finally:
            self.stack.pop()


def trace(model: torch.nn.Module, leaf_modules: Iterable[str] = ()) -> fx.GraphModule:
    """Symbolically trace ``model``; UntraceableModel names the failing module and suggests a pin."""
    if not isinstance(model, torch.nn.Module):
        raise InvalidInput(f"plan() takes a torch.nn.Module, got {type(model).__name__}")
    try:
        with _TRACING:
            tracer = _Tracer(leaf_modules)
            graph = tracer.trace(model)
    except HalError:
        raise
    except Exception as exc:
        where = tracer.failed_in or ""
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        if where:
            label = f"module {where!r} ({type(model.get_submodule(where)).__name__})"
            advice = (f"Pin it to run whole on the CPU reference (pins={{{where!r}: 'cpu:0'}}, or `--pin {where}=cpu:0`), "
                      "or remove the control flow that depends on tensor values")
        else:
            label = f"the model's own forward ({type(model).__name__})"
            advice = ("Move the part whose control flow depends on tensor values into a submodule and pin that submodule "
                      "to 'cpu:0' (it then runs whole on the CPU reference)")
        raise UntraceableModel(f"torch.fx cannot trace {label}: {type(exc).__name__}: {first_line}. {advice}", where) from exc
    return fx.GraphModule(model, graph)


def _fetch(module: torch.nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


class _Shapes(fx.Interpreter):
    """Runs a traced module once and keeps each node's TensorSpec (None where the value is not a tensor).

    Constants named in ``copied`` are read as copies (an in-place step may write them); nothing is written
    onto the shared fx graph, so several threads may run this on one traced module at once.
    """

    def __init__(self, module: fx.GraphModule, copied: set[str]):
        super().__init__(module)
        self.specs: dict[fx.Node, TensorSpec | None] = {}
        self.copied = copied
        self.copies: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.specs[n] = TensorSpec(tuple(result.shape), result.dtype) if isinstance(result, torch.Tensor) else None
        return result

    def get_attr(self, target: Any, args: tuple, kwargs: dict) -> Any:
        value = super().get_attr(target, args, kwargs)
        if target not in self.copied or not isinstance(value, torch.Tensor):
            return value
        if target not in self.copies:
            self.copies[target] = value.detach().clone()
        return self.copies[target]


def _shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], copied: set[str]) -> dict[fx.Node, TensorSpec | None]:
    """Every node's TensorSpec from one run on copies of ``example_inputs`` (and of the ``copied`` constants)."""
    shapes = _Shapes(gm, copied)
    with torch.no_grad():
        shapes.run(*(t.detach().clone() for t in example_inputs))
    return shapes.specs


# --------------------------------------------------------------------------- mapping onto the vocabulary


@dataclass
class _Mapped:
    """A vocabulary reading of one fx node: op name, tensor operands (fx nodes), params, attrs."""

    name: str
    operands: list[fx.Node]
    params: dict[str, torch.Tensor]
    attrs: dict[str, Any]


def _arg(node: fx.Node, index: int, key: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def _map_module(m: torch.nn.Module, node: fx.Node) -> _Mapped | None:
    if node.kwargs or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
        return None
    x = [node.args[0]]
    if isinstance(m, torch.nn.Linear):
        return _Mapped("linear", x, {"weight": m.weight, "bias": m.bias}, {})
    if isinstance(m, torch.nn.ReLU):
        return _Mapped("relu", x, {}, {})
    if isinstance(m, torch.nn.SiLU):
        return _Mapped("silu", x, {}, {})
    if isinstance(m, torch.nn.GELU):
        return _Mapped("gelu", x, {}, {"approximate": m.approximate})
    if isinstance(m, torch.nn.Softmax) and m.dim is not None:
        return _Mapped("softmax", x, {}, {"dim": m.dim})
    if isinstance(m, torch.nn.LayerNorm) and len(m.normalized_shape) == 1:
        return _Mapped("layer_norm", x, {"weight": m.weight, "bias": m.bias}, {"eps": m.eps})
    if isinstance(m, torch.nn.RMSNorm) and len(m.normalized_shape) == 1:
        eps = m.eps if m.eps is not None else torch.finfo(torch.float32).eps
        return _Mapped("rms_norm", x, {"weight": m.weight}, {"eps": eps})
    if isinstance(m, torch.nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        attrs = {"stride": tuple(m.stride), "padding": tuple(m.padding), "dilation": tuple(m.dilation), "groups": m.groups}
        return _Mapped("conv2d", x, {"weight": m.weight, "bias": m.bias}, attrs)
    return None


_UNARY_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.silu: "silu"}
_BINARY_FUNCTIONS = {
    operator.add: "add", torch.add: "add", operator.mul: "mul", torch.mul: "mul",
    operator.matmul: "matmul", torch.matmul: "matmul",
}
#: Methods with a vocabulary op; the in-place forms map to it only where ``Aliases.observable`` allows.
_METHODS = {"relu": "relu", "add": "add", "mul": "mul", "matmul": "matmul", "__add__": "add", "__mul__": "mul", "relu_": "relu", "add_": "add", "mul_": "mul"}


def _map_function(gm: fx.GraphModule, node: fx.Node, constant: Callable[[Any], torch.Tensor | None]) -> _Mapped | None:
    target = node.target
    args = node.args

    def is_value(a: Any) -> bool:
        return isinstance(a, fx.Node) and constant(a) is None

    if node.op == "call_method":
        name = _METHODS.get(target)
        if target == "softmax":
            dim = _arg(node, 1, "dim")
            if isinstance(dim, int) and is_value(args[0]) and set(node.kwargs) <= {"dim"}:
                return _Mapped("softmax", [args[0]], {}, {"dim": dim})
            return None
        if name is None or node.kwargs:
            return None
        operands = list(args)
        if len(operands) == (1 if name == "relu" else 2) and all(isinstance(a, fx.Node) for a in operands):
            return _Mapped(name, operands, {}, {})
        return None
    if target in _UNARY_FUNCTIONS and len(args) == 1 and set(node.kwargs) <= {"inplace"}:
        return _Mapped(_UNARY_FUNCTIONS[target], [args[0]], {}, {}) if isinstance(args[0], fx.Node) else None
    if target in _BINARY_FUNCTIONS and len(args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in args):
        return _Mapped(_BINARY_FUNCTIONS[target], list(args), {}, {})
    if target is F.gelu and isinstance(args[0], fx.Node) and len(args) == 1:
        return _Mapped("gelu", [args[0]], {}, {"approximate": node.kwargs.get("approximate", "none")})
    if target in (F.softmax, torch.softmax):
        # Dynamo writes nn.Softmax as F.softmax(x, dim, _stacklevel=5, dtype=None): neither changes the result
        dim = _arg(node, 1, "dim")
        plain = set(node.kwargs) <= {"dim", "_stacklevel", "dtype"} and node.kwargs.get("dtype") is None
        if isinstance(dim, int) and isinstance(args[0], fx.Node) and plain:
            return _Mapped("softmax", [args[0]], {}, {"dim": dim})
        return None
    if target is F.conv2d:  # Dynamo writes nn.Conv2d this way, with the weight a constant of the graph
        weight, bias = _arg(node, 1, "weight"), _arg(node, 2, "bias")
        w = constant(weight) if isinstance(weight, fx.Node) else None
        b = constant(bias) if isinstance(bias, fx.Node) else None
        geometry = {key: _arg(node, i, key, default) for i, key, default in ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1))}
        groups = _arg(node, 6, "groups", 1)
        numeric = all(isinstance(v, int) or (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(e, int) for e in v)) for v in geometry.values())
        if w is not None and w.dim() == 4 and (bias is None or b is not None) and isinstance(args[0], fx.Node) and numeric and isinstance(groups, int):
            attrs = {key: (v, v) if isinstance(v, int) else tuple(v) for key, v in geometry.items()}
            return _Mapped("conv2d", [args[0]], {"weight": w, "bias": b}, {**attrs, "groups": groups})
        return None
    if target is F.linear:
        weight, bias = _arg(node, 1, "weight"), _arg(node, 2, "bias")
        w = constant(weight) if isinstance(weight, fx.Node) else None
        b = constant(bias) if isinstance(bias, fx.Node) else None
        if w is not None and (bias is None or b is not None) and isinstance(args[0], fx.Node):
            return _Mapped("linear", [args[0]], {"weight": w, "bias": b}, {})
        return None
    if target is F.scaled_dot_product_attention:
        q, k, v = (_arg(node, i, key) for i, key in enumerate(("query", "key", "value")))
        mask, dropout = _arg(node, 3, "attn_mask"), _arg(node, 4, "dropout_p", 0.0)
        extra = set(node.kwargs) - {"query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale"}
        if mask is None and not dropout and not extra and all(isinstance(t, fx.Node) for t in (q, k, v)):
            attrs = {"causal": bool(_arg(node, 5, "is_causal", False)), "scale": _arg(node, 6, "scale")}
            return _Mapped("attention", [q, k, v], {}, attrs)
        return None
    if target is attention_kernel:
        q, k, v = args[:3]
        attrs = {"causal": bool(_arg(node, 3, "causal", False)), "scale": _arg(node, 4, "scale")}
        return _Mapped("attention", [q, k, v], {}, attrs)
    if target is selective_scan_reference and len(args) == 6 and not node.kwargs:
        return _Mapped("selective_scan", list(args), {}, {})
    if target in (F.layer_norm, F.rms_norm):
        shape = _arg(node, 1, "normalized_shape")
        w = _arg(node, 2, "weight")
        weight = constant(w) if isinstance(w, fx.Node) else None
        if target is F.layer_norm:
            b = _arg(node, 3, "bias")
            bias = constant(b) if isinstance(b, fx.Node) else None
            eps = _arg(node, 4, "eps", 1e-5)
            params, ok = {"weight": weight, "bias": bias}, (w is None or weight is not None) and (b is None or bias is not None)
            name = "layer_norm"
        else:
            eps = _arg(node, 3, "eps", None) or torch.finfo(torch.float32).eps
            params, ok, name = {"weight": weight}, w is None or weight is not None, "rms_norm"
        if ok and isinstance(args[0], fx.Node) and len(tuple(shape)) == 1:
            return _Mapped(name, [args[0]], params, {"eps": eps})
    return None


# --------------------------------------------------------------------------- capture


def _host_function(gm: fx.GraphModule, node: fx.Node, refs: list[fx.Node]) -> Callable[..., Any]:
    """A host callable for ``node`` taking its referenced values in ``refs`` order."""
    position = {ref: i for i, ref in enumerate(refs)}
    template = (node.args, node.kwargs)
    module = gm.get_submodule(node.target) if node.op == "call_module" else None

    def run(*values: Any) -> Any:
        args, kwargs = fx.node.map_arg(template, lambda r: values[position[r]])
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            self_, *rest = args
            return getattr(self_, node.target)(*rest, **kwargs)
        return module(*args, **kwargs)

    return run


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target} ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"method .{node.target}()"
    target = node.target
    text = f"{getattr(target, '__module__', '') or ''}.{getattr(target, '__name__', str(target))}".lstrip(".")
    return text + (" (inplace=True)" if node.kwargs.get("inplace") else "")


def capture(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], leaf_modules: Iterable[str] = ()) -> Graph:
    """Trace ``model`` and build its Graph for ``example_inputs`` (``trace``, then ``graph_of``)."""
    return graph_of(trace(model, leaf_modules), example_inputs)


def graph_of(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> Graph:
    """The Graph of a traced model for ``example_inputs``: vocabulary and host nodes with their shapes, in-place
    writes ordered, linear+relu fused. Neither the inputs nor the model's tensors are written."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise ShapeError(f"the model's forward takes {len(placeholders)} input(s) ({', '.join(p.name for p in placeholders)}) but {len(example_inputs)} example input(s) were given")
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise InvalidInput(f"example input {i} must be a torch.Tensor, got {type(t).__name__}")

    literal: dict[fx.Node, Any] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            value = _fetch(gm, n.target)
            literal[n] = value.detach() if isinstance(value, torch.Tensor) else value

    def constant(ref: Any) -> torch.Tensor | None:
        value = literal.get(ref)
        return value if isinstance(value, torch.Tensor) else None

    mapped: dict[fx.Node, _Mapped | None] = {}
    written: dict[fx.Node, fx.Node | None] = {}
    module_uses: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            module_uses[n.target] = module_uses.get(n.target, 0) + 1
            mapped[n] = _map_module(gm.get_submodule(n.target), n)
        elif n.op in ("call_function", "call_method"):
            mapped[n] = _map_function(gm, n, constant)
        else:
            continue
        written[n] = written_operand(gm, n)
    aliases = Aliases(gm, literal, lambda n: mapped.get(n) is not None and written.get(n) is None)
    specs = _shapes(gm, example_inputs, aliases.constants_in(w for w in written.values() if w is not None))

    constants: dict[str, torch.Tensor] = {}
    names: dict[fx.Node, str] = {}
    nodes: list[Node] = []
    output_node: fx.Node | None = None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            names[n] = n.name
            continue
        if n.op == "get_attr":
            names[n] = n.target
            if isinstance(literal[n], torch.Tensor):
                constants[n.target] = literal[n]
            continue
        if n.op == "output":
            output_node = n
            continue
        name = n.target if n.op == "call_module" and module_uses[n.target] == 1 else n.name
        names[n] = name
        out = specs.get(n)
        target = written[n]
        reading = mapped[n]
        if target is not None and aliases.observable(n, target):
            reading = None  # done out of place, a later step would read stale values: keep the write, on the host
        op = None
        if reading is not None and out is not None and all(specs.get(a) is not None for a in reading.operands):
            try:
                op = OpSpec(reading.name, [specs[a] for a in reading.operands], reading.params, reading.attrs)
                vocabulary.check(op)
            except HalError:
                op = None
        if op is not None:
            params = {k: v.detach() for k, v in reading.params.items() if v is not None}
            nodes.append(Node(name, op, tuple(names[a] for a in reading.operands), params, out, _describe(gm, n)))
            continue
        refs = referenced(n.args, n.kwargs)
        host_op = type(gm.get_submodule(n.target)).__name__ if n.op == "call_module" else n.target if n.op == "call_method" else getattr(n.target, "__name__", str(n.target))
        writes = names[target] if target is not None else None
        nodes.append(Node(name, None, tuple(names[r] for r in refs), {}, out, _describe(gm, n), host_fn=_host_function(gm, n, refs), host_op=host_op, writes=writes))

    assert output_node is not None
    out_refs = referenced(output_node.args[0])
    out_position = {r: i for i, r in enumerate(out_refs)}
    template = output_node.args[0]

    def build_output(values: list[Any]) -> Any:
        return fx.node.map_arg(template, lambda r: values[out_position[r]])

    graph = Graph(
        inputs=[p.name for p in placeholders],
        input_specs=[TensorSpec.of(t) for t in example_inputs],
        constants=constants,
        nodes=nodes,
        outputs=[names[r] for r in out_refs],
        build_output=build_output,
        traced=gm,
    )
    _fuse_linear_relu(graph)
    order_writes(graph.nodes, {names[n]: aliases.group(n) for n in names})
    return graph


def _fuse_linear_relu(graph: Graph) -> None:
    """Fold ``relu(linear(x))`` into ``linear(x, activation="relu")`` where the relu is the linear's only user."""
    users: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for ref in set(n.inputs):
            users.setdefault(ref, []).append(n)
    by_name = {n.name: n for n in graph.nodes}
    removed: set[str] = set()
    for relu in graph.nodes:
        if relu.op is None or relu.op.name != "relu":
            continue
        producer = by_name.get(relu.inputs[0])
        if producer is None or producer.op is None or producer.op.name != "linear" or producer.op.attr("activation") != "none":
            continue
        if len(users.get(producer.name, [])) != 1 or producer.name in graph.outputs:
            continue
        attrs = dict(producer.op.attrs)
        attrs["activation"] = "relu"
        producer.op = OpSpec("linear", producer.op.inputs, dict(producer.op.params), attrs)
        producer.fused = (*producer.fused, relu.name)
        removed.add(relu.name)
        graph.aliases[relu.name] = producer.name
        _rename_value(graph, relu.name, producer.name)
    if removed:
        graph.nodes = [n for n in graph.nodes if n.name not in removed]
        graph.notes.append(f"fused {len(removed)} relu(s) into the linear before them (linear activation='relu'): {', '.join(sorted(removed))}")


def _rename_value(graph: Graph, old: str, new: str) -> None:
    for n in graph.nodes:
        if old in n.inputs:
            n.inputs = tuple(new if r == old else r for r in n.inputs)
    graph.outputs = [new if r == old else r for r in graph.outputs]
