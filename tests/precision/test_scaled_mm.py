"""hal.precision.scaled_mm: the emulation is torch._scaled_mm up to float32 summation order (on the CPU); the
checks name bad input."""

import pytest
import torch

from hal.errors import DTypeError, ShapeError
from hal.precision import E4M3, E5M2, hardware, scaled_mm, scaling
from hal.precision.scaled_mm import cpu_scaled_mm_runs, emulated_scaled_mm
from hal.precision.scaling import Fp8Tensor


def operands(m, k, n, axis_a=None, axis_b=None, fmt_a=E4M3, fmt_b=E4M3):
    torch.manual_seed(0)
    a = scaling.quantize(torch.randn(m, k) * 3, fmt_a, axis=axis_a)
    b = scaling.quantize(torch.randn(k, n), fmt_b, axis=axis_b)
    return a, Fp8Tensor(b.data.t().contiguous().t(), b.scale, b.clipped)


@pytest.mark.skipif(not cpu_scaled_mm_runs(), reason="this torch build has no CPU torch._scaled_mm")
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rowwise", [False, True])
def test_emulation_matches_torch_scaled_mm(out_dtype, rowwise):
    """FP8 x FP8 products are exact in float32; only the summation order differs (a few float32 ulps of the sum),
    which rounding to bfloat16 hides: bitwise equal in bf16, within K float32 roundoffs of |a| @ |b| in float32."""
    a, b = operands(48, 64, 32, 1 if rowwise else None, 0 if rowwise else None, fmt_a=E5M2)
    got = torch._scaled_mm(a.data, b.data, scale_a=a.scale, scale_b=b.scale, out_dtype=out_dtype)
    emulated = emulated_scaled_mm(a, b, out_dtype)
    assert torch.equal(got, scaled_mm(a, b, out_dtype))
    if out_dtype == torch.bfloat16:
        assert torch.equal(got, emulated)
    else:
        magnitude = a.dequantize().abs() @ b.dequantize().abs()
        assert ((got - emulated).abs() <= 64 * 2.0**-24 * magnitude).all()


def test_product_is_the_dequantised_product():
    a, b = operands(16, 32, 16, 1, 0)
    ref = a.dequantize(torch.float64) @ b.dequantize(torch.float64)
    out = scaled_mm(a, b, torch.float32)
    assert ((out.double() - ref).abs() <= 32 * 2.0**-24 * (a.dequantize().abs() @ b.dequantize().abs())).all()


def test_bad_operands():
    a, b = operands(16, 32, 16)
    with pytest.raises(ShapeError, match="multiplies"):
        scaled_mm(a, Fp8Tensor(b.data[:16], b.scale, b.clipped), torch.float32)
    with pytest.raises(DTypeError, match="float64"):
        scaled_mm(a, b, torch.float64)
    with pytest.raises(ShapeError, match="scales"):
        scaled_mm(Fp8Tensor(a.data, torch.ones(16), a.clipped), b, torch.float32)


def test_gpus_without_fp8_are_refused_with_the_fix():
    assert hardware.fp8_unsupported_reason((9, 0)) is None and hardware.fp8_unsupported_reason((8, 9)) is None
    reason = hardware.fp8_unsupported_reason((8, 0))
    assert "8.9" in reason and "8.0" in reason
    assert hardware.block_formats((10, 0)) == ("mxfp8", "nvfp4") and hardware.block_formats((9, 0)) == ()
