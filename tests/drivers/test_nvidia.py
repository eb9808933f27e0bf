"""NVIDIA drivers on a CPU-only machine: detection through simulated NVML/CUDA (H100, H200, B200, A100), the
selection table, capability output, failure reasons, telemetry, the matmul precision policy and error paths."""

from __future__ import annotations

import ctypes.util
import sys
from contextlib import contextmanager

import pytest
import torch

pynvml = pytest.importorskip("pynvml")

from nvidia_fakes import A100, B200, H100_SXM, H200, CUresult, FakeCuda, FakeNvml, machine

from hal.capability import validate
from hal.device import OpSpec, TensorSpec
from hal.drivers.nvidia import BlackwellDevice, CudaDevice, HopperDevice, matmul
from hal.drivers.nvidia.architectures import kind_for
from hal.drivers.nvidia.detect import Backends, detect, using
from hal.errors import CapacityExceeded, DeviceFailure, DeviceMismatch, DeviceUnavailable, InvalidInput

KIB = 1024


@contextmanager
def simulated(*gpus, nvml: FakeNvml | None = None, cuda: FakeCuda | None = None, torch_problem=None):
    """Detection answers as a machine with ``gpus`` would (torch CUDA assumed usable unless torch_problem says not)."""
    gpus = machine(*gpus)
    backends = Backends(nvml or FakeNvml(gpus), cuda or FakeCuda(gpus), torch_problem=lambda: torch_problem)
    with using(backends):
        yield backends


# --------------------------------------------------------------------------- no GPU: distinct reasons


def test_this_machine_reads_as_no_nvml_library():
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this machine has libnvidia-ml; the no-driver reason cannot be seen here")
    for cls in (HopperDevice, BlackwellDevice, CudaDevice):
        (info,) = cls.probe()
        assert not info.available
        assert "NVML library not found (no NVIDIA driver installed)" in info.reason
        assert "driver" in info.fix
    (check,) = HopperDevice.diagnose()
    assert not check.ok and "NVML library not found" in check.detail


def _reason(nvml: FakeNvml | None = None, cuda: FakeCuda | None = None, torch_problem=None, gpus=(H100_SXM,)):
    with simulated(*gpus, nvml=nvml, cuda=cuda, torch_problem=torch_problem):
        (info,) = HopperDevice.probe()
        check = next(c for c in HopperDevice.diagnose() if not c.ok)
    assert not info.available and info.fix
    assert not check.ok and check.detail == info.reason and check.fix == info.fix
    return info.reason, info.fix


def test_failures_give_distinct_reasons_and_fixes(monkeypatch):
    library_missing = _reason(FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    driver_not_loaded = _reason(FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    no_gpu = _reason(FakeNvml([]), gpus=())
    assert "NVML library not found (no NVIDIA driver installed)" in library_missing[0]
    assert "not loaded" in driver_not_loaded[0] and "modprobe" in driver_not_loaded[1]
    assert "reports no GPU" in no_gpu[0] and "nvidia-smi" in no_gpu[1]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    with using(Backends()):
        (info,) = HopperDevice.probe()
    assert "nvidia-ml-py (pynvml) is not installed" in info.reason and "hal[gpu]" in info.fix
    reasons = {library_missing[0], driver_not_loaded[0], no_gpu[0], info.reason}
    assert len(reasons) == 4


def test_cuda_driver_failures_are_reported():
    gpus = machine(H100_SXM)
    libcuda = _reason(cuda=FakeCuda(gpus, load_error=RuntimeError('"cuda" is an NVIDIA driver library')))
    assert "libcuda.so" in libcuda[0] and "NVML sees 1 GPU" in libcuda[0]
    init = _reason(cuda=FakeCuda(gpus, init_error=CUresult.CUDA_ERROR_NOT_INITIALIZED))
    assert "CUDA_ERROR_NOT_INITIALIZED" in init[0]
    hidden = _reason(cuda=FakeCuda(gpus, order=[]))
    assert "CUDA sees none" in hidden[0]


def test_cuda_python_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with using(Backends(nvml=FakeNvml(machine(H100_SXM)), torch_problem=lambda: None)):
        (info,) = HopperDevice.probe()
    assert not info.available and "cuda-python" in info.reason and "hal[gpu]" in info.fix


def test_torch_without_cuda_is_reported():
    reason, fix = _reason(torch_problem="this torch build (2.13.0+cpu) has no CUDA support")
    assert "no CUDA support" in reason and "CUDA build of torch" in fix


def test_unavailable_device_cannot_be_opened_and_says_why():
    with simulated(nvml=FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)):
        with pytest.raises(DeviceUnavailable, match="not loaded"):
            HopperDevice("hopper:0")


# --------------------------------------------------------------------------- selection


@pytest.mark.parametrize(("major", "kind"), [(9, "hopper"), (10, "blackwell"), (12, "blackwell"), (8, "cuda"), (7, "cuda"), (11, "cuda")])
def test_selection_table(major, kind):
    assert kind_for(major) == kind


def test_mixed_machine_joins_nvml_and_cuda_by_pci_address():
    gpus = machine(A100, H100_SXM, B200)
    # CUDA numbers the B200 first, then the H100, then the A100 (fastest first); NVML numbers by PCI bus
    with using(Backends(FakeNvml(gpus), FakeCuda(gpus, order=[2, 1, 0]), torch_problem=lambda: None)):
        detection = detect()
        hopper, blackwell, cuda = HopperDevice.probe(), BlackwellDevice.probe(), CudaDevice.probe()
    assert [(g.ordinal, g.kind, g.name) for g in detection.gpus] == [
        (0, "blackwell", "NVIDIA B200"),
        (1, "hopper", "NVIDIA H100 80GB HBM3"),
        (2, "cuda", "NVIDIA A100-SXM4-80GB"),
    ]
    assert [i.uri for i in hopper] == ["hopper:1"] and hopper[0].available
    assert [i.uri for i in blackwell] == ["blackwell:0"] and blackwell[0].summary["sm_count"] == 148
    # cuda:N opens every GPU, so its probe lists every GPU; the family GPUs say which name they are listed under too
    assert [(i.uri, i.summary.get("alias_of")) for i in cuda] == [("cuda:0", "blackwell:0"), ("cuda:1", "hopper:1"), ("cuda:2", None)]
    assert all(i.available for i in cuda) and cuda[2].summary["compute_capability"] == "8.0"
    assert detection.gpus[1].nvml.uuid == gpus[1].uuid


def test_absent_kind_names_what_is_here():
    with simulated(H100_SXM):
        (info,) = BlackwellDevice.probe()
        assert not info.available and "hopper:0" in info.reason and info.fix == "use hopper:0"
        with pytest.raises(DeviceUnavailable, match="open it as hopper:0 \\(or cuda:0"):
            BlackwellDevice("blackwell:0")
        with pytest.raises(DeviceUnavailable, match="no CUDA device 3"):
            HopperDevice("hopper:3")
        with pytest.raises(DeviceUnavailable, match="no CUDA device 1"):
            CudaDevice("cuda:1")


def _differences(family: dict, generic: dict) -> dict:
    """Where the capability documents of one GPU opened as its family and as cuda:N differ, besides its name."""
    return {key: (family[key], generic[key]) for key in family if key not in ("uri", "kind") and family[key] != generic[key]}


@pytest.mark.parametrize(("gpu", "family"), [(H100_SXM, HopperDevice), (H200, HopperDevice), (B200, BlackwellDevice), (A100, CudaDevice)])
def test_cuda_n_opens_any_nvidia_gpu_as_its_family_device(gpu, family):
    # cuda:0 on an H100 was refused ("open it as hopper:0"): users expect cuda:N to open any NVIDIA GPU
    with simulated(gpu):
        generic = CudaDevice("cuda:0?matmul_precision=bf16&attention=hal")
        named = family(f"{family.kind}:0?matmul_precision=bf16&attention=hal")
        gen_caps, named_caps = generic.capabilities, named.capabilities
        matmul_op = OpSpec("matmul", [torch.empty(256, 256), torch.empty(256, 256)])
        assert generic.estimate(matmul_op) == named.estimate(matmul_op)
        if family is not CudaDevice:
            q = torch.empty(1, 2, 8, 64, dtype=torch.bfloat16)
            attention = OpSpec("attention", [q, q, q], attrs={"causal": True})
            assert generic.prepare(attention).path == named.prepare(attention).path == "hal.kernels.attention (Triton/Gluon)"
        listed = CudaDevice.probe()
        doctor = CudaDevice.diagnose()
    validate(gen_caps.to_dict())
    assert generic.torch_device == named.torch_device == torch.device("cuda", 0)
    assert gen_caps.kind == "cuda" and gen_caps.uri == "cuda:0?attention=hal&matmul_precision=bf16"
    assert gen_caps.identity["listed_as"] == f"{kind_for(gpu.compute_capability[0])}:0"
    assert _differences(named_caps.to_dict(), gen_caps.to_dict()) == {}
    # what the cuda probe lists is what opens (hal.device checks the listing); a family GPU is marked as the same GPU
    assert [(i.uri, i.available, i.summary.get("alias_of")) for i in listed] == [("cuda:0", True, None if family is CudaDevice else f"{family.kind}:0")]
    assert all(c.ok for c in doctor)


def test_hal_device_opens_cuda_0_on_a_hopper_through_the_registry(monkeypatch):
    import hal
    from hal import registry

    monkeypatch.setattr(registry, "_probed", {})  # keep simulated probe results out of other tests
    with simulated(H100_SXM):
        try:
            generic, named = hal.device("cuda:0"), hal.device("hopper:0")
            counted, available = hal.device_count("cuda"), hal.is_available("cuda:0")
        finally:
            for uri in ("cuda:0", "hopper:0"):
                opened = registry._open.get(uri)
                if opened is not None:
                    opened.close()
    assert isinstance(generic, CudaDevice) and generic.torch_device == named.torch_device
    assert generic.capabilities.sections["gpu"].architecture == "hopper" and counted == 1 and available


def test_hal_indices_are_cuda_ordinals_after_cuda_visible_devices():
    # NVML numbers by PCI bus and ignores CUDA_VISIBLE_DEVICES; CUDA (and torch, and hal) number what stays visible.
    # CUDA_VISIBLE_DEVICES=2,0 on an A100 / H100 / B200 machine: cuda:0 is the B200, cuda:1 the A100, no H100.
    gpus = machine(A100, H100_SXM, B200)
    with using(Backends(FakeNvml(gpus), FakeCuda(gpus, order=[2, 0]), torch_problem=lambda: None)):
        first, second = CudaDevice("cuda:0"), CudaDevice("cuda:1")
        blackwell = BlackwellDevice("blackwell:0")
        with pytest.raises(DeviceUnavailable, match="no CUDA device 2"):
            CudaDevice("cuda:2")
        with pytest.raises(DeviceUnavailable, match="hal runs as cuda:1"):
            HopperDevice("hopper:1")
    assert first.gpu.name == "NVIDIA B200" and first.capabilities.identity["uuid"] == gpus[2].uuid
    assert first.capabilities.identity["listed_as"] == "blackwell:0" and blackwell.gpu.cuda.pci_address == first.gpu.cuda.pci_address
    assert second.gpu.name == "NVIDIA A100-SXM4-80GB" and second.torch_device == torch.device("cuda", 1)
    assert second.capabilities.identity["uuid"] == gpus[0].uuid


# --------------------------------------------------------------------------- capabilities


def test_blackwell_b200_capabilities():
    with simulated(B200):
        (info,) = BlackwellDevice.probe()
        device = BlackwellDevice("blackwell:0")
        caps = device.capabilities
    assert info.available and info.summary["name"] == "NVIDIA B200"
    validate(caps.to_dict())
    gpu = caps.sections["gpu"]
    assert gpu.architecture == "blackwell" and gpu.compute_capability == "10.0" and gpu.sm_count.value == 148
    assert gpu.sm_count.source == "measured:CUDA attribute CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT"
    assert {"float4_e2m1fn", "nvfp4", "mxfp8", "float8_e4m3fn", "bfloat16"} <= set(gpu.tensor_core_dtypes)
    assert any("tcgen05" in f for f in gpu.features) and any("TMEM" in f for f in gpu.features)
    bf16 = caps.peak["bfloat16_tensor_flop_per_s"]
    assert bf16.kind == "derived" and bf16.value == pytest.approx(148 * 1965e6 * 8192)
    assert "sm_count * max_sm_clock_hz" in bf16.source
    assert caps.peak["float4_tensor_flop_per_s"].value == pytest.approx(4 * bf16.value)
    assert caps.peak["memory_bandwidth_b_per_s"].value == pytest.approx(8192 / 8 * 3760e6 * 2)
    assert gpu.datasheet["bfloat16_tensor_flop_per_s"].value == pytest.approx(2.25e15)
    assert gpu.datasheet["bfloat16_tensor_flop_per_s"].kind == "datasheet"
    # derived peak within 10% of the datasheet (it uses the boost ceiling, NVIDIA rates at a lower tensor clock)
    assert 1.0 <= bf16.value / gpu.datasheet["bfloat16_tensor_flop_per_s"].value < 1.1
    assert gpu.resources["shared_memory_per_sm_bytes"].value == 228 * KIB
    limit = gpu.architecture_limits["shared_memory_per_sm_bytes"]
    assert limit.value == 228 * KIB and "Programming Guide" in limit.source and "10.0" in limit.source


def test_hopper_h100_shared_memory_is_228_kib_not_164():
    with simulated(H100_SXM):
        caps = HopperDevice("hopper:0").capabilities
    gpu = caps.sections["gpu"]
    assert gpu.resources["shared_memory_per_sm_bytes"].value == 228 * KIB
    assert gpu.resources["shared_memory_per_block_optin_bytes"].value == 227 * KIB
    assert gpu.architecture_limits["shared_memory_per_sm_bytes"].value == 228 * KIB
    assert gpu.architecture_limits["shared_memory_per_block_optin_bytes"].value == 227 * KIB
    assert {"float8_e4m3fn", "float8_e5m2", "tfloat32"} <= set(gpu.tensor_core_dtypes) and "nvfp4" not in gpu.tensor_core_dtypes
    assert any("wgmma" in f for f in gpu.features) and any("TMA" in f for f in gpu.features)
    bandwidth = caps.peak["memory_bandwidth_b_per_s"]
    assert bandwidth.kind == "derived" and bandwidth.value == pytest.approx(3.35e12, rel=0.01)  # datasheet: 3.35 TB/s
    bf16 = caps.peak["bfloat16_tensor_flop_per_s"].value
    assert bf16 == pytest.approx(132 * 1980e6 * 4096)
    assert gpu.datasheet["bfloat16_tensor_flop_per_s"].value == pytest.approx(989.4e12)
    assert caps.peak["float8_tensor_flop_per_s"].value == pytest.approx(2 * bf16)
    assert caps.memory_bytes.kind == "measured" and caps.memory_bytes.value == H100_SXM.memory_total_bytes
    assert gpu.interconnect.nvlink_active_links.value == 18 and gpu.interconnect.pcie_generation.value == 5
    assert gpu.interconnect.pcie_lanes.kind == "measured" and "NVML" in gpu.interconnect.pcie_lanes.source
    assert gpu.power_limit_w.value == 700
    validate(caps.to_dict())


def test_hopper_declares_fp8_formats_and_2_4_sparsity():
    with simulated(H100_SXM):
        caps = HopperDevice("hopper:0").capabilities
    validate(caps.to_dict())
    formats, sparse = caps.sections["formats"], caps.sections["sparsity"]
    assert set(formats) == {"float8_e4m3fn", "float8_e5m2"}  # no block-scaled formats before Blackwell
    e4m3 = formats["float8_e4m3fn"]
    assert e4m3["element"] == "e4m3" and "OFP8" in e4m3["spec"] and "matmul_precision=fp8" in e4m3["in_hal"]
    assert e4m3["dense_tensor_flop_per_s"] is caps.peak["float8_tensor_flop_per_s"]
    published = e4m3["datasheet_dense_tensor_flop_per_s"]
    assert published.kind == "datasheet" and published.value == pytest.approx(1978.9e12)  # H100 SXM: 3,958 sparse
    assert sparse["pattern"] == "2:4" and sparse["speedup_over_dense"].value == 2
    assert sparse["speedup_over_dense"].kind == "datasheet" and "whitepaper" in sparse["speedup_over_dense"].source
    fp8_sparse = sparse["datasheet_sparse_tensor_rates"]["float8_tensor_flop_per_s"]
    assert fp8_sparse.value == pytest.approx(3957.8e12) and "with sparsity" in fp8_sparse.note
    assert sparse["datasheet_sparse_tensor_rates"]["bfloat16_tensor_flop_per_s"].value == pytest.approx(1978.8e12)
    derived = sparse["sparse_tensor_rates"]["bfloat16_tensor_flop_per_s"]
    assert derived.kind == "derived" and derived.value == pytest.approx(2 * caps.peak["bfloat16_tensor_flop_per_s"].value)


def test_blackwell_declares_the_block_scaled_formats():
    with simulated(B200):
        caps = BlackwellDevice("blackwell:0").capabilities
    validate(caps.to_dict())
    formats = caps.sections["formats"]
    blocks = {name: (formats[name]["block_size"], formats[name]["scale_format"]) for name in ("mxfp8", "mxfp6", "mxfp4", "nvfp4")}
    assert blocks == {"mxfp8": (32, "e8m0"), "mxfp6": (32, "e8m0"), "mxfp4": (32, "e8m0"), "nvfp4": (16, "e4m3")}
    assert "MX" in formats["mxfp8"]["spec"] and "Blackwell" in formats["nvfp4"]["spec"]
    assert "not verified on Blackwell silicon" in formats["nvfp4"]["in_hal"]
    assert formats["nvfp4"]["datasheet_dense_tensor_flop_per_s"].value == pytest.approx(9e15)  # HGX B200: 18 PF sparse
    assert formats["mxfp8"]["dense_tensor_flop_per_s"].value == pytest.approx(caps.peak["float8_tensor_flop_per_s"].value)
    published = caps.sections["sparsity"]["datasheet_sparse_tensor_rates"]
    assert published["float4_tensor_flop_per_s"].value == pytest.approx(18e15)
    assert published["float8_tensor_flop_per_s"].value == pytest.approx(9e15)


def test_h200_memory_and_bandwidth():
    with simulated(H200):
        caps = HopperDevice("hopper:0").capabilities
    gpu = caps.sections["gpu"]
    assert caps.memory_bytes.value > 140e9
    assert caps.peak["memory_bandwidth_b_per_s"].value == pytest.approx(gpu.datasheet["memory_bandwidth_b_per_s"].value, rel=0.05)
    assert gpu.datasheet["memory_bytes"].value == 141e9


def test_generic_cuda_gpu_has_no_invented_rates():
    with simulated(A100):
        device = CudaDevice("cuda:0")
        caps = device.capabilities
    validate(caps.to_dict())
    assert set(caps.peak) == {"memory_bandwidth_b_per_s"}
    assert caps.sections["gpu"].tensor_core_dtypes == ()
    assert "formats" not in caps.sections and "sparsity" not in caps.sections  # no table entry: nothing claimed
    assert any("no per-SM rate table" in n for n in caps.notes)
    assert device.estimate(OpSpec("add", [torch.empty(1024), torch.empty(1024)])).latency_s > 0


# --------------------------------------------------------------------------- NVML failing mid-query


def test_nvml_losing_a_gpu_mid_query_marks_only_that_gpu():
    gpus = machine(H100_SXM, H100_SXM)
    nvml = FakeNvml(gpus, fail={("nvmlDeviceGetMemoryInfo", 1): pynvml.NVML_ERROR_GPU_IS_LOST})
    with simulated(nvml=nvml, cuda=FakeCuda(gpus)):
        infos = HopperDevice.probe()
        checks = HopperDevice.diagnose()
        HopperDevice("hopper:0")
        with pytest.raises(DeviceUnavailable, match="memory info"):
            HopperDevice("hopper:1")
    assert [i.available for i in infos] == [True, False]
    assert "memory info of GPU 1" in infos[1].reason and "GpuIsLost" in infos[1].reason and "xid" in infos[1].fix
    assert any(not c.ok and "GpuIsLost" in c.detail for c in checks)
    assert nvml.initialised == 0  # the session was shut down although a query raised


def test_optional_facts_failing_leave_the_device_usable():
    gpus = machine(H100_SXM)
    nvml = FakeNvml(gpus, fail={("nvmlDeviceGetPowerManagementLimit", 0): pynvml.NVML_ERROR_NOT_SUPPORTED, ("nvmlDeviceGetSerial", 0): pynvml.NVML_ERROR_UNKNOWN, ("nvmlDeviceGetMaxClockInfo", 0): pynvml.NVML_ERROR_NOT_SUPPORTED})
    with simulated(nvml=nvml, cuda=FakeCuda(gpus)):
        device = HopperDevice("hopper:0")
        caps = device.capabilities
        cost = device.estimate(OpSpec("matmul", [torch.empty(64, 64), torch.empty(64, 64)]))
    gpu = caps.sections["gpu"]
    assert gpu.unread["power limit"] == "not supported on this GPU" and "Unknown" in gpu.unread["serial"]
    assert gpu.power_limit_w is None and gpu.serial is None
    assert "bfloat16_tensor_flop_per_s" not in caps.peak  # no clock, no derived rate: nothing invented
    assert any("max SM clock not read" in n for n in caps.notes)
    assert cost.energy_j == 0.0
    validate(caps.to_dict())


def test_nvml_raising_while_counting_is_a_reason():
    class Flaky(FakeNvml):
        def nvmlDeviceGetCount(self):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    reason, _ = _reason(nvml=Flaky(machine(H100_SXM)))
    assert "could not count the GPUs" in reason


# --------------------------------------------------------------------------- telemetry


def test_telemetry_reads_nvml_and_survives_a_lost_gpu():
    gpus = machine(H100_SXM)
    nvml = FakeNvml(gpus)
    with simulated(nvml=nvml, cuda=FakeCuda(gpus)):
        device = HopperDevice("hopper:0")
        reading = device.telemetry()
        assert reading["power_w"] == 72.0 and reading["temperature_c"] == 31 and reading["gpu_utilisation_pct"] == 0
        assert reading["memory_used_bytes"] + reading["memory_free_bytes"] == H100_SXM.memory_total_bytes
        nvml.fail[("nvmlDeviceGetTemperature", 0)] = pynvml.NVML_ERROR_NOT_SUPPORTED
        assert device.telemetry()["temperature_c"] is None and "temperature" in device.telemetry()["unread"]
        nvml.fail[("nvmlDeviceGetHandleByIndex", 0)] = pynvml.NVML_ERROR_GPU_IS_LOST
        with pytest.raises(DeviceFailure, match="GpuIsLost"):
            device.telemetry()
        device.close()
    assert nvml.initialised == 0


# --------------------------------------------------------------------------- options, estimates, errors


def test_precision_option_sets_tolerances_and_is_checked():
    with simulated(H100_SXM, A100):
        native = HopperDevice("hopper:0").capabilities.ops
        fp8 = HopperDevice("hopper:0?matmul_precision=fp8").capabilities.ops
        with pytest.raises(InvalidInput, match="native, tf32, bf16, fp16 or fp8"):
            HopperDevice("hopper:0?matmul_precision=fp4")
        with pytest.raises(InvalidInput, match="8.9"):
            CudaDevice("cuda:1?matmul_precision=fp8")
    assert native["matmul"].tolerance["float32"] == 1e-4
    assert fp8["matmul"].tolerance["float32"] == matmul_tolerance("float8_e4m3fn")
    assert fp8["conv2d"].tolerance["float32"] == matmul_tolerance("bfloat16")  # no fp8 convolution: bf16
    assert fp8["softmax"].tolerance == native["softmax"].tolerance


def matmul_tolerance(fmt: str) -> float:
    from hal.drivers.nvidia.driver import COMPUTE_TOLERANCE

    return COMPUTE_TOLERANCE[fmt]


def test_estimate_is_a_roofline_on_derived_peaks():
    with simulated(H100_SXM):
        bf16 = HopperDevice("hopper:0?matmul_precision=bf16")
        fp8 = HopperDevice("hopper:0?matmul_precision=fp8")
        n = 4096
        op = OpSpec("matmul", [torch.empty(n, n), torch.empty(n, n)])
        cost_bf16, cost_fp8 = bf16.estimate(op), fp8.estimate(op)
        peak = bf16.capabilities.peak["bfloat16_tensor_flop_per_s"].value
        tiny = bf16.estimate(OpSpec("add", [torch.empty(8), torch.empty(8)]))
    assert cost_bf16.latency_s == pytest.approx(2 * n**3 / peak)
    assert cost_fp8.latency_s == pytest.approx(cost_bf16.latency_s / 2)
    assert cost_fp8.error > cost_bf16.error > 0
    assert cost_bf16.energy_j == pytest.approx(cost_bf16.latency_s * 700)
    assert "bfloat16_tensor_flop_per_s" in cost_bf16.formula
    assert tiny.latency_s < cost_bf16.latency_s


def test_tensors_on_another_device_are_refused():
    with simulated(H100_SXM):
        device = HopperDevice("hopper:0")
        x, elsewhere = torch.empty(2, 4), torch.empty(3, 4, device="meta")
        with pytest.raises(DeviceMismatch, match="cuda:0"):
            device.prepare(OpSpec("linear", [x], {"weight": elsewhere}), {"weight": elsewhere})
        program = device.prepare(OpSpec("relu", [x]))
        with pytest.raises(DeviceMismatch, match="meta"):
            program(x.to("meta"))


def test_out_of_memory_becomes_capacity_exceeded():
    with simulated(H100_SXM):
        device = HopperDevice("hopper:0")
        op = OpSpec("relu", [torch.empty(4)])

        def exhausted(*inputs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB")

        device.torch_device = torch.device("cpu")  # no CUDA here: run the guard on host tensors
        run = device._guarded(op, exhausted)
        with pytest.raises(CapacityExceeded, match="20.00 GiB") as caught:
            run(torch.empty(4))
    assert caught.value.needed == 20 * 2**30
    assert caught.value.available == H100_SXM.memory_total_bytes - H100_SXM.memory_used_bytes


def test_operands_larger_than_the_gpu_are_refused_before_running():
    with simulated(H100_SXM):
        device = HopperDevice("hopper:0")
        huge = OpSpec("add", [TensorSpec((2**36,)), TensorSpec((2**36,))])  # 2 x 256 GiB of float32
        support = device.supports(huge)
    assert not support and "GiB" in support.reason and "split" in support.reason


@pytest.mark.parametrize("choice", ["hal", "sdpa"])
def test_attention_path_follows_option_dtype_and_shape(choice):
    q16 = torch.empty(1, 4, 8, 64, dtype=torch.bfloat16)
    kv16 = torch.empty(1, 2, 8, 64, dtype=torch.bfloat16)
    with simulated(H100_SXM):
        device = HopperDevice(f"hopper:0?attention={choice}")
        half = device.prepare(OpSpec("attention", [q16, kv16, kv16], attrs={"causal": True}))
        single = device.prepare(OpSpec("attention", [q16.float(), kv16.float(), kv16.float()]))
        odd_dim = device.prepare(OpSpec("attention", [q16[..., :16], kv16[..., :16], kv16[..., :16]]))  # no tuned tiles
    assert half.path == ("hal.kernels.attention (Triton/Gluon)" if choice == "hal" else "torch SDPA")
    assert single.path == "torch SDPA (IEEE float32)"
    assert odd_dim.path == "torch SDPA"


# --------------------------------------------------------------------------- the precision policy (CPU-run arithmetic)


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("precision", ["native", "tf32", "bf16", "fp16", "fp8"])
def test_matmul_policy_keeps_dtype_and_meets_its_error_model(precision):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 96, generator=gen), torch.randn(96, 24, generator=gen)
    out = matmul.matmul_fn(precision, torch.float32)(a, b)
    error = _relative_error(out, a.double() @ b.double())
    assert out.dtype == torch.float32 and out.shape == (40, 24)
    # tf32 cannot be seen on a CPU (it computes float32), so its model is an upper bound here
    assert error <= 2 * matmul.expected_error(precision, torch.float32, 96)
    if precision in ("bf16", "fp16", "fp8"):
        assert error > matmul.expected_error("native", torch.float32, 96)  # the operands really were narrowed


def test_fp8_linear_quantises_the_weight_once_and_pads_odd_sizes():
    gen = torch.Generator().manual_seed(1)
    x, w, bias = torch.randn(3, 5, 37, generator=gen), torch.randn(21, 37, generator=gen), torch.randn(21, generator=gen)
    linear = matmul.linear_fn("fp8", torch.float32, w, bias, "relu")
    out = linear(x)
    ref = torch.relu(x.double() @ w.double().T + bias.double())
    assert out.shape == (3, 5, 21) and out.dtype == torch.float32
    assert _relative_error(out, ref) < 0.12
    assert bool((out >= 0).all())


def test_fp8_batched_matmul_broadcasts():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 3, 8, 16, generator=gen), torch.randn(3, 16, 8, generator=gen)
    out = matmul.fp8_matmul(a, b)
    assert out.shape == (2, 3, 8, 8)
    assert _relative_error(out, a.double() @ b.double()) < 0.12


def test_fp8_scale_maps_amax_to_the_largest_e4m3_value():
    t = torch.tensor([[-3.0, 0.5], [1.5, 2.0]])
    q, scale = matmul.fp8_quantize(t)
    assert float(scale) == pytest.approx(3.0 / 448)
    assert float(q.float().abs().max()) == 448
    zeros, tiny = matmul.fp8_quantize(torch.zeros(2, 2))  # amax floored: a finite scale, all-zero data
    assert 0 < float(tiny) < 1e-37 and not bool(zeros.float().any())


def _nearest_e4m3(exact: torch.Tensor) -> torch.Tensor:
    """The correctly rounded e4m3 value of exact float64 values (nearest, ties to the even code, saturated)."""
    grid = torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).double()
    mag = exact.abs()
    idx = torch.searchsorted(grid, mag).clamp(1, len(grid) - 1)
    below, above = grid[idx - 1], grid[idx]
    up = (above - mag < mag - below) | ((above - mag == mag - below) & (idx % 2 == 0))
    return torch.where(mag >= grid[-1], grid[-1], torch.where(up, above, below)) * exact.sign()


def test_fp8_quantize_rounds_bf16_once():
    # every bf16 value from 2^-12 (below, all round to 0 or the first subnormals) up to the amax 768 (448 / 768 is not a
    # power of two); x = 0.01171875 is one where rounding the product to float32 first lands on an e4m3 midpoint, and
    # rounding it to bf16 first (the old path) misrounded 65 of these 2,753 values
    values = torch.arange(0, 0x7F80, dtype=torch.int16).view(torch.bfloat16)
    values = values[(values.float() >= 2.0**-12) & (values.float() <= 768.0)]
    x = torch.cat([values, -values]).reshape(2, -1)
    q, scale = matmul.fp8_quantize(x)
    s = torch.tensor(448.0 / 768.0, dtype=torch.float64).float()  # 448 / amax in float64, rounded once
    assert torch.equal(scale, 1.0 / s)
    assert torch.equal(q.double(), _nearest_e4m3(x.double() * s.double()))  # bf16 x float32 is exact in float64
    case = torch.tensor([[768.0, 0.01171875]], dtype=torch.bfloat16)
    assert float(matmul.fp8_quantize(case)[0][0, 1].float()) == 0.005859375  # 3 * 2^-9; two roundings: 2^-7


def test_fp8_operands_are_written_into_zero_padded_buffers():
    gen = torch.Generator().manual_seed(3)
    b = torch.randn(37, 21, generator=gen)
    weight = matmul.Fp8Weight(b)
    assert weight.data.shape == (48, 32) and weight.data.stride() == (1, 48)  # column-major, padded to 16
    q, scale = matmul.fp8_quantize(b)
    assert torch.equal(weight.data[:37, :21].view(torch.uint8), q.view(torch.uint8)) and torch.equal(weight.scale, scale)
    assert not weight.data.view(torch.uint8)[37:].any() and not weight.data.view(torch.uint8)[:, 21:].any()


def test_float32_mode_restores_the_process_setting():
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    with matmul.float32_mode(True):
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    with matmul.float32_mode(False):
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before


# --------------------------------------------------------------------------- the CLI over a simulated GPU


def test_cli_query_and_watch_on_a_simulated_b200(monkeypatch):
    import json

    from typer.testing import CliRunner

    from hal import registry
    from hal.cli import app

    monkeypatch.setattr(registry, "_probed", {})  # keep simulated probe results out of other tests
    runner = CliRunner()
    with simulated(B200):
        try:
            query = runner.invoke(app, ["query", "blackwell:0", "--json"])
            watch = runner.invoke(app, ["query", "blackwell:0", "--watch", "0.01", "--count", "2"], env={"COLUMNS": "250"})
        finally:
            opened = registry._open.get("blackwell:0")
            if opened is not None:
                opened.close()
    assert query.exit_code == 0, query.output
    document = json.loads(query.output)
    validate(document)
    assert document["sections"]["gpu"]["sm_count"]["value"] == 148
    assert watch.exit_code == 0, watch.output
    assert "power_w" in watch.output and "72.0" in watch.output


def test_cli_query_shows_a_hoppers_formats_and_sparsity(monkeypatch):
    from typer.testing import CliRunner

    from hal import registry
    from hal.cli import app

    monkeypatch.setattr(registry, "_probed", {})
    with simulated(H200):
        try:
            result = CliRunner().invoke(app, ["query", "hopper:0"], env={"COLUMNS": "300"})
        finally:
            opened = registry._open.get("hopper:0")
            if opened is not None:
                opened.close()
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    heads = {line.rstrip().rsplit(" ", 1)[-1]: i for i, line in enumerate(lines) if line.rstrip().endswith((" formats", " sparsity"))}
    formats = "\n".join(lines[heads["formats"]:heads["sparsity"]])  # the two sections of the tree, in this order
    assert "float8_e4m3fn" in formats and "float8_e5m2" in formats and "mxfp8" not in formats
    assert "datasheet_dense_tensor_flop_per_s: 1.979e+15 flop/s" in formats and "H200" in formats
    sparsity = "\n".join(lines[heads["sparsity"]:])
    assert "pattern: 2:4" in sparsity and "speedup_over_dense: 2 x dense" in sparsity
    assert "float8_tensor_flop_per_s: 3.958e+15 flop/s" in sparsity and "with sparsity" in sparsity
