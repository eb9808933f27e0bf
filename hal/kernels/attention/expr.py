"""A small expression language for attention masks and score modifications.

Every pattern (built-in or a traced ``mask_mod``/``score_mod`` callable) is an expression tree over five
variables: ``b`` (batch), ``h`` (query head), ``q_idx``, ``kv_idx`` and ``score`` (the scaled q·k). One tree is

* evaluated in torch on index tensors (block map, float64 reference),
* printed as Triton source inside the fused kernel,
* differentiated with respect to ``score`` (the backward kernel needs d score_mod / d score).

Trees are compared and cached by :meth:`Expr.key`, a nested tuple of their structure, never by object identity.
Tensors a pattern reads (document ids, bias tables, block layouts) are *slots*: the tree records the slot number and
the kernel receives the tensor as an argument, so the compiled kernel does not depend on the tensor's contents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

VARIABLES = ("b", "h", "q_idx", "kv_idx", "score")

BINARY_OPS = ("add", "sub", "mul", "truediv", "floordiv", "mod", "lt", "le", "gt", "ge", "eq", "ne",
              "and", "or", "minimum", "maximum")
UNARY_OPS = ("neg", "not", "abs", "tanh", "exp", "exp2", "log", "sqrt", "sigmoid")
COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")


class PatternError(ValueError):
    """A pattern, mask_mod or score_mod cannot be compiled into the attention kernel, or does not fit the inputs."""


class Expr:
    """One node: ``op`` is 'var', 'const', 'load', 'where', or one of BINARY_OPS / UNARY_OPS.

    * ``var``: ``args == (name,)``
    * ``const``: ``args == (value,)`` with value a bool, int or float
    * ``load``: ``args == (slot, flat_index_expr)``: element ``flat_index`` of pattern tensor number ``slot``
    * ``where``: ``args == (cond, if_true, if_false)``
    """

    __slots__ = ("_key", "args", "kind", "op")

    def __init__(self, op: str, args: tuple, kind: str) -> None:
        self.op = op
        self.args = args
        self.kind = kind  # 'b' bool, 'i' integer, 'f' float
        self._key = (op, kind) + tuple(a.key() if isinstance(a, Expr) else (type(a).__name__, a) for a in args)

    def key(self) -> tuple:
        """Structural identity: equal keys mean the same function."""
        return self._key

    __hash__ = None  # ``==`` builds an expression; hash key() instead

    def __repr__(self) -> str:
        return f"Expr{self._key}"

    def __bool__(self) -> bool:
        raise PatternError(
            "a mask_mod/score_mod used a traced value in Python control flow (if/and/or/not); "
            "write it with torch.where, & and | so it can be compiled into the kernel")

    # arithmetic and comparison build nodes
    def __add__(self, o): return binary("add", self, o)
    def __radd__(self, o): return binary("add", o, self)
    def __sub__(self, o): return binary("sub", self, o)
    def __rsub__(self, o): return binary("sub", o, self)
    def __mul__(self, o): return binary("mul", self, o)
    def __rmul__(self, o): return binary("mul", o, self)
    def __truediv__(self, o): return binary("truediv", self, o)
    def __rtruediv__(self, o): return binary("truediv", o, self)
    def __floordiv__(self, o): return binary("floordiv", self, o)
    def __rfloordiv__(self, o): return binary("floordiv", o, self)
    def __mod__(self, o): return binary("mod", self, o)
    def __rmod__(self, o): return binary("mod", o, self)
    def __lt__(self, o): return binary("lt", self, o)
    def __le__(self, o): return binary("le", self, o)
    def __gt__(self, o): return binary("gt", self, o)
    def __ge__(self, o): return binary("ge", self, o)
    def __eq__(self, o): return binary("eq", self, o)  # type: ignore[override]
    def __ne__(self, o): return binary("ne", self, o)  # type: ignore[override]
    def __and__(self, o): return binary("and", self, o)
    def __rand__(self, o): return binary("and", o, self)
    def __or__(self, o): return binary("or", self, o)
    def __ror__(self, o): return binary("or", o, self)
    def __neg__(self): return unary("neg", self)
    def __invert__(self): return unary("not", self)
    def __abs__(self): return unary("abs", self)
    def abs(self): return unary("abs", self)
    def tanh(self): return unary("tanh", self)
    def exp(self): return unary("exp", self)
    def exp2(self): return unary("exp2", self)
    def log(self): return unary("log", self)
    def sqrt(self): return unary("sqrt", self)
    def sigmoid(self): return unary("sigmoid", self)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return _trace_torch_function(func, args, kwargs or {})


def var(name: str) -> Expr:
    kind = "f" if name == "score" else "i"
    return Expr("var", (name,), kind)


def const(value: bool | float) -> Expr:
    if isinstance(value, bool):
        return Expr("const", (value,), "b")
    if isinstance(value, int):
        return Expr("const", (value,), "i")
    return Expr("const", (float(value),), "f")


def is_const(e: Expr, value: Any | None = None) -> bool:
    return e.op == "const" and (value is None or (e.args[0] == value and type(e.args[0]) is type(value)))


def lift(x: Any) -> Expr:
    """Turn a Python number, 0-d tensor or Expr into an Expr."""
    if isinstance(x, Expr):
        return x
    if isinstance(x, torch.Tensor):
        if x.dim() != 0:
            raise PatternError(
                f"a tensor of shape {tuple(x.shape)} was used in arithmetic inside a mask_mod/score_mod; "
                "only 0-d tensors, or indexing a tensor with the index variables (table[h, q_idx - kv_idx]), "
                "can be compiled")
        x = x.item()
    if isinstance(x, (bool, int, float)):
        return const(x)
    raise PatternError(f"cannot compile a value of type {type(x).__name__} into an attention pattern")


def _result_kind(op: str, a: Expr, b: Expr) -> str:
    if op in COMPARISONS:
        return "b"
    if op in ("and", "or"):
        if a.kind == "f" or b.kind == "f":
            raise PatternError(f"'{'&' if op == 'and' else '|'}' applied to a float value; compare first")
        return "b" if a.kind == b.kind == "b" else "i"
    if op == "truediv":
        return "f"
    if op in ("floordiv", "mod") and "f" in (a.kind, b.kind):
        raise PatternError(f"'{'//' if op == 'floordiv' else '%'}' is supported on integer index expressions only")
    if "f" in (a.kind, b.kind):
        return "f"
    return "i"


def binary(op: str, a: Any, b: Any) -> Expr:
    a, b = lift(a), lift(b)
    if is_const(a) and is_const(b):
        return const(_PY_BINARY[op](a.args[0], b.args[0]))
    # algebraic identities keep derivative trees small
    if op == "add" and is_const(b, 0) or op == "add" and is_const(b, 0.0):
        return a
    if op == "add" and (is_const(a, 0) or is_const(a, 0.0)):
        return b
    if op == "sub" and (is_const(b, 0) or is_const(b, 0.0)):
        return a
    if op == "mul" and (is_const(a, 0.0) or is_const(b, 0.0)) and "f" in (a.kind, b.kind):
        return const(0.0)
    if op == "mul" and (is_const(a, 1.0) or is_const(a, 1)) and b.kind == "f":
        return b
    if op == "mul" and (is_const(b, 1.0) or is_const(b, 1)) and a.kind == "f":
        return a
    if op == "and" and a.kind == b.kind == "b":
        if is_const(a, True):
            return b
        if is_const(b, True):
            return a
    if op == "or" and a.kind == b.kind == "b":
        if is_const(a, False):
            return b
        if is_const(b, False):
            return a
    return Expr(op, (a, b), _result_kind(op, a, b))


def unary(op: str, a: Any) -> Expr:
    a = lift(a)
    if is_const(a):
        return const(_PY_UNARY[op](a.args[0]))
    if op == "not":
        if a.kind != "b":
            raise PatternError("'~' (not) applied to a non-boolean value")
        return Expr("not", (a,), "b")
    if op == "neg":
        return Expr("neg", (a,), a.kind)
    if op == "abs":
        return Expr("abs", (a,), a.kind)
    return Expr(op, (a,), "f")


def where(cond: Any, if_true: Any, if_false: Any) -> Expr:
    cond, if_true, if_false = lift(cond), lift(if_true), lift(if_false)
    if cond.kind != "b":
        cond = binary("ne", cond, 0)
    if is_const(cond):
        return if_true if cond.args[0] else if_false
    kind = "f" if "f" in (if_true.kind, if_false.kind) else if_true.kind
    return Expr("where", (cond, if_true, if_false), kind)


def load(slot: int, index: Expr, kind: str) -> Expr:
    return Expr("load", (slot, lift(index)), kind)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


_PY_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "truediv": lambda a, b: a / b, "floordiv": lambda a, b: a // b, "mod": lambda a, b: a % b,
    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "and": lambda a, b: a & b, "or": lambda a, b: a | b,
    "minimum": min, "maximum": max,
}
_PY_UNARY: dict[str, Callable[[Any], Any]] = {
    "neg": lambda a: -a, "not": lambda a: not a, "abs": abs, "tanh": math.tanh, "exp": math.exp,
    "exp2": lambda a: 2.0 ** a, "log": math.log, "sqrt": math.sqrt, "sigmoid": _sigmoid,
}


# ----------------------------------------------------------------------------------------------- tracing callables

class TraceContext:
    """Collects the tensors a traced callable indexes, so they become kernel arguments (slots)."""

    def __init__(self, first_slot: int = 0) -> None:
        self.first_slot = first_slot
        self.tensors: list[torch.Tensor] = []

    def slot_for(self, tensor: torch.Tensor) -> int:
        for i, t in enumerate(self.tensors):
            if t is tensor:
                return self.first_slot + i
        self.tensors.append(tensor)
        return self.first_slot + len(self.tensors) - 1


_ACTIVE_TRACE: list[TraceContext] = []


def _index_tensor(tensor: torch.Tensor, index: Any) -> Expr:
    if not _ACTIVE_TRACE:
        raise PatternError("tensor indexing with pattern variables is only possible while tracing a callable")
    ctx = _ACTIVE_TRACE[-1]
    idx = index if isinstance(index, tuple) else (index,)
    if len(idx) != tensor.dim():
        raise PatternError(
            f"a tensor of shape {tuple(tensor.shape)} was indexed with {len(idx)} indices; index every dimension "
            "with one integer expression (slices and masks cannot be compiled)")
    contiguous = tensor.detach().contiguous()
    flat: Expr = const(0)
    stride = 1
    for dim in reversed(range(contiguous.dim())):
        term = lift(idx[dim])
        if term.kind == "f":
            raise PatternError("a tensor was indexed with a float expression; use integer index arithmetic")
        flat = binary("add", binary("mul", term, stride), flat) if stride != 1 else binary("add", term, flat)
        stride *= contiguous.shape[dim]
    kind = "b" if contiguous.dtype == torch.bool else ("f" if contiguous.is_floating_point() else "i")
    return load(ctx.slot_for(contiguous), flat, kind)


_TORCH_UNARY = {torch.abs: "abs", torch.tanh: "tanh", torch.exp: "exp", torch.exp2: "exp2", torch.log: "log",
                torch.sqrt: "sqrt", torch.sigmoid: "sigmoid", torch.neg: "neg", torch.logical_not: "not",
                torch.Tensor.abs: "abs", torch.Tensor.tanh: "tanh", torch.Tensor.exp: "exp",
                torch.Tensor.__neg__: "neg", torch.Tensor.__invert__: "not"}
_TORCH_BINARY = {torch.add: "add", torch.sub: "sub", torch.mul: "mul", torch.div: "truediv",
                 torch.floor_divide: "floordiv", torch.remainder: "mod", torch.minimum: "minimum",
                 torch.maximum: "maximum", torch.logical_and: "and", torch.logical_or: "or",
                 torch.lt: "lt", torch.le: "le", torch.gt: "gt", torch.ge: "ge", torch.eq: "eq", torch.ne: "ne",
                 torch.Tensor.__add__: "add", torch.Tensor.__sub__: "sub", torch.Tensor.__mul__: "mul",
                 torch.Tensor.__truediv__: "truediv", torch.Tensor.__floordiv__: "floordiv",
                 torch.Tensor.__mod__: "mod", torch.Tensor.__and__: "and", torch.Tensor.__or__: "or",
                 torch.Tensor.__lt__: "lt", torch.Tensor.__le__: "le", torch.Tensor.__gt__: "gt",
                 torch.Tensor.__ge__: "ge", torch.Tensor.__eq__: "eq", torch.Tensor.__ne__: "ne"}
_TORCH_REFLECTED = {torch.Tensor.__radd__: "add", torch.Tensor.__rsub__: "sub", torch.Tensor.__rmul__: "mul",
                    torch.Tensor.__rtruediv__: "truediv", torch.Tensor.__rand__: "and", torch.Tensor.__ror__: "or"}


def _trace_torch_function(func: Any, args: Sequence[Any], kwargs: dict) -> Expr:
    if func is torch.Tensor.__getitem__:
        return _index_tensor(args[0], args[1])
    if func is torch.where:
        return where(*args)
    if func in (torch.clamp, torch.clip, torch.Tensor.clamp):
        x = lift(args[0])
        lo = kwargs.get("min", args[1] if len(args) > 1 else None)
        hi = kwargs.get("max", args[2] if len(args) > 2 else None)
        if lo is not None:
            x = binary("maximum", x, lo)
        if hi is not None:
            x = binary("minimum", x, hi)
        return x
    if func in _TORCH_UNARY:
        return unary(_TORCH_UNARY[func], args[0])
    if func in _TORCH_BINARY and len(args) == 2:
        return binary(_TORCH_BINARY[func], args[0], args[1])
    if func in _TORCH_REFLECTED:
        return binary(_TORCH_REFLECTED[func], args[1], args[0])
    name = getattr(func, "__name__", repr(func))
    raise PatternError(
        f"torch operation '{name}' cannot be compiled into the attention kernel; supported: + - * / // %, "
        "comparisons, & | ~, torch.where, abs, tanh, exp, exp2, log, sqrt, sigmoid, minimum, maximum, clamp, "
        "and indexing a captured tensor with integer expressions")


def trace(fn: Callable[..., Any], names: Sequence[str], ctx: TraceContext) -> Expr:
    """Call ``fn`` on symbolic variables and return the expression it builds."""
    _ACTIVE_TRACE.append(ctx)
    try:
        result = fn(*(var(n) for n in names))
    finally:
        _ACTIVE_TRACE.pop()
    return lift(result)


# ------------------------------------------------------------------------------------------------ differentiation

def d_dscore(e: Expr) -> Expr:
    """Symbolic derivative of ``e`` with respect to the variable ``score``."""
    cache: dict[tuple, Expr] = {}

    def d(x: Expr) -> Expr:
        k = x.key()
        if k in cache:
            return cache[k]
        out = _d(x)
        cache[k] = out
        return out

    def _d(x: Expr) -> Expr:
        op = x.op
        if op == "var":
            return const(1.0 if x.args[0] == "score" else 0.0)
        if op == "const" or x.kind in ("b", "i"):
            if op == "load" and _depends_on_score(x.args[1]):
                raise PatternError("a score_mod indexed a tensor with the score; that has no gradient")
            return const(0.0)
        if op == "load":
            if _depends_on_score(x.args[1]):
                raise PatternError("a score_mod indexed a tensor with the score; that has no gradient")
            return const(0.0)
        if op == "where":
            return where(x.args[0], d(x.args[1]), d(x.args[2]))
        if op in ("add", "sub"):
            return binary(op, d(x.args[0]), d(x.args[1]))
        if op == "mul":
            a, b = x.args
            return binary("add", binary("mul", d(a), b), binary("mul", a, d(b)))
        if op == "truediv":
            a, b = x.args
            num = binary("sub", binary("mul", d(a), b), binary("mul", a, d(b)))
            if is_const(d(b), 0.0):
                return binary("truediv", d(a), b)
            return binary("truediv", num, binary("mul", b, b))
        if op in ("minimum", "maximum"):
            a, b = x.args
            pick_a = binary("le" if op == "minimum" else "ge", a, b)
            return where(pick_a, d(a), d(b))
        (a,) = x.args
        da = d(a)
        if is_const(da, 0.0):
            return const(0.0)
        if op == "neg":
            return unary("neg", da)
        if op == "abs":
            return where(binary("ge", a, 0.0), da, unary("neg", da))
        if op == "tanh":
            return binary("mul", da, binary("sub", 1.0, binary("mul", x, x)))
        if op == "exp":
            return binary("mul", da, x)
        if op == "exp2":
            return binary("mul", da, binary("mul", x, math.log(2.0)))
        if op == "log":
            return binary("truediv", da, a)
        if op == "sqrt":
            return binary("truediv", da, binary("mul", 2.0, x))
        if op == "sigmoid":
            return binary("mul", da, binary("mul", x, binary("sub", 1.0, x)))
        raise PatternError(f"no derivative rule for '{op}'")

    return d(e)


def _depends_on_score(e: Expr) -> bool:
    if e.op == "var":
        return e.args[0] == "score"
    return any(_depends_on_score(a) for a in e.args if isinstance(a, Expr))


def uses(e: Expr, name: str) -> bool:
    """Whether variable ``name`` appears in ``e``."""
    if e.op == "var":
        return e.args[0] == name
    return any(uses(a, name) for a in e.args if isinstance(a, Expr))


# ------------------------------------------------------------------------------------------------ torch evaluation

def evaluate(e: Expr, env: dict[str, Any], tensors: Sequence[torch.Tensor]) -> Any:
    """Evaluate ``e`` with torch; ``env`` maps variable names to (broadcastable) tensors."""
    cache: dict[tuple, Any] = {}

    def ev(x: Expr) -> Any:
        k = x.key()
        if k not in cache:
            cache[k] = _ev(x)
        return cache[k]

    def _ev(x: Expr) -> Any:
        op = x.op
        if op == "var":
            return env[x.args[0]]
        if op == "const":
            return x.args[0]
        if op == "load":
            table = tensors[x.args[0]].reshape(-1)
            idx = torch.as_tensor(ev(x.args[1]), device=table.device)
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= table.numel()):
                raise PatternError(
                    f"pattern tensor #{x.args[0]} has {table.numel()} elements but was indexed at "
                    f"{int(idx.min())}..{int(idx.max())}: the pattern does not fit this sequence length")
            return table[idx.long()]
        if op == "where":
            c, a, b = (ev(a) for a in x.args)
            return torch.where(torch.as_tensor(c), torch.as_tensor(a), torch.as_tensor(b))
        if op in _PY_BINARY:
            a, b = ev(x.args[0]), ev(x.args[1])
            if op == "truediv":
                return torch.as_tensor(a, dtype=torch.float64) / b if not isinstance(a, torch.Tensor) else a / b
            if op in ("minimum", "maximum"):
                fn = torch.minimum if op == "minimum" else torch.maximum
                a_t, b_t = torch.as_tensor(a), torch.as_tensor(b)
                dev = a_t.device if a_t.dim() else b_t.device
                return fn(a_t.to(dev), b_t.to(dev))
            return _PY_BINARY[op](a, b)
        a = ev(x.args[0])
        a_t = torch.as_tensor(a)
        if op == "neg":
            return -a_t
        if op == "not":
            return ~a_t
        if op == "abs":
            return a_t.abs()
        if not a_t.is_floating_point():
            a_t = a_t.double()
        return {"tanh": torch.tanh, "exp": torch.exp, "exp2": torch.exp2, "log": torch.log, "sqrt": torch.sqrt,
                "sigmoid": torch.sigmoid}[op](a_t)

    return ev(e)


# ------------------------------------------------------------------------------------------------ Triton source

_TRITON_BINARY = {"add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "truediv": "({a} / {b})",
                  "floordiv": "_floordiv({a}, {b})", "mod": "_pymod({a}, {b})", "lt": "({a} < {b})",
                  "le": "({a} <= {b})", "gt": "({a} > {b})", "ge": "({a} >= {b})", "eq": "({a} == {b})",
                  "ne": "({a} != {b})", "and": "({a} & {b})", "or": "({a} | {b})",
                  "minimum": "{L}.minimum({a}, {b})", "maximum": "{L}.maximum({a}, {b})"}
_TRITON_UNARY = {"neg": "(-{a})", "not": "({a} == 0)", "abs": "{L}.abs({a})", "tanh": "_tanh({a})",
                 "exp": "{L}.exp({a})", "exp2": "{L}.exp2({a})", "log": "{L}.log({a})", "sqrt": "{L}.sqrt({a})",
                 "sigmoid": "_sigmoid({a})"}


def to_triton(exprs: Sequence[Expr], names: dict[str, str], indent: str = "    ",
              lang: str = "tl") -> tuple[list[str], list[str]]:
    """Triton statements computing ``exprs`` (shared subexpressions once) and the names holding the results.

    ``names`` maps the variables to the kernel's local names; pattern tensor slot ``i`` is the kernel argument
    ``T{i}`` with its element count ``T{i}_numel``. ``lang`` is the language module's name in the generated file:
    ``tl`` (triton.language) or ``gl`` (Gluon, whose elementwise functions have the same names); ``_floordiv``,
    ``_pymod``, ``_tanh`` and ``_sigmoid`` must be defined there.
    """
    L = lang
    lines: list[str] = []
    seen: dict[tuple, str] = {}

    def emit(x: Expr) -> str:
        k = x.key()
        if k in seen:
            return seen[k]
        op = x.op
        if op == "var":
            return names[x.args[0]]
        if op == "const":
            v = x.args[0]
            return repr(v) if not isinstance(v, float) or math.isfinite(v) else f"float('{v}')"
        if op == "load":
            slot, idx = x.args
            i = emit(idx)
            code = (f"{L}.load(T{slot} + {i}, mask=({i} >= 0) & ({i} < T{slot}_numel), other=0)")
            if x.kind == "b":
                code = f"({code} != 0)"
        elif op == "where":
            c, a, b = (emit(a) for a in x.args)
            code = f"{L}.where({c}, {a}, {b})"
        elif op in _TRITON_BINARY:
            a, b = emit(x.args[0]), emit(x.args[1])
            if op == "truediv" and x.args[0].kind != "f" and x.args[1].kind != "f":
                a = f"({a}).to({L}.float32)" if x.args[0].op != "const" else f"{float(x.args[0].args[0])!r}"
            code = _TRITON_BINARY[op].format(a=a, b=b, L=L)
        else:
            a = emit(x.args[0])
            if op not in ("neg", "not", "abs") and x.args[0].kind != "f":
                a = f"({a}).to({L}.float32)"
            code = _TRITON_UNARY[op].format(a=a, L=L)
        name = f"t{len(seen)}"
        seen[k] = name
        lines.append(f"{indent}{name} = {code}")
        return name

    outs = [emit(e) for e in exprs]
    return lines, outs
