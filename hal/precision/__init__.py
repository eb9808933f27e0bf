"""FP8 training and Blackwell's block-scaled formats, as model transforms over kernels.

    from hal import precision
    model = precision.fp8_training(model, recipe="tensorwise")   # or "rowwise", "delayed"; Linear layers -> FP8
    print(model.fp8_report)                                      # what happened to each Linear, and why
    with precision.fp8_autocast():                               # F.linear calls inside run in FP8
        loss = model(x).loss
    guard = precision.GradGuard(optimizer)                       # skips (and records) steps with inf/NaN gradients

Recipes, formats and error bounds: docs/precision.md. This package imports torch (and Triton lazily, where its
kernels run); it reaches no driver and not the runtime.
"""

from hal.precision.blockscaled import (
    BlockScaledTensor,
    block_scaled_matmul,
    quantize_block_scaled,
    quantize_mxfp8,
    quantize_nvfp4,
    select_block_format,
)
from hal.precision.bounds import product_error_bound
from hal.precision.cast import quantize_2d
from hal.precision.convert import AutocastReport, Bf16Linear, Fp8Report, fp8_autocast, fp8_training
from hal.precision.formats import E2M1, E4M3, E5M2, FloatFormat
from hal.precision.fused import rmsnorm_linear, rmsnorm_quantize, silu_mul_quantize, swiglu_down
from hal.precision.guard import GradGuard, SkippedStep
from hal.precision.linear import Fp8Linear, fp8_linear
from hal.precision.recipes import DELAYED, RECIPES, ROWWISE, TENSORWISE, Fp8Recipe
from hal.precision.scaled_mm import scaled_mm
from hal.precision.scaling import Fp8Tensor

__all__ = [
    "DELAYED", "E2M1", "E4M3", "E5M2", "RECIPES", "ROWWISE", "TENSORWISE", "AutocastReport", "Bf16Linear",
    "BlockScaledTensor", "FloatFormat", "Fp8Linear", "Fp8Recipe", "Fp8Report", "Fp8Tensor", "GradGuard",
    "SkippedStep", "block_scaled_matmul", "fp8_autocast", "fp8_linear", "fp8_training", "product_error_bound",
    "quantize_2d", "quantize_block_scaled", "quantize_mxfp8", "quantize_nvfp4", "rmsnorm_linear",
    "rmsnorm_quantize", "scaled_mm", "select_block_format", "silu_mul_quantize", "swiglu_down",
]
