"""The shared op vocabulary implemented with torch: the compute path of digital drivers (CPU, CUDA GPUs).

Each function takes (inputs..., params..., **attrs) in the operand order of ``hal.ops`` and is a pure
function of tensors. ``TORCH_OPS[name](inputs, params, attrs)`` is the uniform entry the drivers use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from hal.kernels import ssm
from hal.kernels.selective_scan import selective_scan_reference


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention with GQA/MQA (k, v may have fewer heads than q)."""
    if k.shape[1] != q.shape[1]:
        repeat = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(repeat, dim=1)
        v = v.repeat_interleave(repeat, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)



def _activate(y: torch.Tensor, activation: str) -> torch.Tensor:
    return F.relu(y) if activation == "relu" else y


def _selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Triton's fused chunked scan on a CUDA GPU; on the CPU the sequential scan, which measured 5-7x faster there
    than the chunked torch path at Mamba block sizes (docs/ssm.md)."""
    if u.is_cuda:
        return ssm.selective_scan(u, delta, A, B, C, D=D)
    return selective_scan_reference(u, delta, A, B, C, D)


OpFn = Callable[[Sequence[torch.Tensor], Mapping[str, torch.Tensor], Mapping[str, Any]], torch.Tensor]

TORCH_OPS: dict[str, OpFn] = {
    "matmul": lambda i, p, a: torch.matmul(i[0], i[1]),
    "linear": lambda i, p, a: _activate(F.linear(i[0], p["weight"], p.get("bias")), a["activation"]),
    "conv2d": lambda i, p, a: F.conv2d(i[0], p["weight"], p.get("bias"), a["stride"], a["padding"], a["dilation"], a["groups"]),
    "add": lambda i, p, a: torch.add(i[0], i[1]),
    "mul": lambda i, p, a: torch.mul(i[0], i[1]),
    "relu": lambda i, p, a: F.relu(i[0]),
    "gelu": lambda i, p, a: F.gelu(i[0], approximate=a["approximate"]),
    "silu": lambda i, p, a: F.silu(i[0]),
    "softmax": lambda i, p, a: torch.softmax(i[0], dim=a["dim"]),
    "layer_norm": lambda i, p, a: F.layer_norm(i[0], (i[0].shape[-1],), p.get("weight"), p.get("bias"), a["eps"]),
    "rms_norm": lambda i, p, a: F.rms_norm(i[0], (i[0].shape[-1],), p.get("weight"), a["eps"]),
    "attention": lambda i, p, a: attention(i[0], i[1], i[2], a["causal"], a["scale"]),
    "selective_scan": lambda i, p, a: _selective_scan(*i),
}
