"""Context-parallel attention: one entry point over ring and all-to-all (Ulysses), with its input checks.

Every rank of the mesh calls it with its zig-zag shard of q, k, v (and document ids): it is a collective, forward
and backward. The checks run on this rank's inputs before any communication, so an input that is bad on every rank
fails on every rank with the same error instead of leaving some ranks waiting for others.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from hal.errors import DeviceMismatch, DTypeError, InvalidInput, ShapeError

from .all_to_all import all_to_all_attention
from .block import block_attention_for
from .ring import Ring, RingProblem, ring_attention
from .sharding import gathered_positions

METHODS = ("ring", "all_to_all")
PATTERNS = ("causal", "full")
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mesh: DeviceMesh,
                               method: str = "ring", pattern: str = "causal",
                               document_ids: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Attention over a sequence sharded across the ranks of ``mesh``; returns this rank's ``(B, H, S/n, D)`` output.

    ``q`` is ``(B, H, S/n, D)``, ``k`` and ``v`` ``(B, H_kv, S/n, D)`` (``H_kv`` divides ``H``: GQA/MQA), each this
    rank's zig-zag shard (:func:`hal.distributed.shard`). ``method``: ``"ring"`` (K/V blocks passed around the ring,
    transfers overlapped with compute) or ``"all_to_all"`` (Ulysses: heads scattered, sequence gathered; needs
    ``H`` and ``H_kv`` divisible by the mesh size); :func:`hal.distributed.choose_method` says which is faster.
    ``pattern``: ``"causal"`` or ``"full"``. ``document_ids``: ``(B, S/n)`` or ``(S/n,)`` integer ids sharded like
    q; tokens then attend only within their document (and causally, with ``"causal"``). ``scale`` defaults to
    ``D ** -0.5``. Differentiable in q, k, v; float64/float32 run the torch block attention, bf16/fp16 on CUDA
    hal's attention kernel (document masks: torch).
    """
    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if pattern not in PATTERNS:
        raise InvalidInput(f"pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}; for document masking "
                           "pass document_ids= as well")
    ring = Ring.of(mesh)
    _check_tensors(q, k, v, mesh)
    if method == "all_to_all" and (q.shape[1] % ring.size or k.shape[1] % ring.size):
        raise ShapeError(f"all-to-all attention scatters heads over the {ring.size} ranks: q has {q.shape[1]} and "
                         f"k/v {k.shape[1]} heads, which {ring.size} does not both divide; use method='ring', or a "
                         f"mesh size that divides the head counts")
    scale = _scale(scale, q.shape[-1])
    documents = None if document_ids is None else _documents(document_ids, q)
    block = block_attention_for(q, documents=documents is not None)
    causal = pattern == "causal"
    gathered = None if documents is None else _all_gather(documents, ring)
    if method == "ring":
        return ring_attention(q, k, v, RingProblem(ring, causal, scale, block, gathered))
    natural = None
    if gathered is not None:
        natural = torch.cat(gathered, dim=1).index_select(1, torch.argsort(
            gathered_positions(q.shape[2], ring.size)).to(q.device))
    return all_to_all_attention(q, k, v, ring, causal=causal, scale=scale, block=block, documents=natural)


def _check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mesh: DeviceMesh) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise InvalidInput(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(f"{name} must be (batch, heads, seq/n, head_dim), got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise DTypeError(f"{name} is {t.dtype}; context-parallel attention takes "
                             f"{', '.join(str(d) for d in DTYPES)}")
        if t.dtype != q.dtype:
            raise DTypeError(f"q, k, v must share a dtype; {name} is {t.dtype}, q {q.dtype}")
        if t.device != q.device:
            raise DeviceMismatch(f"q, k, v must be on one device; {name} is on {t.device}, q on {q.device}")
    if q.device.type != mesh.device_type:
        raise DeviceMismatch(f"the mesh is over {mesh.device_type} devices but q is on {q.device}; move the shards "
                             f"to this rank's device")
    if k.shape != v.shape:
        raise ShapeError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ShapeError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head_dim")
    if q.shape[1] % k.shape[1]:
        raise ShapeError(f"q has {q.shape[1]} heads, k/v {k.shape[1]}: the key/value heads must divide the query heads")
    if k.shape[2] != q.shape[2]:
        raise ShapeError(f"q holds {q.shape[2]} tokens and k/v {k.shape[2]}: context parallelism shards one sequence, "
                         "so every rank's q, k, v shards cover the same tokens")
    if q.shape[2] == 0 or q.shape[2] % 2:
        raise ShapeError(f"this rank's shard holds {q.shape[2]} tokens; a zig-zag shard holds two equal chunks, so "
                         "the full sequence must be divisible by 2·n (hal.distributed.shard cuts it so)")


def _scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return head_dim ** -0.5
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise InvalidInput(f"scale must be positive and finite, got {scale}")
    return scale


def _documents(document_ids: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(B, S/n)`` int64 document ids on q's device, from ``(B, S/n)`` or ``(S/n,)``."""
    batch, _, local, _ = q.shape
    if not isinstance(document_ids, torch.Tensor) or document_ids.is_floating_point() or document_ids.is_complex() \
            or document_ids.dtype == torch.bool:
        raise DTypeError(f"document_ids must be an integer tensor, got "
                         f"{document_ids.dtype if isinstance(document_ids, torch.Tensor) else type(document_ids).__name__}")
    if document_ids.shape not in ((local,), (batch, local)):
        raise ShapeError(f"document_ids must be ({batch}, {local}) or ({local},), sharded like q, got "
                         f"{tuple(document_ids.shape)}")
    if document_ids.device != q.device:
        raise DeviceMismatch(f"document_ids are on {document_ids.device} but q on {q.device}")
    return document_ids.to(torch.int64).expand(batch, local).contiguous()


def _all_gather(x: torch.Tensor, ring: Ring) -> tuple[torch.Tensor, ...]:
    parts = [torch.empty_like(x) for _ in range(ring.size)]
    dist.all_gather(parts, x, group=ring.group)
    return tuple(parts)
