"""What the HAL adds per eager call on the CPU: ``d.matmul(a, b)`` vs a bare ``a @ b``, side by side.

Interleaved rounds (bare, then hal, on the same operands) so that load changes hit both alike; per-call
time is round time / calls. Overhead = the median over rounds of (hal round - bare round), per size: pairing
each hal round with the bare round just before it cancels slow drifts of machine load.
Also reports the HAL's own bookkeeping measured on a 1x1 matmul, where the arithmetic is negligible.
Target (issue 2): at most 5 microseconds per call.

    python benchmarks/dispatch_overhead.py
"""

from __future__ import annotations

import statistics
import time

import torch

import hal
from benchmarks.common import environment, write_result

SIZES = (1, 64, 1024)
TARGET_US = 5.0


def per_call_seconds(fn, calls: int, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - start) / calls)
    return out


def measure(size: int) -> dict:
    device = hal.device("cpu")
    a, b = torch.randn(size, size), torch.randn(size, size)
    assert torch.equal(device.matmul(a, b), a @ b), "hal and bare results differ"
    calls, rounds = (500, 200) if size <= 64 else (3, 200)
    bare_runs, hal_runs = [], []
    for _ in range(rounds):
        bare_runs += per_call_seconds(lambda: a @ b, calls, 1)
        hal_runs += per_call_seconds(lambda: device.matmul(a, b), calls, 1)
    bare, ours = statistics.median(bare_runs), statistics.median(hal_runs)
    paired = statistics.median(h - b for h, b in zip(hal_runs, bare_runs))
    return {
        "size": size,
        "calls_per_round": calls,
        "rounds": rounds,
        "bare_us": bare * 1e6,
        "hal_us": ours * 1e6,
        "overhead_us": paired * 1e6,
        "bare_round_us": [t * 1e6 for t in bare_runs],
        "hal_round_us": [t * 1e6 for t in hal_runs],
    }


def main() -> None:
    results = [measure(n) for n in SIZES]
    by_size = {r["size"]: r for r in results}
    worst = max(by_size[64]["overhead_us"], by_size[1024]["overhead_us"])
    summary = {
        "overhead_us": worst,
        "overhead_us_64": by_size[64]["overhead_us"],
        "overhead_us_1024": by_size[1024]["overhead_us"],
        "bookkeeping_us_1x1": by_size[1]["overhead_us"],
        "target_us": TARGET_US,
        "met": worst <= TARGET_US,
    }
    path = write_result("dispatch_overhead", {"environment": environment("cpu:0"), "shapes": [[n, n] for n in SIZES], "dtype": "float32", "runs": results, "summary": summary})
    for r in results:
        print(f"{r['size']:>5}x{r['size']:<5} bare {r['bare_us']:10.2f} us   hal {r['hal_us']:10.2f} us   overhead {r['overhead_us']:7.2f} us")
    print(f"summary: {summary}\nwrote {path}")


if __name__ == "__main__":
    main()
