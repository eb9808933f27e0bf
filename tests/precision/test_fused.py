"""hal.precision.fused: RMSNorm + cast and SiLU·mul + cast give the torch reference's FP8 codes, and the training ops
built on them (rmsnorm_linear, swiglu_down) are within their bounds of float64, forward and backward."""

import pytest
import torch
import torch.nn.functional as F
from precision_helpers import needs_kernel, rel

from hal.errors import InvalidInput, ShapeError
from hal.precision import E4M3, Fp8Linear, fused, product_error_bound

ROWS, HIDDEN, OUT = 24, 48, 32


@needs_kernel
@pytest.mark.parametrize("op", ["silu_mul", "rmsnorm"])
@pytest.mark.parametrize("axis", [None, 1])
def test_fused_kernel_gives_the_reference_codes(op, axis):
    torch.manual_seed(0)
    x, up = torch.randn(ROWS, HIDDEN) * 3, torch.randn(ROWS, HIDDEN)
    args = dict(x2=up) if op == "silu_mul" else dict(norm_weight=torch.rand(HIDDEN) + 0.5)
    kernel, rstd = fused.fused_quantize(op, x, axis=axis, row=True, col=True, backend="triton", **args)
    ref, ref_rstd = fused.fused_quantize(op, x, axis=axis, row=True, col=True, backend="torch", **args)
    # the op is float32 in both; sigmoid / rsqrt may differ in the last bit, moving a value by at most one code
    codes = (kernel.row.data.view(torch.uint8).int() - ref.row.data.view(torch.uint8).int()).abs()
    assert int(codes.max()) <= 1 and float((codes > 0).float().mean()) < 0.01
    assert torch.equal(kernel.col.data, kernel.row.data)
    assert torch.allclose(kernel.row.scale, ref.row.scale, rtol=1e-6, atol=0)
    if op == "rmsnorm":
        assert torch.allclose(rstd, ref_rstd, rtol=1e-6)


def test_fused_output_is_the_fp8_cast_of_the_float32_op():
    torch.manual_seed(1)
    g, u = torch.randn(ROWS, HIDDEN), torch.randn(ROWS, HIDDEN)
    q = fused.silu_mul_quantize(g, u, backend="torch")
    h = F.silu(g.double()) * u.double()
    assert rel(q.dequantize(torch.float64), h) < E4M3.unit_roundoff


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_kernel)])
def test_swiglu_down_forward_and_backward_vs_float64(recipe, backend):
    torch.manual_seed(2)
    down = Fp8Linear(HIDDEN, OUT, recipe=recipe, backend=backend)
    g = torch.randn(ROWS, HIDDEN, requires_grad=True)
    u = torch.randn(ROWS, HIDDEN, requires_grad=True)
    gy = torch.randn(ROWS, OUT)
    y = fused.swiglu_down(g, u, down)
    (y * gy).sum().backward()
    gd, ud = g.detach().double().requires_grad_(), u.detach().double().requires_grad_()
    wd = down.weight.detach().double().requires_grad_()
    yr = (F.silu(gd) * ud) @ wd.t() + down.bias.double()
    (yr * gy.double()).sum().backward()
    fmt = down.recipe.grad_format
    assert rel(y, yr) < product_error_bound(E4M3, E4M3, HIDDEN)
    assert rel(down.weight.grad, wd.grad) < product_error_bound(fmt, E4M3, ROWS)
    for got, ref in ((g.grad, gd.grad), (u.grad, ud.grad)):
        assert rel(got, ref) < product_error_bound(fmt, E4M3, OUT)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_rmsnorm_linear_forward_and_backward_vs_float64(recipe):
    torch.manual_seed(3)
    lin = Fp8Linear(HIDDEN, OUT, recipe=recipe, backend="torch")
    x = (torch.randn(ROWS, HIDDEN) * 4).requires_grad_()
    nw = (torch.rand(HIDDEN) + 0.5).requires_grad_()
    gy = torch.randn(ROWS, OUT)
    y = fused.rmsnorm_linear(x, nw, 1e-6, lin)
    (y * gy).sum().backward()
    xd, nwd = x.detach().double().requires_grad_(), nw.detach().double().requires_grad_()
    wd = lin.weight.detach().double().requires_grad_()
    yr = F.rms_norm(xd, (HIDDEN,), nwd, 1e-6) @ wd.t() + lin.bias.double()
    (yr * gy.double()).sum().backward()
    fmt = lin.recipe.grad_format
    assert rel(y, yr) < product_error_bound(E4M3, E4M3, HIDDEN)
    assert rel(lin.weight.grad, wd.grad) < product_error_bound(fmt, E4M3, ROWS)
    assert rel(x.grad, xd.grad) < product_error_bound(fmt, E4M3, OUT)
    assert rel(nw.grad, nwd.grad) < product_error_bound(fmt, E4M3, OUT)


def test_fused_ops_refuse_bad_input():
    lin = Fp8Linear(HIDDEN, OUT, backend="torch")
    with pytest.raises(ShapeError, match="gate and up"):
        fused.swiglu_down(torch.randn(4, HIDDEN), torch.randn(4, HIDDEN + 1), lin)
    with pytest.raises(InvalidInput, match="Fp8Linear"):
        fused.swiglu_down(torch.randn(4, HIDDEN), torch.randn(4, HIDDEN), torch.nn.Linear(HIDDEN, OUT))
    with pytest.raises(InvalidInput, match="delayed"):
        fused.rmsnorm_linear(torch.randn(4, HIDDEN), torch.ones(HIDDEN), 1e-6,
                             Fp8Linear(HIDDEN, OUT, recipe="delayed"))
    with pytest.raises(ShapeError, match="rmsnorm needs a weight"):
        fused.rmsnorm_quantize(torch.randn(4, HIDDEN), torch.ones(3))
    with pytest.raises(InvalidInput, match="axis=1"):
        fused.rmsnorm_quantize(torch.randn(4, HIDDEN), torch.ones(HIDDEN), axis=0)
    with pytest.raises(InvalidInput, match="unknown fused op"):
        fused.fused_quantize("gelu", torch.randn(4, HIDDEN))


def test_dynamo_traces_the_fused_ops_without_graph_breaks():
    lin, down = Fp8Linear(HIDDEN, 2 * OUT), Fp8Linear(OUT, HIDDEN)
    nw = torch.ones(HIDDEN, requires_grad=True)

    def block(x):
        gate, up = fused.rmsnorm_linear(x, nw, 1e-6, lin).chunk(2, dim=-1)
        return fused.swiglu_down(gate, up, down)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(torch.randn(ROWS, HIDDEN, requires_grad=True))
    assert explained.graph_break_count == 0
