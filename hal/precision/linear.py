"""``Fp8Linear``: an ``nn.Linear`` whose three training matmuls run in FP8 (see hal.precision.recipes for which
operand is scaled along which axis in each).

All state lives in the module: the parameters are nn.Linear's own (same names, so state dicts load either way);
delayed scaling adds two buffers, ``fp8_amax_history`` (2, history_len) float32 with rows (input, grad_output),
newest first, and ``fp8_clipped`` (2,) int64, the count of values that saturated in each role. Nothing global
(FSDP and checkpointing see ordinary buffers). The FP8 forms of the weight are cached between steps in which the
weight did not change (hal.precision.weight_cache); under torch.compile the cache is bypassed (the compiled graph
casts the weight itself).

What is saved for the backward pass: tensorwise recipes save the input already in FP8 (column-major, the layout
the grad-weight product reads) and the FP8 weight, not the high-precision tensors; the rowwise recipe saves the
high-precision input (it is cast again along the other axis) and the FP8 weight scaled along N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from hal.errors import DTypeError, InvalidInput, ShapeError
from hal.precision import scaling
from hal.precision.cast import quantize_2d
from hal.precision.formats import E4M3
from hal.precision.recipes import Fp8Recipe, resolve_recipe
from hal.precision.scaled_mm import OUT_DTYPES, scaled_mm
from hal.precision.scaling import Fp8Tensor
from hal.precision.weight_cache import WeightCache

#: torch._scaled_mm needs both dimensions of a weight to be multiples of 16.
DIM_MULTIPLE = 16
DELAYED_ROLES = ("input", "grad_output")


@dataclass(frozen=True)
class Fp8Config:
    recipe: Fp8Recipe
    backend: str
    primed: bool  # delayed scaling: the histories hold at least one step
    update_history: bool  # delayed scaling in training mode: push this step's amax
    need_dw: bool  # save what the grad-weight product needs


def mm_dtype(dtype: torch.dtype, recipe: Fp8Recipe, device: torch.device) -> torch.dtype:
    """The dtype the FP8 product writes: the wanted one, except bf16 for rowwise on CUDA (its only output)."""
    return torch.bfloat16 if recipe.rowwise and device.type == "cuda" else dtype


def _push(history: torch.Tensor, amax: torch.Tensor) -> None:
    """history <- [amax, history[:-1]] in place; a non-finite amax enters as 0 (its step's NaN is reported by the
    gradient check, and must not poison the scales of the next history_len steps)."""
    entry = torch.where(torch.isfinite(amax), amax, torch.zeros_like(amax)).reshape(1)
    history.copy_(torch.cat([entry, history[:-1]]))


def _delayed_amax(history: torch.Tensor, x: torch.Tensor, primed: bool) -> torch.Tensor:
    """The amax the scale comes from: the history's max, or (first step) the larger of it and x's own amax."""
    past = history.max()
    return past if primed else torch.maximum(past, scaling.amax(x))


def transposed(q: Fp8Tensor) -> Fp8Tensor:
    """The transpose of an FP8 operand, scale included (a (1, N) scale becomes (N, 1))."""
    return Fp8Tensor(q.data.t(), q.scale.t() if q.scale.dim() else q.scale, q.clipped)


def backward_operands(w_fwd: Fp8Tensor, w_bwd: Fp8Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The backward form's (data, scale) for an autograd function's inputs; the scale is None when it is the forward
    form's own tensor (tensorwise), because torch.compile cannot trace a Function given one tensor twice."""
    if w_bwd is None:
        return None, None
    return w_bwd.data, None if w_bwd.scale is w_fwd.scale else w_bwd.scale


def operand(data: torch.Tensor, scale: torch.Tensor) -> Fp8Tensor:
    """An Fp8Tensor for a matmul from saved data and scale (its clip count is not needed any more)."""
    return Fp8Tensor(data, scale, scale.new_zeros((), dtype=torch.int32))


class _Fp8LinearFunction(torch.autograd.Function):
    """y = x @ w.T with FP8 operands; the weight arrives already cast (forward form, and backward form if dx is
    needed). ``weight`` itself is passed so autograd routes its gradient here; its values are not read."""

    @staticmethod
    def forward(ctx, x, weight, w_fwd_data, w_fwd_scale, w_bwd_data, w_bwd_scale, history, clipped, cfg):
        recipe, need_dw = cfg.recipe, cfg.need_dw
        w_fwd = operand(w_fwd_data, w_fwd_scale)
        w_bwd_scale = w_fwd_scale if w_bwd_scale is None else w_bwd_scale
        if recipe.rowwise:
            qx = quantize_2d(x, E4M3, axis=1, power_of_2=recipe.power_of_2, backend=cfg.backend).row
            x_col = None
        else:
            amax_value = _delayed_amax(history[0], x, cfg.primed) if recipe.delayed else None
            q = quantize_2d(x, E4M3, power_of_2=recipe.power_of_2, row=True, col=need_dw, amax_value=amax_value,
                            return_amax=recipe.delayed and cfg.update_history, backend=cfg.backend)
            if recipe.delayed:
                clipped[0] += q.row.clipped
                if cfg.update_history:
                    _push(history[0], q.amax)
            qx, x_col = q.row, q.col
        y = scaled_mm(qx, transposed(w_fwd), mm_dtype(x.dtype, recipe, x.device), recipe.fast_accum_forward)
        ctx.cfg, ctx.history, ctx.clipped = cfg, history, clipped
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        if recipe.rowwise:
            ctx.save_for_backward(x if need_dw else None, w_bwd_data, w_bwd_scale, None)
        else:
            ctx.save_for_backward(x_col.data if need_dw else None, w_bwd_data, w_bwd_scale,
                                  x_col.scale if need_dw else None)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        saved_x, w_bwd_data, w_bwd_scale, x_col_scale = ctx.saved_tensors
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rowwise = ctx.cfg.recipe.rowwise
        x_for_dw = saved_x if rowwise or saved_x is None else operand(saved_x, x_col_scale)
        w_bwd = operand(w_bwd_data, w_bwd_scale) if need_dx else None
        dx, dw = grad_products(grad_out, ctx.cfg, w_bwd, x_for_dw, need_dx, need_dw, ctx.x_dtype, ctx.w_dtype,
                               ctx.history, ctx.clipped)
        return dx, dw, None, None, None, None, None, None, None


def grad_products(g: torch.Tensor, cfg: Fp8Config, w_bwd: Fp8Tensor | None, x_for_dw: torch.Tensor | Fp8Tensor | None,
                  need_dx: bool, need_dw: bool, x_dtype: torch.dtype, w_dtype: torch.dtype,
                  history: torch.Tensor | None = None, clipped: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dx = g @ w and dw = g.T @ x in FP8, g (M, N) in the recipe's gradient format.

    ``w_bwd``: the weight's backward form (column-major; scaled along N when rowwise). ``x_for_dw``: tensorwise
    recipes pass the input's FP8 column-major form, rowwise the high-precision input (cast here along M).
    ``history`` / ``clipped``: delayed scaling's buffers (row 1 is grad_output's).
    """
    recipe = cfg.recipe
    fmt, device = recipe.grad_format, g.device
    dx = dw = None
    if recipe.rowwise:
        if need_dx:
            qg = quantize_2d(g, fmt, axis=1, power_of_2=recipe.power_of_2, backend=cfg.backend).row
            dx = scaled_mm(qg, w_bwd, mm_dtype(x_dtype, recipe, device))
        if need_dw:
            g_col = quantize_2d(g, fmt, axis=0, power_of_2=recipe.power_of_2, row=False, col=True,
                                backend=cfg.backend).col
            x_col = quantize_2d(x_for_dw, E4M3, axis=0, power_of_2=recipe.power_of_2, row=False, col=True,
                                backend=cfg.backend).col
            dw = scaled_mm(transposed(g_col), x_col, mm_dtype(w_dtype, recipe, device))
    elif need_dx or need_dw:
        amax_value = _delayed_amax(history[1], g, cfg.primed) if recipe.delayed else None
        q = quantize_2d(g, fmt, power_of_2=recipe.power_of_2, row=need_dx, col=need_dw, amax_value=amax_value,
                        return_amax=recipe.delayed and cfg.update_history, backend=cfg.backend)
        if recipe.delayed:
            clipped[1] += (q.row if need_dx else q.col).clipped
            if cfg.update_history:
                _push(history[1], q.amax)
        if need_dx:
            dx = scaled_mm(q.row, w_bwd, x_dtype)
        if need_dw:
            dw = scaled_mm(transposed(q.col), x_for_dw, w_dtype)
    dx = dx.to(x_dtype) if dx is not None else None
    dw = dw.to(w_dtype) if dw is not None else None
    return dx, dw


class Fp8Linear(nn.Linear):
    """nn.Linear training in FP8 under ``recipe`` ("tensorwise", "rowwise", "delayed" or an Fp8Recipe).

    ``backend``: "auto" (Triton casts where they run, torch elsewhere), "triton" or "torch".
    ``cache_weights``: keep the weight's FP8 forms while it is unchanged (see hal.precision.weight_cache for what
    the cache can and cannot see). Both dimensions must be multiples of 16.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 recipe: str | Fp8Recipe = "tensorwise", backend: str = "auto", cache_weights: bool = True):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup(recipe, backend, cache_weights)

    def _setup(self, recipe: str | Fp8Recipe, backend: str, cache_weights: bool) -> None:
        bad = [f"{name}={n}" for name, n in (("in_features", self.in_features), ("out_features", self.out_features))
               if n % DIM_MULTIPLE]
        if bad:
            raise ShapeError(f"an FP8 Linear needs in_features and out_features that are multiples of {DIM_MULTIPLE} "
                             f"(the FP8 tensor cores' tile); got {', '.join(bad)}. Pad the layer, skip it, or use "
                             "fp8_training(..., fallback='bf16') to keep such layers in bfloat16")
        self.recipe = resolve_recipe(recipe)
        self.backend = backend
        self.cache_weights = cache_weights
        self.weight_cache = WeightCache()
        self._primed = False
        if self.recipe.delayed:
            device = self.weight.device
            self.register_buffer("fp8_amax_history", torch.zeros(2, self.recipe.history_len, device=device))
            self.register_buffer("fp8_clipped", torch.zeros(2, dtype=torch.int64, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: str | Fp8Recipe = "tensorwise", backend: str = "auto",
                    cache_weights: bool = True) -> Fp8Linear:
        """An Fp8Linear sharing ``linear``'s parameters (no copy): the optimizer's references stay valid."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        new._setup(recipe, backend, cache_weights)
        return new

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.recipe.name}"

    def clipped_counts(self) -> dict[str, int]:
        """Values that saturated so far, per role (delayed scaling; dynamic scaling never saturates). Syncs."""
        if not self.recipe.delayed:
            return {role: 0 for role in DELAYED_ROLES}
        return dict(zip(DELAYED_ROLES, (int(v) for v in self.fp8_clipped.tolist())))

    def _weight_forms(self, need_dx: bool) -> tuple[Fp8Tensor, Fp8Tensor | None]:
        """The weight's forward form and, when dx is needed, its backward form: from the cache while unchanged."""
        recipe, backend, weight = self.recipe, self.backend, self.weight
        if not self.cache_weights or torch.compiler.is_compiling():
            forms = cast_weight(weight, recipe, backend, backward=need_dx)
            return forms["forward"], forms.get("backward")
        both = need_dx and not recipe.rowwise  # tensorwise: one pass writes both layouts
        forward = self.weight_cache.get(weight, "forward", lambda: cast_weight(weight, recipe, backend, backward=both))
        if not need_dx:
            return forward, None
        return forward, self.weight_cache.get(
            weight, "backward", lambda: cast_weight(weight, recipe, backend, forward=not recipe.rowwise, backward=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_features, self.out_features)
        grad = torch.is_grad_enabled()
        w_fwd, w_bwd = self._weight_forms(grad and x.requires_grad)
        delayed = self.recipe.delayed
        cfg = Fp8Config(self.recipe, self.backend, self._primed, delayed and self.training,
                        grad and self.weight.requires_grad)
        y = _apply(x, self.weight, self.bias, w_fwd, w_bwd, self.fp8_amax_history if delayed else None,
                   self.fp8_clipped if delayed else None, cfg)
        if cfg.update_history:
            self._primed = True
        return y


def cast_weight(weight: torch.Tensor, recipe: Fp8Recipe, backend: str = "auto", forward: bool = True,
                backward: bool = False) -> dict[str, Fp8Tensor]:
    """A weight (N, K) cast for the forward product ("forward": row-major, scaled along K when rowwise) and/or
    the grad-input product ("backward": column-major, scaled along N when rowwise). Tensorwise recipes write both
    layouts in one pass with one scale, so they always return the forward form."""
    w = weight.detach()
    if not recipe.rowwise:
        q = quantize_2d(w, E4M3, power_of_2=recipe.power_of_2, row=True, col=backward, backend=backend)
        return {"forward": q.row, "backward": q.col} if backward else {"forward": q.row}
    forms = {}
    if forward:
        forms["forward"] = quantize_2d(w, E4M3, axis=1, power_of_2=recipe.power_of_2, backend=backend).row
    if backward:
        forms["backward"] = quantize_2d(w, E4M3, axis=0, power_of_2=recipe.power_of_2, row=False, col=True,
                                        backend=backend).col
    return forms


def _check_input(x: torch.Tensor, in_features: int, out_features: int) -> None:
    if x.shape[-1] != in_features:
        raise ShapeError(f"an FP8 Linear({in_features} -> {out_features}) got input with last dimension {x.shape[-1]}")
    if x.dtype not in OUT_DTYPES:
        raise DTypeError(f"FP8 Linear layers take bfloat16, float16 or float32 activations, got {x.dtype}; "
                         "cast the model (model.to(torch.bfloat16))")


def activation_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype its Linear would compute in: torch.autocast's dtype inside an autocast region (as
    nn.Linear would), else its own."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


def _apply(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, w_fwd: Fp8Tensor,
           w_bwd: Fp8Tensor | None, history: torch.Tensor | None, clipped: torch.Tensor | None,
           cfg: Fp8Config) -> torch.Tensor:
    """Run the autograd function on x flattened to 2-D, restore the shape, add the bias in high precision."""
    x2d = activation_dtype(x).reshape(-1, x.shape[-1])
    w_bwd_data, w_bwd_scale = backward_operands(w_fwd, w_bwd)
    y = _Fp8LinearFunction.apply(x2d, weight, w_fwd.data, w_fwd.scale, w_bwd_data, w_bwd_scale, history, clipped, cfg)
    y = y.reshape(*x.shape[:-1], weight.shape[0])
    return y + bias.to(y.dtype) if bias is not None else y


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               recipe: str | Fp8Recipe = "tensorwise", backend: str = "auto") -> torch.Tensor:
    """F.linear in FP8 with a dynamic recipe ("tensorwise" or "rowwise"), no module state: the weight is cast on
    every call (use Fp8Linear to cache it, or for delayed scaling, which keeps histories in buffers)."""
    recipe = resolve_recipe(recipe)
    if recipe.delayed:
        raise InvalidInput("delayed scaling keeps amax histories in a module's buffers; use Fp8Linear "
                           "(precision.fp8_training) for recipe='delayed', or a dynamic recipe here")
    if weight.dim() != 2 or weight.shape[0] % DIM_MULTIPLE or weight.shape[1] % DIM_MULTIPLE:
        raise ShapeError(f"fp8_linear needs a 2-D weight with both dimensions multiples of {DIM_MULTIPLE}, got "
                         f"{tuple(weight.shape)}")
    _check_input(x, weight.shape[1], weight.shape[0])
    grad = torch.is_grad_enabled()
    need_dx = grad and x.requires_grad
    forms = cast_weight(weight, recipe, backend, backward=need_dx)
    cfg = Fp8Config(recipe, backend, True, False, grad and weight.requires_grad)
    return _apply(x, weight, bias, forms["forward"], forms.get("backward"), None, None, cfg)
