"""The fused linears users and fusion passes call, and the torch custom ops they are.

``norm_linear`` and ``gated_linear`` call the custom ops ``hal::norm_linear`` and ``hal::gated_linear``, so in a
graph traced by torch.compile (or torch.fx) each is one node, which Inductor leaves as an extern call and CUDA graphs
capture: the ops never synchronise with the device, allocate nothing but their output and cache nothing on the
host. Their fake implementations check the arguments and give the output's shape, so a bad call fails while tracing.

Which code runs (``resolve_backend``): the Triton kernel (hal.kernels.gemm.kernel) on a CUDA device, and on the CPU
when TRITON_INTERPRET=1 was set before the kernel module was imported; the torch reference (the specification,
hal.kernels.gemm.reference) everywhere else. The ops are for inference: calling backward through them raises
torch's "no autograd formula was registered" error.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from torch import Tensor

from . import reference
from .configs import interpreting
from .inputs import FusedLinear, check_gated_linear, check_norm_linear, listed, number

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def resolve_backend(device: torch.device | str) -> str:
    """The code the fused linears run for tensors on ``device``: "triton" or "torch".

    "triton" on a CUDA device when triton is installed, and on the CPU under Triton's interpreter
    (TRITON_INTERPRET=1); "torch" (the reference) otherwise.
    """
    kind = torch.device(device).type
    runs = kind == "cuda" or (kind == "cpu" and interpreting())
    return "triton" if runs and TRITON_INSTALLED else "torch"


def _run(call: FusedLinear) -> Tensor:
    if resolve_backend(call.x2d.device) == "torch":
        return reference.run(call)
    from .kernel import run

    return run(call)


@torch.library.custom_op("hal::norm_linear", mutates_args=())
def norm_linear_op(x: Tensor, weights: list[Tensor], biases: list[Tensor | None], norm: str | None,
                   norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float, activation: str | None,
                   residual: Tensor | None) -> Tensor:
    """The custom op behind ``norm_linear`` (every argument explicit, biases a list with None entries)."""
    return _run(check_norm_linear(x, weights, biases, norm, norm_weight, norm_bias, eps, activation, residual))


@norm_linear_op.register_fake
def _norm_linear_fake(x: Tensor, weights: list[Tensor], biases: list[Tensor | None], norm: str | None,
                      norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float, activation: str | None,
                      residual: Tensor | None) -> Tensor:
    call = check_norm_linear(x, weights, biases, norm, norm_weight, norm_bias, eps, activation, residual)
    return x.new_empty(call.out_shape)


@torch.library.custom_op("hal::gated_linear", mutates_args=())
def gated_linear_op(x: Tensor, w_gate: Tensor, w_up: Tensor, b_gate: Tensor | None, b_up: Tensor | None,
                    norm: str | None, norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float,
                    activation: str | None, residual: Tensor | None) -> Tensor:
    """The custom op behind ``gated_linear``."""
    return _run(check_gated_linear(x, w_gate, w_up, b_gate, b_up, norm, norm_weight, norm_bias, eps, activation,
                                   residual))


@gated_linear_op.register_fake
def _gated_linear_fake(x: Tensor, w_gate: Tensor, w_up: Tensor, b_gate: Tensor | None, b_up: Tensor | None,
                       norm: str | None, norm_weight: Tensor | None, norm_bias: Tensor | None, eps: float,
                       activation: str | None, residual: Tensor | None) -> Tensor:
    call = check_gated_linear(x, w_gate, w_up, b_gate, b_up, norm, norm_weight, norm_bias, eps, activation, residual)
    return x.new_empty(call.out_shape)


def norm_linear(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None] | None = None, *,
                norm: str | None = None, norm_weight: Tensor | None = None, norm_bias: Tensor | None = None,
                eps: float = 1e-5, activation: str | None = None, residual: Tensor | None = None) -> Tensor:
    """``act(norm(x) @ W_i.T + b_i) + residual`` for every weight, side by side: shape [..., sum N_i], x.dtype.

    x: [..., K], contiguous along K. weights: 1 to 3 tensors [N_i, K] (nn.Linear layout) sharing the input, read
    where they live (never concatenated or copied). biases: None, or one entry per weight, each None or [N_i].
    norm: None, "layer" (F.layer_norm over K with norm_weight / norm_bias) or "rms" (HF LlamaRMSNorm with
    norm_weight), computed in float32 and rounded to x.dtype before the matmul, as eager does. activation: None,
    "gelu", "gelu_tanh", "silu", "relu", in float32 after the bias. residual: None or [..., sum N_i], added after
    the activation. Every input shares x's dtype (float16, bfloat16, float32) and device. The output is rounded
    once, from float32; callers split it with views (``y.split([n_q, n_k, n_v], -1)``).
    """
    weights = listed("weights", weights, optional=False)
    biases = [None] * len(weights) if biases is None else listed("biases", biases, optional=True)
    return norm_linear_op(x, weights, biases, norm, norm_weight, norm_bias, number("eps", eps), activation, residual)


def gated_linear(x: Tensor, w_gate: Tensor, w_up: Tensor, b_gate: Tensor | None = None, b_up: Tensor | None = None,
                 *, norm: str | None = None, norm_weight: Tensor | None = None, norm_bias: Tensor | None = None,
                 eps: float = 1e-5, activation: str | None = "silu", residual: Tensor | None = None) -> Tensor:
    """``act(norm(x) @ w_gate.T + b_gate) * (norm(x) @ w_up.T + b_up) + residual``: shape [..., N], x.dtype.

    The gated (GLU / SwiGLU) form of ``norm_linear``: w_gate and w_up are [N, K] and both are read by one kernel,
    which keeps two accumulators. Arguments and rounding as for ``norm_linear``; residual is [..., N].
    """
    return gated_linear_op(x, w_gate, w_up, b_gate, b_up, norm, norm_weight, norm_bias, number("eps", eps),
                           activation, residual)
