"""The ``torch.compile`` backend: ``torch.compile(model, backend="hal", options={...})``.

Dynamo hands a backend one FX graph per region it captured (a graph break, such as ``if x.sum() > 0``,
ends one region and the Python in between runs as plain Python). For each graph:

1. ``options`` are checked (names, policy, pins, device strings) and the devices opened, so a typo or a device
   that does not exist is an error naming it when the graph compiles, before anything runs;
2. the frame's compile count (Dynamo's ``CompileId``) is held to ``max_recompiles``;
3. the graph is routed. When every selected device is digital and real (the CPU, NVIDIA GPUs: devices that
   train), no pins are given and the graph's tensors live on those devices, there is nothing to place: the
   whole graph goes to the ``delegate`` torch backend (Inductor by default) and its compiled callable is
   returned unchanged, so hal adds nothing per call; unless the device holding the graph's tensors compiles it
   itself around the delegate (``Device.compile_torch_graph``: an NVIDIA GPU rewrites it for hal's fused kernels
   and replays it as a CUDA graph where that pays, docs/nvidia.md). Otherwise hal.runtime places it:
4. weights are told from activations: parameters and the buffers Dynamo lifted to graph inputs (it marks them
   as static inputs) become constants of a rebuilt ``fx.GraphModule``, so devices bind them once (``prepare``);
   symbolic sizes (dynamic shapes) are specialised per call signature; ``hal.runtime.capture.graph_of`` turns
   that module into OpSpec nodes (the one op mapping) and ``hal.runtime.Plan`` places them;
5. the returned ``PlacedGraph`` runs the plan: through the executor (``Plan.run``) when no gradient is needed,
   else through torch autograd: nodes on devices that train run as the torch ops they came from, nodes on other
   devices run their Program and raise UnsupportedOp at the first backward that reaches them.

Weights are checked on every call: a weight written in place (an optimiser step) has its Programs prepared
again before the next run; a weight replaced by another tensor makes the graph be captured again.
"""

from __future__ import annotations

import difflib
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from hal import registry
from hal.capability import Paradigm
from hal.device import Device, DeviceURI, Program, TorchGraph
from hal.errors import HalError, InvalidInput, UnsupportedOp
from hal.runtime.capture import Graph, Node, graph_of
from hal.runtime.costs import HOST
from hal.runtime.inplace import referenced, written_operand
from hal.runtime.placement import POLICIES
from hal.runtime.planner import Plan

log = logging.getLogger(__name__)

#: The options ``torch.compile(..., backend="hal", options=...)`` accepts, and what each means.
OPTIONS: dict[str, str] = {
    "policy": f"placement objective, one of {', '.join(POLICIES)} (default 'latency')",
    "devices": "device strings to place on, e.g. ['cpu:0', 'memristor:0'] (default: every available device that is not simulated)",
    "pins": "{module path or node name: device string}, e.g. {'fc2': 'memristor:0'}; pinned devices join the selection",
    "delegate": "torch backend that runs graphs hal has nothing to place (default 'inductor'); None places every graph with hal",
    "max_recompiles": "recompiles allowed per frame, and call signatures placed per graph (default: torch._dynamo.config.recompile_limit)",
}

_SCALARS = (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)


class RecompileLimit(HalError, RuntimeError):
    """A frame was compiled, or a placed graph specialised, more often than ``max_recompiles`` allows."""


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class Options:
    """The backend's options, checked: see ``OPTIONS`` for what each means."""

    policy: str = "latency"
    devices: tuple[Device | str, ...] | None = None
    pins: tuple[tuple[str, Device | str], ...] = ()
    delegate: str | None = "inductor"
    max_recompiles: int | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> Options:
        """Check ``options`` (InvalidInput naming the problem and the options that exist)."""
        if options is None:
            return cls()
        if not isinstance(options, Mapping):
            raise InvalidInput(f"torch.compile(backend='hal') takes options as a dict, got {type(options).__name__}")
        unknown = [k for k in options if k not in OPTIONS]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = "; ".join(f"{k}: {doc}" for k, doc in OPTIONS.items())
            raise InvalidInput(f"torch.compile(backend='hal') has no option {unknown[0]!r}{hint} Its options are {known}")
        policy = options.get("policy", "latency")
        if policy not in POLICIES:
            raise InvalidInput(f"options['policy']={policy!r} is not a policy; use one of {', '.join(POLICIES)}")
        return cls(
            policy=policy,
            devices=_device_list(options["devices"]) if options.get("devices") is not None else None,
            pins=_pin_items(options.get("pins") or {}),
            delegate=_delegate_name(options.get("delegate", "inductor")),
            max_recompiles=_recompile_bound(options.get("max_recompiles")),
        )


def _device_list(devices: Any) -> tuple[Device | str, ...]:
    if isinstance(devices, (str, Device)) or not isinstance(devices, Sequence) or not devices:
        raise InvalidInput(f"options['devices'] takes a non-empty list of device strings such as ['cpu:0', 'memristor:0'], got {devices!r}")
    refs = tuple(_device_ref(d, "options['devices']") for d in devices)
    if HOST in refs:
        raise InvalidInput("options['devices'] names 'host': the CPU reference is always there for host steps; name 'cpu:0' to place ops on the CPU")
    return refs


def _device_ref(value: Any, where: str) -> Device | str:
    """A Device as given, or a device string in canonical form ('host' stays 'host')."""
    if isinstance(value, Device):
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"{where} holds {value!r}; name devices by strings such as 'memristor:0'")
    return HOST if value == HOST else str(DeviceURI.parse(value))


def _pin_items(pins: Any) -> tuple[tuple[str, Device | str], ...]:
    if not isinstance(pins, Mapping):
        raise InvalidInput(f"options['pins'] takes a dict {{module path or node name: device string}}, got {type(pins).__name__}")
    items = []
    for key, uri in pins.items():
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"options['pins'] keys are module paths ('fc2', 'blocks.0') or node names, got {key!r}")
        items.append((key, _device_ref(uri, f"options['pins'][{key!r}]")))
    return tuple(items)


def _delegate_name(name: Any) -> str | None:
    if name is None or name == "inductor":  # the default needs no look-up (listing imports every backend: about 1 s)
        return name
    known = torch._dynamo.list_backends(exclude_tags=())
    if not isinstance(name, str) or name == "hal" or name not in known:
        raise InvalidInput(f"options['delegate']={name!r} is not a torch backend hal can hand graphs to; use one of {', '.join(b for b in known if b != 'hal')}, or None")
    return name


def _recompile_bound(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"options['max_recompiles'] takes a whole number >= 0, got {value!r}")
    return value


# --------------------------------------------------------------------------- devices


def trains(device: Device) -> bool:
    """Whether a device trains: digital and real, so the gradient of the torch op is the gradient of what it computes."""
    caps = device.capabilities
    return Paradigm(caps.paradigm) is Paradigm.DIGITAL and not caps.simulated


def select_devices(options: Options) -> list[Device]:
    """Open the selected devices (default: every available device that is not simulated) and the pinned ones."""
    chosen = list(options.devices) if options.devices is not None else _real_devices()
    chosen += [uri for _, uri in options.pins if uri != HOST]
    opened: dict[str, Device] = {}
    for ref in chosen:
        device = ref if isinstance(ref, Device) else registry.open_device(ref)
        opened[str(device)] = device
    return [opened[k] for k in sorted(opened)]


def _real_devices() -> list[str]:
    """Every available device that is neither simulated nor a board reached over a port."""
    return [
        info.uri
        for info in registry.probe_all()
        if info.available and not info.simulated and info.kind != registry.BOARD_DRIVER and "port" not in DeviceURI.parse(info.uri).option_map
    ]


def _route(options: Options, devices: list[Device], example_inputs: Sequence[Any]) -> str | None:
    """Why hal must place this graph itself, or None when the delegate can run it whole."""
    if options.delegate is None:
        return "options['delegate'] is None"
    if options.pins:
        return "pins are given"
    for d in devices:
        if not trains(d):
            caps = d.capabilities
            what = f"{'simulated ' if caps.simulated else ''}{Paradigm(caps.paradigm).value} device"
            return f"{d} is {'an' if what[0] in 'aeiou' else 'a'} {what}"
    homes = {d.torch_device for d in devices}
    for t in example_inputs:
        if isinstance(t, torch.Tensor) and t.device not in homes:
            return f"a graph input lives on {t.device}, which no selected device computes on"
    return None


# --------------------------------------------------------------------------- recompiles


def _compile_id(gm: fx.GraphModule) -> Any:
    return gm.meta.get("dynamo_compile_id") or torch._guards.CompileContext.current_compile_id()


def _check_recompiles(gm: fx.GraphModule, bound: int) -> None:
    cid = _compile_id(gm)
    count = getattr(cid, "frame_compile_id", None)
    if count is None or count <= bound:
        return
    where = _where(gm)
    raise RecompileLimit(
        f"torch.compile has compiled this frame {count + 1} times (compile id {cid}{'; ' + where if where else ''}) and "
        f"options['max_recompiles']={bound} allows {bound} recompile(s): Dynamo's guards keep failing, usually because input "
        "shapes or Python values change from call to call. Mark changing sizes dynamic (torch._dynamo.mark_dynamic(x, 0), "
        "or torch.compile(..., dynamic=True)), or raise options['max_recompiles']; TORCH_LOGS=recompiles shows the failing guard"
    )


def _where(gm: fx.GraphModule) -> str:
    """The source line the graph's first traced step came from (``File "m.py", line 12, in forward``), or ''."""
    for n in gm.graph.nodes:
        frames = [line.strip() for line in str(n.meta.get("stack_trace") or "").splitlines() if line.strip().startswith("File ")]
        if frames:
            return frames[-1]
    return ""


# --------------------------------------------------------------------------- the backend


@dataclass
class Compiled:
    """What the backend made of one Dynamo graph: ``fn`` (what Dynamo calls), the route and why, and the placement.

    ``route`` is ``"delegate"`` (the whole graph went to ``options['delegate']``), ``"device"`` (the device holding
    the graph's tensors compiled it around the delegate: ``Device.compile_torch_graph``; ``own`` says how) or
    ``"placed"`` (hal.runtime placed it; ``placed`` holds the plans). ``compile_id`` is Dynamo's ``frame/compile``
    count for the frame.
    """

    fn: Callable[..., Any]
    route: str
    reason: str
    compile_id: str
    devices: list[str]
    placed: PlacedGraph | None = None
    own: TorchGraph | None = None

    def describe(self) -> str:
        """The route and why, then the plans (placed) or the device's own account of the graph (device)."""
        head = f"[{self.compile_id}] on {', '.join(self.devices)}: {self.route} ({self.reason})"
        if self.placed is not None:
            return f"{head}\n{self.placed.describe()}"
        if self.own is not None:
            return f"{head}\n{self.own.describe()}"
        return head


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], options: Mapping[str, Any] | None = None, mode: str | None = None) -> Compiled:
    """Compile one Dynamo graph: check options, count recompiles, then delegate it whole or place it with hal.runtime."""
    opts = Options.parse(options)
    devices = select_devices(opts)
    bound = opts.max_recompiles if opts.max_recompiles is not None else torch._dynamo.config.recompile_limit
    _check_recompiles(gm, bound)
    cid = str(_compile_id(gm))
    names = [str(d) for d in devices]
    why = _route(opts, devices, example_inputs)
    if why is None:
        reason = f"every selected device ({', '.join(names)}) trains and holds the graph's tensors"
        home = _home_device(devices, example_inputs) if mode in (None, "default") else None
        own = home.compile_torch_graph(gm, example_inputs, lambda g, xs: _delegate(g, xs, opts.delegate, mode)) if home is not None else None
        if own is not None:
            log.info("hal: graph %s compiled by %s around %s", cid, home, opts.delegate)
            return Compiled(own, "device", f"{reason}; {home} compiles it around {opts.delegate}", cid, names, own=own)
        fn = _delegate(gm, example_inputs, opts.delegate, mode)
        log.info("hal: graph %s runs whole on %s (devices %s)", cid, opts.delegate, ", ".join(names))
        return Compiled(fn, "delegate", reason, cid, names)
    if mode not in (None, "default"):
        raise InvalidInput(f"torch.compile(mode={mode!r}) configures the Inductor delegate, but hal places this graph itself ({why}); leave mode unset")
    placed = PlacedGraph(gm, example_inputs, devices, opts, bound)
    log.info("hal: graph %s placed by hal.runtime (%s):\n%s", cid, why, placed.describe() if log.isEnabledFor(logging.INFO) else "")
    return Compiled(placed, "placed", why, cid, names, placed)


def _home_device(devices: list[Device], example_inputs: Sequence[Any]) -> Device | None:
    """The one selected device every tensor input of the graph lives on, or None (no tensors, or several homes)."""
    homes = {t.device for t in example_inputs if isinstance(t, torch.Tensor)}
    if len(homes) != 1:
        return None
    (home,) = homes
    return next((d for d in devices if d.torch_device == home), None)


def backend(gm: fx.GraphModule, example_inputs: Sequence[Any], *, options: Mapping[str, Any] | None = None, mode: str | None = None) -> Callable[..., Any]:
    """``torch.compile(model, backend="hal", options={"policy": ..., "devices": [...], "pins": {...}})``.

    Registered under torch's ``torch_dynamo_backends`` entry point group as ``hal``; the options are those of
    ``OPTIONS``. Returns what Dynamo calls for this graph (see ``compile_graph``).
    """
    return compile_graph(gm, example_inputs, options=options, mode=mode).fn


def _delegate(gm: fx.GraphModule, example_inputs: Sequence[Any], name: str, mode: str | None) -> Callable[..., Any]:
    if name == "inductor":
        from torch._inductor import list_mode_options
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs, config_patches=list_mode_options(mode) if mode else None)
    if mode not in (None, "default"):
        raise InvalidInput(f"torch.compile(mode={mode!r}) configures Inductor, but options['delegate'] is {name!r}; leave mode unset")
    return torch._dynamo.lookup_backend(name)(gm, example_inputs)


# --------------------------------------------------------------------------- reading Dynamo's graph


_ROOT = re.compile(r"^[A-Za-z_]\w*\[['\"][^'\"]*['\"]\]")
_SUBMODULE = re.compile(r"\._modules\[['\"]([^'\"]+)['\"]\]")
_INDEX = re.compile(r"\[['\"]?([^'\"\]]+)['\"]?\]")


def module_path(node: fx.Node) -> str | None:
    """The path of the innermost module a Dynamo node was traced in (``"blocks.0.fc"``), from ``nn_module_stack``."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    text = _INDEX.sub(r".\1", _SUBMODULE.sub(r".\1", _ROOT.sub("", str(path))))
    return text.lstrip(".")


def _capture_name(node: fx.Node, module_uses: Mapping[str, int]) -> str:
    """The name capture gives a node: a module called once by its path, everything else by its fx name."""
    if node.op == "call_module" and module_uses.get(node.target) == 1:
        return str(node.target)
    if node.op == "get_attr":
        return str(node.target)
    return node.name


def _fetch(module: torch.nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _root_of(node: fx.Node) -> fx.Node:
    """The value a node is computed from through first operands (a view's base, by the rule that errs towards sharing)."""
    while node.op in ("call_function", "call_method") and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


@dataclass
class Inputs:
    """Dynamo's graph inputs by role: positions of weights (bound as constants), scalars (specialised per call),
    activations (passed to the plan), and the activations the graph writes in place (copied back after a run)."""

    weights: list[int] = field(default_factory=list)
    scalars: list[int] = field(default_factory=list)
    activations: list[int] = field(default_factory=list)
    written: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Inputs:
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(example_inputs):
            raise InvalidInput(f"Dynamo's graph has {len(placeholders)} inputs but {len(example_inputs)} example inputs came with it")
        writes = {_root_of(w) for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module") for w in [written_operand(gm, n)] if w is not None}
        roles = cls()
        for i, (ph, value) in enumerate(zip(placeholders, example_inputs)):
            if isinstance(value, _SCALARS):
                roles.scalars.append(i)
            elif not isinstance(value, torch.Tensor):
                raise InvalidInput(f"graph input {ph.name!r} is a {type(value).__name__}; hal places graphs whose inputs are tensors and numbers")
            elif ph in writes:
                roles.activations.append(i)
                roles.written.append(i)
            elif isinstance(value, torch.nn.Parameter) or (_static(value) and not value.requires_grad):
                roles.weights.append(i)
            else:
                roles.activations.append(i)
        return roles


def _static(t: torch.Tensor) -> bool:
    """Whether Dynamo lifted ``t`` from a module (a parameter or buffer): it marks those as static inputs."""
    return getattr(t, "_dynamo_static_input_type", None) is not None


def _rebuild(gm: fx.GraphModule, roles: Inputs, args: Sequence[Any]) -> fx.GraphModule:
    """Dynamo's graph with weights as constants, scalars as the values in ``args``, and written inputs as extra outputs."""
    position = {n: i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")}
    weights, scalars = set(roles.weights), set(roles.scalars)
    attrs: dict[str, Any] = {}
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            i = position[n]
            if i in weights:
                attrs[n.name] = args[i]
                env[n] = graph.get_attr(n.name)
            elif i in scalars:
                env[n] = _plain(args[i])
            else:
                env[n] = graph.placeholder(n.name)
            if isinstance(env[n], fx.Node):
                env[n].meta = dict(n.meta)
        elif n.op == "output":
            outputs = fx.node.map_arg(_flat_outputs(n), lambda a: env[a])
            graph.output((*outputs, *(env[p] for p, i in position.items() if i in set(roles.written))))
        else:
            if n.op in ("get_attr", "call_module"):
                attrs[n.target] = _fetch(gm, n.target)
            env[n] = graph.node_copy(n, lambda a: env[a])
    return fx.GraphModule(attrs, graph)


def _flat_outputs(output: fx.Node) -> tuple:
    """A graph's outputs as a tuple (Dynamo returns a tuple; a single value is one output)."""
    value = output.args[0]
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _plain(value: Any) -> Any:
    """A scalar graph input as a Python number (Dynamo's example inputs may be symbolic)."""
    if isinstance(value, torch.SymInt):
        return int(value.node.hint)
    if isinstance(value, torch.SymFloat):
        return float(value.node.hint)
    if isinstance(value, torch.SymBool):
        return bool(value.node.hint)
    return value


# --------------------------------------------------------------------------- running a placed graph


class _OnDevice(torch.autograd.Function):
    """A node's Program under autograd: the forward runs it; a backward that reaches it is refused with the reason."""

    @staticmethod
    def forward(ctx, program: Program, refusal: str, n_inputs: int, *tensors: torch.Tensor) -> Any:  # type: ignore[override]
        ctx.refusal = refusal
        inputs = tensors[:n_inputs]
        target = program.device.torch_device
        home = inputs[0].device if inputs else torch.device("cpu")
        moved = [t if t.device.type == "cpu" or t.device == target else t.to(target) for t in inputs]
        out = program(*moved)
        return out.to(home) if isinstance(out, torch.Tensor) else tuple(o.to(home) for o in out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> Any:
        raise UnsupportedOp(ctx.refusal)


@dataclass
class _Placed:
    """One call signature's plan: the rebuilt module, its Graph and Plan, and what the autograd path needs."""

    module: fx.GraphModule
    plan: Plan
    names: dict[fx.Node, str]
    on_device: dict[str, tuple[Node, Device]]
    weight_nodes: dict[int, list[str]]

    def forget_programs(self, positions: Sequence[int]) -> None:
        """Drop the Programs bound to the weights at ``positions`` (prepared again on the next run)."""
        stale = {name for p in positions for name in self.weight_nodes.get(p, ())}
        with self.plan.lock:
            for key in [k for k in self.plan.programs if k[0] in stale]:
                del self.plan.programs[key]

    def run_autograd(self, activations: Sequence[torch.Tensor]) -> Any:
        """Run the module as torch would, except that nodes placed on devices that do not train run their Program."""
        graph: Graph = self.plan.graph
        env: dict[str, Any] = {}
        feed = iter(activations)
        for n in self.module.graph.nodes:
            name = self.names.get(n)
            if n.op == "placeholder":
                env[name] = next(feed)
            elif n.op == "get_attr":
                env[name] = _fetch(self.module, n.target)
            elif n.op == "output":
                return fx.node.map_arg(n.args[0], lambda r: env[self.names[r]])
            elif name in self.on_device:
                node, device = self.on_device[name]
                refs = [env[r] for r in node.inputs]
                weights = [env[self.names[r]] for r in referenced(n.args, n.kwargs) if r.op == "get_attr"]
                trainable = [w for w in weights if isinstance(w, torch.Tensor) and w.requires_grad]
                where = f"module {module_path(n)!r}, " if module_path(n) else ""
                refusal = (
                    f"{device} cannot train: the backward pass reached node {node.name!r} ({where}{node.label}, {node.source}) placed on it. "
                    f"Pin {node.name!r} to 'cpu:0' (options['pins']) to train it, or freeze it and everything before it (requires_grad_(False))"
                )
                env[name] = _OnDevice.apply(self.plan.program(node.name, device), refusal, len(refs), *refs, *trainable)
            elif graph.aliases.get(name) in self.on_device:
                env[name] = env[graph.aliases[name]]  # a relu fused into the device's linear before it
            else:
                env[name] = _call(self.module, n, lambda r: env[self.names[r]])
        raise InvalidInput("the rebuilt graph has no output node")


def _call(module: fx.GraphModule, n: fx.Node, value: Callable[[fx.Node], Any]) -> Any:
    args, kwargs = fx.node.map_arg((n.args, n.kwargs), value)
    if n.op == "call_function":
        return n.target(*args, **kwargs)
    if n.op == "call_method":
        self_, *rest = args
        return getattr(self_, n.target)(*rest, **kwargs)
    return module.get_submodule(n.target)(*args, **kwargs)


class PlacedGraph:
    """The callable Dynamo gets for a graph hal places: one Plan per call signature, weights checked every call.

    ``plans`` maps a signature (the scalar inputs and activation shapes; ``()`` for a graph of static shapes) to
    its Plan. Signatures beyond ``max_recompiles + 1`` are refused with RecompileLimit.
    """

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], devices: list[Device], options: Options, bound: int):
        self.gm = gm
        self.devices = devices
        self.options = options
        self.bound = bound
        self.roles = Inputs.of(gm, example_inputs)
        self.host_allowed = any(trains(d) and d.torch_device.type == "cpu" for d in devices)
        self.differentiable = any(isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs)
        output = next(n for n in gm.graph.nodes if n.op == "output")
        outputs = _flat_outputs(output)
        self.single = not isinstance(output.args[0], (tuple, list))
        self.n_outputs = len(outputs)
        self.output_devices = [getattr(o.meta.get("example_value"), "device", None) if isinstance(o, fx.Node) else None for o in outputs]
        fqns = gm.meta.get("dynamo_flat_name_to_original_fqn", {}).values()
        self.known_modules = {fqn.rsplit(".", 1)[0] for fqn in fqns if "." in fqn}
        self.known_modules |= {prefix for path in list(self.known_modules) for prefix in _prefixes(path)}
        self._lock = threading.Lock()
        self._weights: list[tuple[int, torch.Tensor, int, int]] = []
        self.plans: dict[tuple, _Placed] = {}
        self._placed_for(self._signature(example_inputs), example_inputs)

    # ---- inspection
    def describe(self) -> str:
        return "\n".join(f"signature {key}:\n{p.plan}" for key, p in self.plans.items())

    # ---- a call
    def __call__(self, *args: Any) -> Any:
        key = self._signature(args)
        placed = self.plans.get(key)
        if placed is None:
            placed = self._placed_for(key, args)
        if self._weights_changed(args):
            placed = self._refresh(args)
        activations = [args[i] for i in self.roles.activations]
        if self.differentiable and torch.is_grad_enabled():
            out = placed.run_autograd(activations)
        else:
            out = placed.plan.run(*activations)
        return self._finish(args, tuple(out))

    def _signature(self, args: Sequence[Any]) -> tuple:
        if not self.roles.scalars:
            return ()
        return (*(_plain(args[i]) for i in self.roles.scalars), *(tuple(args[i].shape) for i in self.roles.activations))

    def _finish(self, args: Sequence[Any], out: tuple) -> Any:
        results, written = list(out[: self.n_outputs]), out[self.n_outputs :]
        for position, new in zip(self.roles.written, written):
            original = args[position]
            if new is not original:
                with torch.no_grad():
                    original.copy_(new)
                results = [original if r is new else r for r in results]
        for i, (r, home) in enumerate(zip(results, self.output_devices)):
            if isinstance(r, torch.Tensor) and home is not None and r.device != home:
                results[i] = r.to(home)
        return results[0] if self.single else tuple(results)

    # ---- weights
    def _weights_changed(self, args: Sequence[Any]) -> bool:
        return any(args[i] is not t or t._version != version or t.data_ptr() != ptr for i, t, version, ptr in self._weights)

    def _refresh(self, args: Sequence[Any]) -> _Placed:
        """Weights written in place: forget their Programs. Weights replaced by other tensors: capture again."""
        with self._lock:
            if any(args[i] is not t or t.data_ptr() != ptr for i, t, _, ptr in self._weights):
                self.plans.clear()
                return self._placed_for(self._signature(args), args, locked=True)
            changed = [i for i, t, version, _ in self._weights if t._version != version]
            for placed in self.plans.values():
                placed.forget_programs(changed)
            self._record_weights(args)
            return self.plans[self._signature(args)]

    def _record_weights(self, args: Sequence[Any]) -> None:
        self._weights = [(i, args[i], args[i]._version, args[i].data_ptr()) for i in self.roles.weights]

    # ---- planning
    def _placed_for(self, key: tuple, args: Sequence[Any], locked: bool = False) -> _Placed:
        if not locked:
            with self._lock:
                return self.plans.get(key) or self._placed_for(key, args, locked=True)
        if len(self.plans) > self.bound:
            raise RecompileLimit(
                f"hal has placed this graph (compile id {_compile_id(self.gm)}) for {len(self.plans)} call signatures "
                f"{sorted(self.plans)} and options['max_recompiles']={self.bound} allows {self.bound + 1}; the new signature is {key}. "
                "Sizes that change on every call are planned again each time: keep them fixed (pad or bucket them), or raise options['max_recompiles']"
            )
        placed = self._place(args)
        self.plans[key] = placed
        self._record_weights(args)
        return placed

    def _place(self, args: Sequence[Any]) -> _Placed:
        module = _rebuild(self.gm, self.roles, args)
        buffers = [(args[i], args[i].detach().clone()) for i in self.roles.weights if not isinstance(args[i], torch.nn.Parameter)]
        try:
            graph = graph_of(module, [args[i] for i in self.roles.activations])
        finally:
            with torch.no_grad():
                for live, saved in buffers:  # a step the shape pass could not see writing (batch_norm's running stats)
                    if not torch.equal(live, saved):
                        live.copy_(saved)
        uses: dict[str, int] = {}
        for n in module.graph.nodes:
            if n.op == "call_module":
                uses[n.target] = uses.get(n.target, 0) + 1
        names = {n: _capture_name(n, uses) for n in module.graph.nodes if n.op != "output"}
        pins = self._node_pins(module, names, graph)
        plan = Plan(module, graph, self.devices, self.options.policy, pins)
        self._check_host(plan, pins)
        by_name = {n.name: n for n in graph.nodes}
        on_device = {}
        for i, node in enumerate(graph.nodes):
            device = plan.placement.locations[plan.placement.assignment[i]]
            if device is not None and not trains(device):
                on_device[node.name] = (node, device)
        weight_nodes: dict[int, list[str]] = {}
        storages = {i: args[i].untyped_storage().data_ptr() for i in self.roles.weights}
        for node in by_name.values():
            for p in node.params.values():
                for i, storage in storages.items():
                    if p.untyped_storage().data_ptr() == storage:
                        weight_nodes.setdefault(i, []).append(node.name)
        return _Placed(module, plan, names, on_device, weight_nodes)

    def _node_pins(self, module: fx.GraphModule, names: Mapping[fx.Node, str], graph: Graph) -> dict[str, str]:
        """Pins by module path (this graph's nodes traced inside that module) or by node name, as node pins."""
        calls = [n for n in module.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
        ops = {n.name: n.op for n in graph.nodes}
        paths = {n: module_path(n) or "" for n in calls}
        here = {prefix for p in paths.values() if p for prefix in _prefixes(p)}
        node_pins: dict[str, str] = {}
        for key, uri in sorted(self.options.pins, key=lambda item: len(item[0])):
            by_name = [names[n] for n in calls if names[n] == key]
            matched = by_name or [names[n] for n in calls if paths[n] == key or paths[n].startswith(key + ".")]
            if not matched:
                if key in self.known_modules or key in here:
                    continue  # a module of the model that this graph does not call: it applies to another graph
                candidates = sorted(self.known_modules | here | {names[n] for n in calls})
                close = difflib.get_close_matches(key, candidates, n=3)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise InvalidInput(
                    f"options['pins'] names {key!r}, which is no module of the model and no node of this graph{hint} "
                    f"Pin module paths as model.named_modules() names them (modules: {', '.join(sorted(self.known_modules | here)[:20]) or 'none'})"
                )
            for name in matched:
                target = graph.aliases.get(name, name)
                if target in ops and (ops[target] is not None or by_name):  # host steps inside a pinned module stay on the host
                    node_pins[target] = str(uri)
        return node_pins

    def _check_host(self, plan: Plan, pins: Mapping[str, str]) -> None:
        """Without a CPU among the selected devices, a vocabulary op no selected device runs is an error, not a fallback."""
        if self.host_allowed:
            return
        ops = {n.name: n for n in plan.graph.nodes}
        stuck = [(name, why) for name, why in plan.placement.fallback_reasons.items() if ops[name].op is not None and pins.get(name) != HOST]
        if stuck:
            name, why = stuck[0]
            why = why.removesuffix("; it runs on the CPU reference")
            more = f" (and {len(stuck) - 1} more: {', '.join(n for n, _ in stuck[1:6])})" if len(stuck) > 1 else ""
            raise UnsupportedOp(
                f"no selected device can run node {name!r} ({ops[name].label}, {ops[name].source}){more}: {why}. "
                f"Selected devices: {', '.join(str(d) for d in self.devices)}. Add 'cpu:0' to options['devices'] to run such ops on the CPU"
            )


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


# --------------------------------------------------------------------------- explain


@dataclass
class Explanation:
    """What ``torch.compile(model, backend="hal", options=...)`` makes of a model: one ``Compiled`` per Dynamo graph."""

    graphs: list[Compiled]

    def __str__(self) -> str:
        parts = [f"{len(self.graphs)} graph(s) captured (a graph break starts a new one)"]
        parts += [f"graph {i} {c.describe()}" for i, c in enumerate(self.graphs)]
        return "\n\n".join(parts)


def explain(model: torch.nn.Module | Plan, *inputs: Any, options: Mapping[str, Any] | None = None) -> Explanation | Plan:
    """Compile ``model`` as ``backend="hal"`` with ``options`` would, run it once on ``inputs`` (no gradients), and
    return every captured graph with its route and, where hal placed it, its plans: stages, devices, costs,
    conversions and claims. A compiled model (``torch.compile``'s wrapper) is explained through its original module.

    It compiles a copy of the work of its own: the caller's compiled model and Dynamo's caches are left alone.
    A ``hal.runtime.Plan`` explains itself: ``hal.explain(plan)`` returns it, and printing it shows its stages,
    costs, conversions, claims and (once it has run) how each claimed stage ran, e.g. replayed as a CUDA graph or
    not and why.
    """
    if isinstance(model, Plan):
        if inputs or options:
            raise InvalidInput("hal.explain(plan) takes the plan alone: it was traced and placed already (inputs and options belong to hal.runtime.plan)")
        return model
    target = getattr(model, "_orig_mod", model)
    if not isinstance(target, torch.nn.Module) and not callable(target):
        raise InvalidInput(f"hal.explain takes a torch.nn.Module or a callable, got {type(model).__name__}")
    graphs: list[Compiled] = []

    def recording(gm: fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> Callable[..., Any]:
        result = compile_graph(gm, example_inputs, options=options)
        graphs.append(result)
        return result.fn

    with torch.no_grad():
        torch.compile(target, backend=recording)(*inputs)
    return Explanation(graphs)
