"""hal.sparsity.accelerate: the per-layer dense vs 2:4 decision from injected timings (there is no sparse kernel on a
CPU), the swap, the plan table, and the refusals."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hal.errors import InvalidInput, UnsupportedOp
from hal.sparsity import accelerate, decide, prune_2_4, unavailable_reason


class MaskedDense(nn.Module):
    """A stand-in sparse layer for the CPU: the 2:4 weight multiplied densely (the same numbers, any speed)."""

    def __init__(self, weight, bias, backend, scale=1.0):
        super().__init__()
        self.weight, self.bias, self.backend, self.scale = weight, bias, backend, scale

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


def factory(layer, weight, backend):
    return MaskedDense(weight, layer.bias, backend)


def model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 16))
    prune_2_4(m, skip=["4"])
    return m


def timings(table):
    def timer(name, variant, fn):
        fn()
        return table[(name, variant)]
    return timer


def test_keeps_the_faster_per_layer_and_swaps_only_those():
    m = model()
    x = torch.randn(12, 64)
    expected = m(x)
    table = {("0", "dense"): 2.0, ("0", "sparse:cusparselt"): 1.0, ("0", "sparse:cutlass"): 1.5,
             ("2", "dense"): 1.0, ("2", "sparse:cusparselt"): 1.2, ("2", "sparse:cutlass"): 1.1}
    plan = accelerate(m, x, timer=timings(table), sparse_linear=factory)
    rows = {p.name: p for p in plan.layers}
    assert set(rows) == {"0", "2"}  # layer 4 was not pruned: not a candidate
    assert rows["0"].decision == "sparse:cusparselt" and rows["0"].speedup == pytest.approx(2.0)
    assert rows["2"].decision == "dense" and rows["2"].backend == "cutlass" and "not above" in rows["2"].reason
    assert isinstance(m[0], MaskedDense) and isinstance(m[2], nn.Linear)
    assert rows["0"].tokens == 12 and rows["2"].in_features == 128
    assert torch.allclose(m(x), expected, rtol=1e-6, atol=1e-6)
    text = str(plan)
    assert "12 x 64 -> 128" in text and "2.00x" in text and "1 of 2 layers sparse" in text
    assert plan.to_dict()["layers"][0]["speedup"] == pytest.approx(2.0)


def test_never_slower_decision_and_min_speedup():
    assert decide(1.0, {"cutlass": 1.0})[0] == "dense"  # equal is not faster
    assert decide(1.0, {"cutlass": 0.99})[0] == "sparse:cutlass"
    assert decide(1.0, {"cutlass": 0.9}, min_speedup=1.2)[0] == "dense"
    assert decide(1.0, {})[0] == "dense"
    for dense, sparse in [(3.0, {"a": 2.0, "b": 4.0}), (0.5, {"a": 0.6}), (1.0, {"a": 0.2, "b": 0.1})]:
        decision, backend, _ = decide(dense, sparse)
        kept_ms = sparse[backend] if decision != "dense" else dense
        assert kept_ms == min([dense, *sparse.values()])  # never slower than dense, and the fastest of all


def test_a_sparse_layer_with_different_numbers_is_refused():
    m = model()
    plan = accelerate(m, torch.randn(4, 64), timer=timings({(n, v): 1.0 if v == "dense" else 0.1 for n in "02"
                                                             for v in ("dense", "sparse:cusparselt", "sparse:cutlass")}),
                      sparse_linear=lambda layer, w, b: MaskedDense(w, layer.bias, b, scale=1.1))
    assert plan.sparse_layers == []
    assert "differs from dense" in plan.layers[0].reason


def test_on_the_cpu_no_sparse_kernel_runs_and_the_plan_says_so():
    m = model()
    assert "CUDA" in unavailable_reason(torch.device("cpu"), torch.bfloat16)
    plan = accelerate(m, torch.randn(8, 64))
    assert plan.sparse_layers == [] and all(p.dense_ms is not None and p.sparse_ms is None for p in plan.layers)
    assert all("no 2:4 sparse kernel on cpu" in p.reason for p in plan.layers)
    assert isinstance(m[0], nn.Linear)


def test_bad_arguments():
    m = model()
    with pytest.raises(InvalidInput, match="min_speedup"):
        accelerate(m, torch.randn(2, 64), min_speedup=0.5)
    with pytest.raises(InvalidInput, match="backend"):
        accelerate(m, torch.randn(2, 64), backends=("cusparse",))
    from hal.sparsity import SemiStructuredLinear

    with pytest.raises(UnsupportedOp, match="CUDA"):
        SemiStructuredLinear(torch.zeros(32, 64), None, "cutlass")


def test_a_kernel_failing_at_run_time_is_a_reason_not_a_crash():
    class Refuses(nn.Module):
        def forward(self, x):
            raise RuntimeError("sparse_semi_structured_mad_op : Supported only on GPUs with compute capability 8.x")

    m = model()
    plan = accelerate(m, torch.randn(4, 64), timer=lambda name, variant, fn: 1.0,
                      sparse_linear=lambda layer, w, b: Refuses(), backends=("cutlass",))
    assert plan.sparse_layers == [] and "compute capability 8.x" in plan.layers[0].reason


def test_cutlass_is_refused_off_compute_capability_8(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    cuda0 = torch.device("cuda", 0)
    assert "8.x only" in unavailable_reason(cuda0, torch.bfloat16, "cutlass")
    assert unavailable_reason(cuda0, torch.bfloat16, "cusparselt") is None
    assert "float16/bfloat16" in unavailable_reason(cuda0, torch.float32, "cusparselt")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    assert "8.0+" in unavailable_reason(cuda0, torch.bfloat16, "cusparselt")
