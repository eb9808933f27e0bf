"""The 2:4 pattern: in every group of four consecutive weights along the input dimension, at most two are non-zero.

That is the layout NVIDIA's sparse tensor cores (Ampere and later) read: the compressed weight keeps the two values
and 2-bit indices per group, halving the weight's multiply work along the reduction dimension.
"""

from __future__ import annotations

import torch

from hal.errors import InvalidInput, ShapeError

GROUP = 4
KEEP = 2


def _groups(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() != 2:
        raise ShapeError(f"2:4 sparsity applies to 2-D (out_features, in_features) weights, got {tuple(weight.shape)}")
    if weight.shape[1] % GROUP:
        raise ShapeError(f"2:4 sparsity groups the input dimension by {GROUP}; in_features={weight.shape[1]} is not "
                         f"a multiple of {GROUP}. Skip this layer or pad it")
    return weight.reshape(weight.shape[0], weight.shape[1] // GROUP, GROUP)


def magnitude_mask(weight: torch.Tensor) -> torch.Tensor:
    """The bool mask keeping the two largest |w| of every group of four along the input dimension.

    Ties keep the lower index (a stable sort), so the mask is deterministic.
    """
    groups = _groups(weight.detach())
    if not torch.isfinite(groups).all():
        raise InvalidInput("cannot prune a weight holding inf or NaN: magnitudes do not order them; fix the weight")
    order = torch.sort(groups.abs(), dim=-1, descending=True, stable=True).indices[..., :KEEP]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return mask.reshape(weight.shape)


def is_2_4(weight: torch.Tensor) -> bool:
    """Whether every group of four along the input dimension holds at most two non-zeros."""
    return bool(((_groups(weight) != 0).sum(dim=-1) <= KEEP).all())
