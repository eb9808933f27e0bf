"""hal.precision on a CUDA GPU with FP8 tensor cores (pytest -m gpu): the hardware FP8 conversion in the Triton
kernels gives the torch path's bits, torch._scaled_mm agrees with the emulation, and every recipe trains within its
bounds, padded shapes and torch.compile included."""

import pytest
import torch
import torch.nn as nn
from precision_helpers import rel, same_codes

from hal.precision import E4M3, E5M2, Fp8Linear, fp8_training, fused, product_error_bound, scaling
from hal.precision.cast import quantize_2d
from hal.precision.scaled_mm import emulated_scaled_mm, scaled_mm
from hal.precision.scaling import Fp8Tensor

FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not FP8_GPU, reason="needs a CUDA GPU of compute capability 8.9+")]


@pytest.mark.parametrize("fmt", [E4M3, E5M2])
@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("power_of_2", [False, True])
def test_hardware_cast_gives_the_torch_bits(fmt, axis, power_of_2):
    torch.manual_seed(0)
    x = (torch.randn(1000, 520, device="cuda") * torch.logspace(-4, 4, 520, device="cuda")).bfloat16()
    a = quantize_2d(x, fmt, axis=axis, power_of_2=power_of_2, row=True, col=True, backend="triton")
    b = quantize_2d(x, fmt, axis=axis, power_of_2=power_of_2, row=True, col=True, backend="torch")
    assert same_codes(a.row.data, b.row.data) and same_codes(a.col.data, a.row.data)
    assert torch.equal(a.row.scale, b.row.scale)


def test_delayed_cast_on_the_gpu():
    x = torch.randn(4096, 1024, device="cuda") * 10
    am = torch.tensor(5.0, device="cuda")
    a = quantize_2d(x, E4M3, amax_value=am, return_amax=True, backend="triton")
    b = quantize_2d(x, E4M3, amax_value=am, return_amax=True, backend="torch")
    assert same_codes(a.row.data, b.row.data) and int(a.row.clipped) == int(b.row.clipped)
    assert float(a.amax) == float(b.amax)


@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("m", [256, 40])  # 40: padded to 48 for the tensor cores
def test_scaled_mm_matches_the_emulation(rowwise, m):
    torch.manual_seed(1)
    a = scaling.quantize(torch.randn(m, 512, device="cuda"), E4M3, axis=1 if rowwise else None)
    bq = scaling.quantize(torch.randn(512, 192, device="cuda"), E4M3, axis=0 if rowwise else None)
    b = Fp8Tensor(bq.data.t().contiguous().t(), bq.scale, bq.clipped)
    got = scaled_mm(a, b, torch.bfloat16)
    ref = emulated_scaled_mm(a, b, torch.float32)
    assert got.shape == (m, 192) and rel(got, ref) < 2.0**-8


@pytest.mark.parametrize("name", ["tensorwise", "rowwise", "delayed"])
def test_every_recipe_within_bounds_on_the_gpu(name):
    torch.manual_seed(2)
    lin = Fp8Linear(1024, 512, recipe=name).cuda().bfloat16()
    x = torch.randn(2, 500, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # 1000 tokens: padded
    g = torch.randn(2, 500, 512, device="cuda", dtype=torch.bfloat16)
    y = lin(x)
    (y.float() * g.float()).sum().backward()
    xd, wd = x.detach().double().requires_grad_(), lin.weight.detach().double().requires_grad_()
    yr = xd @ wd.t() + lin.bias.double()
    (yr * g.double()).sum().backward()
    fmt = lin.recipe.grad_format
    assert rel(y, yr) < product_error_bound(E4M3, E4M3, 1024, torch.bfloat16) * 1.2  # fast accumulation forward
    assert rel(x.grad, xd.grad) < product_error_bound(fmt, E4M3, 512, torch.bfloat16)
    assert rel(lin.weight.grad, wd.grad) < product_error_bound(fmt, E4M3, 1000, torch.bfloat16)


def test_fused_kernels_on_the_gpu():
    torch.manual_seed(3)
    g, u = torch.randn(512, 1024, device="cuda").bfloat16(), torch.randn(512, 1024, device="cuda").bfloat16()
    for axis in (None, 1):
        a, _ = fused.fused_quantize("silu_mul", g, x2=u, axis=axis, backend="triton")
        b, _ = fused.fused_quantize("silu_mul", g, x2=u, axis=axis, backend="torch")
        diff = (a.row.data.view(torch.uint8).int() - b.row.data.view(torch.uint8).int()).abs()
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01


def test_compiled_model_matches_eager_on_the_gpu():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(512, 1024), nn.SiLU(), nn.Linear(1024, 512)).cuda().bfloat16()
    twin = nn.Sequential(nn.Linear(512, 1024), nn.SiLU(), nn.Linear(1024, 512)).cuda().bfloat16()
    twin.load_state_dict(model.state_dict())
    compiled = torch.compile(fp8_training(model, "tensorwise"))
    fp8_training(twin, "tensorwise")
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    y, ye = compiled(x), twin(x)
    y.float().square().mean().backward()
    ye.float().square().mean().backward()
    assert rel(y, ye) < 2e-2 and rel(model[0].weight.grad, twin[0].weight.grad) < 5e-2
