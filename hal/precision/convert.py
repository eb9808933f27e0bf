"""Turning a model's Linear layers into FP8 ones: ``fp8_training(model, ...)`` and ``fp8_autocast()``.

``fp8_training`` swaps every eligible ``nn.Linear`` for an ``Fp8Linear`` sharing its parameters (an optimizer built
before or after the swap updates the same tensors) and records, per layer, what it did and why in
``model.fp8_report``. A layer is eligible when both its dimensions are multiples of 16 and it is not skipped.
Layers that are not eligible raise a ShapeError naming all of them, unless ``fallback="bf16"``: then they run in
bfloat16 (``Bf16Linear``) and the report says so. On a CUDA GPU without FP8 tensor cores (compute capability below
8.9) the conversion raises UnsupportedOp, or with ``fallback="bf16"`` keeps every layer in bfloat16.

``fp8_autocast()`` is the context form for code that calls ``F.linear`` (every ``nn.Linear`` does): inside it,
eligible calls run through ``fp8_linear`` with a dynamic recipe; the rest run as they are and are counted in the
context's report. It patches nothing: a torch function mode, active inside the ``with`` block only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from hal.errors import InvalidInput, ShapeError, UnsupportedOp
from hal.precision.hardware import device_capability, fp8_unsupported_reason
from hal.precision.linear import DIM_MULTIPLE, Fp8Linear, fp8_linear
from hal.precision.recipes import Fp8Recipe, resolve_recipe

FALLBACKS = (None, "bf16")


class Bf16Linear(nn.Linear):
    """A Linear computed in bfloat16 whatever its parameters' dtype (the FP8 conversion's fallback); the output is
    returned in the input's dtype. Shares the parameters of the layer it replaces."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Bf16Linear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.to(torch.bfloat16) if self.bias is not None else None
        return F.linear(x.to(torch.bfloat16), self.weight.to(torch.bfloat16), bias).to(x.dtype)


@dataclass(frozen=True)
class LayerDecision:
    """What fp8_training did with one Linear: "fp8", "bf16" (fallback) or "kept" (skipped), and why."""

    name: str
    in_features: int
    out_features: int
    action: str
    reason: str


@dataclass
class Fp8Report:
    """Per-layer decisions of one fp8_training call."""

    recipe: str
    layers: list[LayerDecision] = field(default_factory=list)

    @property
    def fp8_layers(self) -> list[str]:
        return [d.name for d in self.layers if d.action == "fp8"]

    def __str__(self) -> str:
        rows = [f"FP8 training ({self.recipe}): {len(self.fp8_layers)} of {len(self.layers)} Linear layers in FP8"]
        width = max([len(d.name) for d in self.layers] + [5])
        rows.append(f"{'layer':<{width}}  {'shape':>13}  action  reason")
        for d in self.layers:
            rows.append(f"{d.name:<{width}}  {d.in_features:>6}x{d.out_features:<6}  {d.action:<6}  {d.reason}")
        return "\n".join(rows)


def _skipped(name: str, module: nn.Module, skip: Iterable[str] | Callable[[str, nn.Module], bool]) -> bool:
    if callable(skip):
        return bool(skip(name, module))
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)


def _gpu_reason(model: nn.Module) -> str | None:
    """Why the model's CUDA device cannot run FP8 (None if it can, or if the model is not on a GPU)."""
    for p in model.parameters():
        if p.device.type == "cuda":
            index = p.device.index if p.device.index is not None else torch.cuda.current_device()
            reason = fp8_unsupported_reason(device_capability(index))
            if reason:
                return f"{reason} (cuda:{index})"
    return None


def fp8_training(model: nn.Module, recipe: str | Fp8Recipe = "tensorwise", *,
                 skip: Iterable[str] | Callable[[str, nn.Module], bool] = (), fallback: str | None = None,
                 backend: str = "auto", cache_weights: bool = True, history_len: int | None = None) -> nn.Module:
    """Swap ``model``'s nn.Linear layers for Fp8Linear in place and return the model (its ``fp8_report`` says
    what happened to each layer).

    ``skip``: module-name patterns (fnmatch, e.g. ``"lm_head"``, ``"*.gate"``) or a predicate ``(name, module)``.
    ``fallback``: None (refuse ineligible layers with a ShapeError, and GPUs without FP8 with UnsupportedOp) or
    "bf16" (run them in bfloat16, reported). ``history_len``: the delayed recipe's amax history length.
    """
    if fallback not in FALLBACKS:
        raise InvalidInput(f"fallback must be None or 'bf16', got {fallback!r}")
    chosen = resolve_recipe(recipe, history_len)
    report = Fp8Report(chosen.name)
    gpu_reason = _gpu_reason(model)
    if gpu_reason and fallback is None:
        raise UnsupportedOp(f"{gpu_reason}. Use fallback='bf16' to train in bfloat16 instead.")
    linears = [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear]
    refused = []
    replacements: dict[str, nn.Module] = {}
    for name, linear in linears:
        dims = (linear.in_features, linear.out_features)
        if _skipped(name, linear, skip):
            report.layers.append(LayerDecision(name, *dims, "kept", "skipped by the skip argument"))
            continue
        if gpu_reason:
            replacements[name] = Bf16Linear.from_linear(linear)
            report.layers.append(LayerDecision(name, *dims, "bf16", gpu_reason))
            continue
        if any(d % DIM_MULTIPLE for d in dims):
            why = f"{dims[0]}x{dims[1]} is not a multiple of {DIM_MULTIPLE} in both dimensions"
            if fallback is None:
                refused.append(f"{name or '<root>'} ({why})")
                continue
            replacements[name] = Bf16Linear.from_linear(linear)
            report.layers.append(LayerDecision(name, *dims, "bf16", why))
            continue
        replacements[name] = Fp8Linear.from_linear(linear, chosen, backend, cache_weights)
        report.layers.append(LayerDecision(name, *dims, "fp8", f"recipe {chosen.name}"))
    if refused:
        raise ShapeError(f"these Linear layers cannot run in FP8: {'; '.join(refused)}. Skip them (skip=[...]), pad "
                         "them to multiples of 16, or pass fallback='bf16' to run them in bfloat16")
    for name, new in replacements.items():
        if name == "":
            model = new
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    model.fp8_report = report
    return model


@dataclass
class AutocastReport:
    """Counts of F.linear calls inside one fp8_autocast block: run in FP8, and run as they were (with why)."""

    fp8_calls: int = 0
    fallback_calls: dict[str, int] = field(default_factory=dict)

    def note_fallback(self, reason: str) -> None:
        self.fallback_calls[reason] = self.fallback_calls.get(reason, 0) + 1


class fp8_autocast(TorchFunctionMode):
    """``with fp8_autocast(recipe="tensorwise") as report:`` runs eligible F.linear calls in FP8.

    Eligible: a 2-D weight with both dimensions multiples of 16 and float16/bfloat16/float32 activations; other
    calls run unchanged and are counted in ``report.fallback_calls`` by reason. Dynamic recipes only (delayed
    scaling needs per-layer buffers: use fp8_training). Weights are cast on every call (no module to cache in).
    """

    def __init__(self, recipe: str | Fp8Recipe = "tensorwise", backend: str = "auto"):
        super().__init__()
        self.recipe = resolve_recipe(recipe)
        if self.recipe.delayed:
            raise InvalidInput("fp8_autocast runs dynamic recipes only ('tensorwise', 'rowwise'); delayed scaling "
                               "keeps histories in module buffers: use fp8_training(model, recipe='delayed')")
        self.backend = backend
        self.report = AutocastReport()

    def __enter__(self) -> AutocastReport:
        super().__enter__()
        return self.report

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.linear:
            return func(*args, **kwargs)
        x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        reason = self._ineligible(x, weight)
        if reason:
            self.report.note_fallback(reason)
            return func(*args, **kwargs)
        self.report.fp8_calls += 1
        return fp8_linear(x, weight, bias, self.recipe, self.backend)

    @staticmethod
    def _ineligible(x: torch.Tensor, weight: torch.Tensor) -> str | None:
        if weight.dim() != 2 or weight.shape[0] % DIM_MULTIPLE or weight.shape[1] % DIM_MULTIPLE:
            return f"weight {tuple(weight.shape)} not a multiple of {DIM_MULTIPLE} in both dimensions"
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"{x.dtype} activations"
        if x.device.type == "cuda":
            index = x.device.index if x.device.index is not None else torch.cuda.current_device()
            gpu = fp8_unsupported_reason(device_capability(index))
            if gpu:
                return gpu
        return None
