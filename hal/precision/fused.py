"""The FP8 cast fused with the op before it: RMSNorm + quantise and SiLU·mul + quantise, and the two training ops
built on them, ``rmsnorm_linear`` (a norm feeding a projection) and ``swiglu_down`` (a SwiGLU product feeding the
down projection).

Unfused, ``down(silu(gate) * up)`` writes the product in bf16, reads it back for the amax, reads it again for the
cast and writes FP8. Fused, the kernel reads gate and up, computes the product in float32 and writes only FP8
(tensorwise: an amax pass and a cast pass, both recomputing the product; rowwise: one program per row does both).
The product is never rounded to bf16, so it is slightly more accurate than the unfused composition.

The kernels are hal.kernels.fp8's. The torch path computes the same op in float32 and casts with
hal.precision.scaling: the reference the kernels are tested against (they agree up to the last bit of sigmoid / rsqrt, so a rare value may land one FP8 code apart).

Training ops take the Fp8Linear whose weight they multiply by (its recipe, bias and weight cache are used); they
run the dynamic recipes ("tensorwise", "rowwise"). Backward: the grad products in FP8 as in Fp8Linear, the norm
and SwiGLU derivatives in float32 from the saved high-precision inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hal.errors import InvalidInput, ShapeError
from hal.kernels import fp8 as fp8_kernels
from hal.precision.cast import Quantized2d, quantize_2d, resolve_backend
from hal.precision.formats import E4M3, FloatFormat
from hal.precision.linear import (
    Fp8Config,
    Fp8Linear,
    activation_dtype,
    backward_operands,
    grad_products,
    mm_dtype,
    operand,
    transposed,
)
from hal.precision.scaled_mm import scaled_mm
from hal.precision.scaling import Fp8Tensor

OPS = ("silu_mul", "rmsnorm")


def reference_op(op: str, x: torch.Tensor, x2: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
                 eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The op in float32 (and, for rmsnorm, the per-row 1/rms it used, shape (rows, 1))."""
    if op == "silu_mul":
        return F.silu(x.float()) * x2.float(), None
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return xf * rstd * norm_weight.float(), rstd


def _check(op: str, x: torch.Tensor, x2: torch.Tensor | None, norm_weight: torch.Tensor | None,
           axis: int | None) -> None:
    if op not in OPS:
        raise InvalidInput(f"unknown fused op {op!r}; choose one of {sorted(OPS)}")
    if x.dim() != 2:
        raise ShapeError(f"the fused casts take 2-D (rows, features) tensors, got {tuple(x.shape)}")
    if op == "silu_mul" and (x2 is None or x2.shape != x.shape):
        raise ShapeError(f"silu_mul needs gate and up of one shape, got {tuple(x.shape)} and "
                         f"{None if x2 is None else tuple(x2.shape)}")
    if op == "rmsnorm":
        if norm_weight is None or tuple(norm_weight.shape) != (x.shape[1],):
            raise ShapeError(f"rmsnorm needs a weight of shape ({x.shape[1]},), got "
                             f"{None if norm_weight is None else tuple(norm_weight.shape)}")
        if axis == 0:
            raise InvalidInput("rmsnorm's cast shares scales along features (axis=1) or the tensor (None), not "
                               "axis=0; cast the normalised tensor with quantize_2d for that")


def fused_quantize(op: str, x: torch.Tensor, *, x2: torch.Tensor | None = None,
                   norm_weight: torch.Tensor | None = None, eps: float = 1e-6, fmt: FloatFormat = E4M3,
                   axis: int | None = None, power_of_2: bool = False, row: bool = True, col: bool = False,
                   backend: str = "auto") -> tuple[Quantized2d, torch.Tensor | None]:
    """Cast ``op(x[, x2])`` to ``fmt`` without writing the op's result in high precision.

    ``op``: "silu_mul" (silu(x) * x2) or "rmsnorm" (x / rms(x) * norm_weight, rms over the last axis with ``eps``).
    Scales as in quantize_2d. Returns the FP8 forms and, for rmsnorm, 1/rms per row (float32, (rows, 1)).
    """
    _check(op, x, x2, norm_weight, axis)
    if resolve_backend(x, backend) == "torch":
        value, rstd = reference_op(op, x, x2, norm_weight, eps)
        return quantize_2d(value, fmt, axis=axis, power_of_2=power_of_2, row=row, col=col, backend="torch"), rstd
    from hal.kernels.fp8 import triton_cast as k

    n, m = x.shape
    out_row = torch.empty((n, m), dtype=fmt.dtype, device=x.device) if row else None
    out_col = torch.empty((m, n), dtype=fmt.dtype, device=x.device).t() if col else None
    rstd = torch.empty(n, dtype=torch.float32, device=x.device) if op == "rmsnorm" else None
    op_args = dict(op=k.SILU_MUL if op == "silu_mul" else k.RMSNORM, x2=x2, norm_weight=norm_weight, eps=eps,
                   rstd_out=rstd)
    if axis is None:
        result = fp8_kernels.cast_tensorwise(x, fmt.dtype, out_row=out_row, out_col=out_col, power_of_2=power_of_2,
                                             **op_args)
    else:
        result = fp8_kernels.cast_rowwise(x, fmt.dtype, axis, out_row=out_row, out_col=out_col,
                                          power_of_2=power_of_2, **op_args)
    scale, clipped = result.scale, result.clipped
    forms = Quantized2d(Fp8Tensor(out_row, scale, clipped) if row else None,
                        Fp8Tensor(out_col, scale, clipped) if col else None, None)
    return forms, rstd.unsqueeze(1) if rstd is not None else None


def silu_mul_quantize(gate: torch.Tensor, up: torch.Tensor, fmt: FloatFormat = E4M3, axis: int | None = None,
                      power_of_2: bool = False, backend: str = "auto") -> Fp8Tensor:
    """silu(gate) * up cast to ``fmt`` (2-D inputs; row-major FP8 out)."""
    return fused_quantize("silu_mul", gate, x2=up, fmt=fmt, axis=axis, power_of_2=power_of_2, backend=backend)[0].row


def rmsnorm_quantize(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, fmt: FloatFormat = E4M3,
                     axis: int | None = None, power_of_2: bool = False, backend: str = "auto") -> Fp8Tensor:
    """RMSNorm(x) * weight cast to ``fmt`` (2-D input; row-major FP8 out)."""
    return fused_quantize("rmsnorm", x, norm_weight=weight, eps=eps, fmt=fmt, axis=axis, power_of_2=power_of_2,
                          backend=backend)[0].row


def _linear_config(linear: Fp8Linear, need_dw: bool) -> Fp8Config:
    if not isinstance(linear, Fp8Linear):
        raise InvalidInput(f"the fused training ops take an Fp8Linear (convert with precision.fp8_training), got "
                           f"{type(linear).__name__}")
    if linear.recipe.delayed:
        raise InvalidInput("the fused training ops run dynamic recipes ('tensorwise', 'rowwise'), not delayed "
                           "scaling; use the unfused Fp8Linear for recipe='delayed'")
    return Fp8Config(linear.recipe, linear.backend, True, False, need_dw)


def _forward_product(op: str, x: torch.Tensor, cfg: Fp8Config, w_fwd: Fp8Tensor, out_dtype: torch.dtype, **op_args):
    recipe = cfg.recipe
    rowwise = recipe.rowwise
    q, rstd = fused_quantize(op, x, fmt=E4M3, axis=1 if rowwise else None, power_of_2=recipe.power_of_2, row=True,
                             col=cfg.need_dw and not rowwise, backend=cfg.backend, **op_args)
    y = scaled_mm(q.row, transposed(w_fwd), mm_dtype(out_dtype, recipe, x.device), recipe.fast_accum_forward)
    return y.to(out_dtype), q.col, rstd


class _SwigluDown(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, weight, w_fwd_data, w_fwd_scale, w_bwd_data, w_bwd_scale, cfg):
        y, h_col, _ = _forward_product("silu_mul", gate, cfg, operand(w_fwd_data, w_fwd_scale), gate.dtype, x2=up)
        w_bwd_scale = w_fwd_scale if w_bwd_scale is None else w_bwd_scale
        ctx.cfg, ctx.w_dtype = cfg, weight.dtype
        ctx.save_for_backward(gate, up, w_bwd_data, w_bwd_scale, h_col.data if h_col is not None else None,
                              h_col.scale if h_col is not None else None)
        return y

    @staticmethod
    def backward(ctx, gy):
        gate, up, w_bwd_data, w_bwd_scale, h_col_data, h_col_scale = ctx.saved_tensors
        cfg = ctx.cfg
        need_dh = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        need_dw = ctx.needs_input_grad[2]
        g, u = gate.float(), up.float()
        s = torch.sigmoid(g)
        if cfg.recipe.rowwise:
            h = g * s * u if need_dw else None
        else:
            h = operand(h_col_data, h_col_scale) if need_dw else None
        w_bwd = operand(w_bwd_data, w_bwd_scale) if need_dh else None
        dh, dw = grad_products(gy, cfg, w_bwd, h, need_dh, need_dw, gate.dtype, ctx.w_dtype)
        dgate = dup = None
        if need_dh:
            dh = dh.float()
            dup = (dh * g * s).to(up.dtype)
            dgate = (dh * u * s * (1 + g * (1 - s))).to(gate.dtype)
        return dgate, dup, dw, None, None, None, None, None


def swiglu_down(gate: torch.Tensor, up: torch.Tensor, down: Fp8Linear) -> torch.Tensor:
    """down(silu(gate) * up) with the SiLU·mul fused into the FP8 cast of down's input. gate, up: (..., hidden)."""
    if gate.shape != up.shape or gate.shape[-1] != getattr(down, "in_features", None):
        raise ShapeError(f"gate and up must share a shape ending in down.in_features; got {tuple(gate.shape)}, "
                         f"{tuple(up.shape)} for {down}")
    grad = torch.is_grad_enabled()
    cfg = _linear_config(down, grad and down.weight.requires_grad)
    need_dh = grad and (gate.requires_grad or up.requires_grad)
    w_fwd, w_bwd = down._weight_forms(need_dh)
    g2, u2 = activation_dtype(gate).reshape(-1, gate.shape[-1]), activation_dtype(up).reshape(-1, up.shape[-1])
    y = _SwigluDown.apply(g2, u2, down.weight, w_fwd.data, w_fwd.scale, *backward_operands(w_fwd, w_bwd), cfg)
    y = y.reshape(*gate.shape[:-1], down.out_features)
    return y + down.bias.to(y.dtype) if down.bias is not None else y


class _RmsnormLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, weight, w_fwd_data, w_fwd_scale, w_bwd_data, w_bwd_scale, eps, out_dtype, cfg):
        y, n_col, rstd = _forward_product("rmsnorm", x, cfg, operand(w_fwd_data, w_fwd_scale), out_dtype,
                                          norm_weight=norm_weight, eps=eps)
        w_bwd_scale = w_fwd_scale if w_bwd_scale is None else w_bwd_scale
        ctx.cfg, ctx.w_dtype = cfg, weight.dtype
        ctx.save_for_backward(x, norm_weight, rstd, w_bwd_data, w_bwd_scale,
                              n_col.data if n_col is not None else None, n_col.scale if n_col is not None else None)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, nw, rstd, w_bwd_data, w_bwd_scale, n_col_data, n_col_scale = ctx.saved_tensors
        cfg = ctx.cfg
        need_dn = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        need_dw = ctx.needs_input_grad[2]
        x_hat = x.float() * rstd
        if cfg.recipe.rowwise:
            n = x_hat * nw.float() if need_dw else None
        else:
            n = operand(n_col_data, n_col_scale) if need_dw else None
        w_bwd = operand(w_bwd_data, w_bwd_scale) if need_dn else None
        dn, dw = grad_products(gy, cfg, w_bwd, n, need_dn, need_dw, x.dtype, ctx.w_dtype)
        dx = dnw = None
        if need_dn:
            dn = dn.float()
            dn_w = dn * nw.float()
            dx = (rstd * (dn_w - x_hat * (dn_w * x_hat).mean(dim=-1, keepdim=True))).to(x.dtype)
            dnw = (dn * x_hat).sum(dim=0).to(nw.dtype)
        return dx, dnw, dw, None, None, None, None, None, None, None


def rmsnorm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, linear: Fp8Linear) -> torch.Tensor:
    """linear(RMSNorm(x) * norm_weight) with the norm fused into the FP8 cast of linear's input. x: (..., features)."""
    if x.shape[-1] != getattr(linear, "in_features", None) or tuple(norm_weight.shape) != (x.shape[-1],):
        raise ShapeError(f"x (..., {x.shape[-1]}) needs a norm weight ({x.shape[-1]},) and a linear taking "
                         f"{x.shape[-1]} features; got {tuple(norm_weight.shape)} and {linear}")
    grad = torch.is_grad_enabled()
    cfg = _linear_config(linear, grad and linear.weight.requires_grad)
    need_dn = grad and (x.requires_grad or norm_weight.requires_grad)
    w_fwd, w_bwd = linear._weight_forms(need_dn)
    x2 = x.reshape(-1, x.shape[-1])  # normalised in float32 from x's own dtype; the output follows autocast
    out_dtype = activation_dtype(x[:0]).dtype
    y = _RmsnormLinear.apply(x2, norm_weight, linear.weight, w_fwd.data, w_fwd.scale, *backward_operands(w_fwd, w_bwd),
                             eps, out_dtype, cfg)
    y = y.reshape(*x.shape[:-1], linear.out_features)
    return y + linear.bias.to(y.dtype) if linear.bias is not None else y
