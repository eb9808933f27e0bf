"""Where hal keeps what it measured or derived once: one definition, at the lowest layer that writes there (the
attention kernels' tuning cache), so that the kernels, which import torch and triton only, and everything above share
it through ``hal.cache``.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_VARIABLE = "HAL_CACHE_DIR"


def cache_dir() -> Path:
    """The folder of hal's caches (not created here: writers create what they need and skip it when they cannot)."""
    override = os.environ.get(CACHE_DIR_VARIABLE)
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hal"
