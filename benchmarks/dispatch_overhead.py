"""What the HAL adds per eager call on the CPU: ``d.matmul(a, b)`` vs a bare ``a @ b``, side by side.

Each round times three calls on the same operands: bare, hal, and bare again (an A/A control), in an order
that rotates every round so neither path always runs first. Overhead = median over rounds of (hal - bare);
the control, median of (bare again - bare), shows what noise alone gives. Each figure carries a 95% bootstrap
interval of its median. At 1024 a call takes milliseconds and the machine's scheduling noise is tens of
microseconds, so the interval says whether a few microseconds can be resolved at all; the 1x1 and 64 sizes
resolve the HAL's bookkeeping itself. Target (issue 2): at most 5 microseconds per call.

    python -m benchmarks.dispatch_overhead
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import torch

import hal
from benchmarks.common import environment, write_result

SIZES = (1, 64, 1024)
TARGET_US = 5.0


def bootstrap_interval(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the median of ``values``."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples)]


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure(size: int) -> dict:
    device = hal.device("cpu")
    a, b = torch.randn(size, size), torch.randn(size, size)
    assert torch.equal(device.matmul(a, b), a @ b), "hal and bare results differ"
    calls, rounds = (500, 200) if size <= 64 else (1, 600)
    paths = {"bare": lambda: a @ b, "hal": lambda: device.matmul(a, b), "bare_again": lambda: a @ b}
    orders = [("bare", "hal", "bare_again"), ("hal", "bare_again", "bare"), ("bare_again", "bare", "hal")]
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        for name in orders[r % 3]:
            times[name].append(seconds_per_call(paths[name], calls))
    overhead = [h - b for h, b in zip(times["hal"], times["bare"])]
    control = [c - b for c, b in zip(times["bare_again"], times["bare"])]
    return {
        "size": size,
        "calls_per_round": calls,
        "rounds": rounds,
        "bare_us": statistics.median(times["bare"]) * 1e6,
        "hal_us": statistics.median(times["hal"]) * 1e6,
        "overhead_us": statistics.median(overhead) * 1e6,
        "overhead_us_95ci": [v * 1e6 for v in bootstrap_interval(overhead)],
        "control_aa_us": statistics.median(control) * 1e6,
        "control_aa_us_95ci": [v * 1e6 for v in bootstrap_interval(control)],
        "round_us": {name: [t * 1e6 for t in values] for name, values in times.items()},
    }


def main() -> None:
    results = [measure(n) for n in SIZES]
    by_size = {r["size"]: r for r in results}
    worst = max(by_size[64]["overhead_us"], by_size[1024]["overhead_us"])
    resolved_1024 = by_size[1024]["overhead_us_95ci"][1] - by_size[1024]["overhead_us_95ci"][0] < TARGET_US
    summary = {
        "overhead_us": worst,
        "overhead_us_64": by_size[64]["overhead_us"],
        "overhead_us_64_95ci": by_size[64]["overhead_us_95ci"],
        "overhead_us_1024": by_size[1024]["overhead_us"],
        "overhead_us_1024_95ci": by_size[1024]["overhead_us_95ci"],
        "control_aa_us_1024_95ci": by_size[1024]["control_aa_us_95ci"],
        "bookkeeping_us_1x1": by_size[1]["overhead_us"],
        "target_us": TARGET_US,
        "met_64": by_size[64]["overhead_us_95ci"][1] <= TARGET_US,
        "resolved_1024": resolved_1024,
        "note": "At 1024 the 95% interval is wider than the 5 us target (scheduling noise on a shared 2-core machine; see the A/A control), so that size cannot confirm or refute the target; the HAL's work per call does not depend on the size (a cache lookup, measured at 1x1 and 64).",
    }
    path = write_result("dispatch_overhead", {"environment": environment("cpu:0"), "shapes": [[n, n] for n in SIZES], "dtype": "float32", "runs": results, "summary": summary})
    for r in results:
        (low, high), (clow, chigh) = r["overhead_us_95ci"], r["control_aa_us_95ci"]
        print(f"{r['size']:>5}x{r['size']:<5} bare {r['bare_us']:10.2f} us  hal {r['hal_us']:10.2f} us  overhead {r['overhead_us']:7.2f} us [{low:.2f}, {high:.2f}]  A/A control [{clow:.2f}, {chigh:.2f}]")
    print(f"summary: {summary}\nwrote {path}")


if __name__ == "__main__":
    main()
