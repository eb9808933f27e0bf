"""Simulated NVML and CUDA driver answering like an H100 SXM, an H200, a B200 or an A100, for CPU-only tests.

``FakeNvml`` has pynvml's function names and raises pynvml's own error classes (constants and error classes are
taken from the installed nvidia-ml-py); ``FakeCuda`` has ``cuda.bindings.driver``'s names and ``(CUresult, value)``
returns. Facts follow the products' datasheets and what their drivers report (e.g. H100 SXM: 132 SMs, 228 KiB of
shared memory per SM, 227 KiB per block with opt-in, 5120-bit HBM3 at 2619 MHz, 1980 MHz max SM clock); numbers
NVIDIA does not publish for B200 (NVML's memory clock) are chosen to reproduce its datasheet bandwidth.

Failures are injected per call: ``FakeNvml(..., fail={("nvmlDeviceGetMemoryInfo", 0): pynvml.NVML_ERROR_GPU_IS_LOST})``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import pynvml

KIB, MIB = 1024, 1024**2


@dataclass(frozen=True)
class FakeGpu:
    """One simulated GPU: what NVML and the CUDA driver say about it."""

    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    memory_total_bytes: int
    max_sm_clock_mhz: int
    max_memory_clock_mhz: int
    memory_bus_width_bits: int
    power_limit_mw: int
    shared_memory_per_sm_bytes: int
    shared_memory_per_block_optin_bytes: int
    l2_cache_bytes: int
    nvlink_links: int
    pci_bus: int = 0x19
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    serial: str = "1650123456789"
    memory_used_bytes: int = 512 * MIB
    power_usage_mw: int = 72_000
    temperature_c: int = 31
    utilisation_pct: int = 0
    cluster_launch: int = 1


H100_SXM = FakeGpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 81559 * MIB, 1980, 2619, 5120, 700_000, 228 * KIB, 227 * KIB, 50 * MIB, 18)
H200 = FakeGpu("NVIDIA H200", (9, 0), 132, 143771 * MIB, 1980, 3201, 6144, 700_000, 228 * KIB, 227 * KIB, 50 * MIB, 18)
B200 = FakeGpu("NVIDIA B200", (10, 0), 148, 183359 * MIB, 1965, 3760, 8192, 1_000_000, 228 * KIB, 227 * KIB, 126 * MIB, 18)
A100 = FakeGpu("NVIDIA A100-SXM4-80GB", (8, 0), 108, 81920 * MIB, 1410, 1593, 5120, 400_000, 164 * KIB, 163 * KIB, 40 * MIB, 12)


def machine(*gpus: FakeGpu) -> list[FakeGpu]:
    """GPUs on distinct PCI buses with distinct UUIDs, in NVML (PCI bus) order."""
    return [replace(g, pci_bus=0x19 + 0x20 * i, uuid=f"GPU-{i:08x}-0000-0000-0000-000000000000") for i, g in enumerate(gpus)]


@dataclass
class FakeNvml:
    """pynvml's surface over a list of FakeGpu; ``init_error`` makes nvmlInit fail with that NVML error code."""

    gpus: list[FakeGpu]
    init_error: int | None = None
    fail: dict[tuple[str, int], int] = field(default_factory=dict)
    driver_version: str = "580.95.05"
    cuda_version: int = 13000
    initialised: int = 0

    def __getattr__(self, name: str):
        if name.startswith("nvml"):
            raise AttributeError(name)
        return getattr(pynvml, name)  # NVMLError classes and NVML_* constants

    def _gpu(self, method: str, handle: SimpleNamespace) -> FakeGpu:
        code = self.fail.get((method, handle.index))
        if code is not None:
            raise pynvml.NVMLError(code)
        return self.gpus[handle.index]

    # ---- library
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda_version

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:
        handle = SimpleNamespace(index=index)
        self._gpu("nvmlDeviceGetHandleByIndex", handle)
        return handle

    # ---- facts
    def nvmlDeviceGetName(self, h):
        return self._gpu("nvmlDeviceGetName", h).name

    def nvmlDeviceGetUUID(self, h):
        return self._gpu("nvmlDeviceGetUUID", h).uuid

    def nvmlDeviceGetSerial(self, h):
        return self._gpu("nvmlDeviceGetSerial", h).serial

    def nvmlDeviceGetMemoryInfo(self, h):
        g = self._gpu("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(total=g.memory_total_bytes, used=g.memory_used_bytes, free=g.memory_total_bytes - g.memory_used_bytes)

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(domain=0, bus=self._gpu("nvmlDeviceGetPciInfo", h).pci_bus, device=0)

    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        g = self._gpu("nvmlDeviceGetMaxClockInfo", h)
        return g.max_sm_clock_mhz if clock == pynvml.NVML_CLOCK_SM else g.max_memory_clock_mhz

    def nvmlDeviceGetClockInfo(self, h, clock):
        return self._gpu("nvmlDeviceGetClockInfo", h).max_sm_clock_mhz if clock == pynvml.NVML_CLOCK_SM else 0

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return self._gpu("nvmlDeviceGetPowerManagementLimit", h).power_limit_mw

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        self._gpu("nvmlDeviceGetCurrPcieLinkGeneration", h)
        return 5

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        self._gpu("nvmlDeviceGetCurrPcieLinkWidth", h)
        return 16

    def nvmlDeviceGetNvLinkState(self, h, link):
        g = self._gpu("nvmlDeviceGetNvLinkState", h)
        if link >= g.nvlink_links:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return pynvml.NVML_FEATURE_ENABLED

    # ---- live readings
    def nvmlDeviceGetPowerUsage(self, h):
        return self._gpu("nvmlDeviceGetPowerUsage", h).power_usage_mw

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self._gpu("nvmlDeviceGetTemperature", h).temperature_c

    def nvmlDeviceGetUtilizationRates(self, h):
        g = self._gpu("nvmlDeviceGetUtilizationRates", h)
        return SimpleNamespace(gpu=g.utilisation_pct, memory=g.utilisation_pct)


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_NOT_INITIALIZED = 3
    CUDA_ERROR_NO_DEVICE = 100
    CUDA_ERROR_INVALID_DEVICE = 101


_ATTRIBUTE_FIELDS = {
    "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT": lambda g: g.sm_count,
    "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR": lambda g: g.compute_capability[0],
    "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR": lambda g: g.compute_capability[1],
    "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR": lambda g: g.shared_memory_per_sm_bytes,
    "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK": lambda g: 48 * KIB,
    "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN": lambda g: g.shared_memory_per_block_optin_bytes,
    "CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE": lambda g: g.l2_cache_bytes,
    "CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH": lambda g: g.memory_bus_width_bits,
    "CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH": lambda g: g.cluster_launch,
    "CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID": lambda g: 0,
    "CU_DEVICE_ATTRIBUTE_PCI_BUS_ID": lambda g: g.pci_bus,
    "CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID": lambda g: 0,
}


@dataclass
class FakeCuda:
    """``cuda.bindings.driver``'s surface over the same GPUs; ``order`` lists NVML indices in CUDA ordinal order
    (CUDA numbers the fastest GPU first), ``init_error`` makes cuInit fail, ``load_error`` makes it raise."""

    gpus: list[FakeGpu]
    order: list[int] | None = None
    init_error: CUresult | None = None
    load_error: Exception | None = None
    CUresult = CUresult
    CUdevice_attribute = SimpleNamespace(**{name: name for name in _ATTRIBUTE_FIELDS})

    def _visible(self) -> list[FakeGpu]:
        return [self.gpus[i] for i in (self.order if self.order is not None else range(len(self.gpus)))]

    def cuInit(self, flags: int):
        if self.load_error is not None:
            raise self.load_error
        if not self.gpus:
            return (CUresult.CUDA_ERROR_NO_DEVICE,)
        return (self.init_error or CUresult.CUDA_SUCCESS,)

    def cuDeviceGetCount(self):
        return CUresult.CUDA_SUCCESS, len(self._visible())

    def cuDeviceGet(self, ordinal: int):
        return CUresult.CUDA_SUCCESS, ordinal

    def cuDeviceGetName(self, length: int, device: int):
        return CUresult.CUDA_SUCCESS, self._visible()[device].name.encode() + b"\0" * 8

    def cuDeviceTotalMem(self, device: int):
        return CUresult.CUDA_SUCCESS, self._visible()[device].memory_total_bytes

    def cuDeviceGetAttribute(self, attribute: str, device: int):
        return CUresult.CUDA_SUCCESS, _ATTRIBUTE_FIELDS[attribute](self._visible()[device])
