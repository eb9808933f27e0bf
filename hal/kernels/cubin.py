"""What a compiled Triton kernel uses on the chip, read from its cubin offline (no GPU needed): the offline-compile
checks of the attention and selective-scan kernels share it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

#: Shared memory one block may use on compute capability 9.0 (CUDA C++ Programming Guide, technical specifications).
SM90_MAX_SHARED_BYTES = 227 * 1024


def register_usage(kernel: Any) -> dict[str, int]:
    """Registers per thread and local-memory (spill) bytes from the cuobjdump that Triton ships; {} when it is absent."""
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        return {}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True, check=False).stdout
    found = re.search(r"REG:(\d+).*LOCAL:(\d+)", usage)
    return {"registers": int(found.group(1)), "local_bytes": int(found.group(2))} if found else {}


def report_rows(rows: Iterable[tuple[dict[str, Any], Callable[[], dict[str, Any]]]]) -> int:
    """Print one JSON line per (row, measure): the row with what ``measure()`` read from its compiled kernel, or the
    error compiling it raised; exit status 1 if any failed, else 0."""
    failed = 0
    for row, measure in rows:
        try:
            row.update(measure())
        except Exception as e:  # noqa: BLE001  (reported per config; the caller decides)
            row["error"] = repr(e)[-600:]
            failed += 1
        print(json.dumps(row), flush=True)
    return 1 if failed else 0
