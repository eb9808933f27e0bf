"""The ``quantum`` section of local backends (fake snapshots, the ideal simulator), derived once and kept on disk.

Deriving a fake backend's section means importing qiskit-ibm-runtime (about 1 s) and letting it parse the
snapshot's calibration into a Target (60-500 ms per backend, most of it timestamp parsing): about 8 s for the
68 snapshots that ``hal query --all`` describes. The figures are a pure function of inputs that can be named, so
the section is derived by ``target_facts.quantum_section`` once and reused while none of them changes:

- a fake backend: its name, the bytes of its snapshot files (sha256), and the versions of qiskit-ibm-runtime
  (which converts the snapshot) and qiskit (whose Target holds it);
- the ideal simulator: the versions of qiskit-aer and qiskit, and the host memory qiskit-aer sizes its width from
  (``psutil.virtual_memory().total``, read as qiskit-aer reads it);
- for both, the source of the hal modules that derive and store the section (so a change to hal's derivation is
  never answered from an old file).

One JSON file per backend under ``$HAL_CACHE_DIR/ibm_qpu`` (else ``$XDG_CACHE_HOME/hal/ibm_qpu``, else
``~/.cache/hal/ibm_qpu``) holds the key and the section; a file whose key differs, or that does not parse, is
derived again and replaced. A cache that cannot be written is skipped (the section is then derived per process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import tempfile
import typing
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from hal.cache import cache_dir as hal_cache_dir
from hal.capability import Figure, to_jsonable
from hal.capability.quantum import Connectivity, QuantumSection, Spread
from hal.drivers.ibm_qpu import backends

CACHE_SUBDIR = "ibm_qpu"
#: Modules whose source determines a cached section: the derivation, the section's data classes, this file's storage.
DERIVATION_MODULES = ("hal.drivers.ibm_qpu.target_facts", "hal.capability.quantum", "hal.capability.figures", __name__)
#: Dataclasses a section nests; every other field is stored as plain JSON.
NESTED = (Figure, Spread, Connectivity)


def _nested_fields(cls: type) -> dict[str, type | None]:
    """Each field of dataclass ``cls`` and the NESTED dataclass it holds (alone or as ``X | None``), else None."""
    hints = typing.get_type_hints(cls)
    return {f.name: next((t for t in NESTED if hints[f.name] is t or t in typing.get_args(hints[f.name])), None) for f in dataclasses.fields(cls)}


#: The fields of every dataclass a section is made of, resolved once (resolving type hints costs 0.1 ms a call).
FIELDS = {cls: _nested_fields(cls) for cls in (QuantumSection, *NESTED)}

#: What a derivation returns: the section and the backend's version string (None when it has none).
Derived = tuple[QuantumSection, str | None]


def cache_dir() -> Path:
    """The folder of cached sections (``$HAL_CACHE_DIR``, then ``$XDG_CACHE_HOME/hal``, then ``~/.cache/hal``)."""
    return hal_cache_dir() / CACHE_SUBDIR


@cache
def derivation_digest() -> str:
    """sha256 over the source files of ``DERIVATION_MODULES`` (read once per process: a module's code is fixed once imported)."""
    digest = hashlib.sha256()
    for name in DERIVATION_MODULES:
        digest.update(Path(importlib.import_module(name).__file__).read_bytes())
    return digest.hexdigest()


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def fake_backend_key(name: str, files: list[Path], versions: Mapping[str, str]) -> str | None:
    """The cache key of fake backend ``name``'s section from its snapshot ``files``, or None when there are none to key on."""
    if not files:
        return None
    try:
        parts = [f"backend {name}", f"qiskit-ibm-runtime {versions['qiskit-ibm-runtime']}", f"qiskit {versions['qiskit']}", f"hal {derivation_digest()}"]
        parts += [f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}" for path in files]
    except OSError:  # an unreadable file leaves nothing to key on: the section is derived, not cached
        return None
    return _digest(parts)


def ideal_simulator_key(versions: Mapping[str, str]) -> str | None:
    """The cache key of the ideal simulator's section, or None when the host memory cannot be read as qiskit-aer reads it."""
    try:
        import psutil  # qiskit-aer's own dependency; it sizes the simulator from this figure
    except ImportError:
        return None
    memory_bytes = psutil.virtual_memory().total
    try:
        hal_source = derivation_digest()
    except OSError:  # hal's source cannot be read (a frozen install): nothing to key on, derive instead
        return None
    return _digest([f"backend {backends.IDEAL_SIMULATOR}", f"qiskit-aer {versions['qiskit-aer']}", f"qiskit {versions['qiskit']}", f"memory {memory_bytes} B", f"hal {hal_source}"])


def _rebuild(cls: type, data: Mapping[str, Any]) -> Any:
    """A dataclass of ``cls`` from its ``to_jsonable`` form, nested Figures, Spreads and Connectivity included."""
    values = {}
    for name, nested in FIELDS[cls].items():
        raw = data[name]
        values[name] = _rebuild(nested, raw) if nested is not None and raw is not None else raw
    return cls(**values)


def section_from_dict(data: Mapping[str, Any]) -> QuantumSection:
    """The QuantumSection whose ``to_jsonable`` form is ``data`` (JSON keeps ints, floats and strings exactly)."""
    return _rebuild(QuantumSection, data)


def _read(path: Path, key: str) -> Derived | None:
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        version = entry["backend_version"]
        return section_from_dict(entry["section"]), (str(version) if version is not None else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, key: str, derived: Derived) -> None:
    """Write one entry to a temporary file and rename it, so a reader never sees half a file; skipped if unwritable."""
    section, version = derived
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"key": key, "backend_version": version, "section": to_jsonable(section)}, out)
        os.replace(temporary, path)
    except OSError:
        return


def cached_section(name: str, key: str | None, derive: Callable[[], Derived]) -> Derived:
    """Backend ``name``'s section from the cache when stored under ``key``, else from ``derive()`` (then stored).

    ``key`` None (nothing to key on) derives every time and stores nothing.
    """
    if key is None:
        return derive()
    path = cache_dir() / f"{name}.json"
    found = _read(path, key)
    if found is not None:
        return found
    derived = derive()
    _write(path, key, derived)
    return derived
