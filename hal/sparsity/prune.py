"""Pruning Linear layers to 2:4 and keeping the zeros through fine-tuning.

``prune_2_4`` zeroes all but the two largest-magnitude weights of every group of four along the input dimension
and registers a parametrization (``TwoFourMask``) on the layer's weight: ``layer.weight`` is then always
``original * mask``, so no optimizer, weight decay or momentum can bring a pruned weight back, and the gradient
of a pruned weight is zero. The mask is a buffer of the parametrization (saved in the state dict). The original
Parameter object is kept (torch.nn.utils.parametrize moves it to ``parametrizations.weight.original``), so an
optimizer built before pruning keeps updating it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from hal.errors import InvalidInput
from hal.sparsity.pattern import GROUP, magnitude_mask

METHODS = ("magnitude",)


class TwoFourMask(nn.Module):
    """Parametrization ``weight -> weight * mask`` with a fixed 2:4 mask."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def mask_of(layer: nn.Module) -> torch.Tensor | None:
    """The 2:4 mask registered on ``layer.weight`` by prune_2_4 (None if there is none)."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    for p in layer.parametrizations.weight:
        if isinstance(p, TwoFourMask):
            return p.mask
    return None


@dataclass(frozen=True)
class PrunedLayer:
    """One Linear's outcome: "pruned" (with the kept fraction) or "kept" dense, and why."""

    name: str
    in_features: int
    out_features: int
    action: str
    reason: str
    density: float


@dataclass
class PruneReport:
    layers: list[PrunedLayer] = field(default_factory=list)

    @property
    def pruned(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.action == "pruned"]

    def __str__(self) -> str:
        rows = [f"2:4 pruning: {len(self.pruned)} of {len(self.layers)} Linear layers pruned"]
        for layer in self.layers:
            rows.append(f"  {layer.name:<32} {layer.in_features:>6}x{layer.out_features:<6} {layer.action:<6} "
                        f"density {layer.density:.3f}  {layer.reason}")
        return "\n".join(rows)


def _skipped(name: str, module: nn.Module, skip) -> bool:
    if callable(skip):
        return bool(skip(name, module))
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)


def prune_2_4(model: nn.Module, method: str = "magnitude",
              skip: Iterable[str] | Callable[[str, nn.Module], bool] = ()) -> PruneReport:
    """Prune every nn.Linear of ``model`` to 2:4 along its input dimension, in place; returns what was done.

    Layers whose in_features is not a multiple of 4, skipped ones (fnmatch patterns or a predicate) and ones already
    pruned are kept as they are and reported.
    """
    if method not in METHODS:
        raise InvalidInput(f"unknown pruning method {method!r}; choose one of {METHODS}")
    report = PruneReport()
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, nn.Linear):
            continue
        dims = (layer.in_features, layer.out_features)
        density = float((layer.weight != 0).float().mean())
        if _skipped(name, layer, skip):
            report.layers.append(PrunedLayer(name, *dims, "kept", "skipped by the skip argument", density))
        elif mask_of(layer) is not None:
            report.layers.append(PrunedLayer(name, *dims, "kept", "already pruned to 2:4", density))
        elif layer.in_features % GROUP:
            report.layers.append(PrunedLayer(name, *dims, "kept", f"in_features {layer.in_features} is not a "
                                                                  f"multiple of {GROUP}", density))
        else:
            mask = magnitude_mask(layer.weight)
            with torch.no_grad():
                layer.weight.mul_(mask.to(layer.weight.dtype))
            parametrize.register_parametrization(layer, "weight", TwoFourMask(mask))
            report.layers.append(PrunedLayer(name, *dims, "pruned", "magnitude 2:4",
                                             float((layer.weight != 0).float().mean())))
    return report


def remove_masks(model: nn.Module) -> list[str]:
    """Bake the masks into plain weights (the zeros stay; later training may fill them). Returns the layers."""
    baked = []
    for name, layer in model.named_modules():
        if mask_of(layer) is not None:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
            baked.append(name)
    return baked
