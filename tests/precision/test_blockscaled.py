"""hal.precision.blockscaled: MXFP8 and NVFP4 quantise / dequantise within their per-element bounds, and the
reference block-scaled matmul vs float64 (no Blackwell GPU was available: the reference is all that runs)."""

import pytest
import torch
from precision_helpers import rel

from hal.errors import InvalidInput, ShapeError, UnsupportedOp
from hal.precision import E2M1, E4M3, blockscaled, product_error_bound


def gaussian(rows, cols, seed=0):
    torch.manual_seed(seed)
    return torch.randn(rows, cols, dtype=torch.float64) * torch.logspace(-2, 2, cols // 32, dtype=torch.float64
                                                                          ).repeat_interleave(32)


@pytest.mark.parametrize("mode", ["floor", "rceil"])
def test_mxfp8_round_trip_within_the_element_bound(mode):
    x = gaussian(16, 256)
    q = blockscaled.quantize_mxfp8(x, mode=mode)
    assert q.elements.dtype == torch.float8_e4m3fn and q.block_scales.shape == (16, 8)
    scales = q.scales(torch.float64).repeat_interleave(32, dim=-1)
    assert (torch.frexp(q.scales(torch.float64))[0] == 0.5).all()  # E8M0: powers of two
    out = q.dequantize(torch.float64)
    bound = E4M3.unit_roundoff * x.abs() + E4M3.min_subnormal / 2 * scales
    saturated = (x.abs() / scales - E4M3.max_value).clamp(min=0) * scales  # floor mode: values above 448 X clip
    assert ((out - x).abs() <= bound + saturated + 1e-300).all()
    if mode == "rceil":
        assert (saturated == 0).all()


def test_nvfp4_round_trip_within_the_element_bound():
    x = gaussian(8, 128)
    q = blockscaled.quantize_nvfp4(x)
    assert q.block_scales.dtype == torch.float8_e4m3fn and q.block_scales.shape == (8, 8)
    assert float(q.tensor_scale) == pytest.approx(float(x.abs().max()) / (6 * 448))
    values = blockscaled.decode_e2m1(q.elements)
    assert set(values.abs().unique().tolist()) <= set(blockscaled.E2M1_VALUES)
    scales = q.scales(torch.float64).repeat_interleave(16, dim=-1)
    out = q.dequantize(torch.float64)
    bound = E2M1.unit_roundoff * x.abs() + E2M1.min_subnormal / 2 * scales
    saturated = (x.abs() / scales - E2M1.max_value).clamp(min=0) * scales  # block scale rounded down in E4M3
    assert ((out - x).abs() <= bound + saturated + 1e-300).all()


def test_e2m1_rounds_to_nearest_ties_to_even_and_packs_low_nibble_first():
    v = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.3, -6.0])
    assert blockscaled.decode_e2m1(blockscaled.encode_e2m1(v)).tolist() == [0, 1, 1, 2, 2, 4, 4, 6, -0.5, -6]
    packed = blockscaled.pack_e2m1(blockscaled.encode_e2m1(torch.tensor([1.0, 6.0, -0.5, 0.0])))
    assert packed.view(torch.uint8).tolist() == [0x72, 0x09]


def test_non_finite_blocks_dequantise_to_nan():
    x = torch.randn(2, 64)
    x[0, 3] = float("inf")
    x[1, 40] = float("nan")
    mx = blockscaled.quantize_mxfp8(x).dequantize()
    assert torch.isnan(mx[0, :32]).all() and torch.isfinite(mx[0, 32:]).all() and torch.isnan(mx[1, 32:]).all()
    assert torch.isnan(blockscaled.quantize_nvfp4(x).dequantize()).any()


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_block_scaled_matmul_vs_float64(fmt):
    a, b = gaussian(32, 256, 1), gaussian(24, 256, 2)
    qa, qb = blockscaled.quantize_block_scaled(a, fmt), blockscaled.quantize_block_scaled(b, fmt)
    out = blockscaled.block_scaled_matmul(qa, qb)
    exact = blockscaled.block_scaled_matmul(qa, qb, torch.float64)
    assert rel(out, exact) < 256 * 2.0**-24  # the reference itself: float32 summation only
    element = blockscaled.element_format(fmt)
    assert rel(out, a @ b.t()) < product_error_bound(element, element, 256)


def test_format_selection_from_the_compute_capability():
    assert blockscaled.select_block_format((10, 0), "nvfp4") == "nvfp4"
    assert blockscaled.select_block_format((12, 0)) == "mxfp8"
    with pytest.raises(UnsupportedOp, match="10.x.*9.0"):
        blockscaled.select_block_format((9, 0))
    with pytest.raises(InvalidInput, match="unknown"):
        blockscaled.select_block_format((10, 0), "mxfp4")


def test_bad_shapes_are_refused():
    with pytest.raises(ShapeError, match="multiple of 32"):
        blockscaled.quantize_mxfp8(torch.randn(4, 48))
    with pytest.raises(ShapeError, match="blocked along K"):
        blockscaled.block_scaled_matmul(blockscaled.quantize_nvfp4(torch.randn(4, 32)),
                                        blockscaled.quantize_nvfp4(torch.randn(4, 64)))
    with pytest.raises(InvalidInput, match="mode"):
        blockscaled.quantize_mxfp8(torch.randn(4, 32), mode="round")
