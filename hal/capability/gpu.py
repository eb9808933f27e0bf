"""The GPU section of a capability: architecture, SM resources, clocks, interconnect, tensor-core formats.

Stored under ``Capabilities.sections["gpu"]``. Pure data (standard library only). Every number is a
Figure that says whether it was read off the device (``measured:NVML ...``, ``measured:CUDA attribute ...``),
derived from those readings (``derived:<formula>``) or quoted from NVIDIA's documents (``datasheet:...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hal.capability.figures import Figure


@dataclass(frozen=True)
class GpuInterconnect:
    """How the GPU talks to the host and its peers, as NVML reports it (None: not reported by this GPU)."""

    pcie_generation: Figure | None = None
    pcie_lanes: Figure | None = None
    nvlink_active_links: Figure | None = None


@dataclass(frozen=True)
class GpuSection:
    """What an NVIDIA GPU is: identity, architecture, per-SM resources, clocks, tensor-core formats.

    ``tensor_core_dtypes`` and ``features`` come from hal's per-architecture table (with the document they
    come from in ``architecture_source``); ``sm_count`` and the Figures in ``resources`` and ``clocks`` are read off the device;
    ``architecture_limits`` are the compute capability's documented limits, so a reader can compare what the
    device reports with what NVIDIA documents (and spot a myth such as "H100 has 164 KB of shared memory").
    ``datasheet`` holds the product's published figures when hal knows the product (else it is empty).
    ``unread`` names facts NVML/CUDA could not report here and why.
    """

    name: str
    architecture: str
    compute_capability: str
    uuid: str
    serial: str | None
    driver_version: str
    cuda_driver_version: str
    sm_count: Figure
    tensor_core_dtypes: tuple[str, ...]
    features: tuple[str, ...]
    architecture_source: str
    resources: dict[str, Figure]
    clocks: dict[str, Figure]
    architecture_limits: dict[str, Figure]
    interconnect: GpuInterconnect
    power_limit_w: Figure | None = None
    datasheet: dict[str, Figure] = field(default_factory=dict)
    unread: dict[str, str] = field(default_factory=dict)
