"""hal.precision.linear: Fp8Linear's three products per recipe, vs float64 and vs an explicit reference of which axis
each operand is scaled along; delayed scaling's history; the FP8 weight cache."""

import pytest
import torch
import torch.nn as nn
from precision_helpers import needs_kernel, rel

from hal.errors import DTypeError, InvalidInput, ShapeError
from hal.precision import E4M3, Fp8Linear, fp8_linear, product_error_bound, recipes, scaling

M, K, N = 128, 256, 96


def make(recipe, backend="torch", seed=0, k=K, n=N, **kw):
    torch.manual_seed(seed)
    return Fp8Linear(k, n, recipe=recipe, backend=backend, **kw)


def run(lin, x, g):
    x = x.clone().requires_grad_()
    y = lin(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, lin.weight.grad, lin.bias.grad


def float64_reference(lin, x, g):
    x = x.double().requires_grad_()
    w = lin.weight.detach().double().requires_grad_()
    b = lin.bias.detach().double().requires_grad_()
    y = x @ w.t() + b
    (y * g.double()).sum().backward()
    return y.detach(), x.grad, w.grad, b.grad


@pytest.mark.parametrize("name", ["tensorwise", "rowwise", "delayed"])
def test_every_recipe_is_within_its_bound_of_float64(name):
    lin = make(name)
    recipe = lin.recipe
    torch.manual_seed(1)
    x, g = torch.randn(M, K), torch.randn(M, N)
    y, dx, dw, db = run(lin, x, g)
    ry, rdx, rdw, rdb = float64_reference(lin, x, g)
    bounds = {"y": product_error_bound(E4M3, E4M3, K), "dx": product_error_bound(recipe.grad_format, E4M3, N),
              "dw": product_error_bound(recipe.grad_format, E4M3, M)}
    errors = {"y": rel(y, ry), "dx": rel(dx, rdx), "dw": rel(dw, rdw)}
    for key, err in errors.items():
        assert bounds[key] / 4 < err < bounds[key], (key, err, bounds[key])  # FP8 really ran, and within bound
    assert rel(db, rdb) < 1e-6  # the bias gradient is a high-precision sum


def deq(x, fmt, axis, power_of_2):
    return scaling.quantize(x, fmt, axis=axis, power_of_2=power_of_2).dequantize(torch.float64)


@pytest.mark.parametrize("name", ["tensorwise", "rowwise"])
def test_each_operand_is_scaled_along_its_products_reduction_axis(name):
    """y = x w^T reduces over K, dx = g w over N, dw = g^T x over M: the scales must be shared along exactly those."""
    lin = make(name)
    r = lin.recipe
    torch.manual_seed(2)
    x, g = torch.randn(M, K) * torch.rand(M, 1) * 10, torch.randn(M, N) * torch.rand(1, N)  # rows/cols of unequal size
    y, dx, dw, _ = run(lin, x, g)
    w = lin.weight.detach()
    k_axis = 1 if r.rowwise else None
    ref_y = deq(x, E4M3, k_axis, r.power_of_2) @ deq(w, E4M3, k_axis, r.power_of_2).t() + lin.bias.double()
    ref_dx = deq(g, r.grad_format, k_axis, r.power_of_2) @ deq(w, E4M3, 0 if r.rowwise else None, r.power_of_2)
    m_axis = 0 if r.rowwise else None
    ref_dw = deq(g, r.grad_format, m_axis, r.power_of_2).t() @ deq(x, E4M3, m_axis, r.power_of_2)
    for got, ref in ((y, ref_y), (dx, ref_dx), (dw, ref_dw)):
        assert rel(got, ref) < 1e-6  # only float32 summation separates them


@needs_kernel
@pytest.mark.parametrize("name", ["tensorwise", "rowwise", "delayed"])
def test_triton_and_torch_backends_give_the_same_bits(name):
    torch.manual_seed(3)
    x, g = torch.randn(24, 48), torch.randn(24, 32)  # small: the interpreter runs every tile in numpy
    outs = [run(make(name, backend, k=48, n=32), x, g) for backend in ("triton", "torch")]
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_bfloat16_activations_and_leading_dimensions():
    lin = make("tensorwise").to(torch.bfloat16)
    x = torch.randn(2, 8, K, dtype=torch.bfloat16, requires_grad=True)
    y = lin(x)
    assert y.shape == (2, 8, N) and y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and lin.weight.grad.dtype == torch.bfloat16


def test_from_linear_shares_the_parameters_and_the_state_dict_layout():
    plain = nn.Linear(K, N)
    lin = Fp8Linear.from_linear(plain, "tensorwise")
    assert lin.weight is plain.weight and lin.bias is plain.bias
    assert set(lin.state_dict()) == set(plain.state_dict())
    delayed = Fp8Linear.from_linear(plain, "delayed")
    assert set(delayed.state_dict()) == {"weight", "bias", "fp8_amax_history", "fp8_clipped"}


def test_functional_form_equals_the_module():
    lin = make("rowwise")
    x = torch.randn(M, K)
    assert torch.equal(lin(x), fp8_linear(x, lin.weight, lin.bias, "rowwise", backend="torch"))
    with pytest.raises(InvalidInput, match="delayed"):
        fp8_linear(x, lin.weight, recipe="delayed")


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ShapeError, match="multiples of 16.*fallback='bf16'"):
        Fp8Linear(24, 32)
    lin = make("tensorwise")
    with pytest.raises(ShapeError, match="last dimension"):
        lin(torch.randn(4, K + 16))
    with pytest.raises(DTypeError, match="float64"):
        lin(torch.randn(4, K, dtype=torch.float64))
    with pytest.raises(InvalidInput, match="unknown FP8 recipe"):
        Fp8Linear(K, N, recipe="blockwise")
    with pytest.raises(InvalidInput, match="delayed scaling only"):
        recipes.resolve_recipe("tensorwise", history_len=4)
    with pytest.raises(InvalidInput, match="tensorwise"):
        recipes.Fp8Recipe("x", granularity="rowwise", scaling="delayed")


# ------------------------------------------------------------------------------------------- delayed scaling


def test_delayed_history_rolls_newest_first_and_keeps_history_len_entries():
    lin = Fp8Linear(K, N, backend="torch", recipe=recipes.resolve_recipe("delayed", 3))
    assert lin.fp8_amax_history.shape == (2, 3)
    amaxes = []
    for step, size in enumerate([1.0, 4.0, 2.0, 3.0]):
        x = torch.randn(M, K)
        x[0, 0] = size * 10  # the amax of this step
        amaxes.append(float(x.abs().max()))
        y = lin(x.requires_grad_())
        y.sum().backward()
    assert lin.fp8_amax_history[0].tolist() == pytest.approx(amaxes[::-1][:3])
    assert (lin.fp8_amax_history[1] > 0).all()  # grad_output's history, pushed in the backward pass


def test_delayed_scale_comes_from_the_history_max_and_spikes_are_counted():
    lin = make("delayed")
    x_big = torch.randn(M, K)
    x_big[0, 0] = 100.0
    lin(x_big)  # first step: scales from its own amax, primes the history with 100
    assert lin.clipped_counts() == {"input": 0, "grad_output": 0}
    small = torch.randn(M, K)
    y = lin(small)
    expected = scaling.quantize(small, E4M3, amax_value=torch.tensor(100.0)).dequantize(torch.float64)
    ref = expected @ scaling.quantize(lin.weight.detach(), E4M3).dequantize(torch.float64).t() + lin.bias.double()
    assert rel(y, ref) < 1e-6  # scaled by the history's 100, not by its own amax
    spike = torch.randn(M, K)
    spike[:3, 0] = torch.tensor([200.0, -300.0, 150.0])  # beyond the history's 100
    lin(spike)
    assert lin.clipped_counts()["input"] == 3


def test_delayed_history_is_frozen_in_eval_mode_and_ignores_non_finite_amax():
    lin = make("delayed")
    lin(torch.randn(M, K))
    before = lin.fp8_amax_history.clone()
    lin.eval()
    lin(torch.randn(M, K) * 50)
    assert torch.equal(lin.fp8_amax_history, before)
    lin.train()
    bad = torch.randn(M, K)
    bad[0, 0] = float("inf")
    out = lin(bad)
    assert torch.isnan(out).any()  # the step is visibly bad...
    assert lin.fp8_amax_history[0, 0] == 0 and torch.isfinite(lin.fp8_amax_history).all()  # ...the history is not


# ------------------------------------------------------------------------------------------- weight cache


def test_weight_cache_hits_while_the_weight_is_unchanged():
    lin = make("tensorwise")
    x = torch.randn(8, K)
    with torch.no_grad():
        first = lin(x)
        second = lin(x)
    assert torch.equal(first, second)
    assert lin.weight_cache.misses == 1 and lin.weight_cache.hits == 1


@pytest.mark.parametrize("name", ["tensorwise", "rowwise"])
def test_weight_cache_is_invalidated_by_an_optimizer_step(name):
    lin = make(name)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    x = torch.randn(M, K)
    lin(x).sum().backward()
    opt.step()  # in place on the parameter under no_grad: bumps its version counter
    fresh = make(name)
    fresh.load_state_dict(lin.state_dict())
    with torch.no_grad():
        assert torch.equal(lin(x), fresh(x))


def test_weight_cache_is_invalidated_by_assigning_data_and_pins_the_old_storage():
    lin = make("tensorwise")
    x = torch.randn(8, K)
    with torch.no_grad():
        lin(x)  # cached, keyed on the weight's address A
        keyed_ptr = lin.weight.data_ptr()
        lin.weight.data = torch.randn(N, K)
        # the entry still holds A's storage: no new tensor can be put at A and look like the cached weight
        assert lin.weight_cache._storage.data_ptr() == keyed_ptr
        assert all(torch.randn(N, K).data_ptr() != keyed_ptr for _ in range(4))
        out = lin(x)
    assert torch.equal(out, fp8_linear(x, lin.weight, lin.bias, backend="torch"))
    assert lin.weight_cache.misses == 2


def test_writes_through_data_are_invisible_until_clear():
    """The documented limit: param.data.mul_() bypasses the version counter, so the cache must be cleared."""
    lin = make("tensorwise")
    x = torch.randn(8, K)
    with torch.no_grad():
        before = lin(x)
        lin.weight.data.mul_(2)
        assert torch.equal(lin(x), before)  # stale, as documented
        lin.weight_cache.clear()
        assert not torch.equal(lin(x), before)
    uncached = make("tensorwise", cache_weights=False)
    with torch.no_grad():
        a = uncached(x)
        uncached.weight.data.mul_(2)
        assert not torch.equal(uncached(x), a)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tensorwise", "rowwise", "delayed"])
def test_torch_compile_matches_eager(name):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 32))
    twin = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 32))
    twin.load_state_dict(model.state_dict())
    from hal.precision import fp8_training

    compiled = torch.compile(fp8_training(model, name, backend="torch"))
    fp8_training(twin, name, backend="torch")
    for _ in range(2):
        x = torch.randn(16, 32)
        y, ye = compiled(x), twin(x)
        y.square().mean().backward()
        ye.square().mean().backward()
        assert rel(y, ye) < 1e-5
        assert rel(model[0].weight.grad, twin[0].weight.grad) < 1e-5
    if name == "delayed":
        assert torch.allclose(model[0].fp8_amax_history, twin[0].fp8_amax_history)


@pytest.mark.parametrize("name", ["tensorwise", "rowwise", "delayed"])
def test_dynamo_traces_the_fp8_layers_without_graph_breaks(name):
    """torch.compile must see one graph (a Function given one tensor twice, e.g. a shared scale, breaks it)."""
    from hal.precision import fp8_training

    model = fp8_training(nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 32)), name)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randn(16, 32, requires_grad=True))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
