"""Where hal keeps what it measured or derived once (host rates, device capability sections, interpreter checks).

``$HAL_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/hal``, else ``~/.cache/hal``. Every entry a driver writes there is
keyed by everything its value depends on (never by an object's ``id()``), so a stale entry is derived again, not
served; deleting the folder only costs the time to measure again.
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
