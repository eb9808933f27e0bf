"""FP8 training recipes: how each operand of a Linear's three matmuls is scaled, as data.

A Linear ``y = x @ w.T`` runs three products in training (x: (M, K) activations, w: (N, K), g = dL/dy: (M, N)):

    forward      y  = x @ w.T      reduction over K: x scaled along K (per row), w along K (per row)
    grad input   dx = g @ w        reduction over N: g along N (per row),        w along N (per column)
    grad weight  dw = g.T @ x      reduction over M: g along M (per column),     x along M (per column)

"Scaled along" is the axis a scale is shared over; it must be the reduction axis so the scale factors out of each
dot product. Tensorwise recipes use one scale per tensor, so one cast of each tensor serves all its products.

- ``tensorwise``: dynamic per-tensor scales from each tensor's own amax (torchao's default recipe); forward
  operands in E4M3, gradients in E5M2 (two more exponent bits for their wider range).
- ``rowwise``: dynamic scales per row/column along each product's reduction axis, as in the table; every operand,
  gradients included, in E4M3, and scales rounded down to powers of two (torchao's ``ROWWISE`` recipe: finer scales
  need less range, and power-of-two scales multiply exactly).
- ``delayed``: per-tensor scales from the max of an amax history of the last ``history_len`` steps (the first step
  of a fresh module scales from the current amax too); values above the history's range saturate and are counted.
  E4M3 forward, E5M2 gradients, as in the Transformer Engine's delayed-scaling recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hal.errors import InvalidInput
from hal.precision.formats import E4M3, E5M2, FloatFormat

GRANULARITIES = ("tensorwise", "rowwise")
SCALINGS = ("dynamic", "delayed")


@dataclass(frozen=True)
class Fp8Recipe:
    """How an FP8 Linear scales its operands. ``forward_format`` is used for x and w, ``grad_format`` for g."""

    name: str
    granularity: str = "tensorwise"
    scaling: str = "dynamic"
    forward_format: FloatFormat = E4M3
    grad_format: FloatFormat = E5M2
    power_of_2: bool = False
    history_len: int = 16
    fast_accum_forward: bool = True

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise InvalidInput(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.scaling not in SCALINGS:
            raise InvalidInput(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.scaling == "delayed" and self.granularity != "tensorwise":
            raise InvalidInput("delayed scaling keeps one amax history per tensor: use granularity='tensorwise'")
        if not isinstance(self.history_len, int) or self.history_len < 1:
            raise InvalidInput(f"history_len must be a positive integer, got {self.history_len!r}")
        for fmt in (self.forward_format, self.grad_format):
            if fmt.dtype is None or fmt.name not in ("e4m3", "e5m2"):
                raise InvalidInput(f"FP8 recipes use e4m3 or e5m2, got {fmt.name}")
        if self.forward_format.name != "e4m3":
            raise InvalidInput("the forward operands are E4M3 (the FP8 tensor cores take E5M2 x E5M2 in no product)")

    @property
    def rowwise(self) -> bool:
        return self.granularity == "rowwise"

    @property
    def delayed(self) -> bool:
        return self.scaling == "delayed"


TENSORWISE = Fp8Recipe("tensorwise")
ROWWISE = Fp8Recipe("rowwise", granularity="rowwise", grad_format=E4M3, power_of_2=True)
DELAYED = Fp8Recipe("delayed", scaling="delayed")
RECIPES = {r.name: r for r in (TENSORWISE, ROWWISE, DELAYED)}


def resolve_recipe(recipe: str | Fp8Recipe, history_len: int | None = None) -> Fp8Recipe:
    """The recipe called ``recipe`` (or ``recipe`` itself), with ``history_len`` replaced when given."""
    if isinstance(recipe, Fp8Recipe):
        chosen = recipe
    elif recipe in RECIPES:
        chosen = RECIPES[recipe]
    else:
        raise InvalidInput(f"unknown FP8 recipe {recipe!r}; choose one of {sorted(RECIPES)} or pass an Fp8Recipe")
    if history_len is not None:
        if not chosen.delayed:
            raise InvalidInput(f"history_len applies to delayed scaling only; recipe {chosen.name!r} is dynamic")
        chosen = dataclasses.replace(chosen, history_len=history_len)
    return chosen
