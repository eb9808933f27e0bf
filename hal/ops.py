"""The shared op vocabulary: operand names, attribute defaults and shape rules of every common op.

Drivers declare which of these ops they run (``Capabilities.ops``); the shape rules here give the
same ShapeError on every device. Paradigm ops (``lif_layer``, ``expectation``, ``sample``...)
are named by the drivers that add them; their shape rules are the driver's.

Operand conventions (inputs are given at call time, params are bound at ``prepare`` time):

=============== ======================== ==================== =====================================
op              inputs                   params               attributes (defaults)
=============== ======================== ==================== =====================================
matmul          a (..., M, K), b (..., K, N)                   -
linear          x (..., in)              weight (out, in),    activation "none" | "relu" (a fused
                                         bias (out,) optional ReLU: what spiking and analog layers
                                                              compute natively)
conv2d          x (N, C, H, W)           weight (O, C/g, kh,  stride (1,1), padding (0,0),
                                         kw), bias optional   dilation (1,1), groups 1
add, mul        a, b (broadcastable)                          -
relu, silu      x                                             -
gelu            x                                             approximate "none" | "tanh"
softmax         x                                             dim -1
layer_norm      x (..., D)               weight, bias (D,)    eps 1e-5
                                         optional
rms_norm        x (..., D)               weight (D,) optional eps 1e-6
attention       q (B, H, S, E),                               causal False, scale None (1/sqrt(E))
                k, v (B, Hkv, T, E|Ev)
                with H % Hkv == 0
selective_scan  u, delta (B, D, L),                           - (Mamba's selective scan:
                A (D, N), B, C (B, N, L),                     h_t = exp(delta A) h + delta B u,
                D (D,)                                        y = C h + D u)
=============== ======================== ==================== =====================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hal.errors import DTypeError, InvalidInput, ShapeError

if TYPE_CHECKING:
    from hal.device import OpSpec


@dataclass(frozen=True)
class OpDef:
    """One vocabulary op: operand names, which params are optional, attribute defaults, shape rule."""

    name: str
    inputs: tuple[str, ...]
    params: tuple[str, ...] = ()
    optional_params: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    output_shape: Callable[[list[tuple], dict[str, tuple], dict[str, Any]], tuple] | None = None


def _broadcast(a: tuple, b: tuple, what: str) -> tuple:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x is None or y is None:
            out.append(x if y == 1 else y)
        elif x == y or x == 1 or y == 1:
            out.append(max(x, y))
        else:
            raise ShapeError(f"{what}: shapes {a} and {b} do not broadcast (dimension -{i}: {x} vs {y})")
    return tuple(reversed(out))


def _same(a: Any, b: Any) -> bool:
    return a is None or b is None or a == b


def _matmul(inputs: list[tuple], params: dict, attrs: dict) -> tuple:
    a, b = inputs
    if len(a) < 2 or len(b) < 2:
        raise ShapeError(f"matmul needs operands of at least 2 dimensions, got {a} and {b}; use unsqueeze for vectors")
    if not _same(a[-1], b[-2]):
        raise ShapeError(f"matmul: inner dimensions differ: a is {a} (K={a[-1]}), b is {b} (K={b[-2]}); the last dim of a must equal the second-last of b")
    return _broadcast(a[:-2], b[:-2], "matmul batch dimensions") + (a[-2], b[-1])


def _linear(inputs: list[tuple], params: dict, attrs: dict) -> tuple:
    (x,) = inputs
    w = params.get("weight")
    if w is None:
        raise ShapeError("linear needs a 'weight' parameter of shape (out_features, in_features)")
    if len(w) != 2:
        raise ShapeError(f"linear weight must be 2-D (out_features, in_features), got {w}")
    if len(x) < 1 or not _same(x[-1], w[1]):
        raise ShapeError(f"linear: input has {x[-1] if x else 'no'} features but weight {w} expects {w[1]}")
    if attrs["activation"] not in ("none", "relu"):
        raise InvalidInput(f"linear activation must be 'none' or 'relu', got {attrs['activation']!r}")
    bias = params.get("bias")
    if bias is not None and bias != (w[0],):
        raise ShapeError(f"linear bias must have shape ({w[0]},), got {bias}")
    return x[:-1] + (w[0],)


def _conv_out(size: int | None, k: int, s: int, p: int, d: int) -> int | None:
    if size is None:
        return None
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _conv2d(inputs: list[tuple], params: dict, attrs: dict) -> tuple:
    (x,) = inputs
    w = params.get("weight")
    if w is None or len(w) != 4:
        raise ShapeError(f"conv2d needs a 4-D 'weight' (out, in/groups, kh, kw), got {w}")
    if len(x) != 4:
        raise ShapeError(f"conv2d input must be (N, C, H, W), got {x}")
    groups = attrs["groups"]
    if not isinstance(groups, int) or groups < 1:
        raise InvalidInput(f"conv2d groups must be a positive int, got {groups!r}")
    if not _same(x[1], w[1] * groups):
        raise ShapeError(f"conv2d: input has {x[1]} channels but weight {w} with groups={groups} expects {w[1] * groups}")
    if w[0] % groups:
        raise ShapeError(f"conv2d: {w[0]} output channels are not divisible by groups={groups}")
    bias = params.get("bias")
    if bias is not None and bias != (w[0],):
        raise ShapeError(f"conv2d bias must have shape ({w[0]},), got {bias}")
    for name in ("stride", "padding", "dilation"):
        value = attrs[name]
        if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)):
            raise InvalidInput(f"conv2d {name} must be a pair of ints, got {value!r}")
        if name != "padding" and min(value) < 1 or name == "padding" and min(value) < 0:
            raise InvalidInput(f"conv2d {name} {value} is out of range")
    (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
    h, wd = _conv_out(x[2], w[2], sh, ph, dh), _conv_out(x[3], w[3], sw, pw, dw)
    if (h is not None and h < 1) or (wd is not None and wd < 1):
        raise ShapeError(f"conv2d: kernel {w[2:]} does not fit input {x[2:]} with padding {attrs['padding']}")
    return (x[0], w[0], h, wd)


def _binary(name: str) -> Callable:
    def rule(inputs: list[tuple], params: dict, attrs: dict) -> tuple:
        return _broadcast(inputs[0], inputs[1], name)

    return rule


def _unary(inputs: list[tuple], params: dict, attrs: dict) -> tuple:
    return inputs[0]


def _gelu(inputs: list[tuple], params: dict, attrs: dict) -> tuple:
    if attrs["approximate"] not in ("none", "tanh"):
        raise InvalidInput(f"gelu approximate must be 'none' or 'tanh', got {attrs['approximate']!r}")
    return inputs[0]


def _softmax(inputs: list[tuple], params: dict, attrs: dict) -> tuple:
    (x,) = inputs
    dim = attrs["dim"]
    if not isinstance(dim, int) or not -len(x) <= dim < max(len(x), 1):
        raise InvalidInput(f"softmax dim {dim!r} is out of range for a {len(x)}-D input")
    return x


def _norm(names: tuple[str, ...]) -> Callable:
    def rule(inputs: list[tuple], params: dict, attrs: dict) -> tuple:
        (x,) = inputs
        if not x:
            raise ShapeError("normalisation needs at least a 1-D input")
        for name in names:
            p = params.get(name)
            if p is not None and (len(p) != 1 or not _same(p[0], x[-1])):
                raise ShapeError(f"{name} must have shape ({x[-1]},) to normalise the last dimension of {x}, got {p}")
        if not attrs["eps"] > 0:
            raise InvalidInput(f"eps must be positive, got {attrs['eps']!r}")
        return x

    return rule


def _attention(inputs: list[tuple], params: dict, attrs: dict) -> tuple:
    q, k, v = inputs
    if not (len(q) == len(k) == len(v) == 4):
        raise ShapeError(f"attention takes q, k, v as (B, H, S, E); got {q}, {k}, {v}")
    if not (_same(q[0], k[0]) and _same(k[0], v[0])):
        raise ShapeError(f"attention: batch sizes differ: {q[0]}, {k[0]}, {v[0]}")
    if not _same(k[1], v[1]) or not _same(k[2], v[2]):
        raise ShapeError(f"attention: k {k} and v {v} must have the same heads and length")
    if not _same(q[3], k[3]):
        raise ShapeError(f"attention: q head dim {q[3]} differs from k head dim {k[3]}")
    if q[1] is not None and k[1] is not None and (k[1] == 0 or q[1] % k[1]):
        raise ShapeError(f"attention: {q[1]} query heads are not a multiple of {k[1]} key/value heads (GQA needs H % Hkv == 0)")
    return (q[0], q[1], q[2], v[3])


def _selective_scan(inputs: list[tuple], params: dict, attrs: dict) -> tuple:
    u, delta, a, b, c, d = inputs
    if len(u) != 3 or u != delta and not all(_same(x, y) for x, y in zip(u, delta)):
        raise ShapeError(f"selective_scan: u and delta must both be (B, D, L), got {u} and {delta}")
    if len(a) != 2 or not _same(a[0], u[1]):
        raise ShapeError(f"selective_scan: A must be (D, N) with D={u[1]}, got {a}")
    for name, m in (("B", b), ("C", c)):
        if len(m) != 3 or not (_same(m[0], u[0]) and _same(m[1], a[1]) and _same(m[2], u[2])):
            raise ShapeError(f"selective_scan: {name} must be (B, N, L) = ({u[0]}, {a[1]}, {u[2]}), got {m}")
    if d != (u[1],) and not (len(d) == 1 and _same(d[0], u[1])):
        raise ShapeError(f"selective_scan: D must be ({u[1]},), got {d}")
    return u


VOCABULARY: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("matmul", ("a", "b"), output_shape=_matmul),
        OpDef("linear", ("x",), ("weight", "bias"), ("bias",), {"activation": "none"}, _linear),
        OpDef("conv2d", ("x",), ("weight", "bias"), ("bias",), {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}, _conv2d),
        OpDef("add", ("a", "b"), output_shape=_binary("add")),
        OpDef("mul", ("a", "b"), output_shape=_binary("mul")),
        OpDef("relu", ("x",), output_shape=_unary),
        OpDef("gelu", ("x",), attrs={"approximate": "none"}, output_shape=_gelu),
        OpDef("silu", ("x",), output_shape=_unary),
        OpDef("softmax", ("x",), attrs={"dim": -1}, output_shape=_softmax),
        OpDef("layer_norm", ("x",), ("weight", "bias"), ("weight", "bias"), {"eps": 1e-5}, _norm(("weight", "bias"))),
        OpDef("rms_norm", ("x",), ("weight",), ("weight",), {"eps": 1e-6}, _norm(("weight",))),
        OpDef("attention", ("q", "k", "v"), attrs={"causal": False, "scale": None}, output_shape=_attention),
        OpDef("selective_scan", ("u", "delta", "A", "B", "C", "D"), output_shape=_selective_scan),
    ]
}


def default_attrs(name: str) -> dict[str, Any]:
    """Attribute defaults of a vocabulary op ({} for ops outside the vocabulary)."""
    op = VOCABULARY.get(name)
    return op.attrs if op else {}


def check(op: OpSpec) -> tuple | None:
    """Validate ``op`` against its vocabulary entry and return the output shape (None for non-vocabulary ops).

    Raises ShapeError or InvalidInput naming what is wrong.
    """
    definition = VOCABULARY.get(op.name)
    if definition is None:
        return None
    if len(op.inputs) != len(definition.inputs):
        raise ShapeError(f"{op.name} takes {len(definition.inputs)} input(s) ({', '.join(definition.inputs)}), got {len(op.inputs)}")
    params = {name: spec.shape for name, spec in op.params}
    unknown = set(params) - set(definition.params)
    if unknown:
        raise InvalidInput(f"{op.name} has no parameter(s) {sorted(unknown)}; its parameters are {list(definition.params) or 'none'}")
    missing = set(definition.params) - set(definition.optional_params) - set(params)
    if missing:
        raise ShapeError(f"{op.name} needs parameter(s) {sorted(missing)}")
    attrs = dict(op.attrs)
    unknown_attrs = set(attrs) - set(definition.attrs)
    if unknown_attrs:
        raise InvalidInput(f"{op.name} has no attribute(s) {sorted(unknown_attrs)}; its attributes are {list(definition.attrs) or 'none'}")
    dtypes = {spec.dtype for spec in op.inputs} | {spec.dtype for _, spec in op.params}
    if len(dtypes) > 1:
        raise DTypeError(f"{op.name}: operands mix dtypes {sorted(str(d).removeprefix('torch.') for d in dtypes)}; cast them to one dtype")
    return definition.output_shape([spec.shape for spec in op.inputs], params, attrs)


def _numel(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= 1 if s is None else s
    return n


def flops(op: OpSpec) -> int:
    """Floating-point operations of one call (open dimensions count as 1; multiply-add = 2 flops).

    Used by drivers' estimates and the planner; 0 for ops outside the vocabulary.
    """
    out = check(op)
    if out is None:
        return 0
    shapes = [s.shape for s in op.inputs]
    if op.name == "matmul":
        return 2 * _numel(out) * (shapes[0][-1] or 1)
    if op.name == "linear":
        return 2 * _numel(out) * (shapes[0][-1] or 1)
    if op.name == "conv2d":
        w = op.param("weight").shape
        return 2 * _numel(out) * w[1] * w[2] * w[3]
    if op.name == "attention":
        q, k, v = shapes
        pairs = _numel(q[:3]) * (k[2] or 1)
        return 2 * pairs * ((q[3] or 1) + (v[3] or 1)) // (2 if op.attr("causal") else 1)
    if op.name == "selective_scan":
        u, _, a, *_ = shapes
        return 9 * _numel(u) * (a[1] or 1)
    per_element = {"softmax": 5, "layer_norm": 8, "rms_norm": 5, "gelu": 8, "silu": 5}.get(op.name, 1)
    return per_element * _numel(out)


def bytes_moved(op: OpSpec) -> int:
    """Fewest bytes one call must move: every input and parameter read once, the output written once."""
    out = check(op) or ()
    specs = list(op.inputs) + [s for _, s in op.params]
    size = {spec.dtype: spec.dtype.itemsize for spec in specs}
    total = sum(_numel(s.shape) * size[s.dtype] for s in specs)
    itemsize = op.inputs[0].dtype.itemsize if op.inputs else 4
    return total + _numel(out) * itemsize


def reduction_length(op: OpSpec) -> int:
    """Length of the longest sum in one output element (drives floating-point rounding error)."""
    shapes = [s.shape for s in op.inputs]
    if op.name in ("matmul", "linear"):
        return shapes[0][-1] or 1
    if op.name == "conv2d":
        w = op.param("weight").shape
        return w[1] * w[2] * w[3]
    if op.name == "attention":
        return max(shapes[1][2] or 1, shapes[0][3] or 1)
    if op.name in ("softmax", "layer_norm", "rms_norm"):
        return shapes[0][-1] or 1
    if op.name == "selective_scan":
        return (shapes[0][2] or 1) * (shapes[2][1] or 1)
    return 1
