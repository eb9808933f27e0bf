"""2:4 sparsity: dense vs semi-structured per Linear of 1B/7B/70B-class Llama models, the decision's never-slower
check, the 7B MLP at 8k tokens, and the pruned + fine-tuned validation loss against dense.

- ``shapes``: the four Linears of each model (qkv, o, gate_up, down) with Llama dimensions (1B: Llama-3.2-1B, d 2048,
  ffn 8192, 8 KV heads of 64; 7B: Llama-2-7B, d 4096, ffn 11008, no GQA; 70B: Llama-3-70B, d 8192, ffn 28672, 8 KV
  heads of 128) at 1 to 16k tokens, bf16 and fp16: ``F.linear`` dense against each backend of hal.sparsity
  (cuSPARSELt, CUTLASS), forward ms with triton.testing.do_bench, and ``hal.sparsity.decide``'s choice. FP8
  (E4M3) where cuSPARSELt compresses it: tried per shape, the error recorded where it does not.
- ``never_slower``: for every decision, dense and the kept path timed again; the check passes when the kept path is
  within the timing noise (``NOISE``) of dense or faster, for every shape.
- ``mlp``: the 7B SwiGLU MLP (gate_up, silu·mul, down) at 8k tokens, bf16, dense vs both Linears 2:4 (``accelerate``).
- ``pruned``: benchmarks/fp8_training.py's pruning study (a small byte-level Llama trained dense, pruned to 2:4 and
  fine-tuned, against the dense model trained the same extra steps), or its number read from ``--pruned-from``.

    python benchmarks/sparsity.py                      # GPU: writes benchmarks/results/sparsity.json
    python benchmarks/sparsity.py --pruned-from benchmarks/results/fp8_training.json   # GPU, no second training
    python benchmarks/sparsity.py --smoke --out smoke.json    # CPU: the plumbing only (no sparse kernel there)

GPU wall time on one H200, estimated from the work (not measured yet; each part's own time is written to
``part_wall_s``): ``shapes`` is 216 rows of about four ``do_bench`` calls of ~0.1 s each (warm-up 10 ms, 40 ms of
repeats) plus 24 compressions, ~2 min; ``mlp`` ~10 s; ``pruned`` trains the 125M model 400 steps and fine-tunes it
twice for 100 (three compiles), ~4 min, or nothing with ``--pruned-from`` (benchmarks/fp8_training.py runs the same
study). So ~2 min after fp8_training.py, ~6 min alone: no ``--quick`` is needed. The result is rewritten after every
part.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, environment  # noqa: E402
from hal import sparsity  # noqa: E402

#: name -> (d_model, ffn, q heads * head_dim + 2 * kv heads * head_dim)
MODELS = {"1b": (2048, 8192, 2048 + 2 * 8 * 64), "7b": (4096, 11008, 3 * 4096), "70b": (8192, 28672, 8192 + 2 * 8 * 128)}
TOKENS = (1, 16, 256, 1024, 4096, 16384)
SMOKE_MODELS = {"tiny": (64, 128, 192)}
SMOKE_TOKENS = (1, 16)
#: Two timings of one kernel by do_bench differ by a few percent; a kept path within this of dense is not slower.
NOISE = 0.03


def layers_of(d: int, ffn: int, qkv: int) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of a Llama block's Linears."""
    return {"qkv": (d, qkv), "o": (d, d), "gate_up": (d, 2 * ffn), "down": (ffn, d)}


def timer_for(device: str):
    if device == "cuda":
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))

    def cpu(fn):
        fn()
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)

    return cpu


def two_four_weight(out_f: int, in_f: int, dtype, device) -> torch.Tensor:
    w = torch.randn(out_f, in_f, device=device, dtype=torch.float32)
    return (w * sparsity.magnitude_mask(w)).to(dtype)


def fp8_row(w: torch.Tensor, x: torch.Tensor, time_ms) -> dict:
    """FP8 (E4M3) dense (torch._scaled_mm) vs cuSPARSELt's FP8 2:4 product (torch._cslt_sparse_mm), unit scales."""
    row: dict = {"sparse_ms": {}, "errors": {}}
    wq, xq = w.to(torch.float8_e4m3fn), x.to(torch.float8_e4m3fn)
    one = torch.ones((), device=x.device)
    try:
        row["dense_ms"] = time_ms(lambda: torch._scaled_mm(xq, wq.t(), scale_a=one, scale_b=one,
                                                           out_dtype=torch.bfloat16))
    except Exception as exc:  # noqa: BLE001 - recorded
        row["dense_ms"] = None
        row["errors"]["dense"] = f"{type(exc).__name__}: {exc}"
    try:
        compressed = torch._cslt_compress(wq)
        row["sparse_ms"]["cusparselt"] = time_ms(lambda: torch._cslt_sparse_mm(compressed, xq.t(),
                                                                                out_dtype=torch.bfloat16))
    except Exception as exc:  # noqa: BLE001 - recorded: this cuSPARSELt / shape may not take FP8
        row["errors"]["cusparselt"] = f"{type(exc).__name__}: {exc}"
    return row


def bench_shapes(device: str, models: dict, tokens_list, dtypes) -> list[dict]:
    time_ms = timer_for(device)
    rows = []
    for model, dims in models.items():
        for layer, (in_f, out_f) in layers_of(*dims).items():
            for dtype in dtypes:
                torch.manual_seed(0)
                fp8 = dtype == torch.float8_e4m3fn
                w = two_four_weight(out_f, in_f, torch.bfloat16 if fp8 else dtype, device)
                compressed, reasons = {}, {}
                for backend in () if fp8 else sparsity.kernels.BACKENDS:
                    try:
                        compressed[backend] = sparsity.SemiStructuredLinear(w, None, backend)
                    except Exception as exc:  # noqa: BLE001 - a backend that does not run here is recorded
                        reasons[backend] = f"{type(exc).__name__}: {exc}"
                for tokens in tokens_list:
                    x = torch.randn(tokens, in_f, device=device).to(torch.bfloat16 if fp8 else dtype)
                    row = {"model": model, "layer": layer, "in": in_f, "out": out_f, "tokens": tokens,
                           "dtype": str(dtype).removeprefix("torch.")}
                    if fp8:
                        row.update(fp8_row(w, x, time_ms))
                    else:
                        row.update(dense_ms=time_ms(lambda x=x: F.linear(x, w)), sparse_ms={}, errors=dict(reasons))
                        for backend, layer_mod in compressed.items():
                            try:
                                row["sparse_ms"][backend] = time_ms(lambda m=layer_mod, x=x: m(x))
                            except Exception as exc:  # noqa: BLE001
                                row["errors"][backend] = f"{type(exc).__name__}: {exc}"
                    if row["dense_ms"] is not None and row["sparse_ms"]:
                        row["speedup"] = row["dense_ms"] / min(row["sparse_ms"].values())
                    if row["dense_ms"] is not None and not fp8:
                        decision, backend, reason = sparsity.decide(row["dense_ms"], row["sparse_ms"])
                        row.update(decision=decision, reason=reason)
                        kept = compressed.get(backend) if decision.startswith("sparse") else None
                        dense_again = time_ms(lambda x=x: F.linear(x, w))
                        kept_again = time_ms(lambda m=kept, x=x: m(x)) if kept is not None else dense_again
                        row["retimed"] = {"dense_ms": dense_again, "kept_ms": kept_again}
                        row["never_slower"] = kept_again <= dense_again * (1 + NOISE)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


class MLP(nn.Module):
    def __init__(self, d: int, ffn: int):
        super().__init__()
        self.gate_up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def bench_mlp(device: str, d: int, ffn: int, tokens: int) -> dict:
    time_ms = timer_for(device)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = MLP(d, ffn).to(device=device, dtype=dtype)
    sparsity.prune_2_4(model)
    sparsity.remove_masks(model)  # plain Linears holding 2:4 weights: the dense baseline pays no mask multiply
    x = torch.randn(tokens, d, device=device, dtype=dtype)
    with torch.no_grad():
        dense_out = model(x)
        dense_ms = time_ms(lambda: model(x))
        plan = sparsity.accelerate(model, x, timer=lambda name, variant, fn: time_ms(fn))
        sparse_out = model(x)
        accelerated_ms = time_ms(lambda: model(x))
    print(plan, flush=True)
    return {"d": d, "ffn": ffn, "tokens": tokens, "dense_ms": dense_ms, "accelerated_ms": accelerated_ms,
            "speedup": dense_ms / accelerated_ms, "rel_diff": float((sparse_out.float() - dense_out.float()).norm()
                                                                    / dense_out.float().norm()),
            "plan": plan.to_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--parts", default="shapes,mlp,pruned")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--pruned-from", type=Path, default=None,
                        help="a benchmarks/fp8_training.py result to read pruned_val_loss_gap_pct from")
    parser.add_argument("--pruned-steps", type=int, default=None, help="steps of the pruning study (default 400)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    parts = set(args.parts.split(","))
    out = args.out or (Path(tempfile.gettempdir()) / "sparsity_smoke.json" if args.smoke else RESULTS / "sparsity.json")
    doc: dict = {"environment": environment(device), "smoke": args.smoke, "noise": NOISE, "part_wall_s": {}}
    if device == "cuda":
        doc["environment"]["compute_capability"] = list(torch.cuda.get_device_capability())
        doc["environment"]["cusparselt"] = torch.backends.cusparselt.version()
    summary: dict = {}
    doc["summary"] = summary
    if args.smoke:
        summary["note"] = "smoke: tiny shapes on a CPU, where no 2:4 kernel runs; timings mean nothing"
    clock = {"start": time.perf_counter()}

    def part_done(name: str) -> None:  # the result after every part: a run stopped by a time limit keeps it
        doc["part_wall_s"][name] = time.perf_counter() - clock["start"]
        clock["start"] = time.perf_counter()
        write(doc, out)

    if "shapes" in parts:
        models = SMOKE_MODELS if args.smoke else {k: MODELS[k] for k in args.models.split(",")}
        dtypes = [torch.float32] if args.smoke else [torch.bfloat16, torch.float16, torch.float8_e4m3fn]
        doc["shapes"] = bench_shapes(device, models, SMOKE_TOKENS if args.smoke else TOKENS, dtypes)
        checked = [r["never_slower"] for r in doc["shapes"] if "never_slower" in r]
        summary["decision_never_slower"] = all(checked) if checked else None
        summary["shapes_sparse_kept"] = sum(1 for r in doc["shapes"] if r.get("decision", "").startswith("sparse"))
        summary["shapes_timed"] = len(checked)
        part_done("shapes")
    if "mlp" in parts:
        d, ffn = (64, 128) if args.smoke else MODELS["7b"][:2]
        doc["mlp_7b"] = bench_mlp(device, d, ffn, 64 if args.smoke else 8192)
        summary["mlp_7b_speedup"] = doc["mlp_7b"]["speedup"]
        part_done("mlp")
    if "pruned" in parts:
        if args.pruned_from:
            source = json.loads(args.pruned_from.read_text())
            gap = source.get("summary", {}).get("pruned_val_loss_gap_pct")
            summary["pruned_val_loss_gap_pct"] = gap
            doc["pruned"] = {"from": str(args.pruned_from), "fp8_training_environment": source.get("environment"),
                             "fp8_training_quick": source.get("quick")}
            if gap is None:
                doc["pruned"]["error"] = f"{args.pruned_from} holds no pruned_val_loss_gap_pct (its convergence part did not finish)"
        else:
            from benchmarks import fp8_training as study

            steps = args.pruned_steps or (4 if args.smoke else 400)
            cfg = study.CONFIG_SMOKE if args.smoke else study.CONFIG_125M
            train_cfg = study.TrainConfig(steps=steps, batch_size=2 if args.smoke else 16,
                                          seq=64 if args.smoke else 1024, warmup=2 if args.smoke else 50,
                                          eval_every=steps, eval_batches=2 if args.smoke else 16)
            train_stream, val, meta = study.stdlib_bytes(40 if args.smoke else None)
            torch.manual_seed(0)
            dense = study.Llama(cfg).to(device)
            study.train(dense, train_stream, val, train_cfg, device, not args.smoke, "dense")
            doc["pruned"] = study.pruning_study(dense, train_stream, val, train_cfg, device, not args.smoke,
                                                max(2, steps // 4))
            doc["pruned"]["data"] = meta
            summary["pruned_val_loss_gap_pct"] = doc["pruned"]["pruned_val_loss_gap_pct"]
        part_done("pruned")
    write(doc, out)
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0


def write(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
