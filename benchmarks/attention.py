"""Attention kernel generator vs FlexAttention vs SDPA (flash, cuDNN), side by side in one run, on one GPU.

For causal, sliding window 512 (causal), dilated 2 (causal), 4 documents (causal) and prefix-LM 1024 at
S = 4k / 16k / 64k (head dim 128, bf16, 16 heads, batch chosen so B·S = 16k tokens or more), forward and
forward+backward. FlexAttention is ``torch.compile``d once (dynamic=False) and gets its block mask from
``create_block_mask`` once per (pattern, S), so it is timed without recompiles. SDPA runs where the pattern allows
(dense causal). FLOPs count only the allowed (q, k) pairs: forward 4·B·H·pairs·D, backward 2.5x forward (two
matmuls forward, five backward). Before timing, every implementation's output is compared with ours, and ours with
a float64 reference at B=1, H=2 (the full S x S matrix in float64 fits there up to S=4k).

    python benchmarks/attention.py --seqs 4096,16384,65536 --out benchmarks/results/attention.json

A run that does not fit one call of a lent GPU can be split by ``--seqs`` and joined with ``--merge a.json b.json``:
rows keep the run they were measured in (ours and the alternatives always side by side in one run), a case found
in several files is taken from the last, and the summary is recomputed.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from hal.kernels.attention import attention_reference, compile_attention, patterns
from hal.kernels.attention.expr import evaluate

HEADS = 16
REPEATS = 3  # default timings per case (each a do_bench median)
HEAD_DIM = 128
DTYPE = torch.bfloat16


def pattern_specs(seq: int, device: str = "cuda") -> dict[str, tuple[patterns.Pattern, Callable, int]]:
    """name -> (our pattern, the same mask as a FlexAttention mask_mod, closed-form allowed pairs per head)."""
    n_docs = 4
    doc_len = seq // n_docs
    doc_ids = torch.arange(seq, device=device) // doc_len

    def causal(b, h, q, kv):
        return q >= kv

    def sliding(b, h, q, kv):
        return (q >= kv) & (q - kv < 512)

    def dilated(b, h, q, kv):
        return (q >= kv) & ((q - kv) % 2 == 0)

    def document(b, h, q, kv):
        return (doc_ids[q] == doc_ids[kv]) & (q >= kv)

    def prefix(b, h, q, kv):
        return (kv < 1024) | (q >= kv)

    tri = seq * (seq + 1) // 2
    w = 512
    return {
        "causal": (patterns.causal(), causal, tri),
        "sliding_window_512": (patterns.sliding_window(w) & patterns.causal(), sliding,
                               w * (w + 1) // 2 + (seq - w) * w),
        "dilated_2": (patterns.dilated(2) & patterns.causal(), dilated, sum((i // 2) + 1 for i in range(seq))),
        "document_4": (patterns.document([doc_len] * n_docs) & patterns.causal(), document,
                       n_docs * doc_len * (doc_len + 1) // 2),
        "prefix_lm_1024": (patterns.prefix_lm(1024), prefix, tri + 1024 * 1023 // 2),
    }


def count_pairs(pattern: patterns.Pattern, seq: int) -> int:
    """Allowed (q, kv) pairs, counted on the GPU a slab of rows at a time (checks the closed forms)."""
    total = 0
    kv = torch.arange(seq, device="cuda")[None, :]
    rows = max(1, (1 << 26) // seq)
    tensors = pattern.tensors_on(torch.device("cuda"))
    for r0 in range(0, seq, rows):
        q = torch.arange(r0, min(seq, r0 + rows), device="cuda")[:, None]
        env = {"b": torch.tensor(0, device="cuda"), "h": torch.tensor(0, device="cuda"), "q_idx": q, "kv_idx": kv}
        m = torch.as_tensor(evaluate(pattern.mask, env, tensors), device="cuda")
        total += int(m.expand(q.shape[0], seq).sum())
    return total


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bench(fn: Callable[[], object], grad_to_none=None) -> float:
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median"))


def reference_check(name: str, pattern: patterns.Pattern, seq: int) -> dict:
    """Ours vs float64 reference at B=1, H=2, H_kv=1 (GQA), forward, lse and gradients."""
    s = min(seq, 4096)
    gen = torch.Generator(device="cuda").manual_seed(seq)
    q = torch.randn(1, 2, s, HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen).requires_grad_()
    k = torch.randn(1, 1, s, HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen).requires_grad_()
    v = torch.randn(1, 1, s, HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen).requires_grad_()
    do = torch.randn(1, 2, s, HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen)
    if name == "document_4":
        pattern = patterns.document([s // 4] * 4) & patterns.causal()
    attn = compile_attention(pattern, head_dim=HEAD_DIM, dtype=DTYPE)
    out, lse = attn(q, k, v, return_lse=True)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, ref_lse = attention_reference(q, k, v, pattern)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do.double())
    res = {"pattern": name, "seq": s, "out": rel_err(out, ref), "lse_max_abs": float((lse.double() - ref_lse).abs().max()),
           "dq": rel_err(grads[0], ref_grads[0]), "dk": rel_err(grads[1], ref_grads[1]),
           "dv": rel_err(grads[2], ref_grads[2]), "nan": bool(any(torch.isnan(g).any() for g in (out, *grads)))}
    res["ok"] = (not res["nan"]) and max(res["out"], res["dq"], res["dk"], res["dv"]) < 1e-2
    return res


def measure(rows: list[dict], base: dict, tensors: tuple, do_bwd: bool, repeats: int, impl: str, fwd: Callable[[], torch.Tensor],
            extra: dict | None = None) -> None:
    """Time ``fwd`` (and forward+backward) twice each and append a row; a failure is recorded, not raised."""
    q, k, v, do = tensors
    fwd_flop = base["fwd_flop"]
    row = dict(base, impl=impl, **(extra or {}))

    def fwd_bwd():
        fwd().backward(do)

    try:
        # each measurement `repeats` times: the spread says what difference is noise; the median is reported
        with torch.no_grad():
            row["fwd_ms_runs"] = [bench(fwd) for _ in range(repeats)]
        row["fwd_ms"] = statistics.median(row["fwd_ms_runs"])
        row["fwd_tflops"] = fwd_flop / row["fwd_ms"] / 1e9
        if do_bwd:
            row["fwdbwd_ms_runs"] = [bench(fwd_bwd, grad_to_none=[q, k, v]) for _ in range(repeats)]
            row["fwdbwd_ms"] = statistics.median(row["fwdbwd_ms_runs"])
            row["fwdbwd_tflops"] = 3.5 * fwd_flop / row["fwdbwd_ms"] / 1e9
    except Exception as e:  # noqa: BLE001  (report, never hide: a failing alternative is a result too)
        row["error"] = repr(e)[:300]
        torch.cuda.empty_cache()
    rows.append(row)
    print(f"{base['pattern']:20s} S={base['seq']:6d} {impl:8s} fwd {row.get('fwd_ms', float('nan')):8.3f} ms "
          f"{row.get('fwd_tflops', float('nan')):6.1f} TF/s  fwd+bwd {row.get('fwdbwd_ms', float('nan')):8.3f} ms "
          f"{row.get('fwdbwd_tflops', float('nan')):6.1f} TF/s {row.get('error', '')}", flush=True)


def tune_fully(attn, tensors: tuple) -> float:
    """Seconds spent finishing the lazy tile refinement (forward and backward) before anything is timed.

    The kernel refines on its second and later calls (hal.kernels.attention.tuner); timing it while it does would
    time compilations. A tuning found complete on disk costs nothing here.
    """
    q, k, v, do = tensors
    t0 = time.time()
    tuned = attn if hasattr(attn, "tuning_for") else attn.attention
    for _ in range(8):
        if not tuned.tuning_for(q, k).pending:
            break
        attn(q, k, v).backward(do)
    torch.cuda.synchronize()
    return time.time() - t0


def tuning_log(tuning, q: torch.Tensor, k: torch.Tensor) -> list[dict]:
    """The timings the refinement measured, one entry per kernel, in the layout --fit-cost-model reads."""
    from hal.kernels.attention.configs import TileConfig

    log = []
    for kernel, choice in tuning.summary().items():
        ms = {str(tuple(TileConfig(**c).__dict__.values())): t for c, t in choice["timed_ms"] if t is not None}
        log.append({"kernel": kernel, "q_shape": list(q.shape), "k_shape": list(k.shape), "ms": ms,
                    "source": choice["source"], "estimates_s": choice["estimates_s"],
                    "errors": {str(tuple(TileConfig(**c).__dict__.values())): e for c, e in choice["errors"]}})
    return log


def run_seq(seq: int, names: list[str], flex, create_block_mask, do_flex: bool, do_bwd: bool,
            repeats: int) -> list[dict]:
    batch = max(1, 16384 // seq)
    specs = pattern_specs(seq)
    gen = torch.Generator(device="cuda").manual_seed(1234 + seq)
    shape = (batch, HEADS, seq, HEAD_DIM)
    q = torch.randn(shape, device="cuda", dtype=DTYPE, generator=gen).requires_grad_()
    k = torch.randn(shape, device="cuda", dtype=DTYPE, generator=gen).requires_grad_()
    v = torch.randn(shape, device="cuda", dtype=DTYPE, generator=gen).requires_grad_()
    do = torch.randn(shape, device="cuda", dtype=DTYPE, generator=gen)
    rows = []
    for name in names:
        pattern, mask_mod, pairs_closed = specs[name]
        pairs = count_pairs(pattern, seq)
        if pairs != pairs_closed:
            raise AssertionError(f"{name} S={seq}: counted {pairs} pairs, closed form {pairs_closed}")
        fwd_flop = 4.0 * batch * HEADS * pairs * HEAD_DIM
        base = {"pattern": name, "seq": seq, "batch": batch, "heads": HEADS, "head_dim": HEAD_DIM,
                "pairs_per_head": pairs, "density": pairs / seq ** 2, "fwd_flop": fwd_flop,
                "fwdbwd_flop": 3.5 * fwd_flop}

        t0 = time.time()
        attn = compile_attention(pattern, head_dim=HEAD_DIM, dtype=DTYPE)
        with torch.no_grad():
            ours = attn(q, k, v)
        torch.cuda.synchronize()
        first_s = time.time() - t0
        tune_s = tune_fully(attn, (q, k, v, do))
        fc, dkc, dqc = attn.configs_for(q, k)
        bm = attn.block_map(q, k, fc.block_m, fc.block_n)
        record = functools.partial(measure, rows, base, (q, k, v, do), do_bwd, repeats)
        record("ours", functools.partial(attn, q, k, v),
               {"setup_s": first_s, "tune_s": tune_s, "tuning": tuning_log(attn.tuning_for(q, k), q, k),
                "config_fwd": fc.__dict__, "config_dkdv": dkc.__dict__, "config_dq": dqc.__dict__,
                "tiles_visited_fraction": bm.visited_fraction})
        if do_flex:
            try:
                t0 = time.time()
                torch.cuda.empty_cache()  # give Flex's dense block-mask construction the memory our caches hold
                block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=seq, KV_LEN=seq, device="cuda")
                with torch.no_grad():
                    theirs = flex(q, k, v, block_mask=block_mask)
                err = rel_err(ours, theirs)
                record("flex", functools.partial(flex, q, k, v, block_mask=block_mask),
                       {"setup_s": time.time() - t0, "rel_err_vs_ours": err})
                del theirs, block_mask
            except Exception as e:  # noqa: BLE001  (recorded in the result)
                rows.append(dict(base, impl="flex", error=repr(e)[:300]))
                print(f"{name} S={seq} flex failed: {e!r}"[:300], flush=True)
                torch.cuda.empty_cache()
        if name == "causal":
            from torch.nn.attention import SDPBackend, sdpa_kernel
            for impl, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
                def sdpa(backend=backend):
                    with sdpa_kernel(backend):
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                try:
                    with torch.no_grad():
                        err = rel_err(ours, sdpa())
                except Exception as e:  # noqa: BLE001  (recorded in the result)
                    rows.append(dict(base, impl=impl, error=repr(e)[:300]))
                    continue
                record(impl, sdpa, {"rel_err_vs_ours": err})
        del ours
    return rows


def sweep(spec: str, names: list[str], seqs: list[int]) -> list[dict]:
    """Forward time of explicit tile configs (exploration; the benchmark proper autotunes among configs.py)."""
    from hal.kernels.attention.configs import TileConfig
    configs = []
    for item in spec.split(";"):
        parts = item.split(",")
        flags = set(parts[4:])
        configs.append(TileConfig(*(int(x) for x in parts[:4]), "tma" in flags, "ws" in flags, "single" in flags,
                                  "gluon" in flags))
    rows = []
    for seq in seqs:
        batch = max(1, 16384 // seq)
        gen = torch.Generator(device="cuda").manual_seed(seq)
        q, k, v = (torch.randn(batch, HEADS, seq, HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen)
                   for _ in range(3))
        for name in names:
            pattern = pattern_specs(seq)[name][0]
            attn = compile_attention(pattern, head_dim=HEAD_DIM, dtype=DTYPE, autotune=False)
            ref = None
            for c in configs:
                row = {"pattern": name, "seq": seq, "config": c.__dict__}
                try:
                    out, _ = attn.forward(q, k, v, HEAD_DIM ** -0.5, c)
                    ref = out if ref is None else ref
                    row["rel_err_vs_first"] = rel_err(out, ref)
                    run = functools.partial(attn.forward, q, k, v, HEAD_DIM ** -0.5, c)
                    row["fwd_ms"] = [bench(run) for _ in range(2)]
                except Exception as e:  # noqa: BLE001  (recorded in the result)
                    row["error"] = repr(e)[:200]
                rows.append(row)
                print("sweep", name, seq, tuple(c.__dict__.values()), row.get("fwd_ms"), row.get("error", ""),
                      flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    table: dict[str, dict] = {}
    for r in rows:
        if "fwd_ms" not in r:
            continue
        key = f"{r['pattern']}@S={r['seq']}"
        table.setdefault(key, {})[r["impl"]] = {k: r.get(k) for k in ("fwd_ms", "fwd_tflops", "fwdbwd_ms",
                                                                      "fwdbwd_tflops")}
    ratios_fwd, ratios_fb, cudnn_fwd, cudnn_fb = {}, {}, {}, {}
    for key, impls in table.items():
        if "ours" in impls and "flex" in impls:
            ratios_fwd[key] = impls["flex"]["fwd_ms"] / impls["ours"]["fwd_ms"]
            if impls["ours"].get("fwdbwd_ms") and impls["flex"].get("fwdbwd_ms"):
                ratios_fb[key] = impls["flex"]["fwdbwd_ms"] / impls["ours"]["fwdbwd_ms"]
        if "ours" in impls and "cudnn" in impls:
            cudnn_fwd[key] = impls["cudnn"]["fwd_ms"] / impls["ours"]["fwd_ms"]
            if impls["ours"].get("fwdbwd_ms") and impls["cudnn"].get("fwdbwd_ms"):
                cudnn_fb[key] = impls["cudnn"]["fwdbwd_ms"] / impls["ours"]["fwdbwd_ms"]
    worst = min(ratios_fwd, key=ratios_fwd.get) if ratios_fwd else None
    return {
        "min_ratio_vs_flex": ratios_fwd[worst] if worst else None,
        "min_ratio_vs_flex_case": worst,
        "min_ratio_vs_flex_fwdbwd": min(ratios_fb.values()) if ratios_fb else None,
        "min_ratio_vs_flex_fwdbwd_case": min(ratios_fb, key=ratios_fb.get) if ratios_fb else None,
        "causal_ratio_vs_cudnn": min(cudnn_fwd.values()) if cudnn_fwd else None,
        "causal_ratio_vs_cudnn_fwdbwd": min(cudnn_fb.values()) if cudnn_fb else None,
        "ratio_vs_flex_fwd": ratios_fwd, "ratio_vs_flex_fwdbwd": ratios_fb,
        "ratio_vs_cudnn_fwd": cudnn_fwd, "ratio_vs_cudnn_fwdbwd": cudnn_fb,
        "targets": {"min_ratio_vs_flex": 1.1, "causal_ratio_vs_cudnn": 0.85},
        "ratio_definition": "time(alternative) / time(ours); above 1 means ours is faster",
    }, table


# ------------------------------------------------------------------------------------------------ cold start

COLD_START_PATTERNS = ("causal", "sliding_window_512")


def cold_start_child(impl: str, name: str, seq: int, smoke: bool) -> int:
    """Run in a fresh process by ``cold_start``: time its first result and print one JSON line.

    ``first_result_s`` runs from after this process's CUDA context and inputs exist (the user's own setup) to
    the first output synchronised: for ours it includes importing Triton, loading or compiling the kernel, the
    block map and, for ``warmup``, the whole ahead-of-time tuning; for Flex ``torch.compile`` and
    ``create_block_mask``. ``process_s`` counts from the parent's spawn (interpreter start and imports included).
    """
    device, dtype, heads, head_dim = _cold_start_sizes(smoke)
    if device == "cuda":
        torch.empty(1, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, heads, seq, head_dim, generator=gen, device=device).to(dtype) for _ in range(3))
    pattern, mask_mod, _ = pattern_specs(seq, device)[name]
    extra: dict = {}
    t0 = time.time()
    if impl == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention, dynamic=False)
        block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=seq, KV_LEN=seq, device=device)
        out = flex(q, k, v, block_mask=block_mask)
    else:
        if impl == "warmup":
            from hal.kernels.attention import warmup
            warmup(pattern, [tuple(q.shape)], dtype=dtype, device=device)
        attn = compile_attention(pattern, head_dim=head_dim, dtype=dtype)
        out = attn(q, k, v)
        tuning = attn.tuning_for(q, k)
        extra = {"tuning_from_disk": tuning.loaded, "config_fwd": tuning.config("forward").__dict__,
                 "config_source": tuning.choices["forward"].source}
    if device == "cuda":
        torch.cuda.synchronize()
    t1 = time.time()
    print(json.dumps({"impl": impl, "pattern": name, "seq": seq, "first_result_s": t1 - t0,
                      "process_s": t1 - float(os.environ["HAL_COLD_START_SPAWNED"]),
                      "finite": bool(torch.isfinite(out).all()), **extra}), flush=True)
    return 0


def _cold_start_sizes(smoke: bool) -> tuple[str, torch.dtype, int, int]:
    if smoke:
        return ("cuda" if torch.cuda.is_available() else "cpu"), torch.float16, 2, 16
    return "cuda", DTYPE, HEADS, HEAD_DIM


def _spawn(impl: str, name: str, seq: int, smoke: bool, env: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--cold-start-child", impl, "--patterns", name,
               "--seqs", str(seq)] + (["--smoke"] if smoke else [])
    env = dict(env, HAL_COLD_START_SPAWNED=repr(time.time()))
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        return {"impl": impl, "pattern": name, "seq": seq, "error": run.stderr[-800:]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def cold_start(names: list[str], seq: int, smoke: bool) -> dict:
    """First-result times of fresh processes: ours with nothing cached, after ``warmup`` in an earlier process,
    and FlexAttention compiling the same pattern (its own Inductor and Triton caches empty)."""
    base_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    if smoke and not torch.cuda.is_available():
        base_env["TRITON_INTERPRET"] = "1"
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="hal_cold_start_") as tmp:
            ours_env = dict(base_env, HAL_CACHE_DIR=str(Path(tmp) / "hal"))
            flex_env = dict(base_env, TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor"),
                            TRITON_CACHE_DIR=str(Path(tmp) / "triton"))
            uncached = _spawn("ours", name, seq, smoke, ours_env)
            warm = _spawn("warmup", name, seq, smoke, ours_env)
            cached = _spawn("ours", name, seq, smoke, ours_env)
            flex = None if smoke else _spawn("flex", name, seq, smoke, flex_env)
        row = {"pattern": name, "seq": seq, "uncached": uncached, "warmup": warm, "cached": cached, "flex": flex}
        if flex and "first_result_s" in flex and "first_result_s" in uncached:
            row["uncached_vs_flex"] = uncached["first_result_s"] / flex["first_result_s"]
        rows.append(row)
        print("cold start", json.dumps(row), flush=True)
    cached_s = [r["cached"]["first_result_s"] for r in rows if "first_result_s" in r["cached"]]
    ratios = [r["uncached_vs_flex"] for r in rows if "uncached_vs_flex" in r]
    return {"rows": rows, "definition": cold_start_child.__doc__.split("\n\n")[1].strip(),
            "summary": {"cold_start_cached_s": max(cached_s) if cached_s else None,
                        "cold_start_uncached_vs_flex": max(ratios) if ratios else None,
                        "targets": {"cold_start_cached_s": 2.0, "cold_start_uncached_vs_flex": 1.0}}}


# ------------------------------------------------------------------------------------------------ dynamic sparse

def dynamic_sparse(seqs: list[int], smoke: bool, repeats: int) -> dict:
    """topk_blocks(16, 64) & causal vs dense causal (ours, and cuDNN) at each S: forward and forward+backward.

    The sparse time includes the selection (pooling, scores, top-k) and building the tile lists; ``select_ms``
    and ``attend_ms`` split it. Before timing, the selection is checked against the float64 reference and the
    attention given it against float64 attention (B1, H2, S up to 4096).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    k_blocks, block = (2, 32) if smoke else (16, 64)
    heads, head_dim, dtype = (2, 16, torch.float16) if smoke else (HEADS, HEAD_DIM, DTYPE)
    spec = patterns.topk_blocks(k=k_blocks, block=block) & patterns.causal()
    sparse = compile_attention(spec, head_dim=head_dim, dtype=dtype)
    dense = compile_attention(patterns.causal(), head_dim=head_dim, dtype=dtype)
    result: dict = {"pattern": f"topk_blocks(k={k_blocks}, block={block}) & causal", "heads": heads,
                    "head_dim": head_dim, "dtype": str(dtype), "check": _dynamic_check(sparse, min(seqs), device),
                    "rows": []}
    timer = _smoke_ms if smoke else bench
    for seq in seqs:
        gen = torch.Generator(device=device).manual_seed(seq)
        q, k, v = (torch.randn(1, heads, seq, head_dim, generator=gen, device=device).to(dtype).requires_grad_()
                   for _ in range(3))
        do = torch.randn(1, heads, seq, head_dim, generator=gen, device=device).to(dtype)
        row = {"seq": seq}
        for label, attn in (("sparse", sparse), ("dense_causal", dense)):
            def fwd_bwd(a=attn):
                q.grad = k.grad = v.grad = None
                a(q, k, v).backward(do)

            if device == "cuda":
                row[f"{label}_tune_s"] = tune_fully(attn, (q, k, v, do))
            with torch.no_grad():
                row[f"{label}_fwd_ms"] = statistics.median(timer(lambda a=attn: a(q, k, v)) for _ in range(repeats))
            row[f"{label}_fwdbwd_ms"] = statistics.median(timer(fwd_bwd) for _ in range(repeats))
        with torch.no_grad():
            selection = sparse.select(q, k)
            row["select_ms"] = timer(lambda: sparse.select(q, k))
            row["attend_ms"] = timer(lambda: sparse.attend(q, k, v, sparse.select(q, k))) - row["select_ms"]
        if device == "cuda":
            with torch.no_grad():
                row["cudnn_fwd_ms"] = timer(lambda: _sdpa_causal(q, k, v))
        row["pairs_fraction_of_causal"] = _selected_pairs(selection) / (heads * seq * (seq + 1) / 2)
        row["speedup_fwd"] = row["dense_causal_fwd_ms"] / row["sparse_fwd_ms"]
        row["speedup_fwdbwd"] = row["dense_causal_fwdbwd_ms"] / row["sparse_fwdbwd_ms"]
        result["rows"].append(row)
        print("dynamic sparse", json.dumps(row), flush=True)
    last = result["rows"][-1]
    result["summary"] = {"dynamic_sparse_seq": last["seq"], "dynamic_sparse_speedup_fwd": last["speedup_fwd"],
                         "dynamic_sparse_speedup_fwdbwd": last["speedup_fwdbwd"],
                         "targets": {"dynamic_sparse_speedup_fwd": 3.0},
                         "ratio_definition": "time(dense causal, ours) / time(dynamic sparse incl. selection)"}
    return result


def _sdpa_causal(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _smoke_ms(fn: Callable[[], object]) -> float:
    """One wall-clock run (the --smoke path checks the plumbing; its times are not results)."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _selected_pairs(selection) -> float:
    """(query, key) pairs inside the selected blocks that causal allows, summed over heads (batch 1)."""
    block = selection.block
    picked = selection.selected()[0]
    diagonal = picked.diagonal(dim1=-2, dim2=-1).sum()
    return float((picked.sum() - diagonal) * block * block + diagonal * block * (block + 1) / 2)


def _dynamic_check(sparse, seq: int, device: str) -> dict:
    """Selection vs its float64 reference and attention given it vs float64 attention, at B1 H2."""
    from hal.kernels.attention import dense_mask, select_blocks_reference

    s = min(seq, 4096)
    gen = torch.Generator(device=device).manual_seed(7)
    q, k, v = (torch.randn(1, 2, s, sparse.head_dim, generator=gen, device=device).to(sparse.dtype)
               .requires_grad_() for _ in range(3))
    selection = sparse.select(q, k)
    same = bool(torch.equal(selection.selected(), select_blocks_reference(q, k, sparse.spec)))
    out = sparse.attend(q, k, v, selection)
    allowed = selection.mask() & dense_mask(patterns.causal(), 1, 2, s, s, device)
    ref, _ = attention_reference(q, k, v, lambda b, h, qi, ki: allowed)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref_grads = torch.autograd.grad(ref, (q, k, v), do.double())
    res = {"seq": s, "selection_equals_reference": same, "out": rel_err(out, ref),
           **{f"d{n}": rel_err(g, r) for n, g, r in zip("qkv", grads, ref_grads)}}
    res["ok"] = same and max(res["out"], res["dq"], res["dk"], res["dv"]) < 1e-2
    print("dynamic sparse check", res, flush=True)
    return res


# ------------------------------------------------------------------------------------------------ sparse quality

class _ByteLM(torch.nn.Module):
    """A byte-level causal transformer (pre-norm, rotary positions): the model whose q/k the quality check reads."""

    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(256, width)
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(width) for _ in range(2 * layers + 1))
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(width, 3 * width, bias=False) for _ in range(layers))
        self.proj = torch.nn.ModuleList(torch.nn.Linear(width, width, bias=False) for _ in range(layers))
        self.mlp = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                                           torch.nn.Linear(4 * width, width)) for _ in range(layers))
        self.head = torch.nn.Linear(width, 256)

    def _rotary(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        freq = 10000.0 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
        angle = torch.arange(x.shape[2], device=x.device, dtype=torch.float32)[:, None] * freq
        cos, sin = angle.cos(), angle.sin()
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)

    def forward(self, tokens: torch.Tensor, keep_qk: bool = False):
        x = self.embed(tokens)
        batch, seq, width = x.shape
        kept = []
        for i, (qkv, proj, mlp) in enumerate(zip(self.qkv, self.proj, self.mlp)):
            q, k, v = qkv(self.norms[2 * i](x)).view(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            q, k = self._rotary(q), self._rotary(k)
            if keep_qk:
                kept.append((q.detach(), k.detach()))
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + proj(a.transpose(1, 2).reshape(batch, seq, width))
            x = x + mlp(self.norms[2 * i + 1](x))
        logits = self.head(self.norms[-1](x))
        return (logits, kept) if keep_qk else logits


def python_sources(limit_bytes: int) -> bytes:
    """The Python-sources corpus: the standard library's .py files in path order, concatenated (this Python's)."""
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        data = path.read_bytes()
        chunks.append(data)
        size += len(data)
        if size >= limit_bytes:
            break
    return b"\n".join(chunks)[:limit_bytes]


def sparse_quality(smoke: bool) -> dict:
    """How much of dense attention's probability mass the top-k block selection keeps, on real text (CPU-sized).

    A byte-level 2-layer transformer is trained briefly on the Python-sources corpus; on held-out text, for every
    head and query, the dense causal softmax is compared with the blocks the selection rule picks from the same
    q/k: ``mass`` is the probability inside the picked blocks (1 = nothing lost), ``top_key`` whether the key of
    highest weight is inside. Baselines with the same budget: ``recent`` (own block and the k-1 before it) and
    ``random`` (own block and k-1 random eligible ones). Queries whose every eligible block fits in k are left out.
    """
    from hal.kernels.attention import select_blocks_reference

    torch.manual_seed(0)
    width, heads, layers, train_seq, eval_seq, steps, batch = (32, 2, 1, 64, 256, 3, 2) if smoke else \
        (128, 4, 2, 512, 2048, 300, 8)
    corpus = torch.frombuffer(bytearray(python_sources(2_000_000 if smoke else 8_000_000)), dtype=torch.uint8).long()
    split = int(0.9 * corpus.numel())
    train, held_out = corpus[:split], corpus[split:]
    model = _ByteLM(width, heads, layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    t0 = time.time()
    losses = []
    for step in range(steps):
        starts = torch.randint(0, train.numel() - train_seq - 1, (batch,))
        window = torch.stack([train[s:s + train_seq + 1] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(window[:, :-1]).reshape(-1, 256), window[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    train_s = time.time() - t0
    with torch.no_grad():
        _, kept = model(held_out[None, :eval_seq], keep_qk=True)
    rows = []
    for block, k in ((32, 4), (32, 8), (64, 4)) if not smoke else ((32, 2),):
        spec = patterns.topk_blocks(k=k, block=block) & patterns.causal()
        for layer, (q, key) in enumerate(kept):
            picked = select_blocks_reference(q, key, spec)
            rows.append(dict(_mass_kept(q, key, picked, block, k), block=block, k=k, layer=layer))
    return {"definition": sparse_quality.__doc__.split("\n\n")[1].strip(), "corpus": "Python standard library sources",
            "model": {"width": width, "heads": heads, "layers": layers, "train_seq": train_seq, "steps": steps,
                      "batch": batch, "final_loss_nats": sum(losses[-20:]) / len(losses[-20:]), "train_s": train_s},
            "eval_seq": eval_seq, "rows": rows}


def _mass_kept(q: torch.Tensor, k: torch.Tensor, picked: torch.Tensor, block: int, top_k: int) -> dict:
    """Mean probability mass and top-key recall of ``picked`` blocks vs the recent and random baselines."""
    _, heads, seq, dim = q.shape
    scores = (q.double() @ k.double().transpose(-1, -2)) * dim ** -0.5
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)[0]
    blocks = -(-seq // block)
    eligible = torch.ones(blocks, blocks, dtype=torch.bool).tril()
    recent = torch.zeros(blocks, blocks, dtype=torch.bool)
    for i in range(blocks):
        recent[i, max(0, i - top_k + 1):i + 1] = True
    gen = torch.Generator().manual_seed(1)
    random = torch.zeros(heads, blocks, blocks, dtype=torch.bool)
    for h in range(heads):
        for i in range(blocks):
            others = torch.randperm(i, generator=gen)[:top_k - 1] if i else torch.zeros(0, dtype=torch.long)
            random[h, i, i] = True
            random[h, i, others] = True
    rows = torch.arange(seq) // block
    counted = eligible.sum(-1)[rows] > top_k  # queries with more eligible blocks than the budget
    out = {"queries": int(counted.sum()) * heads}
    for label, sel in (("topk", picked[0]), ("recent", recent.expand(heads, -1, -1)), ("random", random)):
        mask = sel[:, rows][:, :, rows]
        mass = (probs * mask).sum(-1)[:, counted]
        top = mask.gather(-1, probs.argmax(-1, keepdim=True)).squeeze(-1)[:, counted]
        out[f"{label}_mass"] = float(mass.mean())
        out[f"{label}_top_key"] = float(top.double().mean())
    return out


def fit_cost_model(paths: list[str], max_seq: int) -> int:
    """Fit the cost model's figures (hal/kernels/attention/cost_model.py) to the autotuning timings of result files.

    For every timed candidate of every case with S <= ``max_seq``, the tiles and programs come from the kernel's own
    counting (``AttentionKernel.tile_counts``, block maps on the GPU if there is one, else the CPU: S = 16k takes
    about a minute there); the three figures of each (kernel, family) are a non-negative least-squares fit of the
    relative error. Prints the table to paste into cost_model.py and, per case, how far the model's first choice is
    from the fastest measured candidate.
    """
    import numpy as np
    from scipy.optimize import nnls

    from hal.kernels.attention import AttentionKernel
    from hal.kernels.attention.configs import TileConfig
    from hal.kernels.attention.cost_model import family

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sms = None
    points: dict[tuple[str, str], list] = {}
    cases: dict[tuple, dict] = {}
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        envs = [r["environment"] for r in result.get("runs", [])] or [result["environment"]]
        sms = sms or envs[0]["sm_count"]
        for row in result["rows"]:
            if row.get("impl") != "ours" or row["seq"] > max_seq or "tuning" not in row:
                continue
            pattern = pattern_specs(row["seq"], device)[row["pattern"]][0]
            kernel = AttentionKernel(pattern, None, row["head_dim"], DTYPE, "hopper")
            q = torch.zeros((), dtype=DTYPE, device=device).expand(row["batch"], row["heads"], row["seq"], row["head_dim"])
            for log in row["tuning"]:
                name = {"forward": "forward", "dkdv": "dkdv", "dq": "dq"}[log["kernel"]]
                for text, ms in log["ms"].items():
                    config = TileConfig(*ast.literal_eval(text))  # keys: tuple(TileConfig.__dict__.values())
                    counts = kernel.tile_counts(name, config, q, q)
                    tile_flop = 4.0 * config.block_m * config.block_n * row["head_dim"]
                    x = [tile_flop * counts.n_full / sms, tile_flop * counts.n_partial / sms, counts.programs / sms]
                    points.setdefault((name, family(config)), []).append((x, ms * 1e-3))
                    cases.setdefault((row["pattern"], row["seq"], name), {})[config] = (ms, (name, family(config)), x)
            print("counted", row["pattern"], row["seq"], flush=True)
    coefficients = {}
    print("_MEASURED = {")
    for (name, fam), rows in sorted(points.items()):
        x = np.array([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        c = nnls(x / y[:, None], np.ones_like(y))[0]  # relative error: divide every row by its time
        coefficients[(name, fam)] = c
        rate = 1 / c[0] if c[0] else float("inf")
        print(f'    ("{name}", "{fam}"): _fitted({rate * sms / 1e12:.0f}, {c[1] / c[0] if c[0] else 0:.2f}, '
              f"{c[2] * 1e6:.2f}),  # {len(rows)} timings")
    print("}")
    for case, timed in sorted(cases.items()):
        best = min(timed, key=lambda c: timed[c][0])
        order = list(timed)
        first = min(order, key=lambda c: (np.dot(timed[c][2], coefficients[timed[c][1]]), order.index(c)))
        print(f"{case}: first choice {timed[first][0] / timed[best][0]:.3f}x the fastest")
    return 0


EXTRA_SECTIONS = ("cold_start", "dynamic_sparse", "sparse_quality")


def merge(paths: list[str], out: str) -> int:
    """One result file from several runs: each run's environment and checks kept, the summary recomputed.

    A (pattern, S) case measured in several files keeps the rows of the last file that has it (all its
    implementations together, so every ratio still compares one run with itself). An input that is itself a
    merged file keeps its runs (its rows' ``run`` indices are shifted to match), so new parts (--cold-start,
    --dynamic-sparse, --sparse-quality) can be folded into the committed result.
    """
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    meta: list[dict] = []
    cases: dict[tuple, list[dict]] = {}
    for path, run in zip(paths, runs):
        if "runs" in run:
            offset = len(meta)
            meta += run["runs"]
            rows = [dict(row, run=row.get("run", 0) + offset) for row in run.get("rows", [])]
        else:
            rows = [dict(row, run=len(meta)) for row in run.get("rows", [])]
            meta.append({k: run[k] for k in ("environment", "shapes", "timing") if k in run} | {"file": path})
        latest: dict[tuple, list[dict]] = {}
        for row in rows:
            latest.setdefault((row.get("pattern"), row.get("seq")), []).append(row)
        cases.update(latest)
    result = {"runs": meta,
              "flop_convention": next((r["flop_convention"] for r in runs if "flop_convention" in r), None),
              "correctness": [c for r in runs for c in r.get("correctness", [])],
              "rows": [row for rows in cases.values() for row in rows]}
    result["summary"], result["table"] = summarize(result["rows"])
    for section in EXTRA_SECTIONS:  # the last file that has a section wins; its summary keys join the summary
        found = [r[section] for r in runs if section in r]
        if found:
            result[section] = found[-1]
            result["summary"].update({k: v for k, v in found[-1].get("summary", {}).items() if k != "targets"})
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["summary"], indent=1))
    return 0


def run_part(part: str, args: argparse.Namespace, seqs_given: bool) -> int:
    """--cold-start, --dynamic-sparse or --sparse-quality: one section and its summary in its own result file."""
    if not (args.smoke or part == "sparse_quality" or torch.cuda.is_available()):
        print(f"--{part.replace('_', '-')} needs a CUDA GPU; --smoke checks the plumbing on a CPU")
        return 2
    if part == "cold_start":
        seq = int(args.seqs.split(",")[0]) if seqs_given else (128 if args.smoke else 16384)
        names = args.patterns.split(",") if any(a.startswith("--patterns") for a in sys.argv[1:]) \
            else list(COLD_START_PATTERNS)
        section = cold_start(names, seq, args.smoke)
    elif part == "dynamic_sparse":
        seqs = [int(s) for s in args.seqs.split(",")] if seqs_given else \
            ([128] if args.smoke else [32768, 65536, 131072])
        section = dynamic_sparse(seqs, args.smoke, 1 if args.smoke else args.repeats)
    else:
        section = sparse_quality(args.smoke)
    result = {"environment": environment(), part: section, "summary": section.get("summary", {}), "smoke": args.smoke}
    out = args.out or f"benchmarks/results/attention_{part}{'_smoke' if args.smoke else ''}.json"
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["summary"] or section.get("rows"), indent=1))
    return 0


def environment() -> dict:
    """Versions and the device: what a result depends on."""
    import triton

    env = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        env.update(device=torch.cuda.get_device_name(), capability=list(torch.cuda.get_device_capability()),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   sm_count=torch.cuda.get_device_properties(0).multi_processor_count)
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", default="4096,16384,65536")
    ap.add_argument("--patterns", default="causal,sliding_window_512,dilated_2,document_4,prefix_lm_1024")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--no-check", action="store_true", help="skip the float64 reference check")
    ap.add_argument("--sweep", default="", help="only time these forward tile configs of ours, e.g. "
                    "'128,128,8,2;256,64,8,2,tma' (block_m,block_n,warps,stages[,tma][,ws][,single][,gluon])")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="timings per case; the median is reported")
    ap.add_argument("--merge", nargs="+", default=[], help="join result files of runs split by --seqs and "
                    "recompute the summary (no GPU needed)")
    ap.add_argument("--fit-cost-model", nargs="+", default=[], metavar="RESULT_JSON",
                    help="fit the cost model's figures to the autotuning timings of these result files (no GPU "
                    "needed) and print them")
    ap.add_argument("--fit-max-seq", type=int, default=16384, help="cases up to this S enter the fit")
    ap.add_argument("--cold-start", action="store_true", help="first-result time of fresh processes, cached and "
                    "uncached, next to FlexAttention's compile time (S = --seqs' first, default 16384)")
    ap.add_argument("--dynamic-sparse", action="store_true", help="topk_blocks(16, 64) & causal vs dense causal at "
                    "S = --seqs (default 32768,65536,131072)")
    ap.add_argument("--sparse-quality", action="store_true", help="CPU-sized quality check of the top-k block "
                    "selection on the Python-sources corpus (no GPU needed; about 5 minutes on two shared cores)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, CPU interpreter without a GPU: checks the "
                    "plumbing of --cold-start / --dynamic-sparse / --sparse-quality (not a result)")
    ap.add_argument("--cold-start-child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="result file (default benchmarks/results/attention.json, or "
                    "attention_<part>.json for --cold-start / --dynamic-sparse / --sparse-quality)")
    args = ap.parse_args()
    seqs_given = any(a.startswith("--seqs") for a in sys.argv[1:])
    if args.cold_start_child:
        return cold_start_child(args.cold_start_child, args.patterns, int(args.seqs.split(",")[0]), args.smoke)
    if args.merge:
        return merge(args.merge, args.out or "benchmarks/results/attention.json")
    if args.fit_cost_model:
        return fit_cost_model(args.fit_cost_model, args.fit_max_seq)
    part = "cold_start" if args.cold_start else "dynamic_sparse" if args.dynamic_sparse else \
        "sparse_quality" if args.sparse_quality else None
    if part:
        return run_part(part, args, seqs_given)
    args.out = args.out or "benchmarks/results/attention.json"
    if not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU (it times Triton kernels against FlexAttention and SDPA)")
        return 2
    import triton
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    torch._dynamo.config.cache_size_limit = 256
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 256
    flex = torch.compile(flex_attention, dynamic=False)
    names = args.patterns.split(",")
    seqs = [int(s) for s in args.seqs.split(",")]
    result: dict = {
        "environment": {"device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
                        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                        "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
                        "sm_count": torch.cuda.get_device_properties(0).multi_processor_count},
        "shapes": {"heads": HEADS, "head_dim": HEAD_DIM, "dtype": str(DTYPE), "batch": "max(1, 16384 // S)",
                   "seqs": seqs},
        "flop_convention": "forward 4*B*H*pairs*D over allowed (q,k) pairs; forward+backward 3.5x forward",
        "timing": f"triton.testing.do_bench median, warmup 25 ms, rep 100 ms, CUDA events; {args.repeats} repeats per "
                  "case, median reported",
        "correctness": [], "rows": [],
    }
    if args.sweep:
        result["sweep"] = sweep(args.sweep, names, seqs)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        return 0
    if not args.no_check:
        for name in names:
            pattern = pattern_specs(4096)[name][0]
            try:
                res = reference_check(name, pattern, 4096)
            except Exception as e:  # noqa: BLE001  (recorded in the result)
                res = {"pattern": name, "ok": False, "error": repr(e)[:300], "trace": traceback.format_exc()[-800:]}
            result["correctness"].append(res)
            print("check", res, flush=True)
    for seq in seqs:
        try:
            result["rows"] += run_seq(seq, names, flex, create_block_mask, not args.no_flex, not args.no_backward,
                                      args.repeats)
        except Exception as e:  # noqa: BLE001  (recorded in the result)
            result["rows"].append({"seq": seq, "error": repr(e)[:300], "trace": traceback.format_exc()[-800:]})
            print(traceback.format_exc(), flush=True)
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:  # partial results survive a time limit
            json.dump(result, f, indent=1)
    result["summary"], result["table"] = summarize(result["rows"])
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
