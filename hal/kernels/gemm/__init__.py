"""Fused small-M linears: the norm before a linear in its prologue, the activation / gate / residual after it in its
epilogue, and up to three linears sharing an input (Q/K/V, or gate/up) in one launch.

    from hal.kernels.gemm import norm_linear, gated_linear
    qkv = norm_linear(x, [w_q, w_k, w_v], norm="rms", norm_weight=g, eps=1e-6)        # [..., n_q + n_k + n_v]
    h = norm_linear(x, [w], [b], norm="layer", norm_weight=g, norm_bias=beta, activation="gelu")
    y = gated_linear(x, w_gate, w_up, norm="rms", norm_weight=g, activation="silu")     # SwiGLU, one kernel
    out = norm_linear(h, [w_down], residual=x)                                          # down projection + residual

Both are torch custom ops (``torch.ops.hal.norm_linear`` / ``torch.ops.hal.gated_linear``): one node in an FX
graph, capturable in CUDA graphs. Triton on CUDA (and under TRITON_INTERPRET=1), the torch reference elsewhere
(``resolve_backend``); ``reference`` holds the specification both are tested against.
"""

from . import reference
from .api import gated_linear, norm_linear, resolve_backend

__all__ = ["gated_linear", "norm_linear", "reference", "resolve_backend"]
