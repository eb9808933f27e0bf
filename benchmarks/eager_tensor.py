"""Does a ``__torch_dispatch__`` tensor subclass (``hal.tensor(x, device)``) earn its place? (issue 15)

A minimal prototype, ``HalTensor``, lives here and nowhere in ``hal/``: a wrapper subclass whose ``aten.mm``,
``aten.addmm`` and ``aten.relu`` (and ``relu_``) run as eager ops of one hal device; every other aten op unwraps,
runs through torch and wraps again. It is set beside what hal already has, on a small MLP on the CPU
(Linear 64-64-64-10 with ReLUs, batch 8, float32, inference under ``torch.no_grad()``):

* ``eager``: plain torch (and ``eager_again``, the same call timed twice: the A/A control);
* ``direct_matmul``: the very hal calls the subclass makes, written by hand (``d.matmul``, ``d.add``, ``d.relu``);
* ``direct_linear``: ``d.linear(x, w, b)`` and ``d.relu``, the eager ops that bind weights;
* ``subclass``: ``model(HalTensor(x))``, mm / addmm as ``d.matmul`` (+ ``d.add``), relu as ``d.relu``;
* ``subclass_bind``: the same, with addmm sent to ``d.linear`` when its weight operand is a transposed view of a
  leaf tensor (a guess: the only way the subclass has to tell a weight from an activation);
* ``convert``: ``hal.nn.convert(model, "cpu:0").eval()`` (device layers holding one Program each);
* ``compile_hal``: ``torch.compile(model, backend="hal")`` (CPU only: delegated to Inductor);
* ``compile_hal_placed``: the same with ``options={"devices": ["cpu:0"], "delegate": None}`` (placed by hal.runtime).

Timing: each round times ``CALLS`` forwards of every path in an order rotating every round; figures are medians over
rounds, with 95 % bootstrap intervals. Per-op dispatch overhead = median over rounds of (subclass - direct_matmul)
/ aten ops the subclass intercepted per forward: both make the same hal calls, so the difference is the dispatch.

Then what the subclass cannot do, measured rather than argued: which operand is a weight (Programs prepared over
ten forwards on a fresh device, and the crossbar energy a ``memristor:0`` estimates for matmul-as-routed against
a resident linear), autograd (what its backward sends to the device; the gradient a memristor gives back) and
in-place ops (``ReLU(inplace=True)`` and a view that must see the write).

    python -m benchmarks.eager_tensor

Writes ``benchmarks/results/eager_tensor.json`` (environment, raw numbers, summary with the decision).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

import hal
import hal.nn
from benchmarks.common import environment, write_result
from benchmarks.dispatch_overhead import bootstrap_interval
from hal.device import Device

WIDTHS = (64, 64, 64, 10)
BATCH = 8
#: Forwards per timed batch and rounds (engineering choice: about 5 ms a batch, a minute for the whole run).
CALLS = 100
ROUNDS = 80
#: One intra-op thread, as benchmarks/compile_backend.py: a shared 2-core machine stalls parallel regions.
CPU_THREADS = 1
aten = torch.ops.aten


# --------------------------------------------------------------------------- the prototype


class Router:
    """Where a HalTensor's ops go: one hal device, whether to guess weights, and counts of what was routed.

    ``counts`` holds one entry per aten op the subclass intercepted; ``on_host`` the hal ops the device lacks
    (a crossbar runs no add nor relu) that ran through torch instead.
    """

    def __init__(self, device: Device, bind_weights: bool = False):
        self.device = device
        self.bind_weights = bind_weights
        self.counts: Counter[str] = Counter()
        self.on_host: Counter[str] = Counter()
        self.ops = set(device.capabilities.ops)

    def elementwise(self, name: str, *args: torch.Tensor) -> torch.Tensor:
        """add / relu on the device when it runs them, else through torch on the host."""
        if name in self.ops:
            return getattr(self.device, name)(*args)
        self.on_host[name] += 1
        return getattr(torch, name)(*args)

    def addmm(self, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        base = b._base
        if self.bind_weights and base is not None and base.dim() == 2 and b.shape == base.t().shape and b.stride() == base.t().stride():
            self.counts["addmm as linear (guessed weight)"] += 1
            return self.device.linear(a, base, bias)
        self.counts["addmm as matmul + add"] += 1
        return self.elementwise("add", self.device.matmul(a, b), bias)

    def run(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run one aten op: a routed one on the device, anything else through torch (counted as a fallback)."""
        d = self.device
        if func is aten.mm.default:
            self.counts["mm"] += 1
            return d.matmul(*args)
        if func is aten.addmm.default and not kwargs:
            return self.addmm(*args)
        if func is aten.relu.default:
            self.counts["relu"] += 1
            return self.elementwise("relu", *args)
        if func is aten.relu_.default:
            self.counts["relu_ (out of place + copy_)"] += 1
            return args[0].copy_(self.elementwise("relu", args[0]))
        self.counts[f"fallback {func}"] += 1
        return func(*args, **kwargs)


class HalTensor(torch.Tensor):
    """Prototype only: a tensor whose mm / addmm / relu run on ``router.device``; other ops run through torch."""

    inner: torch.Tensor
    router: Router

    @staticmethod
    def __new__(cls, inner: torch.Tensor, router: Router) -> HalTensor:
        out = torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(), dtype=inner.dtype, device=inner.device, requires_grad=inner.requires_grad)
        out.inner, out.router = inner, router
        return out

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # flat operands (every routed op) are unwrapped by hand: torch's pytree costs more than the op itself here
        if not kwargs and not any(isinstance(a, (list, tuple)) for a in args):
            router = next(a.router for a in args if isinstance(a, HalTensor))
            out = router.run(func, tuple(a.inner if isinstance(a, HalTensor) else a for a in args), {})
        else:
            router = next(a.router for a in tree_leaves((args, kwargs)) if isinstance(a, HalTensor))
            out = router.run(func, *tree_map(lambda t: t.inner if isinstance(t, HalTensor) else t, (args, kwargs or {})))
        if isinstance(out, torch.Tensor):
            return HalTensor(out, router)
        return tree_map(lambda t: HalTensor(t, router) if isinstance(t, torch.Tensor) else t, out)


# --------------------------------------------------------------------------- the paths


def mlp(inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(WIDTHS) - 2:
            layers.append(nn.ReLU(inplace=inplace))
    return nn.Sequential(*layers).eval()


def linears(model: nn.Sequential) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


def direct_matmul(d: Device, model: nn.Sequential) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MLP as the hal calls the subclass makes: x @ W^T + b, relu."""
    layers = [(m.weight.detach().t(), m.bias.detach()) for m in linears(model)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for i, (wt, b) in enumerate(layers):
            x = d.add(d.matmul(x, wt), b)
            if i < len(layers) - 1:
                x = d.relu(x)
        return x

    return forward


def direct_linear(d: Device, model: nn.Sequential) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MLP as weight-binding eager ops: d.linear(x, W, b), relu."""
    layers = [(m.weight.detach(), m.bias.detach()) for m in linears(model)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(layers):
            x = d.linear(x, w, b)
            if i < len(layers) - 1:
                x = d.relu(x)
        return x

    return forward


def through_subclass(model: nn.Module, router: Router) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: model(HalTensor(x, router)).inner


def paths(d: Device, model: nn.Sequential) -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], dict[str, Router], dict[str, float]]:
    """Every path (name -> forward), the subclass routers, and the compile time of the compiled ones (s)."""
    routers = {"subclass": Router(d), "subclass_bind": Router(d, bind_weights=True)}
    converted = hal.nn.convert(model, d).eval()
    compiled: dict[str, Any] = {}
    compile_s: dict[str, float] = {}
    x = torch.randn(BATCH, WIDTHS[0])
    for name, options in (("compile_hal", None), ("compile_hal_placed", {"devices": ["cpu:0"], "delegate": None})):
        fn = torch.compile(copy.deepcopy(model), backend="hal", options=options)
        start = time.perf_counter()
        fn(x)
        compile_s[name] = time.perf_counter() - start
        compiled[name] = fn
    forwards = {
        "eager": model,
        "direct_matmul": direct_matmul(d, model),
        "direct_linear": direct_linear(d, model),
        "subclass": through_subclass(model, routers["subclass"]),
        "subclass_bind": through_subclass(model, routers["subclass_bind"]),
        "convert": converted,
        **compiled,
        "eager_again": model,
    }
    return forwards, routers, compile_s


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(out.double() - ref) / torch.linalg.vector_norm(ref))


def time_paths(forwards: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor) -> dict[str, list[float]]:
    """Seconds per forward of every path, one figure per round, in an order rotating every round."""
    names = list(forwards)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(ROUNDS):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = forwards[name]
            start = time.perf_counter()
            for _ in range(CALLS):
                fn(x)
            times[name].append((time.perf_counter() - start) / CALLS)
    return times


# --------------------------------------------------------------------------- what it cannot do


def counting_device() -> tuple[Device, Counter[str]]:
    """A fresh cpu device of its own (not the registry's) whose prepares are counted by op name."""
    device = type(hal.device("cpu"))("cpu:0")
    counted: Counter[str] = Counter()
    prepare = device.prepare

    def counting_prepare(op, params=None):
        counted[op.name] += 1
        return prepare(op, params)

    device.prepare = counting_prepare  # this instance only: the benchmark's own device
    return device, counted


def weights_probe(model: nn.Sequential, x: torch.Tensor) -> dict[str, Any]:
    """Programs prepared over ten forwards, per path; and what the weight guess does with q @ k^T."""
    forwards = 10
    out: dict[str, Any] = {"forwards": forwards}
    builders = {
        "subclass (matmul route)": lambda d: through_subclass(model, Router(d)),
        "subclass_bind (weight guessed from a transposed leaf view)": lambda d: through_subclass(model, Router(d, bind_weights=True)),
        "direct_linear": lambda d: direct_linear(d, model),
    }
    for name, build in builders.items():
        device, counted = counting_device()
        fn = build(device)
        for _ in range(forwards):
            fn(x)
        out[name] = dict(counted)
    # device layers prepare through the registry's device: count the distinct Programs they hold over the forwards
    converted = hal.nn.convert(model, "cpu:0").eval()
    held = []
    for _ in range(forwards):
        converted(x)
        held.extend(layer.hal_program() for _, layer in converted.device_layers())
    out["convert"] = {"linear": len({id(program) for program in held})}  # the Programs are all alive in `held`
    # an activation times a transposed activation (attention scores): the guess takes k for a weight
    device, counted = counting_device()
    router = Router(device, bind_weights=True)
    for _ in range(forwards):
        q, k, bias = torch.randn(BATCH, 16), torch.randn(BATCH, 16), torch.zeros(BATCH)
        torch.addmm(HalTensor(bias, router), HalTensor(q, router), k.t())
    out["attention scores q @ k^T + b through subclass_bind"] = {"prepared": dict(counted), "routed": dict(router.counts)}
    out["memristor"] = memristor_energy(model, x)
    return out


def memristor_energy(model: nn.Sequential, x: torch.Tensor) -> dict[str, Any]:
    """memristor:0's own estimates per forward: each mm routed as matmul (b written at every call, as the driver
    documents) against linear with the weights resident."""
    try:
        d = hal.device("memristor:0")
        matmul_j = linear_j = 0.0
        h = x
        for m in linears(model):
            w = m.weight.detach()
            matmul_j += d.estimate(hal.OpSpec("matmul", [h, w.t()])).energy_j
            linear_j += d.estimate(hal.OpSpec("linear", [h], {"weight": w, "bias": m.bias.detach()})).energy_j
            h = torch.relu(m(h))
        return {"matmul_route_j_per_forward": matmul_j, "resident_linear_j_per_forward": linear_j, "ratio": matmul_j / linear_j, "source": "memristor:0 estimate(op).energy_j"}
    except hal.HalError as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}


def autograd_probe(x: torch.Tensor) -> dict[str, Any]:
    """A training step through the subclass: what its backward routes to the device, and the gradients it gives."""
    out: dict[str, Any] = {}
    model = mlp().train()
    loss = model(x).square().sum()
    loss.backward()
    reference = [p.grad.clone() for p in model.parameters()]
    for uri in ("cpu:0", "memristor:0"):
        try:
            device = hal.device(uri)
        except hal.HalError as exc:
            out[uri] = {"unavailable": str(exc)}
            continue
        model.zero_grad()
        router = Router(device)
        y = model(HalTensor(x, router))
        forward_error = relative_error(y.inner.detach(), model(x).detach().double())
        forward_counts, forward_host = Counter(router.counts), dict(router.on_host)
        router.counts.clear()
        y.square().sum().backward()
        grads = [p.grad for p in model.parameters()]
        out[uri] = {
            "forward_routed": dict(forward_counts),
            "forward_on_host_device_lacks_op": forward_host,
            "backward_routed": dict(router.counts),
            "forward_rel_error_vs_eager": forward_error,
            "grad_rel_error_vs_eager": max(relative_error(g, r.double()) for g, r in zip(grads, reference)),
        }
    converted = hal.nn.convert(mlp(), "memristor:0").eval()
    xr = x.clone().requires_grad_(True)
    try:
        converted(xr).square().sum().backward()
        out["convert memristor:0 eval backward"] = "no error"
    except hal.HalError as exc:
        out["convert memristor:0 eval backward"] = f"{type(exc).__name__}: {exc}"
    return out


def inplace_probe(x: torch.Tensor) -> dict[str, Any]:
    """ReLU(inplace=True) through the subclass, and a view of a HalTensor that must see an in-place write."""
    d = hal.device("cpu")
    model = mlp(inplace=True)
    router = Router(d)
    with torch.no_grad():
        got = through_subclass(model, router)(x.clone())
        want = model(x.clone())
    h = HalTensor(torch.randn(4, 6), router)
    view = h[1:3]
    view.relu_()
    return {
        "relu_inplace_mlp_max_abs_diff": float((got - want).abs().max()),
        "routed": dict(router.counts),
        "view_write_seen_by_base": bool((h.inner[1:3] >= 0).all()),
        "note": "hal's eager ops return new tensors: an in-place op runs out of place on the device, then copy_ on the host",
    }


# --------------------------------------------------------------------------- the run


def median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


def main() -> None:
    torch.set_num_threads(CPU_THREADS)
    d = hal.device("cpu")
    model = mlp()
    torch.manual_seed(1)
    x = torch.randn(BATCH, WIDTHS[0])
    reference = mlp().double()(x.double()).detach()
    with torch.no_grad():
        forwards, routers, compile_s = paths(d, model)
        correctness = {name: relative_error(fn(x), reference) for name, fn in forwards.items()}
        bitwise_equal_to_eager = {name: bool(torch.equal(fn(x), model(x))) for name, fn in forwards.items()}
        ops_per_forward = {}
        for name, router in routers.items():
            router.counts.clear()
            forwards[name](x)
            ops_per_forward[name] = dict(router.counts)
        times = time_paths(forwards, x)
    n_ops = sum(ops_per_forward["subclass"].values())
    per_op = [(s - m) / n_ops for s, m in zip(times["subclass"], times["direct_matmul"])]
    per_op_bind = [(s - m) / n_ops for s, m in zip(times["subclass_bind"], times["direct_linear"])]
    per_op_eager = [(s - e) / n_ops for s, e in zip(times["subclass"], times["eager"])]
    control = [(a - e) / n_ops for a, e in zip(times["eager_again"], times["eager"])]
    layers = len(linears(model))
    convert_per_layer = [(c - e) / layers for c, e in zip(times["convert"], times["eager"])]
    with torch.no_grad():
        weights = weights_probe(model, x)
    autograd = autograd_probe(x)
    inplace = inplace_probe(x)
    per_forward_us = {name: median_us(t) for name, t in times.items()}
    overhead_us = statistics.median(per_op) * 1e6
    memristor = weights["memristor"]
    ratio = f"{memristor['ratio']:.3g}x" if "ratio" in memristor else "(memristor:0 unavailable)"
    grad_error = autograd.get("memristor:0", {}).get("grad_rel_error_vs_eager")
    grad_text = f"{grad_error:.2g}" if grad_error is not None else "(memristor:0 unavailable)"
    summary = {
        "per_op_dispatch_overhead_us": overhead_us,
        "per_op_dispatch_overhead_us_95ci": [v * 1e6 for v in bootstrap_interval(per_op)],
        "per_op_dispatch_overhead_bind_us": statistics.median(per_op_bind) * 1e6,
        "per_op_dispatch_overhead_bind_us_95ci": [v * 1e6 for v in bootstrap_interval(per_op_bind)],
        "per_op_overhead_vs_torch_eager_us": statistics.median(per_op_eager) * 1e6,
        "control_aa_per_op_us_95ci": [v * 1e6 for v in bootstrap_interval(control)],
        "aten_ops_intercepted_per_forward": n_ops,
        "convert_overhead_vs_eager_us_per_layer": statistics.median(convert_per_layer) * 1e6,
        "per_forward_us": per_forward_us,
        "max_rel_error_vs_float64": max(correctness.values()),
        "all_bitwise_equal_to_eager": all(bitwise_equal_to_eager.values()),
        "decision": "not built: hal.tensor(x, device) stays out of hal/",
        "reasons": [
            f"speed: its dispatch adds {overhead_us:.0f} us per intercepted aten op to the very hal calls written by hand "
            f"({per_forward_us['subclass']:.0f} vs {per_forward_us['direct_matmul']:.0f} us per forward; hal.nn.convert "
            f"{per_forward_us['convert']:.0f} us, torch eager {per_forward_us['eager']:.0f} us)",
            f"weights: it sees each mm with no notion of which operand is a weight. Routed as matmul, a crossbar writes the weight "
            f"at every call: memristor:0's own estimates give {ratio} the energy of resident weights per forward. Guessing from a "
            "transposed leaf view binds nn.Linear weights, but takes the activation k of q @ k^T for a weight too and prepares a "
            f"Program at every call ({weights['attention scores q @ k^T + b through subclass_bind']['prepared'].get('linear', 0)} "
            f"in {weights['forwards']} calls)",
            "autograd: it sits below autograd, so the backward's mm reach the device like forward ops; a device that does not "
            f"train gives its gradient with its error and no warning (memristor:0: {grad_text} relative error), where "
            "hal.nn.convert in eval() raises UnsupportedOp",
            "in-place ops run out of place on the device plus a host copy_; claims, linear+relu fusion and placement across "
            "devices need a graph, which torch.compile(backend='hal') and hal.runtime.plan already have; one op on one device "
            "is d.matmul / d.linear, without the dispatch",
        ],
    }
    document = {
        "environment": {**environment("cpu:0"), "load_average_1_5_15": list(os.getloadavg())},
        "config": {"widths": list(WIDTHS), "batch": BATCH, "dtype": "float32", "calls_per_round": CALLS, "rounds": ROUNDS, "torch_threads": CPU_THREADS},
        "compile_s": compile_s,
        "ops_per_forward": ops_per_forward,
        "correctness_rel_error_vs_float64": correctness,
        "bitwise_equal_to_eager": bitwise_equal_to_eager,
        "round_us_per_forward": {name: [t * 1e6 for t in values] for name, values in times.items()},
        "weights": weights,
        "autograd": autograd,
        "inplace": inplace,
        "summary": summary,
    }
    path = write_result("eager_tensor", document)
    for name, us in per_forward_us.items():
        print(f"{name:>20}: {us:9.1f} us/forward  rel error {correctness[name]:.2e}")
    print(f"per-op dispatch overhead {summary['per_op_dispatch_overhead_us']:.1f} us {summary['per_op_dispatch_overhead_us_95ci']}; wrote {path}")


if __name__ == "__main__":
    main()
