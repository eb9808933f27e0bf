"""All-to-all (Ulysses) context parallelism (Jacobs et al., 2023, "DeepSpeed Ulysses").

Each rank holds a sequence shard of every head. One ``all_to_all_single`` per tensor trades that for every token of
``H / n`` heads: heads are scattered, the sequence gathered. Attention is then local and exact over the whole
sequence (hal's kernel, or the torch block attention), and a second all-to-all brings the output back to sequence
shards. The backward pass is the same exchanges in reverse, around the local attention's own backward.

The gathered sequence arrives in rank order of zig-zag shards; it is put back in natural order before attention so
that the causal and document masks are the plain ones, and returned to shard order afterwards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .block import BlockAttention
from .ring import Ring, RingProblem, ring_attention
from .sharding import gathered_positions


def heads_to_sequence(x: torch.Tensor, ring: Ring) -> torch.Tensor:
    """``(B, H, S/n, D)`` sequence shards of every head -> ``(B, H/n, S, D)`` every token (in rank order) of this
    rank's ``H/n`` heads (rank ``j`` gets heads ``j·H/n .. (j+1)·H/n - 1``)."""
    batch, heads, local, dim = x.shape
    n = ring.size
    send = x.reshape(batch, n, heads // n, local, dim).transpose(0, 1).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=ring.group)
    return received.permute(1, 2, 0, 3, 4).reshape(batch, heads // n, n * local, dim)


def sequence_to_heads(y: torch.Tensor, ring: Ring) -> torch.Tensor:
    """The inverse of :func:`heads_to_sequence`: ``(B, H/n, S, D)`` -> ``(B, H, S/n, D)``."""
    batch, group_heads, seq, dim = y.shape
    n = ring.size
    send = y.reshape(batch, group_heads, n, seq // n, dim).permute(2, 0, 1, 3, 4).contiguous()
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=ring.group)
    return received.transpose(0, 1).reshape(batch, n * group_heads, seq // n, dim)


class _HeadsToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, ring: Ring) -> torch.Tensor:
        ctx.ring = ring
        return heads_to_sequence(x, ring)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return sequence_to_heads(grad.contiguous(), ctx.ring), None


class _SequenceToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, ring: Ring) -> torch.Tensor:
        ctx.ring = ring
        return sequence_to_heads(y, ring)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return heads_to_sequence(grad.contiguous(), ctx.ring), None


def all_to_all_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ring: Ring, *, causal: bool,
                         scale: float, block: BlockAttention, documents: torch.Tensor | None) -> torch.Tensor:
    """Differentiable Ulysses attention of this rank's zig-zag shards (inputs checked by the caller; ``H`` and
    ``H_kv`` divisible by the ring size). ``documents``: the whole sequence's ``(B, S)`` ids in natural order."""
    shard_order = gathered_positions(q.shape[2], ring.size).to(q.device)
    natural_order = torch.argsort(shard_order)
    gathered = [_HeadsToSequence.apply(t, ring).index_select(2, natural_order) for t in (q, k, v)]
    local = RingProblem(Ring.alone(), causal, scale, block, None if documents is None else (documents,))
    out = ring_attention(*gathered, local)
    return _SequenceToHeads.apply(out.index_select(2, shard_order), ring)
