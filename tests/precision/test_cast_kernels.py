"""hal.kernels.fp8 through hal.precision.cast.quantize_2d: the Triton kernels give the torch path's bits.

On a CPU they run in Triton's interpreter (tests/precision/conftest.py turns it on), where the final rounding to FP8
is hal's software encoder; on a GPU (pytest -m gpu elsewhere) the hardware conversion runs the same checks.
"""

import pytest
import torch
from precision_helpers import DEVICE, needs_kernel, same_codes

from hal.errors import DTypeError, InvalidInput, ShapeError
from hal.precision import E4M3, E5M2
from hal.precision.cast import quantize_2d

pytestmark = needs_kernel


def both(x, fmt, **kw):
    return (quantize_2d(x, fmt, backend="triton", **kw), quantize_2d(x, fmt, backend="torch", **kw))


def all_values_and_ties(fmt):
    """Every finite value of the format, the midpoints between neighbours (ties), and the floats just off them."""
    top = 0x7E if fmt is E4M3 else 0x7B
    values = torch.arange(0, top + 1, dtype=torch.uint8).view(fmt.dtype).float()
    mids = (values[:-1] + values[1:]) / 2
    near = torch.cat([torch.nextafter(mids, torch.tensor(0.0)), torch.nextafter(mids, torch.tensor(1e9))])
    every = torch.cat([values, mids, near, torch.tensor([fmt.max_value * 1.01, fmt.max_value * 9])])
    return torch.cat([every, -every])


@pytest.mark.parametrize("fmt", [E4M3, E5M2])
def test_rounding_matches_torch_on_every_value_and_tie(fmt):
    x = all_values_and_ties(fmt).reshape(1, -1).to(DEVICE)
    kernel, ref = both(x, fmt, amax_value=torch.tensor(fmt.max_value, device=DEVICE))  # scale exactly 1
    assert same_codes(kernel.row.data, ref.row.data)
    assert int(kernel.row.clipped) == int(ref.row.clipped) == 4  # the two values beyond the max, both signs


@pytest.mark.parametrize("fmt", [E4M3, E5M2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("power_of_2", [False, True])
def test_kernel_gives_the_torch_bits(fmt, dtype, axis, power_of_2):
    torch.manual_seed(0)
    x = (torch.randn(23, 37) * torch.logspace(-3, 3, 37)).to(dtype).to(DEVICE)  # odd sizes cross tile edges
    kernel, ref = both(x, fmt, axis=axis, power_of_2=power_of_2, row=True, col=True)
    assert same_codes(kernel.row.data, ref.row.data)
    assert same_codes(kernel.col.data, kernel.row.data)
    assert kernel.col.data.stride() == (1, 23)  # column-major, written in the same pass
    assert torch.equal(kernel.row.scale, ref.row.scale)


def test_delayed_cast_returns_its_amax_and_counts_clipping():
    torch.manual_seed(1)
    x = (torch.randn(40, 64) * 10).to(DEVICE)
    kernel, ref = both(x, E4M3, amax_value=torch.tensor(5.0, device=DEVICE), return_amax=True)
    assert same_codes(kernel.row.data, ref.row.data)
    assert int(kernel.row.clipped) == int(ref.row.clipped) > 0
    assert float(kernel.amax) == float(ref.amax) == float(x.abs().max())


def test_non_finite_inputs():
    x = torch.tensor([[1.0, float("inf"), -2.0, float("nan")] * 4], device=DEVICE)
    kernel, ref = both(x, E4M3, amax_value=torch.tensor(2.0, device=DEVICE))
    assert same_codes(kernel.row.data, ref.row.data)
    assert torch.isnan(kernel.row.data.float()[0, 1]) and int(kernel.row.clipped) == 0


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("axis", [None, 1])
@pytest.mark.parametrize("power_of_2", [False, True])
def test_non_finite_input_dequantises_to_nan_on_both_paths(axis, power_of_2):
    x = torch.randn(64, 256, device=DEVICE)
    x[3, 7], x[5, 9] = float("inf"), float("nan")
    a = quantize_2d(x, E4M3, axis=axis, power_of_2=power_of_2, backend="triton").row.dequantize()
    b = quantize_2d(x, E4M3, axis=axis, power_of_2=power_of_2, backend="torch").row.dequantize()
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(a[3]).any() and torch.isnan(a[5]).any()


def test_errors_name_the_problem():
    x = torch.randn(4, 4)
    with pytest.raises(ShapeError, match="2-D"):
        quantize_2d(x.reshape(2, 2, 4), E4M3)
    with pytest.raises(DTypeError, match="int"):
        quantize_2d(torch.ones(4, 4, dtype=torch.int32), E4M3)
    with pytest.raises(InvalidInput, match="axis"):
        quantize_2d(x, E4M3, axis=2)
    with pytest.raises(InvalidInput, match="backend"):
        quantize_2d(x, E4M3, backend="cuda")
    with pytest.raises(InvalidInput, match="layout"):
        quantize_2d(x, E4M3, row=False)
    with pytest.raises(InvalidInput, match="triton"):
        quantize_2d(x.double(), E4M3, backend="triton")
