"""Compile every scan kernel for sm_90 (H100/H200) without a GPU and report registers, spills and shared memory.

Triton ships ptxas and cuobjdump, so this catches kernels that do not compile for a GPU (the CPU interpreter runs
code a GPU compiler may refuse) and tile configs that spill, before a GPU is at hand:

    python -m hal.kernels.ssm.offline_compile            # one JSON line per (kernel, config)
    python -m hal.kernels.ssm.offline_compile --quick    # one config per kernel

It must run in a process without TRITON_INTERPRET=1 (the interpreter replaces the language functions).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from ..cubin import SM90_MAX_SHARED_BYTES, register_usage, report_rows
from . import configs

_FP32_POINTERS = {"A_ptr", "D_ptr", "bias_ptr", "dt_bias_ptr", "states_ptr", "last_ptr", "dlast_ptr", "init_ptr",
                  "final_ptr", "dfinal_ptr", "dB_ptr", "dC_ptr", "dA_ptr", "dD_ptr", "dbias_ptr", "ddt_ptr",
                  "dinit_ptr", "seg_state_ptr", "seg_decay_ptr", "seg_adj_ptr"}
_INT_POINTERS = {"reset_ptr", "doc_ptr"}
_FLOAT_ARGS = {"dt_min", "dt_max"}


def _signature(fn, constants: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32" if name in _FP32_POINTERS else "*i32" if name in _INT_POINTERS else "*bf16"
        else:
            sig[name] = "fp32" if name in _FLOAT_ARGS else "i32"
    return sig


def compile_kernel(fn, constants: dict, num_warps: int, num_stages: int):
    """Build one kernel (bf16 I/O) for sm_90; returns Triton's compiled kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    source = ASTSource(fn, signature=_signature(fn, constants), constexprs=constants)
    return triton_compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def resources(kernel) -> dict:
    """Registers per thread and local-memory (spill) bytes from cuobjdump, shared bytes, whether wgmma is used."""
    report = {"shared_bytes": kernel.metadata.shared, "wgmma": "wgmma.mma_async" in kernel.asm["ptx"]}
    report.update(register_usage(kernel))
    report["fits_sm90"] = report["shared_bytes"] <= SM90_MAX_SHARED_BYTES
    return report


def cases(quick: bool) -> Iterator[tuple[str, object, dict, int, int]]:
    """(name, jit function, constexprs, num_warps, num_stages) for every kernel and GPU config."""
    from . import s6, ssd

    s6_flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_RESET=True)
    for n, tile in configs.S6_GPU.items():
        if quick and n != 16:
            continue
        for block_d, warps in tile.candidates[:1] if quick else tile.candidates:
            shape = dict(BLOCK_N=n, BLOCK_T=tile.block_t, BLOCK_D=block_d)
            yield f"s6_fwd N={n}", s6._s6_fwd_kernel.fn, dict(s6_flags, SAVE_STATES=True, **shape), warps, 2
            yield f"s6_bwd N={n}", s6._s6_bwd_kernel.fn, dict(s6_flags, HAS_DLAST=True, **shape), warps, 2
    ssd_flags = dict(HAS_D=True, D_PER_P=False, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_DOC=True,
                     DOT_PRECISION="tf32", DOT_F32=False, BLOCK_N=128)
    uses = (("ssd_fwd", ssd._ssd_fwd_kernel, configs.SSD_FWD_GPU, None,
             dict(HAS_INIT=True, WRITE_OUT=True, WRITE_OUTX=True, SAVE_STATES=False, LOCAL_PASS=False,
                  SEGMENTED=True)),
            ("ssd_fwd_local", ssd._ssd_fwd_kernel, configs.SSD_FWD_GPU, None,
             dict(HAS_INIT=True, WRITE_OUT=False, WRITE_OUTX=False, SAVE_STATES=False, LOCAL_PASS=True,
                  SEGMENTED=False)),
            ("ssd_states", ssd._ssd_fwd_kernel, configs.SSD_BWD_GPU, configs.SSD_BWD_BLOCK_Q_GPU,
             dict(HAS_INIT=True, WRITE_OUT=False, WRITE_OUTX=False, SAVE_STATES=True, LOCAL_PASS=False,
                  SEGMENTED=True)),
            ("ssd_bwd", ssd._ssd_bwd_kernel, configs.SSD_BWD_GPU, configs.SSD_BWD_BLOCK_Q_GPU,
             dict(HAS_DFINAL=True, LOCAL_PASS=False, SEGMENTED=True)),
            ("ssd_bwd_local", ssd._ssd_bwd_kernel, configs.SSD_BWD_GPU, configs.SSD_BWD_BLOCK_Q_GPU,
             dict(HAS_DFINAL=True, LOCAL_PASS=True, SEGMENTED=False)))
    for name, fn, tiles, block_q, mode in uses:
        for tile in tiles[:1] if quick else tiles:
            shape = dict(BLOCK_Q=block_q or tile.block_q, BLOCK_P=tile.block_p)
            yield f"{name} head_dim=64 d_state=128", fn, dict(ssd_flags, **mode, **shape), tile.num_warps, \
                tile.num_stages


def _row(name_key: str, tile_key: str, name: str, constants: dict, warps: int, stages: int) -> dict:
    return {name_key: name, tile_key: {k: v for k, v in constants.items() if k.startswith("BLOCK")}, "num_warps": warps, "num_stages": stages}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one config per kernel")
    args = ap.parse_args()
    if configs.interpreting():
        print("offline compilation needs a process without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    rows = ((_row("kernel", "config", name, constants, warps, stages), lambda f=fn, c=constants, w=warps, s=stages: resources(compile_kernel(f, c, w, s)))
            for name, fn, constants, warps, stages in cases(args.quick))
    return report_rows(rows)


if __name__ == "__main__":
    sys.exit(main())
