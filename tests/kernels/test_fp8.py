"""Tests of hal.kernels.fp8: each x * s is rounded once to FP8, on the torch reference and in the Triton kernels, as an
exact oracle (the nearest FP8 value of the exact product, ties to the even code) says; overflow saturates; casts
write into padded views; bad input is refused.

On a CPU the kernels run in Triton's interpreter, which needs TRITON_INTERPRET=1 before triton is first imported;
this module sets it when it is imported first (otherwise the kernel tests skip and say so). On a CUDA GPU
(pytest -m gpu elsewhere) the same tests run the hardware conversion.
"""

import os
from fractions import Fraction

import pytest
import torch

CUDA = torch.cuda.is_available()  # without one, conftest.py has switched Triton's interpreter on

from hal.kernels import fp8  # noqa: E402
from hal.kernels.fp8 import reference  # noqa: E402

needs_kernel = pytest.mark.skipif(
    not (CUDA or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="no CUDA GPU, and triton was imported before this module could set TRITON_INTERPRET=1 "
           "(run: TRITON_INTERPRET=1 pytest tests/kernels/test_fp8.py)")
DEVICE = "cuda" if CUDA else "cpu"
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2

#: (amax, x, input dtype, FP8 dtype): x * s (s = fmt_max / amax in float32) rounded to float32 lands exactly on a
#: midpoint between two FP8 values that the exact product is not on, so two roundings give the wrong neighbour.
#: Found by comparing both roundings for every bfloat16 / float16 value (random float32 ones) below random amaxes.
DOUBLE_ROUNDING_CASES = [
    (768.0, 0.01171875, torch.bfloat16, E4M3),
    (768.0, 7.152557373046875e-07, torch.bfloat16, E5M2),
    (89.5, 0.00409698486328125, torch.float16, E4M3),
    (133.0, 1.0192394256591797e-05, torch.float16, E5M2),
    (497.256591796875, 0.7284032106399536, torch.float32, E4M3),
]


def fp8_grid(dtype: torch.dtype) -> torch.Tensor:
    """Every finite non-negative value of the format, ascending (codes 0 .. largest finite)."""
    top = 0x7E if dtype == E4M3 else 0x7B
    return torch.arange(0, top + 1, dtype=torch.uint8).view(dtype).double()


def nearest_fp8(exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The correctly rounded FP8 value (float64) of exact float64 values: nearest, ties to the even code, saturated."""
    grid = fp8_grid(dtype)
    mag = exact.abs()
    idx = torch.searchsorted(grid, mag).clamp(1, len(grid) - 1)
    below, above = grid[idx - 1], grid[idx]
    up = (above - mag < mag - below) | ((above - mag == mag - below) & (idx % 2 == 0))
    value = torch.where(mag >= grid[-1], grid[-1], torch.where(up, above, below))
    return value * exact.sign()


def exact_scale(amax: float, dtype: torch.dtype) -> torch.Tensor:
    """The documented quantisation scale: fmt_max / amax in float64, rounded once to float32."""
    return torch.tensor(reference.fp8_constants(dtype).max_value / amax, dtype=torch.float64).float()


def kernel_quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    scale, _ = fp8.quantize_into(x, out, backend="triton")
    return out, scale


@pytest.mark.parametrize("amax,x,in_dtype,dtype", DOUBLE_ROUNDING_CASES)
def test_one_rounding_where_float32_would_round_twice(amax, x, in_dtype, dtype):
    t = torch.tensor([[amax, x]], dtype=in_dtype)
    s = exact_scale(float(t[0, 0]), dtype)
    want = nearest_fp8(t.double() * s.double(), dtype)[0, 1]  # bf16/fp16/fp32 x float32: exact in float64
    twice = (t.float() * s).to(dtype).double()[0, 1]
    assert twice != want  # the case really is one where two roundings go wrong
    data, scale, _ = reference.quantize(t, dtype)
    assert float(data.double()[0, 1]) == float(want) and torch.equal(scale, 1.0 / s)


@needs_kernel
@pytest.mark.parametrize("amax,x,in_dtype,dtype", DOUBLE_ROUNDING_CASES)
def test_kernel_rounds_once_too(amax, x, in_dtype, dtype):
    t = torch.tensor([[amax, x]], dtype=in_dtype, device=DEVICE)
    data, _ = kernel_quantize(t, dtype)
    ref, _, _ = reference.quantize(t.cpu(), dtype)
    assert torch.equal(data.cpu().view(torch.uint8), ref.view(torch.uint8))


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float16])
def test_every_16_bit_value_rounds_once(dtype, in_dtype):
    values = torch.arange(0, 0x7C00, dtype=torch.int16).view(in_dtype)  # every finite non-negative value below 2^16
    amax = 498.0
    values = values[values.float() <= amax]
    x = torch.cat([values, -values]).reshape(1, -1)
    data, scale, clipped = reference.quantize(x, dtype)
    s = exact_scale(amax, dtype)
    assert torch.equal(data.double(), nearest_fp8(x.double() * s.double(), dtype))
    assert torch.equal(scale, 1.0 / s) and int(clipped) == 0


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_float32_and_float64_inputs_round_once(dtype):
    gen = torch.Generator().manual_seed(0)
    x32 = torch.randn(2000, generator=gen) * torch.logspace(-4, 2, 2000)
    data, _, _ = reference.quantize(x32.reshape(1, -1), dtype)
    s = exact_scale(float(x32.abs().max()), dtype)
    assert torch.equal(data.double().flatten(), nearest_fp8(x32.double() * s.double(), dtype))
    # float64: the product needs up to 77 bits, so the oracle is exact rational arithmetic; the values are chosen
    # 2^-60 relative off FP8 midpoints (where a float64 product rounds onto the midpoint)
    s = exact_scale(1000.0, dtype)
    grid = fp8_grid(dtype)
    mids = ((grid[:-1] + grid[1:]) / 2)[::7]
    x64 = torch.cat([mids / s.double() * (1 + 2.0**-60), mids / s.double() * (1 - 2.0**-60), torch.tensor([1000.0])])
    data, _, _ = reference.quantize(x64.reshape(1, -1), dtype)
    assert float(reference.amax_to_scale(x64.abs().max().float(), dtype)) == float(s)
    grid_f = [Fraction(float(v)) for v in grid]
    for xi, got in zip(x64.tolist(), data.double().flatten().tolist()):
        exact = Fraction(xi) * Fraction(float(s))
        best = min(range(len(grid_f)), key=lambda i: (abs(grid_f[i] - exact), i % 2))
        assert Fraction(got) == grid_f[best], (xi, got, float(grid_f[best]))


@needs_kernel
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("in_dtype", [torch.bfloat16, torch.float32])
def test_kernel_matches_the_oracle_on_many_values(dtype, in_dtype):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(64, 96, generator=gen) * torch.logspace(-3, 2, 96)).to(in_dtype)
    data, scale = kernel_quantize(x.to(DEVICE), dtype)
    s = exact_scale(float(x.float().abs().max()), dtype)
    assert torch.equal(data.cpu().double(), nearest_fp8(x.double() * s.double(), dtype))
    assert torch.equal(scale.cpu(), 1.0 / s)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_kernel)])
def test_finite_overflow_saturates_and_is_counted(backend):
    # a delayed scale far too large for this tensor: x * s overflows float32, which must saturate, not become NaN
    x = torch.tensor([[1e10, -1e10, 1.0, float("inf")] * 4], device=DEVICE)
    amax = torch.tensor(1e-30, device=DEVICE)
    if backend == "torch":
        data, _, clipped = reference.quantize(x, E4M3, amax_value=amax)
    else:
        data = torch.empty(x.shape, dtype=E4M3, device=DEVICE)
        clipped = fp8.cast_tensorwise(x, E4M3, out_row=data, amax_value=amax).clipped
    values = data.float().cpu()[0, :4]
    assert values[:3].tolist() == [448.0, -448.0, 448.0] and torch.isnan(values[3])
    assert int(clipped) == 12  # three finite values saturate in each of the four repeats; inf is not counted


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_kernel)])
def test_quantize_into_writes_views_of_a_padded_buffer(backend):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(20, 37, generator=gen).to(DEVICE)
    want, want_scale, _ = reference.quantize(x.cpu(), E4M3)
    rows = torch.zeros(32, 48, dtype=torch.uint8, device=DEVICE).view(E4M3)
    scale, clipped = fp8.quantize_into(x, rows[:20, :37], backend=backend)
    assert torch.equal(rows[:20, :37].cpu().view(torch.uint8), want.view(torch.uint8))
    assert not rows.view(torch.uint8)[20:].any() and not rows.view(torch.uint8)[:, 37:].any()
    assert torch.equal(scale.cpu(), want_scale) and int(clipped) == 0
    cols = torch.zeros(48, 32, dtype=torch.uint8, device=DEVICE).view(E4M3)  # the transpose layout _scaled_mm reads
    fp8.quantize_into(x, cols[:37, :20].t(), backend=backend)
    assert torch.equal(cols[:37, :20].t().cpu().view(torch.uint8), want.view(torch.uint8))


def test_constants_come_from_torch_finfo():
    assert reference.fp8_constants(E4M3) == (448.0, 3, 7)
    assert reference.fp8_constants(E5M2) == (57344.0, 2, 15)
    with pytest.raises(fp8.Fp8CastError, match="float8_e4m3fn"):
        reference.fp8_constants(torch.bfloat16)


def test_bad_input_is_refused_with_the_fix():
    x = torch.randn(4, 8)
    out = torch.empty(4, 8, dtype=E4M3)
    with pytest.raises(fp8.Fp8CastError, match="backend"):
        fp8.quantize_into(x, out, backend="cuda")
    with pytest.raises(fp8.Fp8CastError, match="2-D"):
        fp8.quantize_into(x.reshape(2, 2, 8), out)
    with pytest.raises(fp8.Fp8CastError, match="2-D"):
        fp8.quantize_into(torch.ones(4, 8, dtype=torch.int32), out)
    with pytest.raises(fp8.Fp8CastError, match="x's shape"):
        fp8.quantize_into(x, torch.empty(8, 4, dtype=E4M3))
    with pytest.raises(fp8.Fp8CastError, match="float8_e4m3fn or float8_e5m2"):
        fp8.quantize_into(x, torch.empty(4, 8))
    with pytest.raises(fp8.Fp8CastError, match="Triton"):
        fp8.quantize_into(x.double(), out, backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_on_the_gpu_kernel_eager_and_compiled_casts_round_once(dtype):
    # the hardware conversion after the FMA-based rounding to odd, torch's eager CUDA ops, and inductor's fused
    # kernel of the reference (where a multiply may be contracted into an FMA) all give the oracle's codes
    values = torch.arange(0, 0x7F80, dtype=torch.int16).view(torch.bfloat16)
    values = values[values.float() <= 768.0]
    x = torch.cat([values, -values]).reshape(2, -1)
    want = nearest_fp8(x.double() * exact_scale(768.0, dtype).double(), dtype)
    cases = [torch.tensor([[amax, v]], dtype=t) for amax, v, t, d in DOUBLE_ROUNDING_CASES if d == dtype]
    compiled = torch.compile(lambda t: reference.quantize(t, dtype)[0])
    for t, expected in [(x, want), *((c, None) for c in cases)]:
        on_gpu = t.cuda()
        if expected is None:
            expected = nearest_fp8(t.double() * exact_scale(float(t[0, 0]), dtype).double(), dtype)
        for got in (kernel_quantize(on_gpu, dtype)[0], reference.quantize(on_gpu, dtype)[0], compiled(on_gpu)):
            assert torch.equal(got.cpu().double(), expected)
