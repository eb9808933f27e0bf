"""Zig-zag sequence sharding: rank ``r`` of ``n`` holds chunks ``r`` and ``2n-1-r`` of the sequence cut in ``2n``.

Under a causal mask the work of a query chunk grows with its position; pairing an early chunk with the mirrored
late one gives every rank the same number of (query, key) pairs. It is the layout of Transformer Engine's context
parallelism and of PyTorch's head-tail load balancer. Ring and all-to-all attention both take q, k, v and document
ids sharded this way, so a model shards its activations once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from hal.errors import InvalidInput, ShapeError


def chunk_ids(rank: int, n: int) -> tuple[int, int]:
    """The two sequence chunks (of ``2n``) rank ``rank`` holds, in the order they sit in its shard."""
    return rank, 2 * n - 1 - rank


def positions(seq_len: int, rank: int, n: int) -> torch.Tensor:
    """Global positions (int64) of the tokens in rank ``rank``'s shard, in shard order (for position embeddings)."""
    chunk = _chunk_len(seq_len, n, "seq_len")
    return torch.cat([torch.arange(c * chunk, (c + 1) * chunk) for c in chunk_ids(rank, n)])


def gathered_positions(local_len: int, n: int) -> torch.Tensor:
    """Global positions of the ``n * local_len`` tokens of every shard laid end to end in rank order."""
    return torch.cat([positions(local_len * n, r, n) for r in range(n)])


def shard(x: torch.Tensor, mesh: DeviceMesh, dim: int = 2) -> torch.Tensor:
    """This rank's zig-zag shard of the full tensor ``x`` along ``dim`` (every rank passes the same ``x``).

    ``dim`` is the sequence dimension: 2 for ``(B, H, S, D)`` attention inputs, 1 (or -1) for ``(B, S)`` document
    ids. Returns a contiguous copy of length ``S / n``.
    """
    rank, n = mesh_coordinates(mesh)
    dim = _dim(x, dim)
    chunk = _chunk_len(x.shape[dim], n, f"dimension {dim} of the {tuple(x.shape)} tensor")
    pieces = [x.narrow(dim, c * chunk, chunk) for c in chunk_ids(rank, n)]
    return torch.cat(pieces, dim=dim).contiguous()


def unshard(x: torch.Tensor, mesh: DeviceMesh, dim: int = 2) -> torch.Tensor:
    """The full tensor from every rank's zig-zag shard ``x`` (an all-gather over the mesh, then back in order)."""
    rank, n = mesh_coordinates(mesh)
    dim = _dim(x, dim)
    if x.shape[dim] % 2:
        raise ShapeError(f"a zig-zag shard holds two equal chunks, so its length along dim {dim} must be even; "
                         f"got {x.shape[dim]}")
    local = x.contiguous()
    parts = [torch.empty_like(local) for _ in range(n)]
    dist.all_gather(parts, local, group=mesh.get_group())
    order = torch.argsort(gathered_positions(x.shape[dim], n)).to(x.device)
    return torch.cat(parts, dim=dim).index_select(dim, order)


def mesh_coordinates(mesh: DeviceMesh) -> tuple[int, int]:
    """``(rank in the mesh, mesh size)`` of this process, refusing meshes context parallelism cannot run on."""
    if mesh.ndim != 1:
        raise InvalidInput(f"context parallelism runs over a one-dimensional mesh; this one has {mesh.ndim} "
                           "dimensions: pass the sequence dimension's sub-mesh, e.g. mesh['cp']")
    if mesh.get_coordinate() is None:
        raise InvalidInput(f"this process (global rank {dist.get_rank()}) is not in the mesh of ranks "
                           f"{mesh.mesh.tolist()}; call only on the mesh's ranks")
    return mesh.get_local_rank(), mesh.size()


def _dim(x: torch.Tensor, dim: int) -> int:
    if not -x.dim() <= dim < x.dim():
        raise ShapeError(f"dim {dim} is out of range for a tensor of shape {tuple(x.shape)}")
    return dim % x.dim()


def _chunk_len(seq_len: int, n: int, what: str) -> int:
    if seq_len % (2 * n):
        raise ShapeError(f"the sequence length {seq_len} ({what}) is not divisible by 2·n = {2 * n}: zig-zag "
                         f"sharding cuts it into {2 * n} equal chunks, two per rank; pad it to a multiple of {2 * n}")
    return seq_len // (2 * n)
