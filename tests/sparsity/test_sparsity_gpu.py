"""hal.sparsity on a CUDA GPU (pytest -m gpu): the semi-structured kernels give the dense product of the 2:4 weight,
and accelerate measures and decides for real."""

import pytest
import torch
import torch.nn as nn

from hal.sparsity import SemiStructuredLinear, accelerate, prune_2_4, unavailable_reason

SPARSE_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not SPARSE_GPU, reason="needs a CUDA GPU of compute capability 8.0+")]


@pytest.mark.parametrize("backend", ["cutlass", "cusparselt"])
def test_semi_structured_linear_matches_dense(backend):
    if unavailable_reason(torch.device("cuda"), torch.bfloat16, backend):
        pytest.skip(unavailable_reason(torch.device("cuda"), torch.bfloat16, backend))
    torch.manual_seed(0)
    layer = nn.Linear(1024, 2048).cuda().bfloat16()
    prune_2_4(layer)
    x = torch.randn(3, 200, 1024, device="cuda", dtype=torch.bfloat16)
    sparse = SemiStructuredLinear(layer.weight, layer.bias, backend)
    dense = layer(x)
    out = sparse(x)
    assert out.shape == dense.shape
    assert float((out.float() - dense.float()).norm() / dense.float().norm()) < 1e-2


def test_accelerate_measures_on_the_gpu_and_never_keeps_a_slower_layer():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4096, 11008), nn.SiLU(), nn.Linear(11008, 4096)).cuda().bfloat16()
    prune_2_4(model)
    plan = accelerate(model, torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16))
    assert len(plan.layers) == 2 and all(p.dense_ms is not None for p in plan.layers)
    for p in plan.layers:
        if p.decision.startswith("sparse"):
            assert p.sparse_ms < p.dense_ms
    print(plan)
