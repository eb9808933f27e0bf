"""A detected GPU's capabilities: facts as read, peak rates derived from them, datasheet figures beside them.

Besides the ``gpu`` section, ``formats`` lists the low-precision formats the tensor cores multiply (element, how the
scales are applied, the defining document, the hal path that uses it, the dense rate derived and from the datasheet)
and ``sparsity`` the 2:4 structured sparsity (pattern, speedup over dense, the sparse rates per format).

Pure function of the detection result (no torch, no CUDA context), so the capability output of a Blackwell or
Hopper GPU is testable on a machine without one, through simulated NVML/CUDA answers.
"""

from __future__ import annotations

from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.capability.gpu import GpuInterconnect, GpuSection
from hal.drivers.nvidia.architectures import (
    TRANSFERS_PER_MEMORY_CLOCK,
    Architecture,
    ProductSheet,
    architecture_for,
    product_sheet,
    rate_name,
)
from hal.drivers.nvidia.detect import DetectedGpu, Detection
from hal.drivers.nvidia.nvml import NvmlGpu

KIB = 1024


def _unit(rate_name: str) -> str:
    return "op/s" if rate_name.endswith("_op_per_s") else "flop/s"


def clocks(gpu: DetectedGpu) -> dict[str, Figure]:
    """Maximum SM and memory clocks NVML reports (the boost ceilings), in Hz."""
    found = {}
    if gpu.nvml and gpu.nvml.max_sm_clock_mhz:
        found["max_sm_clock_hz"] = Figure.measured(gpu.nvml.max_sm_clock_mhz * 1e6, "Hz", "NVML nvmlDeviceGetMaxClockInfo(NVML_CLOCK_SM)")
    if gpu.nvml and gpu.nvml.max_memory_clock_mhz:
        found["max_memory_clock_hz"] = Figure.measured(gpu.nvml.max_memory_clock_mhz * 1e6, "Hz", "NVML nvmlDeviceGetMaxClockInfo(NVML_CLOCK_MEM)")
    return found


def peak_rates(gpu: DetectedGpu, arch: Architecture | None) -> dict[str, Figure]:
    """Dense peak rates ``sm_count * max_sm_clock_hz * ops_per_sm_per_clock`` and the memory bandwidth
    ``bus_width_bits / 8 * max_memory_clock_hz * 2``; a rate whose inputs are unknown is left out."""
    clock = clocks(gpu)
    peaks: dict[str, Figure] = {}
    sm = gpu.cuda.sm_count
    if arch is not None and "max_sm_clock_hz" in clock:
        hz = clock["max_sm_clock_hz"].value
        for name, per_clock in arch.dense_flops_per_sm_per_clock.items():
            peaks[name] = Figure.derived(
                sm * hz * per_clock,
                _unit(name),
                f"sm_count * max_sm_clock_hz * dense_per_sm_per_clock = {sm} * {hz:.4g} * {per_clock}",
                note=f"per-SM rate: {arch.rates_source}; sustained tensor clocks sit below the boost ceiling, see the datasheet figure",
            )
    if "max_memory_clock_hz" in clock and gpu.cuda.memory_bus_width_bits:
        bits, hz = gpu.cuda.memory_bus_width_bits, clock["max_memory_clock_hz"].value
        peaks["memory_bandwidth_b_per_s"] = Figure.derived(
            bits / 8 * hz * TRANSFERS_PER_MEMORY_CLOCK,
            "B/s",
            f"bus_width_bits / 8 * max_memory_clock_hz * {TRANSFERS_PER_MEMORY_CLOCK} = {bits} / 8 * {hz:.4g} * {TRANSFERS_PER_MEMORY_CLOCK}",
        )
    return peaks


def datasheet_figures(name: str) -> dict[str, Figure]:
    """The product's published figures, if hal knows the product."""
    sheet = product_sheet(name)
    if sheet is None:
        return {}
    figures = {rate_name(dtype): Figure.datasheet(tflops * 1e12, _unit(rate_name(dtype)), sheet.document) for dtype, tflops in sheet.dense_tflops.items()}
    figures["memory_bandwidth_b_per_s"] = Figure.datasheet(sheet.memory_bandwidth_tb_per_s * 1e12, "B/s", sheet.document)
    figures["memory_bytes"] = Figure.datasheet(sheet.memory_gb * 1e9, "B", sheet.document)
    figures["max_power_w"] = Figure.datasheet(sheet.max_power_w, "W", sheet.document)
    return figures


def formats_section(arch: Architecture, peaks: dict[str, Figure], sheet: ProductSheet | None) -> dict[str, dict]:
    """``sections["formats"]``: per low-precision format of the architecture, what it is and its dense rate (derived
    from the per-SM table, and the product's datasheet figure where hal knows the product)."""
    section = {}
    for fmt in arch.formats:
        entry: dict = {"element": fmt.element, "scaling": fmt.scaling, "spec": fmt.spec, "in_hal": fmt.in_hal}
        if fmt.block_size is not None:
            entry["block_size"] = fmt.block_size
            entry["scale_format"] = fmt.scale_format
        derived = peaks.get(rate_name(fmt.rate))
        if derived is not None:
            entry["dense_tensor_flop_per_s"] = derived
        if sheet is not None and fmt.rate in sheet.dense_tflops:
            entry["datasheet_dense_tensor_flop_per_s"] = Figure.datasheet(sheet.dense_tflops[fmt.rate] * 1e12, "flop/s", sheet.document)
        if derived is None and (sheet is None or fmt.rate not in sheet.dense_tflops):
            entry["rate"] = f"not tabulated by hal for this product ({arch.rates_source})"
        section[fmt.name] = entry
    return section


def sparsity_section(arch: Architecture, peaks: dict[str, Figure], sheet: ProductSheet | None) -> dict:
    """``sections["sparsity"]``: the structured-sparsity pattern, its speedup over dense and the sparse tensor rates
    (``speedup`` x the derived dense peak, and x the datasheet's dense figure: the datasheet's own sparse figure)."""
    sparse = arch.sparsity
    speedup = Figure.datasheet(sparse.speedup, "x dense", sparse.source)
    section: dict = {"pattern": sparse.pattern, "operand": "one operand (the weight): at most 2 non-zero values in every "
                     "4 consecutive ones along K", "speedup_over_dense": speedup, "in_hal": sparse.in_hal}
    derived, published = {}, {}
    for rate in sparse.rates:
        name = rate_name(rate)
        if name in peaks:
            derived[name] = Figure.derived(sparse.speedup * peaks[name].value, _unit(name), f"speedup_over_dense * dense {name} = {sparse.speedup:g} * {peaks[name].value:.4g}")
        if sheet is not None and rate in sheet.dense_tflops:
            published[name] = Figure.datasheet(sparse.speedup * sheet.dense_tflops[rate] * 1e12, _unit(name), sheet.document, note="the datasheet's figure 'with sparsity'")
    if derived:
        section["sparse_tensor_rates"] = derived
    if published:
        section["datasheet_sparse_tensor_rates"] = published
    return section


def _nvml_figure(value: int | None, unit: str, function: str) -> Figure | None:
    return None if value is None else Figure.measured(value, unit, f"NVML {function}")


def interconnect(info: NvmlGpu | None) -> GpuInterconnect:
    """PCIe link and active NVLink links as NVML reports them (None: not reported)."""
    if info is None:
        return GpuInterconnect()
    return GpuInterconnect(
        pcie_generation=_nvml_figure(info.pcie_generation, "generation", "nvmlDeviceGetCurrPcieLinkGeneration"),
        pcie_lanes=_nvml_figure(info.pcie_lanes, "lanes", "nvmlDeviceGetCurrPcieLinkWidth"),
        nvlink_active_links=_nvml_figure(info.nvlink_active_links, "links", "nvmlDeviceGetNvLinkState over NVML_NVLINK_MAX_LINKS links, counted enabled"),
    )


def gpu_section(gpu: DetectedGpu, detection: Detection, arch: Architecture | None) -> GpuSection:
    """The ``sections["gpu"]`` of a detected GPU."""
    cuda, info = gpu.cuda, gpu.nvml
    attr = "CUDA attribute CU_DEVICE_ATTRIBUTE_"
    resources = {
        "shared_memory_per_sm_bytes": Figure.measured(cuda.shared_memory_per_sm_bytes, "B", attr + "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR"),
        "shared_memory_per_block_bytes": Figure.measured(cuda.shared_memory_per_block_bytes, "B", attr + "MAX_SHARED_MEMORY_PER_BLOCK", note="without opt-in"),
        "shared_memory_per_block_optin_bytes": Figure.measured(cuda.shared_memory_per_block_optin_bytes, "B", attr + "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN"),
        "l2_cache_bytes": Figure.measured(cuda.l2_cache_bytes, "B", attr + "L2_CACHE_SIZE"),
        "memory_bus_width_bits": Figure.measured(cuda.memory_bus_width_bits, "bit", attr + "GLOBAL_MEMORY_BUS_WIDTH"),
    }
    limits = {}
    features: tuple[str, ...] = ()
    if arch is not None:
        limits = {
            "shared_memory_per_sm_bytes": Figure.datasheet(arch.shared_memory_per_sm_kib * KIB, "B", arch.limits_source),
            "shared_memory_per_block_optin_bytes": Figure.datasheet(arch.shared_memory_per_block_optin_kib * KIB, "B", arch.limits_source),
        }
        features = arch.features
    if cuda.cluster_launch:
        features = (*features, "cluster launch enabled by the driver (CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH)")
    unread = dict(info.unread) if info else {"NVML": "NVML did not report this GPU"}
    power = Figure.measured(info.power_limit_w, "W", "NVML nvmlDeviceGetPowerManagementLimit") if info and info.power_limit_w else None
    return GpuSection(
        name=gpu.name,
        architecture=arch.name if arch else f"cc {cuda.cc_major}.x (no hal table entry)",
        compute_capability=f"{cuda.cc_major}.{cuda.cc_minor}",
        uuid=info.uuid if info else "",
        serial=info.serial if info else None,
        driver_version=detection.driver_version,
        cuda_driver_version=detection.cuda_driver_version,
        sm_count=Figure.measured(cuda.sm_count, "SMs", attr + "MULTIPROCESSOR_COUNT"),
        tensor_core_dtypes=arch.tensor_core_dtypes if arch else (),
        features=features,
        architecture_source=arch.source if arch else "",
        resources=resources,
        clocks=clocks(gpu),
        architecture_limits=limits,
        interconnect=interconnect(info),
        power_limit_w=power,
        datasheet=datasheet_figures(gpu.name),
        unread=unread,
    )


def _sections(gpu: GpuSection, arch: Architecture | None, peaks: dict[str, Figure], sheet: ProductSheet | None) -> dict:
    sections: dict = {"gpu": gpu}
    if arch is not None and arch.formats:
        sections["formats"] = formats_section(arch, peaks, sheet)
    if arch is not None and arch.sparsity is not None:
        sections["sparsity"] = sparsity_section(arch, peaks, sheet)
    return sections


def build_capabilities(uri: str, kind: str, gpu: DetectedGpu, detection: Detection, ops: dict[str, OpSupport], notes: list[str]) -> Capabilities:
    """Everything ``hal query`` shows about ``gpu`` opened as ``kind`` (its family's, or ``cuda`` for any GPU);
    ``ops`` and ``notes`` come from the driver (they depend on options)."""
    arch = architecture_for(gpu.cuda.cc_major)
    section = gpu_section(gpu, detection, arch)
    peaks = peak_rates(gpu, arch)
    memory = gpu.nvml.memory_total_bytes if gpu.nvml else gpu.cuda.total_memory_bytes
    energy = {}
    bf16 = peaks.get("bfloat16_tensor_flop_per_s")
    if section.power_limit_w is not None and bf16 is not None:
        energy["j_per_bfloat16_flop_at_power_limit"] = Figure.derived(
            section.power_limit_w.value / bf16.value, "J/flop", "power_limit_w / bfloat16_tensor_flop_per_s", note="upper bound: the board's whole power at the peak rate"
        )
    all_notes = list(notes)
    if arch is None:
        all_notes.append(f"hal has no per-SM rate table for compute capability {gpu.cuda.cc_major}.x: compute peaks are not derived, estimates are memory-bound only")
    for what, why in section.unread.items():
        all_notes.append(f"{what} not read: {why}")
    return Capabilities(
        uri=uri,
        kind=kind,
        paradigm=Paradigm.DIGITAL,
        simulated=False,
        identity={
            "name": gpu.name,
            "uuid": section.uuid,
            "compute_capability": section.compute_capability,
            "cuda_ordinal": str(gpu.ordinal),
            "listed_as": gpu.uri,
            "driver": detection.driver_version,
            "cuda_driver": detection.cuda_driver_version,
        },
        ops=ops,
        deterministic=True,
        memory_bytes=Figure.measured(memory, "B", "NVML nvmlDeviceGetMemoryInfo total" if gpu.nvml else "cuDeviceTotalMem"),
        peak=peaks,
        energy=energy,
        sections=_sections(section, arch, peaks, product_sheet(gpu.name)),
        notes=all_notes,
    )
