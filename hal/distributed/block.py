"""Attention of one (query block, key block) pair: forward returns ``(out, lse)``, backward takes the *global* lse.

Context-parallel attention splits the key axis across ranks, so each rank computes attention against one key block
at a time and merges the partial results by log-sum-exp. The backward pass of a block needs only the global lse
and ``delta = rowsum(dO * O)`` of the merged output: ``P = exp(scale·QKᵀ - lse)`` is then already the global
probability, ``dS = P (dP - delta)``, ``dQ = scale·dS K``, ``dK = scale·dSᵀ Q``, ``dV = Pᵀ dO``.

Two implementations share that interface:
- :class:`TorchBlockAttention`, torch ops in float32 (float64 for float64 inputs): the reference, and the path for
  CPUs, for float32/float64 on a GPU and for document masks;
- :class:`KernelBlockAttention`, hal's Triton attention kernel (bf16/fp16 on CUDA GPUs), for the causal and full
  blocks. Document masks stay on the torch path: the kernel bakes a pattern's tensors into its compiled pattern and
  block map, so per-block document ids would fingerprint and cache a new pattern for every block of every call.

Conventions follow hal.kernels.attention: ``q`` is ``(B, H, S_q, D)``, ``k``/``v`` are ``(B, H_kv, S_kv, D)`` with
``H_kv`` dividing ``H`` (GQA), lse is ``(B, H, S_q)`` in natural log, rows with no allowed key give zeros and
``lse = -inf``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from hal.errors import InvalidInput

#: Score-matrix elements the torch path materialises at once (query rows are processed in slabs of this size):
#: 2^26 float32 scores are 256 MiB, which bounds the temporary memory of one block whatever the sequence length.
SCORE_ELEMENTS_PER_SLAB = 1 << 26

#: Head dimensions and dtypes hal's attention kernel compiles for (hal.kernels.attention.compile_attention).
KERNEL_HEAD_DIMS = (16, 32, 64, 128, 256)
KERNEL_DTYPES = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class BlockMask:
    """Which (query, key) pairs of one block may attend.

    ``causal``: local causal, ``q_idx >= kv_idx`` counted from the block's first query and first key (the caller
    only sets it where that equals the global causal mask). ``q_documents`` / ``kv_documents``: ``(B, S_q)`` and
    ``(B, S_kv)`` integer document ids; a pair attends only within one document. Both conditions combine with "and".
    """

    causal: bool
    q_documents: torch.Tensor | None = None
    kv_documents: torch.Tensor | None = None

    @property
    def has_documents(self) -> bool:
        return self.q_documents is not None

    def dense(self, rows: slice, seq_kv: int, device: torch.device) -> torch.Tensor | None:
        """The allowed pairs of query rows ``rows`` as a bool tensor broadcastable to ``(B, H, rows, S_kv)``;
        None when every pair attends."""
        allowed = None
        if self.causal:
            q_idx = torch.arange(rows.start, rows.stop, device=device)[:, None]
            allowed = (q_idx >= torch.arange(seq_kv, device=device)[None, :])[None, None]
        if self.q_documents is not None and self.kv_documents is not None:
            same = self.q_documents[:, rows, None] == self.kv_documents[:, None, :]
            allowed = same[:, None] if allowed is None else allowed & same[:, None]
        return allowed


class BlockAttention(Protocol):
    """The per-block attention interface ring and all-to-all attention are written against."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out, lse)`` of this block alone; ``out`` in float32 (float64 for float64 inputs)."""
        ...

    def backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, d_out: torch.Tensor, lse: torch.Tensor,
                 delta: torch.Tensor, mask: BlockMask, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(dq, dk, dv)`` of this block's share of the loss, from the global ``lse`` and ``delta``."""
        ...


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype partial outputs and gradients are accumulated in: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class TorchBlockAttention:
    """Block attention in torch ops (the reference): scores in float32, or float64 for float64 inputs.

    Query rows go in slabs of at most :data:`SCORE_ELEMENTS_PER_SLAB` scores, so memory stays bounded on long
    blocks; the result does not depend on the slab size.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        acc = accumulation_dtype(q.dtype)
        k_rep, v_rep = _repeat_kv(k, q.shape[1]).to(acc), _repeat_kv(v, q.shape[1]).to(acc)
        out = torch.empty(q.shape, dtype=acc, device=q.device)
        lse = torch.empty(q.shape[:3], dtype=acc, device=q.device)
        for rows in _slabs(q, k.shape[2]):
            probs, rows_lse = self._probabilities(q[:, :, rows].to(acc), k_rep, mask, rows, scale, None)
            out[:, :, rows] = probs @ v_rep
            lse[:, :, rows] = rows_lse
        return out, lse

    def backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, d_out: torch.Tensor, lse: torch.Tensor,
                 delta: torch.Tensor, mask: BlockMask, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        acc = accumulation_dtype(q.dtype)
        k_rep, v_rep = _repeat_kv(k, q.shape[1]).to(acc), _repeat_kv(v, q.shape[1]).to(acc)
        dq = torch.empty(q.shape, dtype=acc, device=q.device)
        dk_rep = torch.zeros(k_rep.shape, dtype=acc, device=q.device)
        dv_rep = torch.zeros(v_rep.shape, dtype=acc, device=q.device)
        for rows in _slabs(q, k.shape[2]):
            q_rows, do_rows = q[:, :, rows].to(acc), d_out[:, :, rows].to(acc)
            probs, _ = self._probabilities(q_rows, k_rep, mask, rows, scale, lse[:, :, rows].to(acc))
            dv_rep += probs.transpose(-1, -2) @ do_rows
            d_scores = probs * (do_rows @ v_rep.transpose(-1, -2) - delta[:, :, rows, None].to(acc))
            dq[:, :, rows] = (d_scores @ k_rep) * scale
            dk_rep += (d_scores.transpose(-1, -2) @ q_rows) * scale
        return dq, _sum_groups(dk_rep, k.shape[1]), _sum_groups(dv_rep, v.shape[1])

    @staticmethod
    def _probabilities(q: torch.Tensor, k: torch.Tensor, mask: BlockMask, rows: slice, scale: float,
                       lse: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``exp(scores - lse)`` over the allowed pairs (zero elsewhere) and the lse used: the rows' own when
        ``lse`` is None (forward), the given global one otherwise (backward)."""
        scores = (q @ k.transpose(-1, -2)) * scale
        allowed = mask.dense(rows, k.shape[2], q.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        if lse is None:
            lse = torch.logsumexp(scores, dim=-1)
        # a row with every key masked has lse = -inf: shift it by 0 so exp(-inf) gives zeros, not NaN
        shift = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
        return torch.exp(scores - shift[..., None]), lse


class KernelBlockAttention:
    """Block attention through hal's Triton attention kernel (raw launches: its forward returns the lse, its two
    backward kernels take an external lse and delta). For causal and full blocks in bf16/fp16 on a CUDA GPU."""

    def __init__(self, head_dim: int, dtype: torch.dtype) -> None:
        from hal.kernels.attention import compile_attention, patterns

        self._kernels = {causal: compile_attention(patterns.causal() if causal else patterns.full(),
                                                   head_dim=head_dim, dtype=dtype) for causal in (False, True)}

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask,
                scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        kernel = self._kernel(mask)
        out, lse = kernel.forward(q.contiguous(), k.contiguous(), v.contiguous(), scale)
        return out.float(), lse

    def backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, d_out: torch.Tensor, lse: torch.Tensor,
                 delta: torch.Tensor, mask: BlockMask, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kernel = self._kernel(mask)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        d_out = d_out.to(q.dtype).contiguous()
        lse, delta = lse.float().contiguous(), delta.float().contiguous()
        dk, dv = kernel.backward_dkdv(q, k, v, d_out, lse, delta, scale)
        dq = kernel.backward_dq(q, k, v, d_out, lse, delta, scale)
        return dq.float(), dk.float(), dv.float()

    def _kernel(self, mask: BlockMask):
        if mask.has_documents:
            raise InvalidInput("KernelBlockAttention takes causal and full blocks; document masks use "
                             "TorchBlockAttention (see this module's docstring)")
        return self._kernels[mask.causal]


def block_attention_for(q: torch.Tensor, documents: bool) -> BlockAttention:
    """The implementation for these inputs: hal's kernel on CUDA for bf16/fp16 causal/full blocks, torch otherwise."""
    if q.device.type == "cuda" and q.dtype in KERNEL_DTYPES and q.shape[-1] in KERNEL_HEAD_DIMS and not documents:
        return KernelBlockAttention(q.shape[-1], q.dtype)
    return TorchBlockAttention()


def _repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def _sum_groups(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Fold the gradient of repeated KV heads back onto the ``kv_heads`` heads (the adjoint of ``_repeat_kv``)."""
    batch, heads, seq, dim = x.shape
    return x if heads == kv_heads else x.view(batch, kv_heads, heads // kv_heads, seq, dim).sum(dim=2)


def _slabs(q: torch.Tensor, seq_kv: int) -> list[slice]:
    batch, heads, seq_q, _ = q.shape
    rows = max(1, SCORE_ELEMENTS_PER_SLAB // max(1, batch * heads * seq_kv))
    return [slice(start, min(seq_q, start + rows)) for start in range(0, seq_q, rows)]
