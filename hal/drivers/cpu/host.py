"""Facts about the host CPU: identity from the OS, and rates measured once per host and cached.

A rate measured on every call swings by an order of magnitude on a shared machine, so each rate is
measured once (``REPEATS`` timed calls after a warm-up), reported as the median with its min and max,
and kept with the time it was measured in a JSON file under the user cache directory
(``$HAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/hal``, else ``~/.cache/hal``). An entry is keyed by the host
name, CPU model, logical CPU count, torch's intra-op thread count, the torch version and the measurement
itself, so a figure is reused only where it was measured; delete the file to measure again.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

from hal.cache import cache_dir
from hal.capability import Figure

CACHE_FILE = "host_rates.json"
#: Timed calls per rate (after one untimed warm-up); the figure is their median, with min and max in its note.
REPEATS = 7

_memo: dict[str, Figure] = {}
_memo_lock = threading.Lock()


@cache
def cpu_model() -> str:
    """The processor's marketing name (/proc/cpuinfo 'model name'), or what platform reports (read once per process)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_total() -> Figure | None:
    """Total RAM from /proc/meminfo (Linux) or sysconf."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return Figure.measured(int(line.split()[1]) * 1024, "B", "/proc/meminfo MemTotal")
    try:
        return Figure.measured(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "B", "sysconf")
    except (ValueError, OSError, AttributeError):
        return None


def cache_file() -> Path:
    """The JSON file holding this user's measured host rates."""
    return cache_dir() / CACHE_FILE


def _cache_key(measurement: str) -> str:
    """What a cached rate depends on: the host, its CPU, torch's threads and version, and the measurement."""
    return " | ".join((platform.node(), cpu_model(), f"{os.cpu_count()} cpus", f"{torch.get_num_threads()} threads", f"torch {torch.__version__}", measurement))


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, key: str, entry: dict) -> None:
    """Add one entry; written to a temporary file and renamed, so a reader never sees half a file.

    A cache that cannot be written (read-only home) is skipped: the figure is then measured once per process.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache(path)
        entries[key] = entry
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".host_rates.", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(entries, out, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError:
        return


def _valid(entry: object) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("measured_at"), str):
        return False
    rates = entry.get("rates")
    return isinstance(rates, list) and len(rates) > 0 and all(isinstance(r, (int, float)) and r > 0 for r in rates)


def _time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after one untimed warm-up call."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def _figure(measurement: str, unit: str, entry: dict, path: Path) -> Figure:
    rates = entry["rates"]
    note = (
        f"min {min(rates):.3g}, max {max(rates):.3g} {unit} over {len(rates)} calls; measured {entry['measured_at']}, "
        f"cached in {path} per host, CPU, thread count and torch version (delete the file to measure again)"
    )
    return Figure.measured(statistics.median(rates), unit, f"{measurement}, median of {len(rates)} calls", note)


def _known_rate(measurement: str, unit: str) -> Figure | None:
    """The rate measured before, in this process or (from the cache file) in an earlier one; None if never. Call under the lock."""
    key = _cache_key(measurement)
    if key not in _memo:
        path = cache_file()
        entry = _read_cache(path).get(key)
        if not _valid(entry):
            return None
        _memo[key] = _figure(measurement, unit, entry, path)
    return _memo[key]


def _cached_rate(measurement: str, unit: str, work: float, make_call: Callable[[], Callable[[], object]]) -> Figure:
    """The median rate ``work / seconds`` of the call ``make_call()`` builds, measured once per cache key (see the module docstring)."""
    with _memo_lock:
        known = _known_rate(measurement, unit)
        if known is not None:
            return known
        entry = {"rates": [work / s for s in _time_calls(make_call(), REPEATS)], "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path, key = cache_file(), _cache_key(measurement)
        _write_cache(path, key, entry)
        _memo[key] = _figure(measurement, unit, entry, path)
        return _memo[key]


def _matmul_measurement(dtype: torch.dtype, n: int) -> str:
    return f"torch.matmul {n}x{n}x{n} {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads"


def _matmul_call(dtype: torch.dtype, n: int) -> Callable[[], object]:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    return lambda: torch.matmul(a, b)


def peak_matmul_flops(dtype: torch.dtype = torch.float32, n: int = 512) -> Figure:
    """Measured matrix-product rate of ``torch.matmul`` on n x n x n operands in ``dtype`` (2 n^3 flops per call)."""
    return _cached_rate(_matmul_measurement(dtype, n), "flop/s", 2 * n**3, lambda: _matmul_call(dtype, n))


def measured_matmul_flops(dtype: torch.dtype = torch.float32, n: int = 512) -> Figure | None:
    """The matrix-product rate if it was already measured here (never measures: for probes, which run beside
    other probes' threads and would measure a loaded machine)."""
    with _memo_lock:
        return _known_rate(_matmul_measurement(dtype, n), "flop/s")


def copy_bandwidth(megabytes: int = 64) -> Figure:
    """Measured memory bandwidth: copies of a ``megabytes`` buffer, bytes read + written per second."""

    def make_call() -> Callable[[], object]:
        src = torch.empty(megabytes * 2**20, dtype=torch.uint8).fill_(1)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)

    return _cached_rate(f"tensor copy of {megabytes} MiB, bytes read + written", "B/s", 2 * megabytes * 2**20, make_call)
