"""Selective-scan kernels (hal.kernels.ssm) vs mamba_ssm and plain torch, side by side in one process, on one GPU.

Mamba-2 (SSD): batch 1, 64 heads x head_dim 64, d_state 128, one group, chunk 256, bf16, D per head, dt_bias and
dt softplus, at L = 4k, 16k, 64k, 256k: ours (``ssm.chunk_scan``) against mamba_ssm's
``mamba_chunk_scan_combined`` (its module imported directly, bypassing the mamba_ssm package __init__, which needs
the CUDA extensions), forward and forward+backward; then ours alone at 1M tokens (memory measured) and a probe of
the longest sequence whose forward+backward fits the GPU. Mamba-1 (S6): batch 1, 2048 channels, d_state 16, bf16,
z gate, D, delta_bias and softplus, at L = 16k, 64k (and 4k): ours (``ssm.selective_scan``) against mamba_ssm's CUDA
kernel (``selective_scan_fn``) where it imports, and against the forward's byte floor: the bytes a scan must move
(read u, delta, z, B, C; write y) over the HBM bandwidth (4.3 TB/s for an H200, 3.35 TB/s for an H100 SXM, chosen
from the GPU's name). At L = 4k both scans also run as a per-token torch loop (``ssm.step``) and through
``torch.compile`` of the chunked torch path (``backend="torch"``, our vectorised reference).

Before timing, ours is compared with mamba_ssm's output (and with the float64 reference at a small size).
Timing: ``triton.testing.do_bench`` median (warmup 25 ms, rep 100 ms); loops and compiled paths: CUDA-event time of
one run after a warm-up run. Speedup = time(mamba_ssm) / time(ours).

    python benchmarks/selective_scan.py                          # everything, writes results/selective_scan.json
    python benchmarks/selective_scan.py --ssd-seqs 4096,16384 --no-s6 --out a.json   # split a run ...
    python benchmarks/selective_scan.py --merge a.json b.json    # ... and join (summary recomputed, no GPU)
    python benchmarks/selective_scan.py --smoke                  # tiny sizes, any machine: proves the script runs
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, environment  # noqa: E402
from hal.kernels import ssm  # noqa: E402

# HBM bandwidth per GPU name fragment, TB/s. H100 SXM: datasheet (NVIDIA H100 Tensor Core GPU datasheet, 3.35 TB/s).
# H200: the 4.3 TB/s the target is stated in (NVIDIA's H200 datasheet gives 4.8 TB/s; the stricter floor
# that figure implies is reported beside it).
HBM_TBPS = {"H200": (4.3, "issue 18 target definition (datasheet: 4.8 TB/s)"),
            "H100": (3.35, "datasheet: NVIDIA H100 Tensor Core GPU datasheet, SXM5")}
H200_DATASHEET_TBPS = 4.8
TARGETS = {"ssd_fwd_speedup_vs_mamba_ssm": 1.5, "ssd_fwdbwd_speedup_vs_mamba_ssm": 1.3, "s6_fwd_x_byte_floor": 3.0}
SSD = {"batch": 1, "heads": 64, "head_dim": 64, "d_state": 128, "groups": 1, "chunk_size": 256}
S6 = {"batch": 1, "channels": 2048, "d_state": 16}
SMOKE_SSD = {"batch": 1, "heads": 4, "head_dim": 16, "d_state": 16, "groups": 1, "chunk_size": 32}
SMOKE_S6 = {"batch": 1, "channels": 32, "d_state": 16}


# ------------------------------------------------------------------------------------------------ baselines
def import_mamba_ssm() -> dict:
    """mamba_ssm's SSD and S6 entry points, importing their modules without running the package __init__.

    The package __init__ imports the CUDA extensions (selective_scan_cuda, causal_conv1d); the Triton SSD module
    does not need them. A bare package module is registered under the name so the submodules import on their own;
    every import error is kept for the record.
    """
    found: dict = {"errors": {}}
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        found["errors"]["mamba_ssm"] = "not installed"
        return found
    if "mamba_ssm" not in sys.modules:
        package = types.ModuleType("mamba_ssm")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["mamba_ssm"] = package
    try:
        from importlib.metadata import version
        found["version"] = version("mamba_ssm")
    except Exception as e:  # noqa: BLE001  (the version is informative only)
        found["errors"]["version"] = repr(e)
    try:
        found["ssd"] = importlib.import_module("mamba_ssm.ops.triton.ssd_combined").mamba_chunk_scan_combined
    except Exception as e:  # noqa: BLE001  (recorded: a missing baseline is a result)
        found["errors"]["ssd_combined"] = repr(e)[-400:]
    try:
        found["s6"] = importlib.import_module("mamba_ssm.ops.selective_scan_interface").selective_scan_fn
    except Exception as e:  # noqa: BLE001
        found["errors"]["selective_scan_interface"] = repr(e)[-400:]
    return found


# ------------------------------------------------------------------------------------------------ timing
class Timer:
    """do_bench on a GPU; wall-clock medians on a CPU (smoke runs only)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def bench(self, fn: Callable[[], object], grad_to_none=None) -> float:
        if self.cuda:
            import triton.testing
            return float(triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none,
                                                 return_mode="median"))
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def once(self, fn: Callable[[], object]) -> float:
        """ms of one run after one warm-up run (for loops and compiled paths)."""
        fn()
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end)

    def peak_bytes(self, fn: Callable[[], object]) -> int | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def measure(timer: Timer, fwd: Callable[[], torch.Tensor], leaves: list[torch.Tensor], backward: bool) -> dict:
    """Forward (no grad) and forward+backward times; a failure is recorded, never raised."""
    row: dict = {}
    try:
        with torch.no_grad():
            row["fwd_ms"] = timer.bench(fwd)
            row["fwd_peak_bytes"] = timer.peak_bytes(fwd)
        if backward:
            out = fwd()
            grad = torch.randn_like(out)
            del out

            def fwd_bwd():
                fwd().backward(grad)

            row["fwdbwd_ms"] = timer.bench(fwd_bwd, grad_to_none=leaves)
            row["fwdbwd_peak_bytes"] = timer.peak_bytes(fwd_bwd)
    except Exception as e:  # noqa: BLE001  (an out-of-memory or a failing baseline is a result)
        row["error"] = repr(e)[-400:]
        if timer.cuda:
            torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------------------------------------------ inputs
def ssd_inputs(shape: dict, seqlen: int, device: str, dtype: torch.dtype, grad: bool) -> dict:
    g = torch.Generator(device=device).manual_seed(seqlen)
    b, h, p, n, grp = shape["batch"], shape["heads"], shape["head_dim"], shape["d_state"], shape["groups"]

    def rnd(*s, scale=1.0, dt=dtype):
        return (torch.randn(*s, generator=g, device=device) * scale).to(dt).requires_grad_(grad)

    return {"x": rnd(b, seqlen, h, p), "dt": rnd(b, seqlen, h, scale=0.5),
            "A": (-torch.rand(h, generator=g, device=device) - 0.5).requires_grad_(grad),
            "B": rnd(b, seqlen, grp, n, scale=0.3), "C": rnd(b, seqlen, grp, n, scale=0.3),
            "D": rnd(h, dt=torch.float32), "dt_bias": rnd(h, scale=0.5, dt=torch.float32)}


def s6_inputs(shape: dict, seqlen: int, device: str, dtype: torch.dtype, grad: bool) -> dict:
    g = torch.Generator(device=device).manual_seed(seqlen)
    b, d, n = shape["batch"], shape["channels"], shape["d_state"]

    def rnd(*s, scale=1.0, dt=dtype):
        return (torch.randn(*s, generator=g, device=device) * scale).to(dt).requires_grad_(grad)

    return {"u": rnd(b, d, seqlen), "delta": rnd(b, d, seqlen, scale=0.5),
            "A": (-torch.rand(d, n, generator=g, device=device) - 0.5).requires_grad_(grad),
            "B": rnd(b, n, seqlen), "C": rnd(b, n, seqlen), "D": rnd(d, dt=torch.float32),
            "z": rnd(b, d, seqlen), "delta_bias": rnd(d, scale=0.5, dt=torch.float32)}


def ssd_ours(t: dict, chunk: int, backend: str = "auto") -> Callable[[], torch.Tensor]:
    return lambda: ssm.chunk_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=chunk, D=t["D"],
                                  dt_bias=t["dt_bias"], dt_softplus=True, backend=backend)


def s6_ours(t: dict, backend: str = "auto") -> Callable[[], torch.Tensor]:
    return lambda: ssm.selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                                      delta_bias=t["delta_bias"], delta_softplus=True, backend=backend)


def ssd_loop(t: dict) -> Callable[[], torch.Tensor]:
    """The per-token torch loop: one ssm.step per position."""
    def run():
        b, seqlen, h, p = t["x"].shape
        state = torch.zeros(b, h, p, t["B"].shape[-1], device=t["x"].device)
        ys = []
        for i in range(seqlen):
            y, state = ssm.step(t["x"][:, i], state, t["dt"][:, i], t["A"], t["B"][:, i], t["C"][:, i], D=t["D"],
                                dt_bias=t["dt_bias"], dt_softplus=True)
            ys.append(y)
        return torch.stack(ys, 1)
    return run


def s6_loop(t: dict) -> Callable[[], torch.Tensor]:
    def run():
        b, d, seqlen = t["u"].shape
        state = torch.zeros(b, d, t["A"].shape[1], device=t["u"].device)
        ys = []
        for i in range(seqlen):
            y, state = ssm.step(t["u"][..., i], state, t["delta"][..., i], t["A"], t["B"][..., i], t["C"][..., i],
                                D=t["D"], z=t["z"][..., i], dt_bias=t["delta_bias"], dt_softplus=True)
            ys.append(y)
        return torch.stack(ys, -1)
    return run


def s6_bytes(shape: dict, seqlen: int, elem: int) -> int:
    """Bytes a forward must move: read u, delta, z and B, C; write y (parameters are negligible)."""
    return shape["batch"] * seqlen * (4 * shape["channels"] + 2 * shape["d_state"]) * elem


def ssd_bytes(shape: dict, seqlen: int, elem: int) -> int:
    """Bytes a forward must move: read x, dt, B, C; write y."""
    h, p, n, g = shape["heads"], shape["head_dim"], shape["d_state"], shape["groups"]
    return shape["batch"] * seqlen * (2 * h * p + h + 2 * g * n) * elem


def bandwidth(cuda: bool) -> tuple[float | None, str]:
    if not cuda:
        return None, "no GPU"
    name = torch.cuda.get_device_name()
    for key, (tbps, source) in HBM_TBPS.items():
        if key in name:
            return tbps, source
    return None, f"no bandwidth figure for {name}"


# ------------------------------------------------------------------------------------------------ runs
def correctness(device: str, dtype: torch.dtype) -> list[dict]:
    """Ours vs the float64 sequential reference at a small size (forward), both scans."""
    out = []
    shape = {"batch": 1, "heads": 4, "head_dim": 64, "d_state": 128, "groups": 1}
    t = ssd_inputs(shape, 1024, device, dtype, grad=False)
    ours = ssd_ours(t, 256)()
    ref, _ = ssm.reference.chunk_scan_ref(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], None, t["dt_bias"],
                                          dt_softplus=True)
    out.append({"scan": "ssd", "seqlen": 1024, "rel_err_vs_float64": rel_err(ours, ref)})
    shape6 = {"batch": 1, "channels": 64, "d_state": 16}
    t = s6_inputs(shape6, 1024, device, dtype, grad=False)
    ours = s6_ours(t)()
    ref, _ = ssm.reference.selective_scan_ref(t["u"], t["delta"], t["A"], t["B"].unsqueeze(1), t["C"].unsqueeze(1),
                                              t["D"], t["z"], t["delta_bias"], True)
    out.append({"scan": "s6", "seqlen": 1024, "rel_err_vs_float64": rel_err(ours, ref)})
    for row in out:
        row["ok"] = row["rel_err_vs_float64"] < 3e-2
    return out


def run_ssd(seqlen: int, shape: dict, timer: Timer, mamba: dict, device: str, dtype: torch.dtype,
            baselines: bool, loops: bool) -> list[dict]:
    rows = []
    base = {"scan": "ssd", "seqlen": seqlen, "tokens": shape["batch"] * seqlen}
    t = ssd_inputs(shape, seqlen, device, dtype, grad=True)
    leaves = list(t.values())
    ours = ssd_ours(t, shape["chunk_size"])
    rows.append(dict(base, impl="ours", backend=ssm.resolve_backend(device, dtype), **measure(timer, ours, leaves,
                                                                                             True)))
    if baselines and "ssd" in mamba:
        fn = mamba["ssd"]

        def theirs():
            return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=shape["chunk_size"], D=t["D"],
                      dt_bias=t["dt_bias"], dt_softplus=True)
        rows.append(_baseline_row(dict(base, impl="mamba_ssm"), theirs, ours, timer, leaves))
    if loops:
        rows += _loop_rows(base, (("torch_step_loop", ssd_loop(t)),
                                  ("torch_compile_chunked", _compiled(ssd_ours(t, shape["chunk_size"], "torch")))), timer)
    _print(rows)
    return rows


def _baseline_row(row: dict, theirs: Callable[[], torch.Tensor], ours: Callable[[], torch.Tensor], timer: Timer, leaves) -> dict:
    """A library's row: its difference from ours, then its times (or the error it raised)."""
    try:
        with torch.no_grad():
            row["rel_err_vs_ours"] = rel_err(theirs(), ours())
    except Exception as e:  # noqa: BLE001 (a failing baseline is recorded, the others still run)
        row["error"] = repr(e)[-400:]
    if "error" not in row:
        row.update(measure(timer, theirs, leaves, True))
    return row


def _loop_rows(base: dict, impls, timer: Timer) -> list[dict]:
    """One forward timing per (name, callable) of the slow reference forms (or the error each raised)."""
    rows = []
    for impl, fn in impls:
        row = dict(base, impl=impl)
        try:
            with torch.no_grad():
                row["fwd_ms"] = timer.once(fn)
        except Exception as e:  # noqa: BLE001 (recorded per form)
            row["error"] = repr(e)[-400:]
        rows.append(row)
    return rows


def _compiled(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    compiled = torch.compile(fn, dynamic=False)
    return compiled


def run_s6(seqlen: int, shape: dict, timer: Timer, mamba: dict, device: str, dtype: torch.dtype, baselines: bool,
           loops: bool, tbps: float | None) -> list[dict]:
    rows = []
    base = {"scan": "s6", "seqlen": seqlen, "tokens": shape["batch"] * seqlen}
    t = s6_inputs(shape, seqlen, device, dtype, grad=True)
    leaves = list(t.values())
    ours = s6_ours(t)
    row = dict(base, impl="ours", backend=ssm.resolve_backend(device, dtype), **measure(timer, ours, leaves, True))
    moved = s6_bytes(shape, seqlen, torch.finfo(dtype).bits // 8)
    row["fwd_bytes_floor"] = moved
    if tbps and "fwd_ms" in row:
        row["fwd_floor_ms"] = moved / (tbps * 1e12) * 1e3
        row["fwd_x_byte_floor"] = row["fwd_ms"] / row["fwd_floor_ms"]
        if "H200" in torch.cuda.get_device_name():
            row["fwd_x_byte_floor_at_datasheet_bw"] = row["fwd_ms"] / (moved / (H200_DATASHEET_TBPS * 1e12) * 1e3)
    rows.append(row)
    if baselines and "s6" in mamba:
        fn = mamba["s6"]

        def theirs():
            return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], delta_bias=t["delta_bias"],
                      delta_softplus=True)
        rows.append(_baseline_row(dict(base, impl="mamba_ssm_cuda"), theirs, ours, timer, leaves))
    if loops:
        rows += _loop_rows(base, (("torch_step_loop", s6_loop(t)), ("torch_compile_chunked", _compiled(s6_ours(t, "torch")))), timer)
    _print(rows)
    return rows


def run_long(seqlens: list[int], shape: dict, timer: Timer, device: str, dtype: torch.dtype) -> list[dict]:
    """Ours alone at long sequences: forward and forward+backward time and peak memory; stops at the first OOM."""
    rows = []
    for seqlen in seqlens:
        try:
            t = ssd_inputs(shape, seqlen, device, dtype, grad=True)
        except torch.cuda.OutOfMemoryError as e:
            rows.append({"scan": "ssd", "seqlen": seqlen, "impl": "ours", "error": repr(e)[-300:]})
            break
        row = dict({"scan": "ssd", "seqlen": seqlen, "tokens": shape["batch"] * seqlen, "impl": "ours"},
                   **measure(timer, ssd_ours(t, shape["chunk_size"]), list(t.values()), True))
        rows.append(row)
        del t
        if timer.cuda:
            torch.cuda.empty_cache()
        _print([row])
        if "error" in row:
            break
    return rows


def _print(rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['scan']:3s} L={r['seqlen']:8d} {r['impl']:22s} fwd {r.get('fwd_ms', float('nan')):9.3f} ms  "
              f"fwd+bwd {r.get('fwdbwd_ms', float('nan')):9.3f} ms  {r.get('error', '')}", flush=True)


# ------------------------------------------------------------------------------------------------ summary
def summarize(rows: list[dict]) -> dict:
    """Worst-case ratios over the measured lengths (time(mamba_ssm) / time(ours): above 1 means ours is faster)."""
    by = {}
    for r in rows:
        by.setdefault((r["scan"], r["seqlen"]), {})[r["impl"]] = r
    fwd, fwdbwd, floor = {}, {}, {}
    for (scan, seqlen), impls in by.items():
        ours, theirs = impls.get("ours", {}), impls.get("mamba_ssm", {})
        if scan == "ssd" and "fwd_ms" in ours and "fwd_ms" in theirs:
            fwd[seqlen] = theirs["fwd_ms"] / ours["fwd_ms"]
            if "fwdbwd_ms" in ours and "fwdbwd_ms" in theirs:
                fwdbwd[seqlen] = theirs["fwdbwd_ms"] / ours["fwdbwd_ms"]
        if scan == "s6" and seqlen >= 16384 and "fwd_x_byte_floor" in ours:
            floor[seqlen] = ours["fwd_x_byte_floor"]
    fits = [r["tokens"] for r in rows if r["scan"] == "ssd" and r["impl"] == "ours" and "fwdbwd_ms" in r]
    summary = {
        "ssd_fwd_speedup_vs_mamba_ssm": min(fwd.values()) if fwd else None,
        "ssd_fwdbwd_speedup_vs_mamba_ssm": min(fwdbwd.values()) if fwdbwd else None,
        "s6_fwd_x_byte_floor": max(floor.values()) if floor else None,
        "max_tokens_one_gpu": max(fits) if fits else None,
        "ssd_fwd_speedup_by_seqlen": fwd, "ssd_fwdbwd_speedup_by_seqlen": fwdbwd, "s6_fwd_x_byte_floor_by_seqlen": floor,
        "targets": TARGETS,
        "definitions": {"speedup": "time(mamba_ssm) / time(ours), worst over L",
                        "s6_fwd_x_byte_floor": "time(ours forward) / (bytes moved / HBM bandwidth), worst over "
                                               "L >= 16k",
                        "max_tokens_one_gpu": "longest SSD sequence (batch 1) whose forward+backward ran"},
    }
    summary["targets_met"] = {
        "ssd_fwd": summary["ssd_fwd_speedup_vs_mamba_ssm"] is not None
        and summary["ssd_fwd_speedup_vs_mamba_ssm"] >= TARGETS["ssd_fwd_speedup_vs_mamba_ssm"],
        "ssd_fwdbwd": summary["ssd_fwdbwd_speedup_vs_mamba_ssm"] is not None
        and summary["ssd_fwdbwd_speedup_vs_mamba_ssm"] >= TARGETS["ssd_fwdbwd_speedup_vs_mamba_ssm"],
        "s6_fwd": summary["s6_fwd_x_byte_floor"] is not None
        and summary["s6_fwd_x_byte_floor"] <= TARGETS["s6_fwd_x_byte_floor"],
    }
    return summary


def merge(paths: list[str], out: str) -> int:
    """One result file from several runs: rows of a (scan, L) case come from the last file holding it."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    cases: dict = {}
    for i, run in enumerate(runs):
        latest: dict = {}
        for row in run["rows"]:
            latest.setdefault((row["scan"], row["seqlen"]), []).append(dict(row, run=i))
        cases.update(latest)
    result = {"runs": [{"file": p, "environment": r["environment"]} for p, r in zip(paths, runs)],
              "environment": runs[-1]["environment"], "shapes": runs[-1]["shapes"],
              "correctness": [c for r in runs for c in r.get("correctness", [])],
              "rows": [row for rows in cases.values() for row in rows]}
    result["summary"] = summarize(result["rows"])
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ssd-seqs", default="4096,16384,65536,262144")
    ap.add_argument("--s6-seqs", default="4096,16384,65536")
    ap.add_argument("--long-seqs", default="1048576,2097152,4194304",
                    help="SSD lengths for ours alone (memory measured); the first that does not fit stops the probe")
    ap.add_argument("--loop-seqs", default="4096", help="lengths at which the per-token loop and torch.compile run")
    ap.add_argument("--no-ssd", action="store_true")
    ap.add_argument("--no-s6", action="store_true")
    ap.add_argument("--no-baselines", action="store_true", help="skip mamba_ssm")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any machine (CPU: the torch path)")
    ap.add_argument("--merge", nargs="+", default=[])
    ap.add_argument("--out", default=None, help="default: benchmarks/results/selective_scan[_smoke].json")
    args = ap.parse_args()
    out = args.out or str(RESULTS / ("selective_scan_smoke.json" if args.smoke else "selective_scan.json"))
    if args.merge:
        return merge(args.merge, out)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("benchmarks/selective_scan.py needs a CUDA GPU (or --smoke for tiny sizes on this machine)")
        return 2
    device, dtype = ("cuda" if cuda else "cpu"), torch.bfloat16
    ssd_shape, s6_shape = (SMOKE_SSD, SMOKE_S6) if args.smoke else (SSD, S6)
    ssd_seqs, s6_seqs, long_seqs, loop_seqs = (
        ([128, 256], [128], [512], [128]) if args.smoke
        else (_ints(args.ssd_seqs), _ints(args.s6_seqs), _ints(args.long_seqs), _ints(args.loop_seqs)))
    timer = Timer(cuda)
    mamba = {"errors": {"skipped": "--no-baselines"}} if args.no_baselines else import_mamba_ssm()
    tbps, tbps_source = bandwidth(cuda)
    env = environment(device)
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError as e:
        env["triton"] = repr(e)
    if cuda:
        env["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
    env["mamba_ssm"] = {"version": mamba.get("version"), "import_errors": mamba["errors"],
                        "ssd": "ssd" in mamba, "s6_cuda": "s6" in mamba}
    env["hbm_tbps"] = {"value": tbps, "source": tbps_source}
    result: dict = {"environment": env, "shapes": {"ssd": ssd_shape, "s6": s6_shape, "dtype": str(dtype),
                                                   "ssd_options": "D (heads,), dt_bias, dt_softplus, no z",
                                                   "s6_options": "D, z, delta_bias, delta_softplus"},
                    "timing": "do_bench median (warmup 25 ms, rep 100 ms); loops/compiled: one run after a warm-up",
                    "correctness": [], "rows": []}

    def save() -> None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")

    try:
        result["correctness"] = correctness(device, dtype)
    except Exception as e:  # noqa: BLE001  (recorded)
        result["correctness"] = [{"error": repr(e)[-400:], "trace": traceback.format_exc()[-800:]}]
    steps = []
    if not args.no_ssd:
        steps += [lambda s=s: run_ssd(s, ssd_shape, timer, mamba, device, dtype, not args.no_baselines,
                                      s in loop_seqs) for s in ssd_seqs]
        steps.append(lambda: run_long(long_seqs, ssd_shape, timer, device, dtype))
    if not args.no_s6:
        steps += [lambda s=s: run_s6(s, s6_shape, timer, mamba, device, dtype, not args.no_baselines, s in loop_seqs,
                                     tbps) for s in s6_seqs]
    for step in steps:
        try:
            result["rows"] += step()
        except Exception as e:  # noqa: BLE001  (recorded; the other cases still run)
            result["rows"].append({"scan": "?", "seqlen": -1, "impl": "?", "error": repr(e)[-400:],
                                   "trace": traceback.format_exc()[-800:]})
        if cuda:
            torch.cuda.empty_cache()
        save()  # partial results survive a time limit
    result["summary"] = summarize(result["rows"])
    result["autotuned"] = autotuned_configs()
    save()
    print(json.dumps(result["summary"], indent=1))
    return 0


def autotuned_configs() -> dict:
    """The tile config each of our autotuners settled on (for pruning configs.py), where Triton was used."""
    found = {}
    for module, names in (("hal.kernels.ssm.s6", ("_s6_fwd_kernel", "_s6_bwd_kernel")),
                          ("hal.kernels.ssm.ssd", ("_ssd_fwd", "_ssd_fwd_local", "_ssd_states", "_ssd_bwd",
                                                   "_ssd_bwd_local"))):
        if module not in sys.modules:
            continue
        for name in names:
            tuner = getattr(sys.modules[module], name)
            found[name] = {str(k): str(v) for k, v in getattr(tuner, "cache", {}).items()}
    return found


if __name__ == "__main__":
    sys.exit(main())
