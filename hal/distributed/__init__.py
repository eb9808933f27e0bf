"""Beyond one device: context-parallel attention and pipelined models on torch.distributed (gloo on CPUs, NCCL on GPUs).

    # torchrun --nproc-per-node 8 train.py
    from hal import distributed
    mesh = distributed.mesh("hopper", 8)                       # a DeviceMesh, one rank per GPU of this host
    q, k, v = (distributed.shard(t, mesh) for t in (q, k, v))  # zig-zag shards of (B, H, S, D): S/8 tokens each
    out = distributed.context_parallel_attention(q, k, v, mesh=mesh, method="ring", pattern="causal")
    out.sum().backward()                                       # the backward pass is distributed too

``method="ring"`` passes K/V blocks around the ring (Liu et al., 2023); ``method="all_to_all"`` is DeepSpeed
Ulysses (Jacobs et al., 2023). :func:`choose_method` predicts which is faster.

    pipe = distributed.pipeline(model, x, mesh=mesh, micro_batches=8)   # stage r of the model on rank r
    out = pipe.run(x)                                                  # GPipe's forward schedule; every rank gets out

See docs/distributed.md.
"""

from .attention import METHODS, PATTERNS, context_parallel_attention
from .block import BlockMask, KernelBlockAttention, TorchBlockAttention, block_attention_for
from .cost import MethodChoice, MethodCost, choose_method
from .device_mesh import MESH_KINDS, mesh
from .partition import bubble_fraction, cut_points, linear_partition
from .pipelining import Boundary, PipelinePlan, PipelineStage, pipeline
from .sharding import chunk_ids, positions, shard, unshard

__all__ = ["METHODS", "MESH_KINDS", "PATTERNS", "BlockMask", "Boundary", "KernelBlockAttention", "MethodChoice",
           "MethodCost", "PipelinePlan", "PipelineStage", "TorchBlockAttention", "block_attention_for", "bubble_fraction",
           "choose_method", "chunk_ids", "context_parallel_attention", "cut_points", "linear_partition", "mesh",
           "pipeline", "positions", "shard", "unshard"]
