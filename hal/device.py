"""The contract every driver implements: Device, Program, OpSpec, TensorSpec, Cost, Support, DeviceURI.

Every device is compile-then-run: ``prepare(op, params)`` turns an op description and its bound
parameters (weights) into a resident ``Program`` (a compiled kernel, programmed conductances, set
phases, mapped neurons, a transpiled circuit), and the Program is called on inputs as often as
needed. Eager ops (``d.matmul(a, b)``) are ``prepare`` + call with a per-device program cache.

A driver subclasses ``Device`` and provides:
  ``kind`` (class attribute), ``probe()`` (classmethod: which devices exist here, and why not),
  ``_build_capabilities()``, ``estimate(op)`` and ``_compile(op, params) -> Program``;
optionally ``OPTIONS`` (the ``?name=value`` options it accepts), ``_check(op)`` (extra support
rules), ``diagnose()`` (for ``hal doctor``), ``telemetry()``, ``manual_seed()``, ``close()``.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, quote, urlencode

import torch

from hal import ops as vocabulary
from hal.capability import Capabilities
from hal.errors import (
    DeviceMismatch,
    DTypeError,
    HalError,
    InvalidInput,
    ProgramInvalidated,
    ShapeError,
    UnknownDevice,
    UnsupportedOp,
)

if TYPE_CHECKING:
    from hal.subgraph import Subgraph

_KIND = re.compile(r"[a-z][a-z0-9_]*\Z")
_INDEX = re.compile(r"[A-Za-z0-9_.-]+\Z")


# --------------------------------------------------------------------------- naming


@dataclass(frozen=True)
class DeviceURI:
    """A parsed device string ``kind[:index][?option=value&...]``, canonical form ``kind:index?a=1&b=2``.

    ``index`` is an int for numbered devices and a name for named ones (``ibm_qpu:fake_torino``).
    Options are kept sorted so that equal devices have equal strings.
    """

    kind: str
    index: int | str = 0
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str | DeviceURI) -> DeviceURI:
        if isinstance(text, DeviceURI):
            return text
        if not isinstance(text, str):
            raise UnknownDevice(repr(text), problem=f"a device is named by a string like 'cpu:0', got {type(text).__name__}")
        body, _, query = text.strip().partition("?")
        kind, sep, index_text = body.partition(":")
        if not _KIND.match(kind):
            raise UnknownDevice(text, problem=f"{text!r} is not a device string: the kind {kind!r} must be lower-case letters, digits and '_' (e.g. 'cpu:0', 'memristor:0?tile=256')")
        index: int | str = 0
        if sep:
            if not _INDEX.match(index_text):
                raise UnknownDevice(text, problem=f"{text!r} has an empty or malformed index {index_text!r}: use a number ('hopper:0') or a name ('ibm_qpu:fake_torino')")
            index = int(index_text) if index_text.isdigit() else index_text
        options: dict[str, str] = {}
        if query:
            try:
                # '+' is a plus sign in a device string, not a space (parse_qsl reads form encoding): keep it.
                pairs = parse_qsl(query.replace("+", "%2B"), keep_blank_values=True, strict_parsing=True)
            except ValueError:
                raise InvalidInput(f"{text!r}: malformed options {query!r}; write them as ?name=value&other=value") from None
            for name, value in pairs:
                if name in options:
                    raise InvalidInput(f"{text!r}: option {name!r} is given twice; give it once")
                options[name] = value
        return cls(kind, index, tuple(sorted(options.items())))

    @property
    def option_map(self) -> dict[str, str]:
        return dict(self.options)

    def base(self) -> str:
        """``kind:index`` without options."""
        return f"{self.kind}:{self.index}"

    def __str__(self) -> str:
        return self.base() + (f"?{urlencode(self.options, safe='/:', quote_via=quote)}" if self.options else "")


@dataclass(frozen=True)
class Option:
    """A ``?name=value`` option a driver accepts: how to parse it, its default, and what it means."""

    parse: Callable[[str], Any]
    default: Any
    doc: str


def choice(values: Mapping[str, Any]) -> Callable[[str], Any]:
    """An option parser accepting only the keys of ``values`` (and returning the mapped value)."""

    def parse(text: str) -> Any:
        if text not in values:
            raise ValueError(f"{text!r} is not one of {', '.join(values)}")
        return values[text]

    return parse


def bounded_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An option parser for an integer in [low, high] (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be an integer {'from ' + str(low) + ' to ' + str(high) if high is not None else '>= ' + str(low)}")
        return value

    return parse


def bounded_float(low: float, high: float | None = None, *, include_low: bool = True) -> Callable[[str], float]:
    """An option parser for a finite number >= low (> low unless ``include_low``), at most ``high``."""

    def parse(text: str) -> float:
        value = float(text)
        above = value >= low if include_low else value > low
        if not (above and math.isfinite(value)) or (high is not None and value > high):
            bound = f"{'>=' if include_low else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise ValueError(f"must be a finite number {bound}")
        return value

    return parse


def parse_bool(text: str) -> bool:
    """Parse option text as a boolean (1/0, true/false, yes/no, on/off)."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use 1/0, true/false)")


# --------------------------------------------------------------------------- op descriptions


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one operand; ``None`` in ``shape`` accepts any size in that dimension."""

    shape: tuple[int | None, ...]
    dtype: torch.dtype = torch.float32

    @classmethod
    def of(cls, t: torch.Tensor | TensorSpec) -> TensorSpec:
        if isinstance(t, TensorSpec):
            return t
        if not isinstance(t, torch.Tensor):
            raise InvalidInput(f"expected a torch.Tensor or TensorSpec, got {type(t).__name__}")
        return cls(tuple(t.shape), t.dtype)

    def mismatch(self, t: torch.Tensor) -> str | None:
        """Why ``t`` does not fit this spec, or None if it does."""
        if t.dtype != self.dtype:
            return f"dtype {dtype_name(t.dtype)} where {dtype_name(self.dtype)} was prepared"
        if t.dim() != len(self.shape) or any(s is not None and s != n for s, n in zip(self.shape, t.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in self.shape) + ")"
            return f"shape {tuple(t.shape)} where {want} was prepared"
        return None

    def numel(self) -> int | None:
        """Element count, or None when a dimension is open."""
        n = 1
        for s in self.shape:
            if s is None:
                return None
            n *= s
        return n


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


@dataclass(frozen=True, init=False)
class OpSpec:
    """What to compute: an op name from the vocabulary, input specs, bound-parameter specs and attributes.

    A node of a graph. ``OpSpec("linear", inputs=[x], params={"weight": w})`` accepts tensors or
    TensorSpecs; attributes not given take the vocabulary's defaults. Hashable, so it keys caches.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    params: tuple[tuple[str, TensorSpec], ...]
    attrs: tuple[tuple[str, Any], ...]

    def __init__(
        self,
        name: str,
        inputs: Sequence[torch.Tensor | TensorSpec] = (),
        params: Mapping[str, torch.Tensor | TensorSpec | None] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ):
        merged = dict(vocabulary.default_attrs(name))
        merged.update(attrs or {})
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "inputs", tuple(TensorSpec.of(t) for t in inputs))
        object.__setattr__(
            self, "params", tuple(sorted((k, TensorSpec.of(v)) for k, v in (params or {}).items() if v is not None))
        )
        object.__setattr__(self, "attrs", tuple(sorted((k, _freeze(v)) for k, v in merged.items())))

    def attr(self, name: str, default: Any = None) -> Any:
        for key, value in self.attrs:
            if key == name:
                return value
        return default

    def param(self, name: str) -> TensorSpec | None:
        for key, spec in self.params:
            if key == name:
                return spec
        return None

    def with_batch_open(self) -> OpSpec:
        """The same op with the leading dimension of every input left open (any batch size)."""
        clone = object.__new__(OpSpec)
        object.__setattr__(clone, "name", self.name)
        object.__setattr__(clone, "inputs", tuple(TensorSpec((None, *s.shape[1:]), s.dtype) if s.shape else s for s in self.inputs))
        object.__setattr__(clone, "params", self.params)
        object.__setattr__(clone, "attrs", self.attrs)
        return clone

    def __str__(self) -> str:
        shapes = ", ".join(f"{dtype_name(s.dtype)}{list(s.shape)}" for s in self.inputs)
        extra = "".join(f", {k}={dtype_name(s.dtype)}{list(s.shape)}" for k, s in self.params)
        attrs = "".join(f", {k}={v!r}" for k, v in self.attrs)
        return f"{self.name}({shapes}{extra}{attrs})"


@dataclass(frozen=True)
class Cost:
    """Estimated cost of one call of a Program.

    ``error`` is the expected relative error ||out - ref||_F / ||ref||_F against the float64
    reference; ``formula`` says how the three numbers were obtained.
    """

    latency_s: float
    energy_j: float
    error: float
    formula: str = ""


@dataclass(frozen=True)
class Support:
    """Whether a device can run an op; if not, ``reason`` is a sentence a person can act on."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok

    @classmethod
    def yes(cls) -> Support:
        return cls(True)

    @classmethod
    def no(cls, reason: str) -> Support:
        return cls(False, reason)


@dataclass(frozen=True)
class DeviceInfo:
    """One probed device, available or not, as `hal devices` lists it."""

    uri: str
    kind: str
    available: bool
    reason: str = ""
    fix: str = ""
    simulated: bool = False
    paradigm: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One line of `hal doctor`: what was checked, whether it passed, what was found, how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


# --------------------------------------------------------------------------- programs


class Program:
    """A resident, reusable executable: call it on inputs that match ``op.inputs``.

    ``run`` does the work on validated inputs. A Program checks its inputs (count, shape, dtype,
    torch device, finiteness where the device refuses NaN) before running, and raises
    ``ProgramInvalidated`` once ``invalidate()`` was called (its resources were reprogrammed).
    """

    def __init__(self, op: OpSpec, device: Device, cost: Cost, run: Callable[..., Any]):
        self.op = op
        self.device = device
        self.cost = cost
        self.run = run
        self._invalid_reason: str | None = None

    def invalidate(self, reason: str) -> None:
        """Mark the Program unusable and drop its ``run``: a closure over device state (and often over the
        Program itself) that would otherwise keep that state alive in a reference cycle until a GC pass."""
        self._invalid_reason = reason
        message = f"this {self.op.name} program on {self.device} can no longer run: {reason}. Prepare it again."

        def refuse(*_: Any) -> Any:
            raise ProgramInvalidated(message)

        self.run = refuse

    @property
    def valid(self) -> bool:
        return self._invalid_reason is None

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if self._invalid_reason is not None:
            raise ProgramInvalidated(f"this {self.op.name} program on {self.device} can no longer run: {self._invalid_reason}. Prepare it again.")
        if len(inputs) != len(self.op.inputs):
            raise ShapeError(f"{self.op.name} program takes {len(self.op.inputs)} input(s), got {len(inputs)}")
        for i, (t, spec) in enumerate(zip(inputs, self.op.inputs)):
            if not isinstance(t, torch.Tensor):
                raise InvalidInput(f"{self.op.name} input {i} must be a torch.Tensor, got {type(t).__name__}")
            self.device.check_tensor_device(t, f"{self.op.name} input {i}")
            why = spec.mismatch(t)
            if why:
                error = DTypeError if why.startswith("dtype") else ShapeError
                raise error(f"{self.op.name} input {i} has {why}; prepare a new program for it (or call the eager op)")
        if self.device.refuses_nonfinite:
            self.device.check_finite(inputs, self.op.name)
        return self.run(*inputs)

    def __repr__(self) -> str:
        return f"Program({self.op} on {self.device})"


@dataclass(frozen=True)
class _EagerEntry:
    """An eager-cache entry: the Program and weak references to the weights it was prepared from."""

    program: Program
    weights: tuple[weakref.ref, ...]


# --------------------------------------------------------------------------- devices


class TorchGraph:
    """What ``Device.compile_torch_graph`` returns: the callable Dynamo runs, and a live account of how it runs.

    ``describe()`` says what the device did with the graph (rewrites that fired, whether and why it replays as a
    CUDA graph): it may change after the first calls, when decisions that need measurements are taken.
    """

    def __init__(self, fn: Callable[..., Any], describe: Callable[[], str]):
        self._fn = fn
        self.describe = describe

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


class Device(ABC):
    """A device of one kind, addressed by a URI, with capabilities, estimates and compile-then-run ops.

    Devices compare and hash by their canonical URI string, like ``torch.device``.
    """

    kind: ClassVar[str]
    OPTIONS: ClassVar[Mapping[str, Option]] = {}
    #: Refuse NaN/inf inputs with InvalidInput (analog, spiking, quantum devices). Digital devices
    #: propagate them as IEEE arithmetic does, like torch.
    refuses_nonfinite: ClassVar[bool] = False
    #: Device methods a converted model forwards (``hal.nn.convert(model, "memristor:0").elapse(3600)``).
    MODULE_VERBS: ClassVar[tuple[str, ...]] = ()
    #: Size of the eager-op program cache (least recently used programs are dropped).
    EAGER_CACHE_SIZE: ClassVar[int] = 64

    def __init__(self, uri: DeviceURI | str):
        self.uri = DeviceURI.parse(uri)
        if self.uri.kind != self.kind:
            raise UnknownDevice(str(self.uri), problem=f"{type(self).__name__} drives {self.kind!r} devices, not {self.uri.kind!r}")
        self.options = self._parse_options(self.uri)
        self.torch_device = torch.device("cpu")
        self._capabilities: Capabilities | None = None
        self._eager: OrderedDict[tuple, _EagerEntry] = OrderedDict()
        self._lock = threading.RLock()  # re-entrant: a freed weight's finaliser may run while it is held
        self._closed = False

    # ---- identity
    @property
    def index(self) -> int | str:
        return self.uri.index

    def __str__(self) -> str:
        return str(self.uri)

    def __repr__(self) -> str:
        return f"hal.device({str(self.uri)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = DeviceURI.parse(other)
            except HalError:
                return False
            return self.uri == other
        return isinstance(other, Device) and self.uri == other.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    @classmethod
    def _parse_options(cls, uri: DeviceURI) -> dict[str, Any]:
        values = {name: opt.default for name, opt in cls.OPTIONS.items()}
        for name, text in uri.options:
            if name not in cls.OPTIONS:
                known = ", ".join(sorted(cls.OPTIONS)) or "none"
                raise InvalidInput(f"{uri}: {cls.kind} has no option {name!r}; its options are: {known}")
            try:
                values[name] = cls.OPTIONS[name].parse(text)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"{uri}: option {name}={text!r} is invalid ({exc}); {name} is {cls.OPTIONS[name].doc}") from None
        return values

    # ---- discovery
    @classmethod
    @abstractmethod
    def probe(cls) -> list[DeviceInfo]:
        """The devices of this kind on this machine, available or not (each with its reason). Must not raise."""

    @classmethod
    def diagnose(cls) -> list[Check]:
        """Extra `hal doctor` checks (libraries, drivers, ports); the default has none."""
        return []

    # ---- capabilities
    @property
    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            self._capabilities = self._build_capabilities()
        return self._capabilities

    @abstractmethod
    def _build_capabilities(self) -> Capabilities:
        """Gather what this device is and can do (may measure; called once, then cached)."""

    def supports(self, op: OpSpec) -> Support:
        """Whether this device can run ``op``: the op is declared, dtypes allowed, shapes valid, limits kept."""
        declared = self.capabilities.ops.get(op.name)
        if declared is None:
            have = ", ".join(sorted(self.capabilities.ops)) or "none"
            return Support.no(f"{self.uri} does not implement {op.name!r}; it implements: {have}")
        for i, spec in enumerate(op.inputs):
            if dtype_name(spec.dtype) not in declared.dtypes:
                return Support.no(f"{self.uri} runs {op.name} in {', '.join(declared.dtypes)}, not {dtype_name(spec.dtype)} (input {i}); cast the input")
        try:
            vocabulary.check(op)
        except HalError as exc:
            return Support.no(str(exc))
        extra = self._check(op)
        return Support.yes() if extra is None else extra

    def _check(self, op: OpSpec) -> Support | None:
        """Driver-specific support rules (sizes, capacities); None means no objection."""
        return None

    @abstractmethod
    def estimate(self, op: OpSpec) -> Cost:
        """Estimated latency, energy and error of one call of ``op`` on this device."""

    # ---- compile-then-run
    def prepare(self, op: OpSpec, params: Mapping[str, torch.Tensor | None] | None = None) -> Program:
        """Compile/program ``op`` with its bound ``params`` (weights) into a resident Program."""
        self._ensure_open()
        params = {k: v for k, v in (params or {}).items() if v is not None}
        spec_params = dict(op.params)
        for name, tensor in params.items():
            if not isinstance(tensor, torch.Tensor):
                raise InvalidInput(f"{op.name} parameter {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
            self.check_tensor_device(tensor, f"{op.name} parameter {name!r}")
            spec_params[name] = TensorSpec.of(tensor)
        if not op.params and params:
            op = OpSpec(op.name, op.inputs, spec_params, dict(op.attrs))
        vocabulary.check(op)  # ShapeError / DTypeError / InvalidInput name the operand at fault
        support = self.supports(op)
        if not support:
            raise UnsupportedOp(support.reason)
        if self.refuses_nonfinite and params:
            self.check_finite(params.values(), f"{op.name} parameters")
        return self._compile(op, params)

    @abstractmethod
    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        """Build the Program for a supported ``op``."""

    # ---- module conversion (hal.nn.convert): a device's own torch layers
    def convert_module(self, module: torch.nn.Module, **options: Any) -> torch.nn.Module | None:
        """This device's own twin of ``module`` (one layer, or a whole model), or None when it has none.

        ``hal.nn.convert`` asks first for the whole model (a spiking device converts a network at once),
        then layer by layer; a layer with no twin whose op the device supports becomes hal.nn's generic
        device layer. ``options`` are the device's conversion options (noise-aware training strength,
        calibration data...); a device with none refuses any.
        """
        if options:
            raise InvalidInput(f"{self.uri} takes no conversion options, got {sorted(options)}; call hal.nn.convert(model, {str(self.uri)!r}) without them")
        return None

    # ---- subgraph claims (hal.subgraph): one Program for a connected group of ops
    def claim(self, sub: Subgraph) -> Support:
        """Whether this device runs ``sub`` as one Program keeping intermediates resident.

        The default declines: the runtime then prepares each op on its own. A driver that claims
        overrides this and ``_compile_subgraph``; every op of a claimed group must also pass ``supports``.
        """
        return Support.no(f"{self.uri} runs ops one at a time (it claims no subgraphs)")

    def prepare_subgraph(self, sub: Subgraph, params: Sequence[Mapping[str, torch.Tensor | None]]) -> Program:
        """Compile a claimed subgraph with each op's bound params (``params[j]`` for ``sub.ops[j]``) into one Program.

        The Program takes the subgraph's external inputs and returns its outputs (a tuple when several).
        """
        self._ensure_open()
        if len(params) != len(sub.ops):
            raise InvalidInput(f"prepare_subgraph: {len(sub.ops)} ops need {len(sub.ops)} parameter mappings, got {len(params)}")
        bound = []
        for j, (op, given) in enumerate(zip(sub.ops, params)):
            given = {k: v for k, v in (given or {}).items() if v is not None}
            for name, spec in op.params:
                tensor = given.get(name)
                if tensor is None:
                    raise InvalidInput(f"subgraph op {j} ({op.name}) declares a {name!r} of shape {spec.shape} but none was given; pass params[{j}][{name!r}]")
                if tuple(tensor.shape) != tuple(spec.shape):
                    raise ShapeError(f"subgraph op {j} ({op.name}): {name!r} has shape {tuple(tensor.shape)} where its OpSpec says {spec.shape}")
            extra = sorted(set(given) - {name for name, _ in op.params})
            if extra:
                raise InvalidInput(f"subgraph op {j} ({op.name}) got parameter(s) {extra} its OpSpec does not declare; describe them in the OpSpec's params")
            for name, tensor in given.items():
                if not isinstance(tensor, torch.Tensor):
                    raise InvalidInput(f"subgraph op {j} ({op.name}) parameter {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
                self.check_tensor_device(tensor, f"{op.name} parameter {name!r}")
            vocabulary.check(op)
            support = self.supports(op)
            if not support:
                raise UnsupportedOp(support.reason)
            if self.refuses_nonfinite and given:
                self.check_finite(given.values(), f"{op.name} parameters")
            bound.append(given)
        claimed = self.claim(sub)
        if not claimed:
            raise UnsupportedOp(f"{self.uri} does not claim the subgraph {sub}: {claimed.reason}")
        return self._compile_subgraph(sub, bound)

    def _compile_subgraph(self, sub: Subgraph, params: list[dict[str, torch.Tensor]]) -> Program:
        """Build the Program of a claimed subgraph; drivers that override ``claim`` override this too."""
        raise UnsupportedOp(f"{self.uri} claims no subgraphs")

    # ---- whole torch graphs (the torch.compile backend's delegate route)
    def compile_torch_graph(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any], delegate: Callable[[torch.fx.GraphModule, Sequence[Any]], Callable[..., Any]]) -> TorchGraph | None:
        """This device's own compilation of a whole Dynamo FX graph whose tensors all live on it, or None.

        ``torch.compile(model, backend="hal")`` hands a graph that needs no placement (every selected device trains
        and holds its tensors) to the delegate backend (Inductor). A device that can do better (rewrite the graph
        for its own kernels, replay it as a CUDA graph) returns a ``TorchGraph`` built around ``delegate`` (which
        compiles a graph module for those example inputs); None, the default, hands the graph to the delegate
        unchanged.
        """
        return None

    def estimate_subgraph(self, sub: Subgraph) -> Cost:
        """Cost of one call of the claimed subgraph; the default sums the ops' estimates (drivers refine it)."""
        costs = [self.estimate(op) for op in sub.ops]
        return Cost(sum(c.latency_s for c in costs), sum(c.energy_j for c in costs), sum(c.error for c in costs), "sum of the ops' estimates")

    def run_op(self, name: str, inputs: Sequence[torch.Tensor], params: Mapping[str, torch.Tensor | None] | None = None, **attrs: Any) -> Any:
        """Eager op: prepare (once per shapes/dtypes/devices/params/attrs, cached) and call.

        A bound parameter is keyed by its identity *and* held by a weak reference in the entry: an
        ``id()`` alone aliases as soon as CPython reuses it for a fresh tensor, so a hit counts only
        when the entry's weakref still resolves to this very tensor. The key also carries the
        tensor's ``_version`` (bumped by in-place writes) and ``data_ptr()`` (changed by
        ``w.data = other``, which leaves ``_version`` alone). An entry is dropped as soon as one of
        its weights is freed, so a dead weight never keeps a device's resources (tiles, meshes).

        The cache hit path is kept to a few tuple builds and one dict lookup: after a large kernel the
        interpreter's own data is cold in the CPU caches, so every object touched here costs.
        """
        params = {k: v for k, v in params.items() if v is not None} if params else {}
        try:
            key = (name, *[(t.shape, t.dtype, t.device) for t in inputs])
            if params:
                key += ("params", *[(k, id(v), v._version, v.data_ptr(), v.shape, v.dtype) for k, v in params.items()])
            if attrs:
                key += ("attrs", *sorted(attrs.items()))
            entry = self._eager.get(key)
        except (AttributeError, TypeError):
            raise InvalidInput(f"{name}: inputs and parameters must be torch.Tensors and attributes hashable values") from None
        if params and entry is not None and not all(ref() is v for ref, v in zip(entry.weights, params.values())):
            entry = None  # the id was reused by a new tensor: that entry's weight is gone
        if entry is None or not entry.program.valid:
            program = self.prepare(OpSpec(name, inputs, params, attrs), params)
            self._remember(key, program, params.values())
            return program(*inputs)
        with contextlib.suppress(KeyError):  # another thread may have evicted it meanwhile
            self._eager.move_to_end(key)
        if self.refuses_nonfinite:
            self.check_finite(inputs, name)
        return entry.program.run(*inputs)

    def _remember(self, key: tuple, program: Program, weights: Iterable[torch.Tensor]) -> None:
        """Cache an eager Program; its entry goes when any of its weights is freed, or when least recently used."""

        def forget(_ref: weakref.ref, cache: weakref.ref = weakref.ref(self._eager), lock: threading.RLock = self._lock) -> None:
            eager = cache()
            if eager is None:
                return
            with lock:
                current = eager.get(key)
                if current is not None and any(r is _ref for r in current.weights):
                    del eager[key]

        entry = _EagerEntry(program, tuple(weakref.ref(w, forget) for w in weights))
        with self._lock:
            self._eager[key] = entry
            self._eager.move_to_end(key)
            while len(self._eager) > self.EAGER_CACHE_SIZE:
                self._eager.popitem(last=False)

    # ---- eager vocabulary (each is run_op with the vocabulary's operand names)
    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.run_op("matmul", (a, b))

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor:
        if activation == "none":
            return self.run_op("linear", (x,), {"weight": weight, "bias": bias})
        return self.run_op("linear", (x,), {"weight": weight, "bias": bias}, activation=activation)

    def conv2d(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1, groups: int = 1) -> torch.Tensor:
        return self.run_op("conv2d", (x,), {"weight": weight, "bias": bias}, stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation), groups=groups)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.run_op("add", (a, b))

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.run_op("mul", (a, b))

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_op("relu", (x,))

    def gelu(self, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        return self.run_op("gelu", (x,), approximate=approximate)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_op("silu", (x,))

    def softmax(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return self.run_op("softmax", (x,), dim=dim)

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
        return self.run_op("layer_norm", (x,), {"weight": weight, "bias": bias}, eps=eps)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
        return self.run_op("rms_norm", (x,), {"weight": weight}, eps=eps)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None) -> torch.Tensor:
        return self.run_op("attention", (q, k, v), causal=causal, scale=scale)

    def selective_scan(self, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
        return self.run_op("selective_scan", (u, delta, A, B, C, D))

    # ---- input checks shared by Programs and eager ops
    def check_tensor_device(self, t: torch.Tensor, what: str) -> None:
        """Inputs may live on the host or on this device's torch device; anything else is refused."""
        if t.device.type != "cpu" and not _same_torch_device(t.device, self.torch_device):
            raise DeviceMismatch(f"{what} is on {t.device} but {self.uri} computes on {self.torch_device}; move it with .to('{self.torch_device}') or .cpu()")

    def check_finite(self, tensors: Iterable[torch.Tensor], what: str) -> None:
        """Refuse NaN/inf. One pass: min and max of a real tensor are both finite only if every element is."""
        for t in tensors:
            if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
                continue
            if t.is_complex():
                finite = bool(torch.isfinite(t).all())
            else:
                low, high = torch.aminmax(t)
                finite = bool(torch.isfinite(low) & torch.isfinite(high))
            if not finite:
                bad = int((~torch.isfinite(t)).sum())
                raise InvalidInput(f"{what}: {bad} NaN/inf value(s) given to {self.uri}, which refuses non-finite inputs; clean or mask them first")

    # ---- lifecycle
    def manual_seed(self, seed: int) -> None:
        """Seed the device's noise sources (noisy devices override this; deterministic ones ignore it)."""

    def synchronize(self) -> None:
        """Wait for queued work to finish (asynchronous devices override this)."""

    def telemetry(self) -> dict[str, Any]:
        """Live readings (power, temperature, utilisation...) for `hal query --watch`."""
        raise UnsupportedOp(f"{self.uri} reports no live telemetry")

    def _ensure_open(self) -> None:
        if self._closed:
            raise ProgramInvalidated(f"{self.uri} was closed; open it again with hal.device({str(self.uri)!r})")

    def close(self) -> None:
        """Release device resources; idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            entries = list(self._eager.values())
            self._eager.clear()
        for entry in entries:
            entry.program.invalidate(f"{self.uri} was closed")
        from hal import registry

        registry.forget(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same_torch_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` (no index) means the current CUDA device, so it equals ``cuda:0`` when 0 is current."""

    def resolved(d: torch.device) -> torch.device:
        if d.index is None and d.type == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return d

    return a.type == b.type and (a.index == b.index or resolved(a) == resolved(b))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(value)
    if len(pair) != 2:
        raise InvalidInput(f"expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]
