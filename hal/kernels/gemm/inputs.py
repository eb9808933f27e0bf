"""Checking the arguments of the fused linears and putting them in the one form both backends run.

The custom ops call ``check_norm_linear`` / ``check_gated_linear`` in their real and their fake implementation, so a
bad call fails with the same message eagerly and while torch.compile traces. Only metadata (shape, stride, dtype,
device) is read, never a value: the checks run on fake tensors and never synchronise with a GPU.

Nothing is copied: an input that is not contiguous along K (or whose leading axes cannot be seen as one row axis
without a copy) is refused with the fix, so the kernels read every weight where it lives and an in-place update of
a weight is seen by the next call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx

from hal.kernels.gemm.errors import GemmDeviceError, GemmDtypeError, GemmInputError, GemmShapeError

NORMS = (None, "layer", "rms")
ACTIVATIONS = (None, "gelu", "gelu_tanh", "silu", "relu")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: The kernel selects a weight's pointer among this many per program (Q, K and V); more would need more arguments.
MAX_WEIGHTS = 3


@dataclass(frozen=True)
class FusedLinear:
    """A validated call: ``act(norm(x) @ W.T + b) [* (norm(x) @ W_up.T + b_up)] + residual`` over row-major views.

    x2d: (M, K), a view of x; weights: the (N_i, K) weights side by side in the output, or (w_gate, w_up) when
    ``gated``; residual2d: (M, N_out) view or None; out_shape: x.shape[:-1] + (N_out,).
    """

    x2d: torch.Tensor
    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor | None, ...]
    norm: str | None
    norm_weight: torch.Tensor | None
    norm_bias: torch.Tensor | None
    eps: float
    activation: str | None
    residual2d: torch.Tensor | None
    gated: bool
    out_shape: tuple[int, ...]

    @property
    def n_out(self) -> int:
        """Columns of the output: the sum of the weights' N, or one weight's N for the gated form."""
        return self.out_shape[-1]


def listed(name: str, items: object, optional: bool) -> list:
    """items as a list, refusing anything but a list or tuple of tensors (None entries too when optional).

    torch.fx proxies pass: under symbolic tracing the tensors are proxies, and the op's schema checks them later.
    """
    if not isinstance(items, (list, tuple)):
        raise GemmInputError(f"{name} must be a list of tensors, got {type(items).__name__}; pass a single one as "
                           f"[{name[:-1]}]")
    for i, t in enumerate(items):
        if not (isinstance(t, (torch.Tensor, torch.fx.Proxy)) or (optional and t is None)):
            raise GemmInputError(f"{name}[{i}] must be a tensor{' or None' if optional else ''}, got {type(t).__name__}")
    return list(items)


def number(name: str, value: object) -> float:
    """value as a float, refusing what is not a real number (bools included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GemmInputError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _rows(name: str, t: torch.Tensor, k_name: str) -> torch.Tensor:
    """t as a (rows, t.shape[-1]) view; refuses a layout that would need a copy."""
    if t.dim() == 0:
        raise GemmShapeError(f"{name} must have at least one axis ([..., {k_name}]), got a 0-d tensor")
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise GemmShapeError(f"{name} must be contiguous along its last axis (stride 1), got strides {tuple(t.stride())}; "
                         f"pass {name}.contiguous()")
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        raise GemmShapeError(f"{name} of shape {tuple(t.shape)} and strides {tuple(t.stride())}: its leading axes cannot "
                         f"be seen as one row axis without a copy; pass {name}.contiguous()") from None


def _same_kind(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if t.dtype != x.dtype:
        raise GemmDtypeError(f"{name} is {t.dtype} but x is {x.dtype}; the fused linear runs in one dtype: "
                         f"convert {name} with .to({x.dtype})")
    if t.device != x.device:
        raise GemmDeviceError(f"{name} is on {t.device} but x is on {x.device}; move it with .to(x.device)")


def _tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise GemmInputError(f"{name} must be a tensor, got {type(t).__name__}")
    return t


def _vector(name: str, t: torch.Tensor | None, length: int, x: torch.Tensor, what: str) -> None:
    if t is None:
        return
    _tensor(name, t)
    if tuple(t.shape) != (length,):
        raise GemmShapeError(f"{name} must be 1-D of {what} = {length} entries, got shape {tuple(t.shape)}")
    _same_kind(name, t, x)


def _weight(name: str, w: object, k: int, x: torch.Tensor) -> torch.Tensor:
    w = _tensor(name, w)
    if w.dim() != 2 or w.shape[1] != k:
        raise GemmShapeError(f"{name} must be (N, K) with K = x.shape[-1] = {k} (nn.Linear layout), got {tuple(w.shape)}")
    if w.shape[0] == 0:
        raise GemmShapeError(f"{name} has no output rows (shape {tuple(w.shape)}); drop it from the call")
    if k > 1 and w.stride(1) != 1:
        raise GemmShapeError(f"{name} must be contiguous along K (stride 1), got strides {tuple(w.stride())}; a transposed "
                         f"weight must be laid out as (N, K): pass {name}.contiguous()")
    _same_kind(name, w, x)
    return w


def _common(x: object, norm: str | None, norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None,
            eps: float, activation: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check x and the norm / activation options; returns (x, x as (M, K))."""
    x = _tensor("x", x)
    if x.dtype not in DTYPES:
        raise GemmDtypeError(f"x is {x.dtype}; the fused linears take float16, bfloat16 or float32: convert x (and the "
                         "weights) with .to(torch.bfloat16)")
    if x.dim() > 0 and x.shape[-1] == 0:
        raise GemmShapeError(f"x has no features (shape {tuple(x.shape)}): K must be at least 1")
    x2d = _rows("x", x, "K")
    k = x.shape[-1]
    if norm not in NORMS:
        raise GemmInputError(f"norm must be one of {NORMS}, got {norm!r}")
    if activation not in ACTIVATIONS:
        raise GemmInputError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if norm is None and (norm_weight is not None or norm_bias is not None):
        raise GemmInputError("norm_weight / norm_bias were given without a norm; pass norm='layer' or norm='rms'")
    if norm == "rms" and norm_bias is not None:
        raise GemmInputError("RMSNorm has no bias (HF LlamaRMSNorm); drop norm_bias or use norm='layer'")
    _vector("norm_weight", norm_weight, k, x, "K")
    _vector("norm_bias", norm_bias, k, x, "K")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise GemmInputError(f"eps must be a finite number >= 0, got {eps!r}")
    return x, x2d


def _residual(residual: torch.Tensor | None, x: torch.Tensor, out_shape: tuple[int, ...]) -> torch.Tensor | None:
    if residual is None:
        return None
    residual = _tensor("residual", residual)
    if tuple(residual.shape) != out_shape:
        raise GemmShapeError(f"residual must have the output's shape x.shape[:-1] + (N,) = {out_shape}, got "
                         f"{tuple(residual.shape)}")
    _same_kind("residual", residual, x)
    return _rows("residual", residual, "N")


def check_norm_linear(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None],
                      norm: str | None, norm_weight: torch.Tensor | None, norm_bias: torch.Tensor | None, eps: float,
                      activation: str | None, residual: torch.Tensor | None) -> FusedLinear:
    """Validate a ``norm_linear`` call (see hal.kernels.gemm.norm_linear) and return it as a FusedLinear."""
    x, x2d = _common(x, norm, norm_weight, norm_bias, eps, activation)
    if not 1 <= len(weights) <= MAX_WEIGHTS:
        raise GemmShapeError(f"norm_linear fuses 1 to {MAX_WEIGHTS} weights sharing an input, got {len(weights)}; "
                         "split them over several calls")
    if len(biases) != len(weights):
        raise GemmShapeError(f"biases must have one entry (a tensor or None) per weight: {len(weights)} weights, "
                         f"{len(biases)} biases")
    k = x.shape[-1]
    ws = tuple(_weight(f"weights[{i}]", w, k, x) for i, w in enumerate(weights))
    for i, (w, b) in enumerate(zip(ws, biases)):
        _vector(f"biases[{i}]", b, w.shape[0], x, f"weights[{i}].shape[0]")
    out_shape = tuple(x.shape[:-1]) + (sum(w.shape[0] for w in ws),)
    return FusedLinear(x2d, ws, tuple(biases), norm, norm_weight, norm_bias, eps, activation,
                       _residual(residual, x, out_shape), False, out_shape)


def check_gated_linear(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, b_gate: torch.Tensor | None,
                       b_up: torch.Tensor | None, norm: str | None, norm_weight: torch.Tensor | None,
                       norm_bias: torch.Tensor | None, eps: float, activation: str | None,
                       residual: torch.Tensor | None) -> FusedLinear:
    """Validate a ``gated_linear`` call (see hal.kernels.gemm.gated_linear) and return it as a FusedLinear."""
    x, x2d = _common(x, norm, norm_weight, norm_bias, eps, activation)
    k = x.shape[-1]
    gate = _weight("w_gate", w_gate, k, x)
    up = _weight("w_up", w_up, k, x)
    if up.shape != gate.shape:
        raise GemmShapeError(f"w_gate and w_up must have one shape (N, K), got {tuple(gate.shape)} and {tuple(up.shape)}")
    _vector("b_gate", b_gate, gate.shape[0], x, "w_gate.shape[0]")
    _vector("b_up", b_up, gate.shape[0], x, "w_up.shape[0]")
    out_shape = tuple(x.shape[:-1]) + (gate.shape[0],)
    return FusedLinear(x2d, (gate, up), (b_gate, b_up), norm, norm_weight, norm_bias, eps, activation,
                       _residual(residual, x, out_shape), True, out_shape)
