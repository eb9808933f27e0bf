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
import functools
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import torch

from hal.kernels.attention import attention_reference, compile_attention, patterns
from hal.kernels.attention.expr import evaluate

HEADS = 16
REPEATS = 3  # default timings per case (each a do_bench median)
HEAD_DIM = 128
DTYPE = torch.bfloat16


def pattern_specs(seq: int) -> dict[str, tuple[patterns.Pattern, Callable, int]]:
    """name -> (our pattern, the same mask as a FlexAttention mask_mod, closed-form allowed pairs per head)."""
    n_docs = 4
    doc_len = seq // n_docs
    doc_ids = torch.arange(seq, device="cuda") // doc_len

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
    a, b = a.double(), b.double()
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
        fc, dkc, dqc = attn.configs_for(q, k)
        bm = attn.block_map(q, k, fc.block_m, fc.block_n)
        record = functools.partial(measure, rows, base, (q, k, v, do), do_bwd, repeats)
        record("ours", functools.partial(attn, q, k, v),
               {"setup_s": time.time() - t0, "tuning": attn.tuning_log[-3:], "config_fwd": fc.__dict__, "config_dkdv": dkc.__dict__,
                "config_dq": dqc.__dict__, "tiles_visited_fraction": bm.visited_fraction})
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


def merge(paths: list[str], out: str) -> int:
    """One result file from several runs: each run's environment and checks kept, the summary recomputed.

    A (pattern, S) case measured in several files keeps the rows of the last file that has it (all its
    implementations together, so every ratio still compares one run with itself).
    """
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    cases: dict[tuple, list[dict]] = {}
    for i, run in enumerate(runs):
        latest: dict[tuple, list[dict]] = {}
        for row in run["rows"]:
            latest.setdefault((row.get("pattern"), row.get("seq")), []).append(dict(row, run=i))
        cases.update(latest)
    result = {"runs": [{k: r[k] for k in ("environment", "shapes", "timing") if k in r} | {"file": p}
                       for p, r in zip(paths, runs)],
              "flop_convention": runs[0]["flop_convention"],
              "correctness": [c for r in runs for c in r["correctness"]],
              "rows": [row for rows in cases.values() for row in rows]}
    result["summary"], result["table"] = summarize(result["rows"])
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result["summary"], indent=1))
    return 0


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
    ap.add_argument("--out", default="benchmarks/results/attention.json")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
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
