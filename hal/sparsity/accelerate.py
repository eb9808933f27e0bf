"""``accelerate(model, example_inputs)``: per 2:4 layer, time dense against sparse at the layer's real input shape
on this device, keep the faster, and say so in a plan.

For each Linear pruned to 2:4 (by prune_2_4, or holding a 2:4 weight already): the input it sees in one forward of
``example_inputs`` is captured; the dense product (``F.linear`` with the masked weight materialised) and each sparse
backend's product are timed on that input; a sparse layer whose output differs from the dense one by more than
``SPARSE_RTOL`` is refused (a wrong number is worse than a slow one); the layer goes sparse only if its best sparse
time beats dense by more than ``min_speedup``. Layers that go sparse are replaced in place by the compressed layer
(inference: it does not train). Where no sparse kernel runs (the CPU), each layer's row says why and it stays dense.

``timer(layer_name, variant, fn) -> milliseconds`` is injectable (variant: "dense" or "sparse:<backend>"); the default
is ``cuda_timer`` (triton.testing.do_bench) for a model on a CUDA GPU, ``cpu_timer`` elsewhere.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from hal.errors import InvalidInput, UnsupportedOp
from hal.sparsity.kernels import BACKENDS, semi_structured_linear
from hal.sparsity.pattern import GROUP, is_2_4
from hal.sparsity.prune import mask_of

#: Relative Frobenius difference allowed between a sparse kernel's output and the dense product of the same 2:4
#: weight: both round to bf16/fp16 (unit roundoff 2^-8 for bf16) and sum in different orders; 1e-2 is about 2.5 ulps.
SPARSE_RTOL = 1e-2
CPU_REPEATS = 5

Timer = Callable[[str, str, Callable[[], torch.Tensor]], float]
SparseFactory = Callable[[nn.Linear, torch.Tensor, str], nn.Module]


def cuda_timer(layer_name: str, variant: str, fn: Callable[[], torch.Tensor]) -> float:
    """Milliseconds per call of ``fn`` on a CUDA GPU: triton.testing.do_bench's median (L2 flushed between calls)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def cpu_timer(layer_name: str, variant: str, fn: Callable[[], torch.Tensor]) -> float:
    """Milliseconds per call of ``fn`` on the host: the median of CPU_REPEATS wall-clock calls after one warm-up."""
    fn()
    samples = []
    for _ in range(CPU_REPEATS):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


@dataclass(frozen=True)
class LayerPlan:
    """One layer's measurement and decision ("sparse:<backend>" or "dense") with the reason."""

    name: str
    tokens: int
    in_features: int
    out_features: int
    dense_ms: float | None
    sparse_ms: float | None
    backend: str | None
    decision: str
    reason: str

    @property
    def speedup(self) -> float | None:
        """dense_ms / sparse_ms (None when either was not measured)."""
        if self.dense_ms is None or self.sparse_ms is None or self.sparse_ms <= 0:
            return None
        return self.dense_ms / self.sparse_ms


@dataclass
class SparsityPlan:
    """Per-layer dense vs 2:4 timings on one device, and what was kept."""

    device: str
    min_speedup: float
    layers: list[LayerPlan] = field(default_factory=list)

    @property
    def sparse_layers(self) -> list[str]:
        return [p.name for p in self.layers if p.decision.startswith("sparse")]

    def to_dict(self) -> dict:
        return {"device": self.device, "min_speedup": self.min_speedup,
                "layers": [dict(asdict(p), speedup=p.speedup) for p in self.layers]}

    def __str__(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        width = max([len(p.name) for p in self.layers] + [5])
        head = (f"2:4 plan on {self.device}: {len(self.sparse_layers)} of {len(self.layers)} layers sparse "
                f"(kept sparse only when faster than dense by more than {self.min_speedup:g}x)")
        rows = [head, f"{'layer':<{width}}  {'shape (tokens x in -> out)':<28} {'dense ms':>10} {'sparse ms':>10} "
                      f"{'speedup':>8}  decision"]
        for p in self.layers:
            shape = f"{p.tokens} x {p.in_features} -> {p.out_features}"
            speed = "-" if p.speedup is None else f"{p.speedup:.2f}x"
            rows.append(f"{p.name:<{width}}  {shape:<28} {ms(p.dense_ms):>10} {ms(p.sparse_ms):>10} {speed:>8}  "
                        f"{p.decision} ({p.reason})")
        return "\n".join(rows)


def decide(dense_ms: float, sparse: dict[str, float], min_speedup: float = 1.0) -> tuple[str, str | None, str]:
    """(decision, backend, reason) from measured times: the fastest sparse backend if it beats dense by more than
    ``min_speedup``, else dense."""
    if not sparse:
        return "dense", None, "no sparse kernel ran"
    backend = min(sparse, key=sparse.get)
    speedup = dense_ms / sparse[backend] if sparse[backend] > 0 else math.inf
    if speedup > min_speedup:
        return f"sparse:{backend}", backend, f"{backend} {speedup:.2f}x faster"
    return "dense", backend, f"best sparse ({backend}) {speedup:.2f}x, not above {min_speedup:g}x"


def _join_reasons(reasons: list[tuple[str, str]]) -> str:
    """"a, b: why" for backends refused for one reason, joined by "; " across reasons."""
    by_reason: dict[str, list[str]] = {}
    for backend, why in reasons:
        by_reason.setdefault(why, []).append(backend)
    return "; ".join(f"{', '.join(backends)}: {why}" for why, backends in by_reason.items())


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _candidates(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    found = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.in_features % GROUP == 0 and (mask_of(m) is not None or is_2_4(m.weight)):
            found.append((name, m))
    return found


def _capture_inputs(model: nn.Module, layers: list[tuple[str, nn.Linear]],
                    example_inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in layers:
        def hook(module, args, name=name):
            seen.setdefault(name, args[0].detach())
        hooks.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def accelerate(model: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor, *,
               timer: Timer | None = None, sparse_linear: SparseFactory | None = None,
               backends: Sequence[str] = BACKENDS, min_speedup: float = 1.0) -> SparsityPlan:
    """Measure dense vs 2:4 per pruned Linear of ``model`` at its real input shape, swap in the faster, return the
    plan (``print(plan)`` for the table). ``sparse_linear(layer, weight, backend)`` builds a sparse layer or raises
    UnsupportedOp with the reason (default: hal.sparsity.kernels.semi_structured_linear)."""
    if not (isinstance(min_speedup, (int, float)) and min_speedup >= 1.0):
        raise InvalidInput(f"min_speedup must be a number >= 1 (1: sparse only when faster), got {min_speedup!r}")
    for b in backends:
        if b not in BACKENDS:
            raise InvalidInput(f"unknown 2:4 backend {b!r}; choose from {BACKENDS}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    factory = sparse_linear or semi_structured_linear
    layers = _candidates(model)
    first = next(model.parameters(), None)
    plan = SparsityPlan(str(first.device) if first is not None else "cpu", float(min_speedup))
    captured = _capture_inputs(model, layers, inputs)
    replacements: dict[str, nn.Module] = {}
    for name, layer in layers:
        if name not in captured:
            plan.layers.append(LayerPlan(name, 0, layer.in_features, layer.out_features, None, None, None, "dense",
                                         "not reached by example_inputs"))
            continue
        x = captured[name]
        tokens = x.numel() // x.shape[-1]
        time_ms = timer or (cuda_timer if x.is_cuda else cpu_timer)
        with torch.no_grad():
            weight = layer.weight.detach().contiguous()
            bias = layer.bias.detach() if layer.bias is not None else None
            dense_out = F.linear(x, weight, bias)
            dense_ms = time_ms(name, "dense", lambda: F.linear(x, weight, bias))
            sparse_ms: dict[str, float] = {}
            built: dict[str, nn.Module] = {}
            reasons = []
            for backend in backends:
                try:
                    candidate = factory(layer, weight, backend)
                except UnsupportedOp as exc:
                    reasons.append((backend, str(exc)))
                    continue
                try:
                    diff = _relative_difference(candidate(x), dense_out)
                except RuntimeError as exc:  # a kernel that refuses this shape or device at run time
                    reasons.append((backend, f"{type(exc).__name__}: {exc}"))
                    continue
                if diff > SPARSE_RTOL:
                    reasons.append((backend, f"output differs from dense by {diff:.2e} > {SPARSE_RTOL:g}"))
                    continue
                built[backend] = candidate
                sparse_ms[backend] = time_ms(name, f"sparse:{backend}", lambda c=candidate: c(x))
        decision, backend, reason = decide(dense_ms, sparse_ms, min_speedup)
        if not sparse_ms and reasons:
            reason = _join_reasons(reasons)
        if decision.startswith("sparse"):
            replacements[name] = built[backend]
        plan.layers.append(LayerPlan(name, tokens, layer.in_features, layer.out_features, dense_ms,
                                     sparse_ms.get(backend) if backend else None, backend, decision, reason))
    for name, new in replacements.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return plan
