"""NVIDIA drivers on a real GPU (run on an H100/H200: ``pytest -m gpu tests/drivers/test_nvidia_gpu.py``).

The conformance kit on the first GPU under three precision policies and under its generic name ``cuda:0``,
detected capabilities against what torch reads from the CUDA runtime, the precision policy's paths and errors,
attention through hal's kernel, out-of-memory as CapacityExceeded, NVML telemetry, a claimed subgraph fused by
Inductor, and hal.nn.convert under the fp8 policy.
"""

from __future__ import annotations

import pytest
import torch

import hal
import hal.nn
from hal.device import OpSpec
from hal.errors import CapacityExceeded
from hal.subgraph import Subgraph, run_wired
from hal.testing.conformance import DeviceConformance

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with a CUDA build of torch"),
]


def first_gpu_uri(options: str = "") -> str:
    """The hal URI of CUDA device 0 (hopper:0 on an H100/H200), with ``options``."""
    from hal.drivers.nvidia.detect import detect

    gpu = detect().find(0)
    assert gpu is not None and not gpu.problem, f"CUDA device 0 was not detected: {gpu}"
    return gpu.uri + options


class TestConformance(DeviceConformance):
    uri = first_gpu_uri() if torch.cuda.is_available() else "hopper:0"


class TestConformanceBf16Policy(DeviceConformance):
    uri = first_gpu_uri("?matmul_precision=bf16") if torch.cuda.is_available() else "hopper:0"


class TestConformanceFp8Policy(DeviceConformance):
    uri = first_gpu_uri("?matmul_precision=fp8") if torch.cuda.is_available() else "hopper:0"


class TestConformanceCudaName(DeviceConformance):
    """cuda:0 opens the first GPU whatever its family (hopper:0 on an H100) and must conform the same."""

    uri = "cuda:0"


def test_detected_capabilities_match_the_cuda_runtime():
    device = hal.device(first_gpu_uri())
    caps = device.capabilities
    gpu = caps.sections["gpu"]
    props = torch.cuda.get_device_properties(0)
    assert gpu.name == props.name
    assert gpu.sm_count.value == props.multi_processor_count and gpu.sm_count.kind == "measured"
    assert gpu.compute_capability == f"{props.major}.{props.minor}"
    assert gpu.resources["l2_cache_bytes"].value == props.L2_cache_size
    assert gpu.resources["shared_memory_per_block_optin_bytes"].value == props.shared_memory_per_block_optin
    assert gpu.resources["shared_memory_per_sm_bytes"].value == props.shared_memory_per_multiprocessor
    # NVML's total counts memory the CUDA runtime reserves for itself: the two agree within 2%
    assert caps.memory_bytes.value == pytest.approx(props.total_memory, rel=0.02)
    if props.major == 9:
        assert gpu.resources["shared_memory_per_sm_bytes"].value == 228 * 1024
        assert gpu.resources["shared_memory_per_block_optin_bytes"].value == 227 * 1024
        assert caps.peak["bfloat16_tensor_flop_per_s"].kind == "derived"
    hal.capability.validate(caps.to_dict())


def test_cuda_0_is_the_first_gpu_under_its_generic_name():
    family, generic = hal.device(first_gpu_uri()), hal.device("cuda:0")
    assert generic.torch_device == family.torch_device == torch.device("cuda", 0)
    assert generic.capabilities.identity["listed_as"] == first_gpu_uri()
    assert generic.capabilities.peak == family.capabilities.peak
    a, b = torch.randn(128, 256, device="cuda"), torch.randn(256, 64, device="cuda")
    torch.testing.assert_close(generic.matmul(a, b), family.matmul(a, b), rtol=0, atol=0)


def test_probe_lists_the_gpu_as_available():
    uri = first_gpu_uri()
    kind = uri.split(":")[0]
    infos = hal.registry.probe(kind, refresh=True)
    assert any(i.uri == uri and i.available for i in infos), infos


@pytest.mark.parametrize("precision", ["native", "tf32", "bf16", "fp16", "fp8"])
def test_matmul_policy_on_the_gpu(precision):
    from hal.drivers.nvidia.matmul import expected_error

    device = hal.device(first_gpu_uri(f"?matmul_precision={precision}"))
    a, b = torch.randn(256, 512, device="cuda"), torch.randn(512, 128, device="cuda")
    program = device.prepare(OpSpec("matmul", [a, b]))
    out = program(a, b)
    ref = a.double() @ b.double()
    error = float((out.double() - ref).norm() / ref.norm())
    assert out.dtype == torch.float32 and out.device == device.torch_device
    assert error <= device.capabilities.ops["matmul"].tolerance["float32"]
    assert error <= 2 * expected_error(precision, torch.float32, 512)
    if precision == "native":
        assert error < 1e-5  # IEEE float32, not TF32
    if precision == "tf32":
        assert error > 1e-5  # the tensor cores really read TF32


def test_host_inputs_are_moved_and_results_stay_on_the_gpu():
    device = hal.device(first_gpu_uri())
    x, w = torch.randn(8, 64), torch.randn(32, 64)
    out = device.linear(x, w)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), x @ w.T, rtol=1e-4, atol=1e-4)


def test_attention_runs_through_hals_kernel_when_asked():
    device = hal.device(first_gpu_uri("?attention=hal"))
    q, k, v = (torch.randn(2, 8, 256, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    program = device.prepare(OpSpec("attention", [q, k, v], attrs={"causal": True}))
    out = program(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    assert program.path == "hal.kernels.attention (Triton/Gluon)"
    assert float((out.double() - ref).norm() / ref.norm()) < device.capabilities.ops["attention"].tolerance["bfloat16"]


def test_out_of_memory_is_capacity_exceeded_with_requested_and_free_bytes():
    device = hal.device(first_gpu_uri())
    op = OpSpec("relu", [torch.empty(4, device="cuda")])
    too_big = 2**40  # 1 TiB of float32 elements' worth of bytes / 4

    def allocate(x):
        return torch.empty(too_big // 4, device="cuda") + x.sum()

    with pytest.raises(CapacityExceeded, match="ran out of GPU memory") as caught:
        device._guarded(op, allocate)(torch.ones(4, device="cuda"))
    assert caught.value.needed == pytest.approx(too_big, rel=0.01)
    assert 0 < caught.value.available < device.capabilities.memory_bytes.value


def test_telemetry_reads_live_values():
    reading = hal.device(first_gpu_uri()).telemetry()
    assert reading["power_w"] > 0 and 0 < reading["temperature_c"] < 110
    assert 0 <= reading["gpu_utilisation_pct"] <= 100
    assert reading["memory_used_bytes"] > 0 and reading["memory_free_bytes"] > 0


def _block(batch: int, dtype: torch.dtype) -> tuple[Subgraph, list[dict], torch.Tensor]:
    """linear+relu -> layer_norm -> linear -> gelu -> softmax on a (batch, 256) input."""
    g = torch.Generator().manual_seed(0)
    w1, b1 = (torch.randn(512, 256, generator=g) / 16).to(dtype), torch.randn(512, generator=g).to(dtype)
    ln, w2 = (torch.rand(512, generator=g) + 0.5).to(dtype), (torch.randn(128, 512, generator=g) / 16).to(dtype)
    x = torch.randn(batch, 256, generator=g).to(dtype)
    ops = [
        OpSpec("linear", [x], {"weight": w1, "bias": b1}, {"activation": "relu"}),
        OpSpec("layer_norm", [torch.empty(batch, 512, dtype=dtype)], {"weight": ln}),
        OpSpec("linear", [torch.empty(batch, 512, dtype=dtype)], {"weight": w2}),
        OpSpec("gelu", [torch.empty(batch, 128, dtype=dtype)]),
        OpSpec("softmax", [torch.empty(batch, 128, dtype=dtype)]),
    ]
    return Subgraph.chain(ops), [{"weight": w1, "bias": b1}, {"weight": ln}, {"weight": w2}, {}, {}], x


@pytest.mark.parametrize(("options", "dtype"), [("?fuse=inductor", torch.float32), ("?fuse=inductor&matmul_precision=bf16", torch.float32), ("?fuse=inductor", torch.bfloat16), ("?fuse=inductor&matmul_precision=fp8", torch.float32)])
def test_a_claimed_subgraph_is_fused_by_inductor_and_equals_the_ops_one_by_one(options, dtype):
    from hal.drivers.nvidia import fusion

    device = hal.device(first_gpu_uri(options))
    sub, params, x = _block(64, dtype)
    assert device.claim(sub)
    program = device.prepare_subgraph(sub, params)
    out = program(x)
    assert program.path.startswith(fusion.FUSED) and out.device.type == "cuda" and out.dtype == dtype
    one_by_one = run_wired(sub, [device.prepare(op, p) for op, p in zip(sub.ops, params)], [x])
    tolerance = max(device.capabilities.ops[op.name].tolerance[str(dtype).removeprefix("torch.")] for op in sub.ops)
    assert float((out.double() - one_by_one.double()).norm() / one_by_one.double().norm()) < tolerance
    assert torch.equal(program(x), out), "the compiled program is deterministic from call to call"


def test_convert_runs_the_fp8_policy_through_the_generic_layers_on_the_gpu():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 64)).eval()
    x = torch.randn(32, 256)
    converted = hal.nn.convert(model, first_gpu_uri("?matmul_precision=fp8")).eval()
    out = converted(x)
    paths = [layer.hal_program().path for _, layer in converted.device_layers()]
    with torch.no_grad():
        ref = model.double()(x.double())
    error = float((out.detach().double().cpu() - ref).norm() / ref.norm())
    assert paths == ["torch linear (float8_e4m3fn)"] * 2 and out.device.type == "cuda"
    assert 1e-3 < error < 2 * converted.device.capabilities.ops["linear"].tolerance["float32"]
