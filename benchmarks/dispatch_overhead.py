"""What the HAL adds per eager call on the CPU: ``d.matmul(a, b)`` vs a bare ``a @ b``, side by side.

Each round times four calls on the same operands: bare, hal (eager ``d.matmul``), a prepared Program's call, and
bare again (an A/A control), in an order that rotates every round so no path always runs first. Overhead = median over rounds of (hal - bare);
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
    program = device.prepare(hal.OpSpec("matmul", [a, b]))
    paths = {"bare": lambda: a @ b, "hal": lambda: device.matmul(a, b), "program": lambda: program(a, b), "bare_again": lambda: a @ b}
    names = list(paths)
    orders = [names[i:] + names[:i] for i in range(len(names))]
    times: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(rounds):
        for name in orders[r % len(orders)]:
            times[name].append(seconds_per_call(paths[name], calls))
    overhead = [h - b for h, b in zip(times["hal"], times["bare"])]
    control = [c - b for c, b in zip(times["bare_again"], times["bare"])]
    via_program = [p - b for p, b in zip(times["program"], times["bare"])]
    return {
        "size": size,
        "calls_per_round": calls,
        "rounds": rounds,
        "bare_us": statistics.median(times["bare"]) * 1e6,
        "hal_us": statistics.median(times["hal"]) * 1e6,
        "overhead_us": statistics.median(overhead) * 1e6,
        "overhead_us_95ci": [v * 1e6 for v in bootstrap_interval(overhead)],
        "program_overhead_us": statistics.median(via_program) * 1e6,
        "program_overhead_us_95ci": [v * 1e6 for v in bootstrap_interval(via_program)],
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
        "program_overhead_us_1024": by_size[1024]["program_overhead_us"],
        "program_overhead_us_1024_95ci": by_size[1024]["program_overhead_us_95ci"],
        "bookkeeping_us_1x1": by_size[1]["overhead_us"],
        "target_us": TARGET_US,
        "met_64": by_size[64]["overhead_us_95ci"][1] <= TARGET_US,
        "met_1024": by_size[1024]["overhead_us_95ci"][1] <= TARGET_US,
        "resolved_1024": resolved_1024,
        "note": "The eager path's Python work is a cache lookup (about 2 us warm, measured at 1x1 and 64), but after a 1024 matmul has streamed 12 MB through the caches, the interpreter's own data is cold and any Python-side work costs tens of microseconds: the eager call and a prepared Program's validated call both measured 20-50 us more than the bare call (size-dependent; it persists with one thread, so it is not OpenMP wake-up). The 5 us target is met at 64x64 and missed at 1024x1024.",
    }
    path = write_result("dispatch_overhead", {"environment": environment("cpu:0"), "shapes": [[n, n] for n in SIZES], "dtype": "float32", "runs": results, "summary": summary})
    for r in results:
        (low, high), (clow, chigh) = r["overhead_us_95ci"], r["control_aa_us_95ci"]
        plow, phigh = r["program_overhead_us_95ci"]
        print(f"{r['size']:>5}x{r['size']:<5} bare {r['bare_us']:10.2f} us  eager +{r['overhead_us']:7.2f} us [{low:.2f}, {high:.2f}]  program +{r['program_overhead_us']:6.2f} us [{plow:.2f}, {phigh:.2f}]  A/A [{clow:.2f}, {chigh:.2f}]")
    print(f"summary: {summary}\nwrote {path}")


if __name__ == "__main__":
    main()
