"""Beyond one device: context-parallel attention on torch.distributed (gloo on CPUs, NCCL on GPUs).

    # torchrun --nproc-per-node 8 train.py
    from hal import distributed
    mesh = distributed.mesh("hopper", 8)                       # a DeviceMesh, one rank per GPU of this host
    q, k, v = (distributed.shard(t, mesh) for t in (q, k, v))  # zig-zag shards of (B, H, S, D): S/8 tokens each
    out = distributed.context_parallel_attention(q, k, v, mesh=mesh, method="ring", pattern="causal")
    out.sum().backward()                                       # the backward pass is distributed too

``method="ring"`` passes K/V blocks around the ring (Liu et al., 2023); ``method="all_to_all"`` is DeepSpeed
Ulysses (Jacobs et al., 2023). :func:`choose_method` predicts which is faster. See docs/distributed.md.
"""

from .attention import METHODS, PATTERNS, context_parallel_attention
from .block import BlockMask, KernelBlockAttention, TorchBlockAttention, block_attention_for
from .cost import MethodChoice, MethodCost, choose_method
from .device_mesh import MESH_KINDS, mesh
from .sharding import chunk_ids, positions, shard, unshard

__all__ = ["METHODS", "MESH_KINDS", "PATTERNS", "BlockMask", "KernelBlockAttention", "MethodChoice", "MethodCost",
           "TorchBlockAttention", "block_attention_for", "choose_method", "chunk_ids", "context_parallel_attention",
           "mesh", "positions", "shard", "unshard"]
