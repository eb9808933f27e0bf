"""Ring attention (Liu et al., 2023, "Ring Attention with Blockwise Transformers for Near-Infinite Context").

Each rank keeps its query shard and passes key/value blocks around the ring of ranks with torch.distributed
point-to-point operations (``batch_isend_irecv``): at step ``t`` rank ``r`` holds the K/V block of rank ``r - t``,
starts sending it on to ``r + 1`` and receiving the next one from ``r - 1``, and computes attention against it while
the transfer runs. Partial outputs merge by log-sum-exp. The backward pass runs the ring again: K/V blocks travel
the same way and their dK/dV accumulators travel with them, each rank adding its share (the accumulator's shift
overlaps the next block's compute), until one last shift brings every accumulator home to the block's owner.

With zig-zag shards (:mod:`hal.distributed.sharding`) every causal step is a single unmasked rectangle except the
rank's own block (see :func:`block_call`), so all ranks do the same work at every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable
from torch.distributed.device_mesh import DeviceMesh

from .block import BlockAttention, BlockMask, accumulation_dtype
from .sharding import mesh_coordinates


@dataclass(frozen=True)
class Ring:
    """A one-dimensional mesh seen as a ring: this rank, the size, and the global ranks of its two neighbours."""

    group: dist.ProcessGroup | None
    rank: int
    size: int
    next_peer: int
    prev_peer: int

    @classmethod
    def of(cls, mesh: DeviceMesh) -> Ring:
        rank, size = mesh_coordinates(mesh)
        group = mesh.get_group()
        return cls(group, rank, size, dist.get_global_rank(group, (rank + 1) % size),
                   dist.get_global_rank(group, (rank - 1) % size))

    @classmethod
    def alone(cls) -> Ring:
        """A ring of one rank (no communication): attention over a whole sequence held locally."""
        return cls(None, 0, 1, 0, 0)

    def shift(self, tensors: Sequence[torch.Tensor]) -> Shift:
        """Start sending each tensor to the next rank and receiving one of the same shape from the previous one."""
        sent = [t.contiguous() for t in tensors]
        received = [torch.empty_like(t) for t in sent]
        ops = []
        for out, into in zip(sent, received):
            ops += [dist.P2POp(dist.isend, out, self.next_peer, self.group),
                    dist.P2POp(dist.irecv, into, self.prev_peer, self.group)]
        return Shift(sent, received, dist.batch_isend_irecv(ops))


@dataclass
class Shift:
    """Transfers in flight; the sent tensors are held here so they live until the transfers complete."""

    sent: list[torch.Tensor]
    received: list[torch.Tensor]
    works: list

    def wait(self) -> list[torch.Tensor]:
        for work in self.works:
            work.wait()
        return self.received


@dataclass(frozen=True)
class BlockCall:
    """The part of one (query shard, key block) pair that is computed: query rows, key rows, local causal mask."""

    q: slice
    kv: slice
    causal: bool


def block_call(rank: int, owner: int, n: int, local_len: int, causal: bool) -> BlockCall:
    """What rank ``rank`` computes against the K/V block of rank ``owner`` (both zig-zag shards of ``local_len``).

    Rank ``r`` holds chunks ``(r, 2n-1-r)``. Under a causal mask a query chunk sees a key chunk whole when it comes
    later, causally when it is the same chunk, not at all when it comes earlier. So: the own block is causal over
    the local concatenation (chunk ``r`` sees neither its successor ``2n-1-r``'s keys, which come later, nor more
    than itself; chunk ``2n-1-r`` sees chunk ``r`` whole); a block of an earlier rank ``o < r`` is seen whole by
    both query chunks in its first chunk ``o`` and not at all in ``2n-1-o``; a block of a later rank ``o > r`` is
    seen whole by the second query chunk ``2n-1-r`` and not at all by the first. Without a causal mask every
    query sees the whole block.
    """
    whole, half = slice(0, local_len), local_len // 2
    if not causal:
        return BlockCall(whole, whole, False)
    if owner == rank:
        return BlockCall(whole, whole, True)
    if owner < rank:
        return BlockCall(whole, slice(0, half), False)
    return BlockCall(slice(half, local_len), whole, False)


@dataclass(frozen=True)
class RingProblem:
    """The settings of one ring-attention call beside its q, k, v: the ring, the mask, the per-block attention.

    ``documents``: every rank's local document ids ``(B, S_local)`` in rank order, or None without a document mask.
    """

    ring: Ring
    causal: bool
    scale: float
    block: BlockAttention
    documents: tuple[torch.Tensor, ...] | None = None

    def mask(self, call: BlockCall, owner: int) -> BlockMask:
        if self.documents is None:
            return BlockMask(call.causal)
        return BlockMask(call.causal, self.documents[self.ring.rank][:, call.q], self.documents[owner][:, call.kv])


def merge(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor,
          block_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial attentions over disjoint key sets by their log-sum-exps (rows empty in both stay 0)."""
    total = torch.logaddexp(lse, block_lse)
    shift = torch.where(torch.isneginf(total), torch.zeros_like(total), total)
    merged = out * torch.exp(lse - shift)[..., None] + block_out.to(out.dtype) * torch.exp(block_lse - shift)[..., None]
    return merged, total


def ring_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 problem: RingProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """The merged output (accumulation dtype) and lse of this rank's queries against every rank's keys."""
    ring = problem.ring
    acc = accumulation_dtype(q.dtype)
    out = torch.zeros(q.shape, dtype=acc, device=q.device)
    lse = torch.full(q.shape[:3], float("-inf"), dtype=acc, device=q.device)
    kv = [k, v]
    for step in range(ring.size):
        owner = (ring.rank - step) % ring.size
        incoming = ring.shift(kv) if step < ring.size - 1 else None
        call = block_call(ring.rank, owner, ring.size, q.shape[2], problem.causal)
        block_out, block_lse = problem.block.forward(q[:, :, call.q], kv[0][:, :, call.kv], kv[1][:, :, call.kv],
                                                     problem.mask(call, owner), problem.scale)
        out[:, :, call.q], lse[:, :, call.q] = merge(out[:, :, call.q], lse[:, :, call.q], block_out, block_lse)
        if incoming is not None:
            kv = incoming.wait()
    return out, lse


def ring_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                  d_out: torch.Tensor, problem: RingProblem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv (accumulation dtype) of this rank's shard; dk/dv gather every rank's share on their way home."""
    ring = problem.ring
    acc = accumulation_dtype(q.dtype)
    delta = (d_out.to(acc) * out.to(acc)).sum(dim=-1)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    kv: list[torch.Tensor] = [k, v]
    grads: list[torch.Tensor] = []  # dk, dv of the block held at the previous step, on their way to its owner
    for step in range(ring.size):
        owner = (ring.rank - step) % ring.size
        more_blocks = step < ring.size - 1
        outgoing = (kv if more_blocks else []) + grads
        transfer = ring.shift(outgoing) if outgoing else None
        call = block_call(ring.rank, owner, ring.size, q.shape[2], problem.causal)
        dq_b, dk_b, dv_b = problem.block.backward(
            q[:, :, call.q], kv[0][:, :, call.kv], kv[1][:, :, call.kv], d_out[:, :, call.q], lse[:, :, call.q],
            delta[:, :, call.q], problem.mask(call, owner), problem.scale)
        dq[:, :, call.q] += dq_b
        received = transfer.wait() if transfer is not None else []
        next_kv, carried = (received[:2], received[2:]) if more_blocks else ([], received)
        if step == 0:
            carried = [torch.zeros(k.shape, dtype=acc, device=k.device), torch.zeros(v.shape, dtype=acc, device=v.device)]
        carried[0][:, :, call.kv] += dk_b
        carried[1][:, :, call.kv] += dv_b
        grads = carried
        kv = next_kv
    if ring.size > 1:
        grads = ring.shift(grads).wait()
    return dq, grads[0], grads[1]


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, problem: RingProblem) -> torch.Tensor:
        out, lse = ring_forward(q, k, v, problem)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.problem = problem
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out: torch.Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ring_backward(q, k, v, out, lse, d_out, ctx.problem)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, problem: RingProblem) -> torch.Tensor:
    """Differentiable ring attention of this rank's zig-zag shards (inputs checked by the caller).

    Collective: every rank of the ring calls it with the same shapes, and, when it runs backward, calls backward.
    """
    return _RingAttention.apply(q, k, v, problem)
