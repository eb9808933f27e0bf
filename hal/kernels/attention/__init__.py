"""Fused attention for any mask pattern: an attention pattern described in Python becomes a Triton kernel.

    from hal.kernels.attention import compile_attention, patterns
    attn = compile_attention(patterns.sliding_window(512) & patterns.causal(), head_dim=128, dtype=torch.bfloat16)
    out = attn(q, k, v)          # (B, H, S, D); GQA/MQA when k, v have fewer heads; autograd works

The pattern is evaluated once per (query tile, key tile) into a block map, so empty tiles are skipped and full tiles
skip the mask; the kernel is FlashAttention-2 style (online softmax, no S x S matrix in memory). Kernels are cached
by pattern structure, head dim and dtype. See docs/attention.md.
"""

from . import patterns
from .expr import PatternError
from .kernel import AttentionKernel, compile_attention
from .reference import attention_reference, dense_mask

__all__ = ["AttentionKernel", "PatternError", "attention_reference", "compile_attention", "dense_mask", "patterns"]
