"""Fused attention for any mask pattern: an attention pattern described in Python becomes a Triton kernel.

    from hal.kernels.attention import compile_attention, patterns
    attn = compile_attention(patterns.sliding_window(512) & patterns.causal(), head_dim=128, dtype=torch.bfloat16)
    out = attn(q, k, v)          # (B, H, S, D); GQA/MQA when k, v have fewer heads; autograd works

    sparse = compile_attention(patterns.topk_blocks(k=16, block=64) & patterns.causal(), head_dim=128)
    warmup(patterns.causal(), [(1, 16, 16384, 128)])     # ahead of time: compiled and tuned, kept on disk

The pattern is evaluated once per (query tile, key tile) into a block map, so empty tiles are skipped and full tiles
skip the mask; the kernel is FlashAttention-2 style (online softmax, no S x S matrix in memory). Kernels are cached
by pattern structure, head dim and dtype; tile choices per shape bucket, on disk. See docs/attention.md.
"""

from . import patterns
from .ahead_of_time import warmup
from .disk_cache import AttentionCacheWarning
from .dynamic import BlockSelection, DynamicSparseAttention
from .expr import PatternError
from .kernel import AttentionKernel, compile_attention
from .reference import attention_reference, dense_mask, select_blocks_reference

__all__ = ["AttentionCacheWarning", "AttentionKernel", "BlockSelection", "DynamicSparseAttention", "PatternError",
           "attention_reference", "compile_attention", "dense_mask", "patterns", "select_blocks_reference", "warmup"]
