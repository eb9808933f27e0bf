"""Where hal keeps what it measured or derived once (host rates, device capability sections, interpreter checks).

``$HAL_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/hal``, else ``~/.cache/hal``. Every entry a driver writes there is
keyed by everything its value depends on (never by an object's ``id()``), so a stale entry is derived again, not
served; deleting the folder only costs the time to measure again. The function lives in ``hal.kernels.cache_dir``
(the kernels write there too and import nothing of hal above them); this is its name for everything else.
"""

from __future__ import annotations

from hal.kernels.cache_dir import CACHE_DIR_VARIABLE, cache_dir

__all__ = ["CACHE_DIR_VARIABLE", "cache_dir"]
