"""Per-architecture facts hal cannot read off an NVIDIA GPU, as a table keyed by compute capability.

The driver reads clocks, SM count, memory and shared-memory sizes from NVML and the CUDA driver; what the
hardware does per SM per clock, which tensor-core formats and features an architecture has, and the
documented per-compute-capability limits come from NVIDIA's documents, cited next to each entry. Peak rates
are then *derived*: ``sm_count * max_sm_clock_hz * dense_flops_per_sm_per_clock``.

The low-precision formats each architecture's tensor cores multiply (FP8 with software-applied scales; the
block-scaled MX and NVFP4 formats, whose scales the tensor cores read) and its 2:4 structured sparsity are data here
too, with the documents that define them; the capability shows their rates beside the dense ones.

Selection is this table too: compute capability 9.x is a ``hopper`` device, 10.x and 12.x ``blackwell``,
every other NVIDIA GPU a generic ``cuda`` device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HOPPER_WHITEPAPER = "NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022), SM and tensor-core tables"
BLACKWELL_BRIEF = "NVIDIA Blackwell Architecture Technical Brief (2024); HGX B200 datasheet (dense figures, 148 SMs)"
CUDA_GUIDE_LIMITS = "CUDA C++ Programming Guide, Technical Specifications per Compute Capability"
BLACKWELL_TUNING = "CUDA Blackwell Tuning Guide, section Unified Shared Memory/L1/Texture Cache"
HOPPER_TUNING = "CUDA Hopper Tuning Guide, section Unified Shared Memory/L1/Texture Cache"
OFP8_SPEC = "OCP 8-bit Floating Point Specification (OFP8) rev 1.0, 2023 (E4M3 and E5M2)"
MX_SPEC = "OCP Microscaling Formats (MX) Specification v1.0, 2023 (MXFP8, MXFP6, MXFP4: 32-element blocks, E8M0 scales)"
NVFP4_SOURCE = "NVIDIA Blackwell Architecture Technical Brief (2024), NVFP4: 16-element blocks with E4M3 scales"
AMPERE_SPARSITY = ("NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020), Fine-Grained Structured Sparsity: "
                   "2:4 sparse operands at twice the dense tensor rate")

#: Data transfers per memory clock as NVML reports the clock (double data rate): bus_width/8 * clock * 2 gives
#: 3.35 TB/s from the H100 SXM5's 5120-bit HBM3 at 2619 MHz, its datasheet bandwidth.
TRANSFERS_PER_MEMORY_CLOCK = 2


@dataclass(frozen=True)
class TensorFormat:
    """A low-precision format the tensor cores multiply, and how its scales are applied.

    ``rate`` names the per-SM rate (``<rate>_tensor_flop_per_s`` in ``Architecture.dense_flops_per_sm_per_clock``) and
    the product datasheet figure (``ProductSheet.dense_tflops[rate]``) this format runs at. ``block_size`` and
    ``scale_format`` are set for block-scaled formats, whose per-block scales the tensor cores read; FP8's per-tensor
    or per-row float32 scales are applied by software around the product (``torch._scaled_mm``'s epilogue).
    ``in_hal`` says which hal path uses it (and, for a format hal only emulates, that it does).
    """

    name: str
    element: str
    scaling: str
    rate: str
    spec: str
    in_hal: str
    block_size: int | None = None
    scale_format: str | None = None


FP8_SCALING = "float32 scale per tensor or per row, applied after the product (torch._scaled_mm)"
FP8_IN_HAL = ("?matmul_precision=fp8 (e4m3 operands, per-tensor scales, hal.kernels.fp8 casts); hal.precision."
              "fp8_training (tensorwise, rowwise, delayed recipes)")
BLOCK_IN_HAL = ("hal.precision.quantize_block_scaled / block_scaled_matmul: the reference (dequantise, float32 "
                "matmul), tested on the CPU; no native block-scaled kernel is called (not verified on Blackwell silicon)")

FLOAT8_E4M3 = TensorFormat("float8_e4m3fn", "e4m3", FP8_SCALING, "float8", OFP8_SPEC, FP8_IN_HAL)
FLOAT8_E5M2 = TensorFormat("float8_e5m2", "e5m2", FP8_SCALING, "float8", OFP8_SPEC,
                           "hal.precision.fp8_training: gradients of the tensorwise and delayed recipes")
MXFP8 = TensorFormat("mxfp8", "e4m3 or e5m2", "e8m0 (power-of-two) scale per 32 elements along K, read by the tensor cores",
                     "float8", MX_SPEC, BLOCK_IN_HAL, 32, "e8m0")
MXFP6 = TensorFormat("mxfp6", "e3m2 or e2m3", "e8m0 (power-of-two) scale per 32 elements along K, read by the tensor cores",
                     "float6", MX_SPEC, "not used by hal", 32, "e8m0")
MXFP4 = TensorFormat("mxfp4", "e2m1", "e8m0 (power-of-two) scale per 32 elements along K, read by the tensor cores",
                     "float4", MX_SPEC, "not used by hal", 32, "e8m0")
NVFP4 = TensorFormat("nvfp4", "e2m1", "e4m3 scale per 16 elements along K read by the tensor cores, and a float32 "
                     "scale per tensor", "float4", NVFP4_SOURCE, BLOCK_IN_HAL, 16, "e4m3")


@dataclass(frozen=True)
class StructuredSparsity:
    """N:M structured sparsity of one operand that the sparse tensor cores skip, at ``speedup`` x the dense rate, for
    the formats named by their ``rate`` keys (as in TensorFormat)."""

    pattern: str
    speedup: float
    rates: tuple[str, ...]
    source: str
    in_hal: str = "hal.sparsity: prune_2_4, and accelerate (cuSPARSELt through torch, kept per layer where measured faster)"


@dataclass(frozen=True)
class Architecture:
    """One GPU architecture (a compute-capability major version) and the driver kind that runs it.

    ``dense_flops_per_sm_per_clock`` maps a peak name (``bfloat16_tensor_flop_per_s``, ``int8_tensor_op_per_s``,
    ``float32_flop_per_s`` for the CUDA cores...) to the dense (no 2:4 sparsity) operations one SM completes per
    clock; the driver multiplies by SM count and clock to get that peak. The shared-memory
    limits are the compute capability's documented maxima in KiB (per SM, and per block after the opt-in
    ``cudaFuncSetAttribute(..., MaxDynamicSharedMemorySize)``).
    """

    name: str
    kind: str
    tensor_core_dtypes: tuple[str, ...]
    features: tuple[str, ...]
    source: str
    dense_flops_per_sm_per_clock: dict[str, int] = field(default_factory=dict)
    rates_source: str = ""
    shared_memory_per_sm_kib: int | None = None
    shared_memory_per_block_optin_kib: int | None = None
    limits_source: str = ""
    formats: tuple[TensorFormat, ...] = ()
    sparsity: StructuredSparsity | None = None


HOPPER = Architecture(
    name="hopper",
    kind="hopper",
    tensor_core_dtypes=("float64", "tfloat32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "int8"),
    features=(
        "wgmma (warpgroup MMA, sm_90a)",
        "TMA (tensor memory accelerator, cp.async.bulk.tensor)",
        "thread-block clusters (8 portable, 16 opt-in) with distributed shared memory",
        "2:4 structured sparsity (2x dense tensor rate)",
        "Transformer Engine (fp8 e4m3/e5m2 with per-tensor scaling)",
        "DPX instructions",
    ),
    source=HOPPER_WHITEPAPER,
    # 4th-gen tensor core: 4 per SM, 512 fp16 FMA/clock each -> 4096 flops/SM/clock (2x Ampere's SM);
    # H100 SXM5: 132 SMs x 1830 MHz x 4096 = 989.4 TFLOP/s dense bf16, the datasheet figure.
    dense_flops_per_sm_per_clock={
        "float64_tensor_flop_per_s": 256,
        "float64_flop_per_s": 128,
        "float32_flop_per_s": 256,
        "tfloat32_tensor_flop_per_s": 2048,
        "bfloat16_tensor_flop_per_s": 4096,
        "float16_tensor_flop_per_s": 4096,
        "float8_tensor_flop_per_s": 8192,
        "int8_tensor_op_per_s": 8192,
    },
    rates_source=HOPPER_WHITEPAPER + " (H100 SXM5 dense TFLOP/s / (132 SMs x rated clock))",
    shared_memory_per_sm_kib=228,
    shared_memory_per_block_optin_kib=227,
    limits_source=f"{CUDA_GUIDE_LIMITS} (cc 9.0: 228 KB per SM, 227 KB per block); {HOPPER_TUNING}",
    formats=(FLOAT8_E4M3, FLOAT8_E5M2),
    sparsity=StructuredSparsity(
        "2:4", 2.0, ("tfloat32", "bfloat16", "float16", "float8", "int8"),
        f"{HOPPER_WHITEPAPER} and H100 datasheet (figures 'with sparsity' are twice the dense ones); {AMPERE_SPARSITY}",
    ),
)

BLACKWELL_DATACENTER = Architecture(
    name="blackwell",
    kind="blackwell",
    tensor_core_dtypes=(
        "float64", "tfloat32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "int8",
        "float6_e3m2", "float6_e2m3", "float4_e2m1fn", "mxfp8", "mxfp6", "mxfp4", "nvfp4",
    ),
    features=(
        "tcgen05 MMA (5th-gen tensor core, single-thread issue, sm_100a)",
        "TMEM (256 KB tensor memory per SM for MMA accumulators)",
        "2-CTA MMA (a pair of SMs in a cluster shares one MMA)",
        "block-scaled formats: MXFP8/MXFP6/MXFP4 (32-element blocks, e8m0 scales), NVFP4 (16-element blocks, e4m3 scales)",
        "2nd-gen Transformer Engine (micro-tensor scaling, fp4/fp6)",
        "TMA (tensor memory accelerator)",
        "thread-block clusters with distributed shared memory",
        "2:4 structured sparsity (2x dense tensor rate)",
        "decompression engine",
    ),
    source=BLACKWELL_BRIEF,
    # B200: 2.25 PFLOP/s dense bf16 over 148 SMs at its ~1.86 GHz tensor clock -> 8192 flops/SM/clock (2x Hopper's SM).
    dense_flops_per_sm_per_clock={
        "float32_flop_per_s": 256,
        "tfloat32_tensor_flop_per_s": 4096,
        "bfloat16_tensor_flop_per_s": 8192,
        "float16_tensor_flop_per_s": 8192,
        "float8_tensor_flop_per_s": 16384,
        "float6_tensor_flop_per_s": 16384,
        "float4_tensor_flop_per_s": 32768,
        "int8_tensor_op_per_s": 16384,
    },
    rates_source=BLACKWELL_BRIEF + " (dense PFLOP/s / (148 SMs x ~1.86 GHz tensor clock))",
    shared_memory_per_sm_kib=228,
    shared_memory_per_block_optin_kib=227,
    limits_source=f"{CUDA_GUIDE_LIMITS} (cc 10.0: 228 KB per SM, 227 KB per block); {BLACKWELL_TUNING}",
    formats=(FLOAT8_E4M3, FLOAT8_E5M2, MXFP8, MXFP6, MXFP4, NVFP4),
    sparsity=StructuredSparsity(
        "2:4", 2.0, ("tfloat32", "bfloat16", "float16", "float8", "float6", "float4", "int8"),
        f"{BLACKWELL_BRIEF} (HGX B200 figures 'with sparsity' are twice the dense ones)",
    ),
)

BLACKWELL_WORKSTATION = Architecture(
    name="blackwell",
    kind="blackwell",
    tensor_core_dtypes=(
        "tfloat32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "int8",
        "float6_e3m2", "float6_e2m3", "float4_e2m1fn", "mxfp8", "mxfp6", "mxfp4", "nvfp4",
    ),
    features=(
        "5th-gen tensor core through warp-level mma (sm_120a); no tcgen05/TMEM",
        "block-scaled formats: MXFP8/MXFP6/MXFP4, NVFP4",
        "TMA (tensor memory accelerator)",
        "thread-block clusters",
        "2:4 structured sparsity",
    ),
    source=BLACKWELL_BRIEF + "; CUDA C++ Programming Guide (sm_120 feature set)",
    # Tensor rates of cc 12.x differ between GeForce and RTX PRO products; only the CUDA-core rate is per-architecture.
    dense_flops_per_sm_per_clock={"float32_flop_per_s": 256},
    rates_source="NVIDIA RTX Blackwell GPU Architecture whitepaper (2025): 128 FP32 cores per SM",
    shared_memory_per_sm_kib=100,
    shared_memory_per_block_optin_kib=99,
    limits_source=f"{CUDA_GUIDE_LIMITS} (cc 12.0: 100 KB per SM, 99 KB per block)",
    # the same formats (warp-level mma ... .kind::mxf8f6f4 / .kind::mxf4nvf4 .block_scale on sm_120a), no rates here
    formats=(FLOAT8_E4M3, FLOAT8_E5M2, MXFP8, MXFP6, MXFP4, NVFP4),
)

def rate_name(rate: str) -> str:
    """The peak name of a rate key: ``float8`` -> ``float8_tensor_flop_per_s``, ``int8`` -> ``int8_tensor_op_per_s``."""
    return f"{rate}_tensor_{'op' if rate == 'int8' else 'flop'}_per_s"


#: compute-capability major -> architecture. Anything absent runs as a generic ``cuda`` device.
BY_MAJOR: dict[int, Architecture] = {9: HOPPER, 10: BLACKWELL_DATACENTER, 12: BLACKWELL_WORKSTATION}

GENERIC_KIND = "cuda"


def architecture_for(major: int) -> Architecture | None:
    """The architecture of compute capability ``major.x``, or None for GPUs hal has no table entry for."""
    return BY_MAJOR.get(major)


def kind_for(major: int) -> str:
    """The hal device kind that runs a GPU of compute capability ``major.x``: hopper, blackwell or cuda."""
    arch = architecture_for(major)
    return arch.kind if arch else GENERIC_KIND


# --------------------------------------------------------------------------- product datasheets

H100_SXM_DATASHEET = "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 SXM column, dense = half the sparsity figure"
H100_PCIE_DATASHEET = "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 PCIe column, dense = half the sparsity figure"
H200_DATASHEET = "NVIDIA H200 Tensor Core GPU datasheet (2024), H200 SXM column, dense = half the sparsity figure"
B200_DATASHEET = "NVIDIA HGX B200 datasheet (2025), per-GPU dense figures"


@dataclass(frozen=True)
class ProductSheet:
    """Published figures of one product, matched by a substring of the NVML name (first match wins)."""

    name_contains: str
    document: str
    dense_tflops: dict[str, float]
    memory_bandwidth_tb_per_s: float
    memory_gb: float
    max_power_w: float


PRODUCTS: tuple[ProductSheet, ...] = (
    ProductSheet("H100 PCIe", H100_PCIE_DATASHEET, {"tfloat32": 378.0, "bfloat16": 756.5, "float16": 756.5, "float8": 1513.0, "int8": 1513.0}, 2.0, 80, 350),
    ProductSheet("H100", H100_SXM_DATASHEET, {"tfloat32": 494.7, "bfloat16": 989.4, "float16": 989.4, "float8": 1978.9, "int8": 1978.9}, 3.35, 80, 700),
    ProductSheet("H200", H200_DATASHEET, {"tfloat32": 494.7, "bfloat16": 989.4, "float16": 989.4, "float8": 1978.9, "int8": 1978.9}, 4.8, 141, 700),
    ProductSheet("B200", B200_DATASHEET, {"tfloat32": 1100.0, "bfloat16": 2250.0, "float16": 2250.0, "float8": 4500.0, "float6": 4500.0, "float4": 9000.0, "int8": 4500.0}, 7.7, 180, 1000),
)


def product_sheet(gpu_name: str) -> ProductSheet | None:
    """The datasheet of the product NVML names, if hal knows it."""
    for sheet in PRODUCTS:
        if sheet.name_contains in gpu_name:
            return sheet
    return None
