"""Facts and live readings of NVIDIA GPUs from NVML (the library behind nvidia-smi), via nvidia-ml-py.

``NvmlSession(library)`` reads through any object with pynvml's function names and error classes, so tests
substitute a simulated NVML (``tests/drivers/nvidia_fakes.py``). Everything NVML can fail with becomes an
``NvmlUnavailable`` with a ``reason`` and a ``fix`` a person can act on:

- nvidia-ml-py not installed                 -> reason "nvidia-ml-py (pynvml) is not installed"
- no libnvidia-ml.so (NVMLError_LibraryNotFound) -> "NVML library not found (no NVIDIA driver installed)"
- the kernel module not loaded (NVMLError_DriverNotLoaded) -> "NVIDIA driver is installed but not loaded"

Facts a GPU must report (name, UUID, memory size, PCI address) raise ``NvmlQueryError`` when NVML fails on them;
optional ones (serial, power limit, PCIe link, NVLink, clocks) are None with the reason kept in ``NvmlGpu.unread``.
What the CUDA driver reports better (compute capability, memory bus width) is read there (``cuda_attrs.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INSTALL_FIX = "pip install 'hal[gpu]' (installs nvidia-ml-py and cuda-python)"
DRIVER_FIX = "install the NVIDIA driver for your GPU (see https://www.nvidia.com/drivers) and check that `nvidia-smi` works"


class NvmlUnavailable(Exception):
    """NVML cannot be used at all on this machine; ``reason`` says why and ``fix`` what to do."""

    def __init__(self, reason: str, fix: str):
        super().__init__(f"{reason}. Fix: {fix}")
        self.reason, self.fix = reason, fix


class NvmlQueryError(Exception):
    """NVML failed while reading a fact a GPU must report (it fell off the bus, a driver fault...)."""

    def __init__(self, index: int, what: str, error: Exception):
        reason = f"NVML failed while reading the {what} of GPU {index} ({type(error).__name__}: {error})"
        super().__init__(reason)
        self.index, self.what, self.error, self.reason = index, what, error, reason
        self.fix = f"check `nvidia-smi -q -i {index}` and the kernel log (`dmesg | grep -i xid`); a GPU that is lost needs a reset or reboot"


def load_library() -> Any:
    """The pynvml module, or NvmlUnavailable if nvidia-ml-py is not installed."""
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable("nvidia-ml-py (pynvml) is not installed, so hal cannot ask the NVIDIA driver which GPUs exist", INSTALL_FIX) from None
    return pynvml


@dataclass(frozen=True)
class NvmlGpu:
    """One GPU as NVML reports it. Clocks in MHz and power in W, as NVML gives them; None = not reported."""

    index: int
    name: str
    uuid: str
    pci_address: tuple[int, int, int]
    memory_total_bytes: int
    serial: str | None = None
    max_sm_clock_mhz: int | None = None
    max_memory_clock_mhz: int | None = None
    power_limit_w: float | None = None
    pcie_generation: int | None = None
    pcie_lanes: int | None = None
    nvlink_active_links: int | None = None
    unread: dict[str, str] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSession:
    """An initialised NVML (``nvmlInit`` .. ``nvmlShutdown``); a context manager."""

    def __init__(self, library: Any | None = None):
        self.nvml = library if library is not None else load_library()
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            raise self._unavailable(exc) from None
        except OSError as exc:  # a broken libnvidia-ml.so (wrong architecture, missing symbol)
            raise NvmlUnavailable(f"NVML library could not be loaded ({exc})", DRIVER_FIX) from None
        self._open = True

    def _unavailable(self, exc: Exception) -> NvmlUnavailable:
        nvml = self.nvml
        code = getattr(exc, "value", None)
        if code == nvml.NVML_ERROR_LIBRARY_NOT_FOUND:
            return NvmlUnavailable("NVML library not found (no NVIDIA driver installed): libnvidia-ml.so is missing", DRIVER_FIX)
        if code == nvml.NVML_ERROR_DRIVER_NOT_LOADED:
            return NvmlUnavailable(
                "NVIDIA driver is installed but not loaded (NVMLError_DriverNotLoaded)",
                "load the kernel module (`sudo modprobe nvidia`) or reboot after a driver install; in a container, run it with --gpus all",
            )
        if code == nvml.NVML_ERROR_NO_PERMISSION:
            return NvmlUnavailable("no permission to open the NVIDIA device files (/dev/nvidia*)", "add your user to the group owning /dev/nvidia* (often 'video')")
        return NvmlUnavailable(f"NVML failed to initialise ({type(exc).__name__}: {exc})", DRIVER_FIX)

    # ---- lifecycle
    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass  # shutting down a failed NVML has nothing left to release

    def __enter__(self) -> NvmlSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reads
    def _required(self, index: int, what: str, fn, *args):
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            raise NvmlQueryError(index, what, exc) from None

    def _optional(self, unread: dict[str, str], what: str, fn, *args):
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            unread[what] = "not supported on this GPU" if getattr(exc, "value", None) == self.nvml.NVML_ERROR_NOT_SUPPORTED else f"{type(exc).__name__}: {exc}"
            return None

    def device_count(self) -> int:
        try:
            return int(self.nvml.nvmlDeviceGetCount())
        except self.nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not count the GPUs ({type(exc).__name__}: {exc})", DRIVER_FIX) from None

    def system_versions(self) -> tuple[str, str]:
        """(driver version, highest CUDA version the driver supports), e.g. ("580.65.06", "13.0")."""
        nvml = self.nvml
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
        except nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not report the driver version ({type(exc).__name__}: {exc})", DRIVER_FIX) from None
        return driver, f"{cuda // 1000}.{cuda % 1000 // 10}"

    def gpu(self, index: int) -> NvmlGpu:
        """The facts of GPU ``index`` (NVML numbering)."""
        nvml = self.nvml
        handle = self._required(index, "handle", nvml.nvmlDeviceGetHandleByIndex, index)
        memory = self._required(index, "memory info", nvml.nvmlDeviceGetMemoryInfo, handle)
        pci = self._required(index, "PCI address", nvml.nvmlDeviceGetPciInfo, handle)
        unread: dict[str, str] = {}
        power_mw = self._optional(unread, "power limit", nvml.nvmlDeviceGetPowerManagementLimit, handle)
        serial = self._optional(unread, "serial", nvml.nvmlDeviceGetSerial, handle)
        return NvmlGpu(
            index=index,
            name=_text(self._required(index, "name", nvml.nvmlDeviceGetName, handle)),
            uuid=_text(self._required(index, "UUID", nvml.nvmlDeviceGetUUID, handle)),
            pci_address=(int(pci.domain), int(pci.bus), int(pci.device)),
            memory_total_bytes=int(memory.total),
            serial=_text(serial) if serial else None,
            max_sm_clock_mhz=self._optional(unread, "max SM clock", nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_SM),
            max_memory_clock_mhz=self._optional(unread, "max memory clock", nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_MEM),
            power_limit_w=power_mw / 1000 if power_mw is not None else None,
            pcie_generation=self._optional(unread, "PCIe generation", nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
            pcie_lanes=self._optional(unread, "PCIe width", nvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
            nvlink_active_links=self._nvlink_links(handle, unread),
            unread=unread,
        )

    def _nvlink_links(self, handle: Any, unread: dict[str, str]) -> int | None:
        """Active NVLink links; None when the GPU has no NVLink (NVML answers NotSupported for link 0)."""
        nvml = self.nvml
        active = 0
        for link in range(nvml.NVML_NVLINK_MAX_LINKS):
            try:
                active += int(nvml.nvmlDeviceGetNvLinkState(handle, link) == nvml.NVML_FEATURE_ENABLED)
            except nvml.NVMLError as exc:
                if link == 0:
                    unread["NVLink"] = "no NVLink on this GPU" if getattr(exc, "value", None) == nvml.NVML_ERROR_NOT_SUPPORTED else f"{type(exc).__name__}: {exc}"
                    return None
                break  # links past the last one answer NotSupported / InvalidArgument
        return active

    def telemetry(self, index: int) -> dict[str, Any]:
        """Live readings of GPU ``index``: power W, temperature C, utilisation %, memory used/free bytes, SM clock MHz.

        A reading NVML cannot give is None, with the reasons in one ``"unread"`` string; a lost GPU raises NvmlQueryError.
        """
        nvml = self.nvml
        handle = self._required(index, "handle", nvml.nvmlDeviceGetHandleByIndex, index)
        memory = self._required(index, "memory info", nvml.nvmlDeviceGetMemoryInfo, handle)
        unread: dict[str, str] = {}
        power_mw = self._optional(unread, "power", nvml.nvmlDeviceGetPowerUsage, handle)
        utilisation = self._optional(unread, "utilisation", nvml.nvmlDeviceGetUtilizationRates, handle)
        readings: dict[str, Any] = {
            "power_w": power_mw / 1000 if power_mw is not None else None,
            "temperature_c": self._optional(unread, "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
            "gpu_utilisation_pct": utilisation.gpu if utilisation is not None else None,
            "memory_utilisation_pct": utilisation.memory if utilisation is not None else None,
            "memory_used_bytes": int(memory.used),
            "memory_free_bytes": int(memory.free),
            "sm_clock_mhz": self._optional(unread, "SM clock", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
        }
        if unread:
            readings["unread"] = "; ".join(f"{what}: {why}" for what, why in unread.items())
        return readings
