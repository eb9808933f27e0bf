"""What hal adds on an NVIDIA GPU, side by side with the bare torch call, and the matmul rates it reaches.

1. Runs the GPU test module (``pytest -m gpu tests/drivers/test_nvidia_gpu.py``) in a subprocess and records its
   outcome in results/nvidia_gpu_tests.json; ``summary.conformance_passed`` is true only if every conformance-kit
   test passed here, in this run.
2. Overhead, eager ``hopper:0`` ops vs bare torch on the same operands, in interleaved rounds (bare then hal):
   - 4096-sized bf16 matmul / linear, and attention B4 H16 S4096 D128 bf16: per-call GPU time from CUDA events
     around a loop of calls (what a loop of calls costs); hal's attention is its own Triton kernel, so it is also
     run with ``?attention=sdpa`` to separate the HAL's overhead from the kernel choice;
   - tiny ops (16x16 matmul, 16x64 linear, 1x1x16x64 attention): host time per call over a loop, where launch and
     dispatch dominate. Overhead = median over rounds of (hal round - bare round).
   Targets (issue 3): at most 3% at 4096, at most 10 microseconds per call at tiny sizes.
3. Rates: bf16 matmul and fp8 (``?matmul_precision=fp8``: torch._scaled_mm with per-tensor scales) at 8192^3
   through hal, the raw ``torch._scaled_mm`` on pre-quantised operands, each against the derived peak.

    python benchmarks/nvidia_overhead.py            # on a machine with an NVIDIA GPU
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

import hal
from benchmarks.common import environment, write_result

ROOT = Path(__file__).resolve().parent.parent
TARGET_PCT_4096 = 3.0
TARGET_US_TINY = 10.0


# --------------------------------------------------------------------------- GPU tests


def run_gpu_tests() -> dict:
    """Run the gpu-marked NVIDIA tests; parse their JUnit XML into a summary and a per-test list."""
    xml_path = Path(os.environ.get("OUT", "/tmp")) / "nvidia_gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/drivers/test_nvidia_gpu.py", "-q", "-p", "no:cacheprovider", f"--junitxml={xml_path}"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    tests = []
    if xml_path.is_file():
        for case in ET.parse(xml_path).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = (node.get("message") or "")[:400]
            tests.append({"name": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message})
    conformance = [t for t in tests if t["name"].startswith("TestConformance")]
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {
        "command": " ".join(cmd[1:-1] + ["--junitxml=$OUT/nvidia_gpu_tests.xml"]),
        "exit_code": proc.returncode,
        "seconds": round(seconds, 1),
        "summary": {**counts, "conformance_tests": len(conformance), "conformance_passed": bool(conformance) and all(t["outcome"] == "passed" for t in conformance)},
        "tests": tests,
    }


# --------------------------------------------------------------------------- timing


def gpu_seconds_per_call(fn, calls: int) -> float:
    """Per-call GPU time of ``calls`` back-to-back calls, from CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / calls


def host_seconds_per_call(fn, calls: int) -> float:
    """Per-call wall time of ``calls`` back-to-back calls, synchronising once at the end."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def side_by_side(bare, ours, timer, calls: int, rounds: int) -> dict:
    """Interleaved rounds of bare and hal; per-call seconds of each round and the median paired difference."""
    for fn in (bare, ours):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    bare_s, ours_s = [], []
    for _ in range(rounds):
        bare_s.append(timer(bare, calls))
        ours_s.append(timer(ours, calls))
    diff = statistics.median(o - b for o, b in zip(ours_s, bare_s))
    bare_med = statistics.median(bare_s)
    return {
        "bare_s": statistics.median(bare_s),
        "hal_s": statistics.median(ours_s),
        "overhead_s": diff,
        "overhead_us": diff * 1e6,
        "overhead_pct": 100 * diff / bare_med,
        "rounds": rounds,
        "calls_per_round": calls,
        "bare_rounds_s": bare_s,
        "hal_rounds_s": ours_s,
    }


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


# --------------------------------------------------------------------------- cases


def overhead_cases(uri: str) -> dict:
    d = hal.device(uri)
    d_sdpa = hal.device(uri + "?attention=sdpa")
    bf16 = torch.bfloat16
    sdpa = torch.nn.functional.scaled_dot_product_attention
    results = {}

    def case(name, bare, ours, timer, calls, rounds, shapes, check=True):
        if check:
            ref, out = bare(), ours()
            err = relative_error(out, ref)
            assert err < 2e-2, f"{name}: hal and bare results differ (relative error {err:.3g})"
        results[name] = {"shapes": shapes, **side_by_side(bare, ours, timer, calls, rounds)}
        r = results[name]
        print(f"{name:34s} bare {r['bare_s'] * 1e6:10.2f} us  hal {r['hal_s'] * 1e6:10.2f} us  overhead {r['overhead_us']:8.2f} us ({r['overhead_pct']:+.2f}%)", flush=True)

    a, b = torch.randn(4096, 4096, device="cuda", dtype=bf16), torch.randn(4096, 4096, device="cuda", dtype=bf16)
    case("matmul_4096_bf16", lambda: torch.matmul(a, b), lambda: d.matmul(a, b), gpu_seconds_per_call, 50, 15, "4096x4096 @ 4096x4096 bf16")
    w = torch.randn(4096, 4096, device="cuda", dtype=bf16)
    case("linear_4096_bf16", lambda: torch.nn.functional.linear(a, w), lambda: d.linear(a, w), gpu_seconds_per_call, 50, 15, "x 4096x4096, weight 4096x4096 bf16")
    q, k, v = (torch.randn(4, 16, 4096, 128, device="cuda", dtype=bf16) for _ in range(3))
    case("attention_s4096_sdpa_path", lambda: sdpa(q, k, v), lambda: d_sdpa.attention(q, k, v), gpu_seconds_per_call, 10, 11, "B4 H16 S4096 D128 bf16, non-causal")
    case("attention_s4096_hal_kernel", lambda: sdpa(q, k, v), lambda: d.attention(q, k, v), gpu_seconds_per_call, 10, 11, "B4 H16 S4096 D128 bf16, non-causal; hal = Triton kernel vs torch SDPA")

    ta, tb = torch.randn(16, 16, device="cuda", dtype=bf16), torch.randn(16, 16, device="cuda", dtype=bf16)
    case("matmul_16_bf16_tiny", lambda: torch.matmul(ta, tb), lambda: d.matmul(ta, tb), host_seconds_per_call, 2000, 15, "16x16 @ 16x16 bf16")
    program = d.prepare(hal.OpSpec("matmul", [ta, tb]))
    case("matmul_16_bf16_tiny_program", lambda: torch.matmul(ta, tb), lambda: program(ta, tb), host_seconds_per_call, 2000, 15, "16x16 @ 16x16 bf16, prepared Program")
    tx, tw = torch.randn(16, 64, device="cuda", dtype=bf16), torch.randn(64, 64, device="cuda", dtype=bf16)
    case("linear_16x64_bf16_tiny", lambda: torch.nn.functional.linear(tx, tw), lambda: d.linear(tx, tw), host_seconds_per_call, 2000, 15, "x 16x64, weight 64x64 bf16")
    sq, sk, sv = (torch.randn(1, 1, 16, 64, device="cuda", dtype=bf16) for _ in range(3))
    case("attention_tiny_sdpa_path", lambda: sdpa(sq, sk, sv), lambda: d_sdpa.attention(sq, sk, sv), host_seconds_per_call, 2000, 15, "1x1x16x64 bf16")
    case("attention_tiny_hal_kernel", lambda: sdpa(sq, sk, sv), lambda: d.attention(sq, sk, sv), host_seconds_per_call, 2000, 15, "1x1x16x64 bf16; hal = Triton kernel vs torch SDPA")
    return results


def rate_cases(uri: str) -> dict:
    n = 8192
    flops = 2 * n**3
    d = hal.device(uri)
    d_fp8 = hal.device(uri + "?matmul_precision=fp8")
    peaks = d.capabilities.peak
    sheet = d.capabilities.sections["gpu"].datasheet
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    from hal.drivers.nvidia.matmul import Fp8Weight, fp8_quantize

    weight = Fp8Weight(b)
    qa, scale_a = fp8_quantize(a)
    fp8_linear = d_fp8.prepare(hal.OpSpec("linear", [a], {"weight": b.T.contiguous()}), {"weight": b.T.contiguous()})
    ref = (a.float() @ b.float())
    runs = {
        "bf16_matmul_hal": (lambda: d.matmul(a, b), "bfloat16_tensor_flop_per_s"),
        "fp8_matmul_hal": (lambda: d_fp8.matmul(a, b), "float8_tensor_flop_per_s"),
        "fp8_linear_hal_prepared_weight": (lambda: fp8_linear(a), "float8_tensor_flop_per_s"),
        "fp8_scaled_mm_raw": (lambda: torch._scaled_mm(qa, weight.data, scale_a=scale_a, scale_b=weight.scale, out_dtype=torch.bfloat16), "float8_tensor_flop_per_s"),
    }
    results = {}
    for name, (fn, peak_name) in runs.items():
        err = relative_error(fn(), ref)
        times = [gpu_seconds_per_call(fn, 10) for _ in range(7)]
        seconds = statistics.median(times)
        rate = flops / seconds
        peak = peaks.get(peak_name)
        datasheet = sheet.get(peak_name)
        results[name] = {
            "shape": f"{n}x{n} @ {n}x{n} (bf16 inputs)",
            "seconds": seconds,
            "tflop_per_s": rate / 1e12,
            "relative_error_vs_fp32": err,
            "derived_peak_tflop_per_s": peak.value / 1e12 if peak else None,
            "fraction_of_derived_peak": rate / peak.value if peak else None,
            "datasheet_tflop_per_s": datasheet.value / 1e12 if datasheet else None,
            "fraction_of_datasheet": rate / datasheet.value if datasheet else None,
            "rounds_s": times,
        }
        print(f"{name:32s} {rate / 1e12:8.1f} TFLOP/s  ({results[name]['fraction_of_derived_peak'] or 0:.2f} of derived peak), error {err:.3g}", flush=True)
    return results


def save(name: str, document: dict) -> None:
    """Write results/<name>.json and, on the device machine, a copy under $OUT."""
    path = write_result(name, document)
    if os.environ.get("OUT"):
        shutil.copy(path, os.environ["OUT"])


def main() -> None:
    tests = run_gpu_tests()
    save("nvidia_gpu_tests", {"environment": environment(), **tests})
    from hal.drivers.nvidia.detect import detect

    detection = detect()
    gpu = detection.find(0)
    if gpu is None or gpu.problem:
        raise SystemExit(f"no usable NVIDIA GPU: {detection.reason or (gpu and gpu.problem)}")
    uri = gpu.uri
    caps = hal.device(uri).capabilities
    overhead = overhead_cases(uri)
    rates = rate_cases(uri)
    tiny = {k: v["overhead_us"] for k, v in overhead.items() if k.endswith(("_tiny", "_tiny_program", "_tiny_sdpa_path"))}
    summary = {
        "gpu": f"{gpu.name} ({uri}, cc {gpu.cuda.cc_major}.{gpu.cuda.cc_minor}, {gpu.cuda.sm_count} SMs)",
        "overhead_pct_4096": overhead["matmul_4096_bf16"]["overhead_pct"],
        "overhead_pct_4096_linear": overhead["linear_4096_bf16"]["overhead_pct"],
        "overhead_pct_attention_s4096_sdpa_path": overhead["attention_s4096_sdpa_path"]["overhead_pct"],
        "attention_s4096_hal_kernel_vs_sdpa_pct": overhead["attention_s4096_hal_kernel"]["overhead_pct"],
        "attention_tiny_hal_kernel_vs_sdpa_us": overhead["attention_tiny_hal_kernel"]["overhead_us"],
        "tiny_overhead_us": tiny,
        "target_pct_4096": TARGET_PCT_4096,
        "target_us_tiny": TARGET_US_TINY,
        "met_4096": overhead["matmul_4096_bf16"]["overhead_pct"] <= TARGET_PCT_4096,
        "met_tiny": all(v <= TARGET_US_TINY for v in tiny.values()),
        "bf16_matmul_tflop_per_s": rates["bf16_matmul_hal"]["tflop_per_s"],
        "fp8_matmul_tflop_per_s": rates["fp8_matmul_hal"]["tflop_per_s"],
        "fp8_linear_tflop_per_s": rates["fp8_linear_hal_prepared_weight"]["tflop_per_s"],
        "bf16_derived_peak_tflop_per_s": rates["bf16_matmul_hal"]["derived_peak_tflop_per_s"],
        "fp8_derived_peak_tflop_per_s": rates["fp8_matmul_hal"]["derived_peak_tflop_per_s"],
        "conformance_passed": tests["summary"]["conformance_passed"],
        "gpu_tests": {k: tests["summary"][k] for k in ("passed", "failed", "error", "skipped")},
    }
    document = {
        "environment": environment(uri) | {"driver": detection.driver_version, "cuda_driver": detection.cuda_driver_version},
        "method": __doc__,
        "peaks": {k: {"value": f.value, "unit": f.unit, "source": f.source} for k, f in caps.peak.items()},
        "overhead": overhead,
        "rates": rates,
        "summary": summary,
    }
    save("nvidia_overhead", document)
    print({k: v for k, v in summary.items() if k != "tiny_overhead_us"}, tiny, sep="\n")


if __name__ == "__main__":
    main()
