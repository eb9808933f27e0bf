"""What the attention kernels keep on disk between processes, under ``<hal cache dir>/attention/``.

* ``tuning/<hash>.json``: the tile choices of one (GPU, pattern structure, shape bucket, dtype, head dim), with the
  cost model's ranking and the timings measured so far (:mod:`.tuner` reads and writes them). The hash covers
  everything but the versions; the file records the versions of hal, triton and torch that wrote it, and a file
  written by other versions, or one that does not parse, is ignored with a warning naming it (and overwritten
  once the kernel is tuned again).
* ``modules/attention_<hash>.py``: the generated Triton modules, named by their content (Triton reads a kernel's
  source from its file, so the file must outlive the import).
* ``triton/``: Triton's compiled kernels (cubins and metadata) of the launches that compile, unless the user
  chose a folder with ``TRITON_CACHE_DIR``.

The cache dir is hal's (``HAL_CACHE_DIR``, see :mod:`hal.cache`, defined in :mod:`hal.kernels.cache_dir`). When it cannot be written, modules go to a
temporary folder that is removed when the process exits, and tuning is kept in memory only.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..cache_dir import cache_dir

FORMAT = 1  # bumped when the layout of a tuning file changes

T = TypeVar("T")


class AttentionCacheWarning(UserWarning):
    """A file of the attention cache was ignored (corrupt, or written by other versions) or could not be written."""


def folder() -> Path:
    """``<hal cache dir>/attention`` (not created here)."""
    return cache_dir() / "attention"


@functools.cache
def versions() -> dict[str, str]:
    """The versions a cached choice depends on: hal's, Triton's and torch's."""
    import importlib.metadata

    import torch
    import triton

    try:
        hal_version = importlib.metadata.version("hal")
    except importlib.metadata.PackageNotFoundError:
        hal_version = "not installed"
    return {"hal": hal_version, "triton": triton.__version__, "torch": torch.__version__}


def digest(value: Any) -> str:
    """A stable hash of a JSON-able value (the name of its file)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


# ------------------------------------------------------------------------------------------------ tuning files

def tuning_path(key: dict) -> Path:
    return folder() / "tuning" / f"{digest(key)}.json"


def load_tuning(key: dict, parse: Callable[[dict], T]) -> T | None:
    """The entry stored for ``key``, parsed by ``parse``; None when there is none or it cannot be used (warned)."""
    path = tuning_path(key)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        _warn(f"cannot read the attention tuning file {path} ({e}); tuning again")
        return None
    try:
        document = json.loads(text)
        if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("key") != key:
            raise ValueError("not a tuning file of this format for this kernel and shape")
        written_by = document.get("versions")
        if written_by != versions():
            _warn(f"ignored the attention tuning file {path}: written by {written_by}, this process runs "
                  f"{versions()}; it will be tuned again and overwritten")
            return None
        return parse(document["entry"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        _warn(f"ignored the corrupt attention tuning file {path} ({type(e).__name__}: {e}); it will be tuned "
              "again and overwritten")
        return None


def save_tuning(key: dict, entry: dict) -> None:
    """Write the entry for ``key`` atomically (a reader sees the old file or the new one, never half)."""
    document = {"format": FORMAT, "key": key, "versions": versions(), "entry": entry}
    _write_atomic(tuning_path(key), json.dumps(document, indent=1, sort_keys=True))


def _write_atomic(path: Path, text: str) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        _warn(f"cannot write {path} ({e}); the attention cache stays in memory for this process")
        return False
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return True
    except OSError as e:
        _warn(f"cannot write {path} ({e}); the attention cache stays in memory for this process")
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False


def _warn(message: str) -> None:
    warnings.warn(message, AttentionCacheWarning, stacklevel=4)


# ------------------------------------------------------------------------------------------------ module files

_temporary_folder: list[Path] = []  # at most one per process, removed at exit


def module_file(name: str, source: str) -> Path:
    """A file holding ``source``, named ``name``: in the cache when writable, else in a temporary folder."""
    path = folder() / "modules" / name
    try:
        if path.read_text() == source:
            return path
    except OSError:
        pass
    if _write_atomic(path, source):
        return path
    if not _temporary_folder:
        temporary = Path(tempfile.mkdtemp(prefix="hal_attention_"))
        atexit.register(shutil.rmtree, temporary, ignore_errors=True)
        _temporary_folder.append(temporary)
    path = _temporary_folder[0] / name
    path.write_text(source)
    return path


# ------------------------------------------------------------------------------------------------ Triton binaries

@contextlib.contextmanager
def triton_binaries() -> Iterator[None]:
    """Within the block, Triton writes and reads compiled kernels under ``<hal cache dir>/attention/triton``.

    Left alone when the user set ``TRITON_CACHE_DIR`` (their choice wins) or the folder cannot be created. Triton's
    knobs are restored when the block ends; wrap only launches that may compile (it costs about 10 us).
    """
    if "TRITON_CACHE_DIR" in os.environ:
        yield
        return
    target = folder() / "triton"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield
        return
    from triton import knobs

    with knobs.cache.scope():
        knobs.cache.dir = str(target)
        yield
