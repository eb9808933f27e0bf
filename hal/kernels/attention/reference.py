"""Reference attention in float64 from the explicit (dense) mask: the ground truth the kernels are tested against.

Everything here materialises the S_q x S_kv matrix, so it is for checking at small sizes, never for speed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .expr import evaluate
from .patterns import Pattern, ScoreMod, TopKBlocks


def _grids(batch: int, heads: int, seq_q: int, seq_kv: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {"b": torch.arange(batch, device=device).view(-1, 1, 1, 1),
            "h": torch.arange(heads, device=device).view(1, -1, 1, 1),
            "q_idx": torch.arange(seq_q, device=device).view(1, 1, -1, 1),
            "kv_idx": torch.arange(seq_kv, device=device).view(1, 1, 1, -1)}


def dense_mask(pattern: Pattern | Callable[..., object] | None, batch: int, heads: int, seq_q: int, seq_kv: int,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """The explicit boolean mask ``(batch, heads, seq_q, seq_kv)``; a callable is called on broadcast index grids."""
    device = torch.device(device)
    shape = (batch, heads, seq_q, seq_kv)
    if pattern is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    g = _grids(batch, heads, seq_q, seq_kv, device)
    if isinstance(pattern, Pattern):
        allowed = evaluate(pattern.mask, g, pattern.tensors_on(device))
    else:
        allowed = pattern(g["b"], g["h"], g["q_idx"], g["kv_idx"])
    return torch.as_tensor(allowed, device=device).to(torch.bool).expand(shape)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        pattern: Pattern | Callable[..., object] | None = None,
                        score_mod: ScoreMod | Callable[..., object] | None = None,
                        scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention computed in float64 with the dense mask: returns ``(out, lse)`` in float64 (differentiable).

    Same conventions as the kernel: GQA repeats each KV head over ``H_q / H_kv`` query heads, ``score`` is
    ``scale · q·k`` before ``score_mod``, rows with every key masked give zeros and ``lse = -inf``.
    """
    batch, heads, seq_q, head_dim = q.shape
    seq_kv = k.shape[2]
    group = heads // k.shape[1]
    scale = head_dim ** -0.5 if scale is None else scale
    q64, k64, v64 = q.double(), k.double(), v.double()
    k64 = k64.repeat_interleave(group, dim=1)
    v64 = v64.repeat_interleave(group, dim=1)
    scores = (q64 @ k64.transpose(-1, -2)) * scale
    if score_mod is not None:
        g = _grids(batch, heads, seq_q, seq_kv, q.device)
        if isinstance(score_mod, ScoreMod):
            env = dict(g, score=scores)
            tensors = tuple(t.double() if t.is_floating_point() else t for t in score_mod.tensors_on(q.device))
            scores = evaluate(score_mod.score, env, tensors)
        else:
            scores = score_mod(scores, g["b"], g["h"], g["q_idx"], g["kv_idx"])
        scores = torch.as_tensor(scores, dtype=torch.float64).expand(batch, heads, seq_q, seq_kv)
    allowed = dense_mask(pattern, batch, heads, seq_q, seq_kv, q.device)
    empty = ~allowed.any(dim=-1, keepdim=True)
    # rows with no allowed key are computed on zeros and then cleared, so their gradients are zero, not NaN
    safe = scores.masked_fill(~allowed, float("-inf")).masked_fill(empty, 0.0)
    lse = torch.logsumexp(safe, dim=-1, keepdim=True)
    probs = torch.exp(safe - lse).masked_fill(~allowed, 0.0)
    out = probs @ v64
    return out, lse.masked_fill(empty, float("-inf")).squeeze(-1)


def select_blocks_reference(q: torch.Tensor, k: torch.Tensor, spec: TopKBlocks) -> torch.Tensor:
    """The block selection of ``spec`` in float64 from the dense mask: boolean ``(B, H, q_blocks, kv_blocks)``.

    Same rule as the selection kernel: scores ``mean(q block) · mean(k block)`` (GQA: the group's KV head); a
    key block is eligible when the static pattern allows some pair of the two blocks; the own block first when
    eligible, then the highest scores, ties to the lower index (a NaN score ranks last), ``spec.k`` in all.
    """
    batch, heads, seq_q, _ = q.shape
    seq_kv = k.shape[2]
    block = spec.block
    q_blocks, kv_blocks = -(-seq_q // block), -(-seq_kv // block)
    q_pooled = _block_means(q.double(), q_blocks, block)
    k_pooled = _block_means(k.double(), kv_blocks, block).repeat_interleave(heads // k.shape[1], dim=1)
    scores = q_pooled @ k_pooled.transpose(-1, -2)
    scores = torch.nan_to_num(scores, nan=float("-inf"))
    allowed = torch.zeros(batch, heads, q_blocks * block, kv_blocks * block, dtype=torch.bool, device=q.device)
    allowed[:, :, :seq_q, :seq_kv] = dense_mask(spec.static, batch, heads, seq_q, seq_kv, q.device)
    eligible = allowed.view(batch, heads, q_blocks, block, kv_blocks, block).any(dim=5).any(dim=3)
    own = torch.zeros_like(eligible)
    diagonal = torch.arange(min(q_blocks, kv_blocks), device=q.device)
    own[:, :, diagonal, diagonal] = True
    own &= eligible
    # rank: own block, then eligible by score (descending, stable: lower index first), then ineligible
    tier = torch.where(own, 0, torch.where(eligible, 1, 2))
    order = torch.sort(-scores, dim=-1, stable=True).indices
    order = order.gather(-1, torch.sort(tier.gather(-1, order), dim=-1, stable=True).indices)
    take = torch.arange(kv_blocks, device=q.device) < torch.minimum(eligible.sum(-1, keepdim=True),
                                                                    torch.tensor(spec.k, device=q.device))
    return torch.zeros_like(eligible).scatter_(-1, order, take.expand_as(order))


def _block_means(x: torch.Tensor, n_blocks: int, block: int) -> torch.Tensor:
    batch, heads, seq, dim = x.shape
    padded = torch.zeros(batch, heads, n_blocks * block, dim, dtype=x.dtype, device=x.device)
    padded[:, :, :seq] = x
    counts = torch.clamp(seq - torch.arange(n_blocks, device=x.device) * block, max=block).to(x.dtype)
    return padded.view(batch, heads, n_blocks, block, dim).sum(3) / counts[:, None]
