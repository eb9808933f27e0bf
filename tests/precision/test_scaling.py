"""hal.precision.formats and hal.precision.scaling: the torch reference of FP8 scaling."""

import math

import pytest
import torch
from precision_helpers import rel

from hal.errors import InvalidInput
from hal.precision import E2M1, E4M3, E5M2, formats, scaling


def test_formats_match_torch_finfo():
    for fmt in (E4M3, E5M2):
        info = torch.finfo(fmt.dtype)
        assert fmt.max_value == info.max
        assert fmt.min_normal == info.smallest_normal
        assert fmt.unit_roundoff == info.eps / 2
    assert E4M3.max_exponent == 8 and E5M2.max_exponent == 15 and E2M1.max_exponent == 2
    assert E4M3.min_subnormal == 2.0**-9 and E2M1.min_subnormal == 0.5
    assert formats.fp8_format("e5m2") is E5M2
    with pytest.raises(InvalidInput, match="unknown FP8 format"):
        formats.fp8_format("e3m4")


@pytest.mark.parametrize("fmt", [E4M3, E5M2])
def test_dynamic_scale_puts_amax_on_the_format_max(fmt):
    x = torch.randn(64, 32) * 7
    q = scaling.quantize(x, fmt)
    assert q.clipped == 0
    assert float(q.data.float().abs().max()) == fmt.max_value
    assert q.scale.dim() == 0 and q.scale.dtype == torch.float32


@pytest.mark.parametrize("fmt", [E4M3, E5M2])
def test_all_zero_tensor_keeps_a_finite_scale(fmt):
    q = scaling.quantize(torch.zeros(16, 16), fmt)
    assert torch.isfinite(q.scale) and q.scale > 0
    assert torch.equal(q.dequantize(), torch.zeros(16, 16))
    tiny = scaling.quantize(torch.full((4, 4), 1e-40), fmt)  # subnormal float32: scale capped at 2^126
    assert torch.isfinite(tiny.scale) and float(1 / tiny.scale) <= 2.0**126


def test_huge_values_scale_down_instead_of_overflowing():
    x = torch.tensor([[3e38, -1e38, 1.0, 0.0]])
    for fmt in (E4M3, E5M2):
        q = scaling.quantize(x, fmt)
        out = q.dequantize()
        assert torch.isfinite(out).all() and q.clipped == 0
        assert rel(out[0, :2], x[0, :2]) < fmt.unit_roundoff


def test_given_amax_saturates_and_counts_clipping():
    x = torch.tensor([1.0, 2.0, 10.0, -20.0, 0.5])
    q = scaling.quantize(x, E4M3, amax_value=torch.tensor(2.0))  # scale 224: 10 and -20 exceed 448
    assert int(q.clipped) == 2
    assert q.data.float().tolist()[2:4] == [448.0, -448.0]


def test_inf_becomes_nan_never_a_finite_number():
    # torch's own cast saturates inf to 448 in E4M3; the FP8 cast must not
    assert float(torch.tensor(float("inf")).to(torch.float8_e4m3fn).float()) == 448.0
    x = torch.tensor([1.0, float("inf"), 2.0])
    q = scaling.quantize(x, E4M3, amax_value=torch.tensor(2.0))
    assert torch.isnan(q.data.float()[1]) and int(q.clipped) == 0
    dynamic = scaling.quantize(x, E5M2)  # amax inf -> scale 0 -> everything dequantises to NaN or 0, never inf->finite
    assert torch.isnan(dynamic.dequantize()[1])


def test_nan_propagates():
    x = torch.tensor([[1.0, float("nan")], [2.0, 3.0]])
    q = scaling.quantize(x, E4M3)
    assert torch.isnan(q.dequantize()).any()
    rows = scaling.quantize(x, E4M3, axis=1)
    assert torch.isnan(rows.dequantize()[0]).all() and torch.isfinite(rows.dequantize()[1]).all()


@pytest.mark.parametrize("fmt", [E4M3, E5M2])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_round_trip_error_is_within_half_an_ulp(fmt, axis):
    torch.manual_seed(0)
    x = torch.randn(48, 40, dtype=torch.float64) * torch.logspace(-2, 2, 40, dtype=torch.float64)
    q = scaling.quantize(x, fmt, axis=axis)
    out = q.dequantize(torch.float64)
    scale = q.scale.double()
    # per element: relative u in the normal range, half the smallest subnormal spacing (times the scale) below it
    bound = fmt.unit_roundoff * x.abs() + fmt.min_subnormal / 2 * scale
    assert ((out - x).abs() <= bound * (1 + 1e-12)).all()


def test_power_of_2_scales_are_exact_powers_of_two_at_most_the_dynamic_scale():
    amax = torch.tensor([0.3, 1.0, 5.0, 448.0, 1e-20, 7e30])
    for fmt in (E4M3, E5M2):
        s = scaling.amax_to_scale(amax, fmt)
        p = scaling.amax_to_scale(amax, fmt, power_of_2=True)
        assert (p <= s).all() and (p > s / 2).all()
        mantissa, _ = torch.frexp(p)
        assert (mantissa == 0.5).all()


def test_rowwise_scales_have_the_reduced_axis_of_size_one():
    x = torch.randn(6, 10)
    assert scaling.quantize(x, E4M3, axis=1).scale.shape == (6, 1)
    assert scaling.quantize(x, E4M3, axis=0).scale.shape == (1, 10)
    with pytest.raises(InvalidInput, match="per tensor"):
        scaling.quantize(x, E4M3, axis=1, amax_value=torch.tensor(1.0))
    with pytest.raises(InvalidInput, match="no torch dtype"):
        scaling.quantize(x, E2M1)


def test_scale_is_computed_once_in_float64():
    # fmt.max / amax rounded once to float32, so every path gets the same bits
    amax = torch.tensor(3.0)
    assert float(scaling.amax_to_scale(amax, E4M3)) == float(torch.tensor(448.0 / 3.0, dtype=torch.float32))
    assert math.isfinite(float(scaling.amax_to_scale(torch.tensor(0.0), E5M2)))
