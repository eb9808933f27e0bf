"""Device attributes from the CUDA driver API (cuda-python's ``cuda.bindings.driver``).

What NVML does not say: SM count, shared memory per SM and per block (with the opt-in maximum), L2 size, memory
bus width, cluster-launch support, and the CUDA ordinal (the index torch uses, which follows
CUDA_VISIBLE_DEVICES, unlike NVML's). ``read_devices(library)`` reads through any object with the
``cuda.bindings.driver`` names (``cuInit``, ``cuDeviceGetAttribute``..., each returning ``(CUresult, value)``),
so tests substitute a simulated driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hal.drivers.nvidia.nvml import DRIVER_FIX, INSTALL_FIX

#: Attribute -> field of CudaDeviceAttributes (values are ints as the driver reports them).
ATTRIBUTES = {
    "sm_count": "CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT",
    "cc_major": "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR",
    "cc_minor": "CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR",
    "shared_memory_per_sm_bytes": "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR",
    "shared_memory_per_block_bytes": "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK",
    "shared_memory_per_block_optin_bytes": "CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN",
    "l2_cache_bytes": "CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE",
    "memory_bus_width_bits": "CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH",
    "cluster_launch": "CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH",
    "pci_domain": "CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID",
    "pci_bus": "CU_DEVICE_ATTRIBUTE_PCI_BUS_ID",
    "pci_device": "CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID",
}


class CudaUnavailable(Exception):
    """The CUDA driver API cannot be used here; ``reason`` says why and ``fix`` what to do."""

    def __init__(self, reason: str, fix: str):
        super().__init__(f"{reason}. Fix: {fix}")
        self.reason, self.fix = reason, fix


@dataclass(frozen=True)
class CudaDeviceAttributes:
    """One CUDA device as the driver API reports it. ``ordinal`` is the CUDA (and torch) device index."""

    ordinal: int
    name: str
    total_memory_bytes: int
    sm_count: int
    cc_major: int
    cc_minor: int
    shared_memory_per_sm_bytes: int
    shared_memory_per_block_bytes: int
    shared_memory_per_block_optin_bytes: int
    l2_cache_bytes: int
    memory_bus_width_bits: int
    cluster_launch: int
    pci_domain: int
    pci_bus: int
    pci_device: int

    @property
    def compute_capability(self) -> tuple[int, int]:
        return (self.cc_major, self.cc_minor)

    @property
    def pci_address(self) -> tuple[int, int, int]:
        return (self.pci_domain, self.pci_bus, self.pci_device)


def load_library() -> Any:
    """``cuda.bindings.driver``, or CudaUnavailable if cuda-python is not installed."""
    try:
        from cuda.bindings import driver
    except ImportError:
        raise CudaUnavailable("cuda-python (cuda.bindings) is not installed; hal reads SM count, shared memory and L2 size from it", INSTALL_FIX) from None
    return driver


def _error_name(result: Any) -> str:
    return getattr(result, "name", str(result))


def _check(cuda: Any, result: Any, what: str) -> None:
    if result != cuda.CUresult.CUDA_SUCCESS:
        raise CudaUnavailable(f"the CUDA driver failed to {what} ({_error_name(result)})", DRIVER_FIX)


def read_devices(library: Any | None = None) -> list[CudaDeviceAttributes]:
    """Every CUDA device's attributes, in CUDA ordinal order; CudaUnavailable when the driver cannot be used."""
    cuda = library if library is not None else load_library()
    try:
        (result,) = cuda.cuInit(0)
    except Exception as exc:  # noqa: BLE001 (cuda-python raises its own loader error when libcuda.so is absent)
        raise CudaUnavailable(f"the CUDA driver library (libcuda.so) could not be loaded ({type(exc).__name__}: {exc})", DRIVER_FIX) from None
    if result == cuda.CUresult.CUDA_ERROR_NO_DEVICE:
        return []
    _check(cuda, result, "initialise (cuInit)")
    result, count = cuda.cuDeviceGetCount()
    _check(cuda, result, "count devices")
    return [_read_one(cuda, ordinal) for ordinal in range(count)]


def _read_one(cuda: Any, ordinal: int) -> CudaDeviceAttributes:
    result, device = cuda.cuDeviceGet(ordinal)
    _check(cuda, result, f"open device {ordinal}")
    result, raw_name = cuda.cuDeviceGetName(256, device)
    _check(cuda, result, f"read the name of device {ordinal}")
    result, total = cuda.cuDeviceTotalMem(device)
    _check(cuda, result, f"read the memory size of device {ordinal}")
    values: dict[str, int] = {}
    for field_name, attribute in ATTRIBUTES.items():
        result, value = cuda.cuDeviceGetAttribute(getattr(cuda.CUdevice_attribute, attribute), device)
        _check(cuda, result, f"read {attribute} of device {ordinal}")
        values[field_name] = int(value)
    name = raw_name.split(b"\0", 1)[0].decode() if isinstance(raw_name, bytes) else str(raw_name)
    return CudaDeviceAttributes(ordinal=ordinal, name=name, total_memory_bytes=int(total), **values)
