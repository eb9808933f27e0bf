"""What a compiled Triton kernel uses on the chip, read from its cubin offline (no GPU needed): the offline-compile
checks of the attention and selective-scan kernels share it."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Any


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
