"""Compile the fused linear kernel for sm_90 (H100/H200) without a GPU and report registers, spills, shared memory.

Triton ships ptxas and cuobjdump, so this catches code the CPU interpreter runs but a GPU compiler refuses, and tile
configs that spill or do not fit in shared memory, before a GPU is at hand:

    python -m hal.kernels.gemm.offline_compile            # one JSON line per (variant, tile)
    python -m hal.kernels.gemm.offline_compile --quick    # the first tile of each row bucket

It must run in a process without TRITON_INTERPRET=1 (the interpreter replaces the language functions).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from ..cubin import SM90_MAX_SHARED_BYTES, register_usage, report_rows
from . import configs

#: What Triton specialises at the benchmark shapes (K, N multiples of 16; 1-D parameters contiguous): these ints
#: are multiples of 16, as are the pointers (torch allocations), and the 1-D strides are the constant 1.
ALIGNED_INTS = {"K", "N0", "N1", "N2", "s_xm", "s_w0", "s_w1", "s_w2", "s_rm", "s_om"}
UNIT_STRIDES = {"s_b0": 1, "s_b1": 1, "s_b2": 1, "s_g": 1, "s_beta": 1}
#: The kernel variants the fusion passes emit: (name, constexpr flags).
VARIANTS: tuple[tuple[str, dict], ...] = (
    ("layer+bias+gelu 1w", dict(SPLIT_W=1, GATED=False, NORM=1, HAS_G=True, HAS_BETA=True, HAS_BIAS=True,
                                HAS_B0=True, HAS_B1=False, HAS_B2=False, ACT=1, HAS_RES=False)),
    ("rms qkv 3w", dict(SPLIT_W=3, GATED=False, NORM=2, HAS_G=True, HAS_BETA=False, HAS_BIAS=True, HAS_B0=True,
                        HAS_B1=False, HAS_B2=True, ACT=0, HAS_RES=False)),
    ("rms gated silu", dict(SPLIT_W=1, GATED=True, NORM=2, HAS_G=True, HAS_BETA=False, HAS_BIAS=True, HAS_B0=True,
                            HAS_B1=True, HAS_B2=False, ACT=3, HAS_RES=True)),
    ("residual 1w", dict(SPLIT_W=1, GATED=False, NORM=0, HAS_G=False, HAS_BETA=False, HAS_BIAS=False,
                         HAS_B0=False, HAS_B1=False, HAS_B2=False, ACT=0, HAS_RES=True)),
)


def compile_kernel(constants: dict, num_warps: int, num_stages: int):
    """Build the kernel (bf16 I/O) with these constexprs for sm_90, specialised as at the benchmark shapes;
    returns Triton's compiled kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    from .kernel import fused_linear_kernel

    fn = fused_linear_kernel.fn
    constants = {**UNIT_STRIDES, **constants}
    signature = {name: "constexpr" if name in constants else "*bf16" if name.endswith("_ptr")
                 else "fp32" if name == "eps" else "i32" for name in fn.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
               if name in ALIGNED_INTS or (name.endswith("_ptr") and name not in constants)}
    source = ASTSource(fn, signature=signature, constexprs=constants, attrs=aligned)
    return triton_compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def resources(kernel) -> dict:
    """Registers per thread and local-memory (spill) bytes from cuobjdump, shared bytes, and whether the weight
    stream is pipelined (cp.async copies into shared memory) and vectorised (16-byte loads)."""
    ptx = kernel.asm["ptx"]
    report = {"shared_bytes": kernel.metadata.shared, "cp_async": "cp.async" in ptx,
              "vector_loads": "ld.global.v4" in ptx or "cp.async.cg.shared.global [" in ptx}
    report.update(register_usage(kernel))
    report["fits_sm90"] = report["shared_bytes"] <= SM90_MAX_SHARED_BYTES
    return report


def cases(quick: bool) -> Iterator[tuple[str, dict, int, int]]:
    """(variant name, constexprs, num_warps, num_stages) for every variant and GPU tile."""
    buckets = (16, 32, 64, 2 * configs.SMALL_M_MAX)
    for name, flags in VARIANTS:
        for bucket in buckets:
            tiles = configs.candidates(bucket, 4096, 4096)
            for bm, bn, bk, warps, stages in tiles[:1] if quick else tiles:
                yield name, dict(flags, IEEE_F32=False, SOFT_BF16=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), \
                    warps, stages


def _row(name_key: str, tile_key: str, name: str, constants: dict, warps: int, stages: int) -> dict:
    return {name_key: name, tile_key: {k: v for k, v in constants.items() if k.startswith("BLOCK")}, "num_warps": warps, "num_stages": stages}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the first tile of each row bucket")
    args = ap.parse_args()
    if configs.interpreting():
        print("offline compilation needs a process without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    rows = ((_row("variant", "tile", name, constants, warps, stages), lambda c=constants, w=warps, s=stages: resources(compile_kernel(c, w, s)))
            for name, constants, warps, stages in cases(args.quick))
    return report_rows(rows)


if __name__ == "__main__":
    sys.exit(main())
