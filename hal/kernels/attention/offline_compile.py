"""Compile the Gluon Hopper forward kernels for sm_90a without a GPU and report their resources.

Triton ships ptxas and cuobjdump, so the kernels can be built on any machine: this catches Gluon API changes
between Triton versions, generated mask / score code that is not valid Gluon, and shared memory or register use
that would not fit an H100, before a GPU is at hand. Run it as

    python -m hal.kernels.attention.offline_compile          # one JSON line per (pattern, head dim, config)

It must run in a process without ``TRITON_INTERPRET=1`` (the interpreter replaces the language functions that the
Gluon front end calls).
"""

from __future__ import annotations

import json
import sys

import torch

from ..cubin import SM90_MAX_SHARED_BYTES, register_usage
from . import patterns
from .configs import HOPPER, TileConfig, interpreting
from .kernel import _PINGPONG_REGS, AttentionKernel, compile_attention


def compile_forward(attn: AttentionKernel, config: TileConfig):
    """Build the Gluon forward of ``attn`` for ``config`` (bf16) for sm_90a; returns Triton's compiled kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import compile as triton_compile
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    if interpreting():
        raise RuntimeError("offline compilation needs a process without TRITON_INTERPRET=1")
    module = attn.gluon_module
    fn = module.attention_forward_gluon_pingpong if config.warp_specialize else module.attention_forward_gluon
    q_rows = config.block_m // 2 if config.warp_specialize else config.block_m

    def descriptor(rows: int) -> str:
        layout = gl.NVMMASharedLayout.get_default_for([rows, attn.head_dim], gl.bfloat16)
        return f"tensordesc<bf16[{rows}, {attn.head_dim}],{layout!r}>"

    signature = dict.fromkeys(fn.arg_names, "i32")
    signature.update(desc_q=descriptor(q_rows), desc_k=descriptor(config.block_n), desc_v=descriptor(config.block_n),
                     O="*bf16", LSE="*fp32", P_CNT="*i32", P_IDX="*i32", F_CNT="*i32", F_IDX="*i32", sm_scale="fp32")
    tensors = list(attn.pattern.tensors) + list(attn.score_mod.tensors if attn.score_mod else ())
    for i, t in enumerate(tensors):
        signature[f"T{i}"] = "*fp32" if t.is_floating_point() else "*i32"
    constants = {"HEAD_DIM": attn.head_dim, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
                 "STAGES": config.num_stages, "HAS_SCORE": attn.score_mod is not None}
    if config.warp_specialize:
        constants.update(CONSUMER_REGS=_PINGPONG_REGS[0], LOADER_REGS=_PINGPONG_REGS[1])
    else:
        constants["num_warps"] = config.num_warps
    signature.update(dict.fromkeys(constants, "constexpr"))
    source = GluonASTSource(fn, signature=signature, constexprs=constants)
    return triton_compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": config.num_warps})


def resources(kernel) -> dict:
    """Shared memory (bytes), registers per thread and local-memory bytes (cuobjdump), and the key instructions."""
    ptx = kernel.asm["ptx"]
    report = {"shared_bytes": kernel.metadata.shared, "wgmma": "wgmma.mma_async" in ptx,
              "tma": "cp.async.bulk.tensor" in ptx, "setmaxnreg": "setmaxnreg" in ptx}
    report.update(register_usage(kernel))
    return report


def _cases():
    table = torch.randn(4, 2 * 64 + 1, generator=torch.Generator().manual_seed(0))
    yield "document & causal", compile_attention(patterns.document([300, 700]) & patterns.causal(), head_dim=128)
    yield "sliding window + relative bias >> softcap", compile_attention(
        patterns.sliding_window(256), score_mod=patterns.relative_bias(table, 64) >> patterns.softcap(20.0),
        head_dim=64)


def main() -> int:
    for name, attn in _cases():
        for config in (c for c in HOPPER.forward[attn.head_dim] if c.gluon):
            row = {"pattern": name, "head_dim": attn.head_dim, "config": config.__dict__}
            try:
                row.update(resources(compile_forward(attn, config)))
                row["fits_sm90"] = row["shared_bytes"] <= SM90_MAX_SHARED_BYTES
            except Exception as e:  # noqa: BLE001  (reported per config; the caller decides)
                row["error"] = repr(e)[-600:]
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
