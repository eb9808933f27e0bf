"""Facts about the host CPU: identity from the OS, and peak rates measured on the spot."""

from __future__ import annotations

import os
import platform
import time
from functools import cache
from pathlib import Path

import torch

from hal.capability import Figure


def cpu_model() -> str:
    """The processor's marketing name (/proc/cpuinfo 'model name'), or what platform reports."""
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


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@cache
def peak_matmul_flops(dtype: torch.dtype = torch.float32, n: int = 512) -> Figure:
    """Measured matrix-product rate: best of 5 torch.matmul calls of n x n x n in ``dtype``."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    seconds = _best_seconds(lambda: torch.matmul(a, b), 5)
    return Figure.measured(2 * n**3 / seconds, "flop/s", f"torch.matmul {n}x{n}x{n} {str(dtype)[6:]}, best of 5, {torch.get_num_threads()} threads")


@cache
def copy_bandwidth(megabytes: int = 64) -> Figure:
    """Measured memory bandwidth: best of 5 copies of a ``megabytes`` buffer, bytes read + written."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), 5)
    return Figure.measured(2 * src.numel() / seconds, "B/s", f"tensor copy of {megabytes} MiB, best of 5, bytes read + written")
