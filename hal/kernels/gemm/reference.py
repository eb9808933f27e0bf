"""The torch reference of the fused linears: the specification the Triton kernel is tested against, and the path that
runs wherever Triton does not (a CPU without TRITON_INTERPRET=1).

Where values are rounded is part of the specification, because it is what eager PyTorch does:

- the norm is computed in float32 and its output rounded to x.dtype before the matmul, exactly as ``F.layer_norm``
  ((x - mean) * rstd * weight + bias in float32, biased variance, one rounding) and HF ``LlamaRMSNorm``
  (x * rsqrt(mean(x^2) + eps) in float32, rounded to x.dtype, then times the weight, rounded again) do;
- the matmul accumulates in float32 (under torch's float32 matmul precision setting, "highest" by default);
- bias, activation, the gate product and the residual add are computed in float32 and rounded once, at the end.
  Eager ``F.linear`` then ``F.gelu`` then ``+ residual`` rounds after each op; this rounds once, so it is at least as
  accurate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .inputs import FusedLinear, check_gated_linear, check_norm_linear, listed, number


def normalise(call: FusedLinear) -> torch.Tensor:
    """norm(x) as (M, K) in x.dtype: the matmul's left operand."""
    x = call.x2d
    if call.norm is None:
        return x
    xf = x.float()
    if call.norm == "layer":
        mean = xf.mean(dim=-1, keepdim=True)
        var = (xf - mean).square().mean(dim=-1, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + call.eps)
        if call.norm_weight is not None:
            y = y * call.norm_weight.float()
        if call.norm_bias is not None:
            y = y + call.norm_bias.float()
        return y.to(x.dtype)
    h = (xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + call.eps)).to(x.dtype)
    if call.norm_weight is not None:
        h = (call.norm_weight.float() * h.float()).to(x.dtype)
    return h


def activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """The activation of the epilogue, applied to a float32 tensor."""
    if activation is None:
        return y
    if activation == "gelu":
        return F.gelu(y)
    if activation == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if activation == "silu":
        return F.silu(y)
    return F.relu(y)


def run(call: FusedLinear) -> torch.Tensor:
    """The fused linear of a validated call, as torch ops (a new tensor of shape call.out_shape, x.dtype)."""
    h = normalise(call).float()
    products = [h @ w.float().T if b is None else torch.addmm(b.float(), h, w.float().T)
                for w, b in zip(call.weights, call.biases)]
    y = activate(products[0], call.activation) * products[1] if call.gated else activate(torch.cat(products, -1),
                                                                                          call.activation)
    if call.residual2d is not None:
        y = y + call.residual2d.float()
    return y.to(call.x2d.dtype).view(call.out_shape)


def norm_linear(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None] | None = None,
                *, norm: str | None = None, norm_weight: torch.Tensor | None = None,
                norm_bias: torch.Tensor | None = None, eps: float = 1e-5, activation: str | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """hal.kernels.gemm.norm_linear computed with torch ops (same arguments, same checks)."""
    weights = listed("weights", weights, optional=False)
    biases = [None] * len(weights) if biases is None else listed("biases", biases, optional=True)
    return run(check_norm_linear(x, weights, biases, norm, norm_weight, norm_bias, number("eps", eps), activation,
                                 residual))


def gated_linear(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, b_gate: torch.Tensor | None = None,
                 b_up: torch.Tensor | None = None, *, norm: str | None = None, norm_weight: torch.Tensor | None = None,
                 norm_bias: torch.Tensor | None = None, eps: float = 1e-5, activation: str | None = "silu",
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """hal.kernels.gemm.gated_linear computed with torch ops (same arguments, same checks)."""
    return run(check_gated_linear(x, w_gate, w_up, b_gate, b_up, norm, norm_weight, norm_bias, number("eps", eps),
                                  activation, residual))
