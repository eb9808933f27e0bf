"""Which NVIDIA GPUs are here, and which hal driver takes each: NVML facts joined with CUDA attributes.

NVML is asked first (is there a driver, how many GPUs), then the CUDA driver API (SM count, shared memory,
the CUDA ordinal torch uses). The two are joined by PCI address, because NVML numbers GPUs by PCI bus and
CUDA by speed (and honours CUDA_VISIBLE_DEVICES). A GPU's hal index is its CUDA ordinal, so ``hopper:1`` is
``torch.device("cuda", 1)``; its kind comes from ``architectures.kind_for(compute capability)``.

The libraries are read through ``Backends``; tests swap in simulated ones with ``using(Backends(...))``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hal.drivers.nvidia import cuda_attrs, nvml
from hal.drivers.nvidia.architectures import kind_for
from hal.drivers.nvidia.cuda_attrs import CudaDeviceAttributes, CudaUnavailable
from hal.drivers.nvidia.nvml import NvmlGpu, NvmlQueryError, NvmlSession, NvmlUnavailable


def torch_cuda_problem() -> str | None:
    """Why torch cannot compute on CUDA GPUs here (a CPU-only build), or None."""
    import torch

    if not torch.backends.cuda.is_built():
        return f"this torch build ({torch.__version__}) has no CUDA support, so hal has nothing to compute with on the GPU"
    return None


TORCH_FIX = "install a CUDA build of torch (https://pytorch.org/get-started/locally/)"


@dataclass
class Backends:
    """Where detection reads from: NVML-like and CUDA-driver-like objects (None = the installed libraries)."""

    nvml: Any | None = None
    cuda: Any | None = None
    torch_problem: Callable[[], str | None] = torch_cuda_problem

    def nvml_session(self) -> NvmlSession:
        return NvmlSession(self.nvml if self.nvml is not None else nvml.load_library())

    def cuda_devices(self) -> list[CudaDeviceAttributes]:
        return cuda_attrs.read_devices(self.cuda if self.cuda is not None else cuda_attrs.load_library())


_current = Backends()


@contextmanager
def using(backends: Backends) -> Iterator[Backends]:
    """Detect through ``backends`` inside the block (simulated GPUs in tests), then restore."""
    global _current
    before, _current = _current, backends
    try:
        yield backends
    finally:
        _current = before


def current_backends() -> Backends:
    return _current


@dataclass(frozen=True)
class DetectedGpu:
    """One GPU: its CUDA facts, its NVML facts, the hal kind that runs it, and why it cannot run (if it cannot)."""

    ordinal: int
    kind: str
    cuda: CudaDeviceAttributes
    nvml: NvmlGpu | None
    problem: str = ""
    fix: str = ""

    @property
    def uri(self) -> str:
        return f"{self.kind}:{self.ordinal}"

    @property
    def name(self) -> str:
        return self.nvml.name if self.nvml else self.cuda.name

    def describe(self) -> str:
        major, minor = self.cuda.compute_capability
        return f"{self.uri} ({self.name}, compute capability {major}.{minor})"


@dataclass(frozen=True)
class Detection:
    """Every GPU found (usable or not), the driver versions, and, when none was found, why and how to fix it."""

    gpus: tuple[DetectedGpu, ...] = ()
    driver_version: str = ""
    cuda_driver_version: str = ""
    reason: str = ""
    fix: str = ""
    nvml_errors: dict[int, str] = field(default_factory=dict)

    def find(self, ordinal: int) -> DetectedGpu | None:
        return next((g for g in self.gpus if g.ordinal == ordinal), None)

    def of_kind(self, kind: str) -> list[DetectedGpu]:
        return [g for g in self.gpus if g.kind == kind]


def detect(backends: Backends | None = None) -> Detection:
    """Find the GPUs; never raises (every failure is a Detection with a reason and a fix)."""
    b = backends or _current
    try:
        with b.nvml_session() as session:
            count = session.device_count()
            if count == 0:
                return Detection(
                    reason="the NVIDIA driver is loaded but reports no GPU",
                    fix="check `nvidia-smi -L`; in a container, start it with --gpus all (or the NVIDIA container runtime)",
                )
            system = session.system_versions()
            nvml_gpus: list[NvmlGpu] = []
            nvml_errors: dict[int, str] = {}
            for index in range(count):
                try:
                    nvml_gpus.append(session.gpu(index))
                except NvmlQueryError as exc:
                    nvml_errors[index] = exc.reason
    except NvmlUnavailable as exc:
        return Detection(reason=exc.reason, fix=exc.fix)
    try:
        cuda_devices = b.cuda_devices()
    except CudaUnavailable as exc:
        return Detection(driver_version=system[0], cuda_driver_version=system[1], reason=f"NVML sees {count} GPU(s) but {exc.reason}", fix=exc.fix)
    if not cuda_devices:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return Detection(
            driver_version=system[0],
            cuda_driver_version=system[1],
            reason=f"NVML sees {count} GPU(s) but CUDA sees none" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""),
            fix="unset CUDA_VISIBLE_DEVICES or list the GPUs you want in it" if visible is not None else "reinstall the NVIDIA driver; the CUDA part of it does not answer",
        )
    torch_problem = b.torch_problem()
    by_address = {g.pci_address: g for g in nvml_gpus}
    gpus = []
    for dev in cuda_devices:
        match = by_address.get(dev.pci_address)
        problem, fix = "", ""
        if match is None:
            lost = "; ".join(nvml_errors.values())
            problem = lost or f"NVML does not list the GPU at PCI {dev.pci_domain:04x}:{dev.pci_bus:02x}:{dev.pci_device:02x}"
            fix = "check `nvidia-smi -q` and the kernel log (`dmesg | grep -i xid`)"
        elif torch_problem:
            problem, fix = torch_problem, TORCH_FIX
        gpus.append(DetectedGpu(dev.ordinal, kind_for(dev.cc_major), dev, match, problem, fix))
    return Detection(tuple(gpus), system[0], system[1], nvml_errors=nvml_errors)
