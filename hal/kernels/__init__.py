"""Device-agnostic compute: pure functions of tensors (Triton kernels and their torch references).

Nothing here knows about hal devices; drivers call these functions.
"""

import os


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``; Triton reads it when a kernel
    module is imported, so set it before)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
