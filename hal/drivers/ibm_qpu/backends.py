"""Which IBM quantum backends exist here and how to open one by its hal name.

Three families, one naming scheme (the index of ``ibm_qpu:<name>``):

- ``aer``: the ideal (noiseless) Aer simulator.
- ``fake_<device>``: the snapshots of real IBM processors that ship with qiskit-ibm-runtime (coupling map,
  basis gates, calibration with T1/T2 and errors), run locally on Aer with a noise model built from the
  snapshot. Listing them reads the snapshot files only; the backend object is made on the first job (the
  noise model with it) and kept by the device for its lifetime.
- any other name: a real IBM Quantum processor of the configured account.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IDEAL_SIMULATOR = "aer"
FAKE_PREFIX = "fake_"


@dataclass(frozen=True)
class BackendRef:
    """A backend found here: its hal name, its family, and how many qubits it has (None when unknown without importing)."""

    name: str
    family: str
    num_qubits: int | None


def _snapshot_dir() -> Path | None:
    """Folder of the fake backend snapshots inside the installed qiskit-ibm-runtime, found without importing it."""
    spec = importlib.util.find_spec("qiskit_ibm_runtime")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "fake_provider" / "backends"
    return folder if folder.is_dir() else None


def _snapshots() -> dict[str, Path]:
    """Fake backend name (``fake_<folder>``) -> its configuration file, one per snapshot folder."""
    folder = _snapshot_dir()
    if folder is None:
        return {}
    found = {}
    for conf in sorted(folder.glob("*/conf_*.json")):
        found[f"{FAKE_PREFIX}{conf.parent.name}"] = conf
    return found


def snapshot_files(name: str) -> list[Path]:
    """The JSON files of fake backend ``name``'s snapshot (configuration, calibration), sorted; [] if there is no such snapshot.

    These are the files the fake backend object loads, so their bytes determine every figure read off it. Looks in
    the one folder the name points at (``fake_manila`` -> ``manila/``), not through every snapshot.
    """
    folder_name = name[len(FAKE_PREFIX):] if name.startswith(FAKE_PREFIX) else ""
    root = _snapshot_dir()
    if root is None or not folder_name or Path(folder_name).name != folder_name or folder_name in (".", ".."):
        return []
    files = sorted((root / folder_name).glob("*.json"))
    return files if any(f.name.startswith("conf_") for f in files) else []


def fake_backend_names() -> list[str]:
    """Names of every fake backend shipped with the installed qiskit-ibm-runtime (``fake_torino``...).

    Read from the snapshot folders, not by importing qiskit: probing stays cheap (no noise model, no
    import of the qiskit stack in the registry's probe thread).
    """
    return sorted(_snapshots())


def local_backends() -> list[BackendRef]:
    """The ideal simulator and every fake backend, with qubit counts read from the snapshots' configuration files."""
    refs = [BackendRef(IDEAL_SIMULATOR, "ideal simulator", None)]
    for name, conf in _snapshots().items():
        n_qubits = json.loads(conf.read_text(encoding="utf-8")).get("n_qubits")
        refs.append(BackendRef(name, "fake backend", int(n_qubits) if n_qubits is not None else None))
    return refs


def fake_backend(name: str) -> Any:
    """A new fake backend object; KeyError if there is no such snapshot.

    Some snapshots warn on construction that their figures are illustrative (fake_nighthawk); the
    warning is kept out of hal's output and the fact is in the device notes instead.
    """
    from qiskit_ibm_runtime import fake_provider
    from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

    for obj in vars(fake_provider).values():
        if isinstance(obj, type) and issubclass(obj, FakeBackendV2) and getattr(obj, "backend_name", None) == name:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return obj()
    raise KeyError(name)


def ideal_simulator() -> Any:
    """The noiseless Aer simulator (automatic method: statevector for these circuits)."""
    from qiskit_aer import AerSimulator

    return AerSimulator(method="automatic")


class LazyBackend:
    """A backend object made on first ``get()`` and kept: shared by a device, its transpile cache and its executor.

    Making a local backend imports qiskit-ibm-runtime or qiskit-aer (about 1 s), which describing a device does not
    need. The transpile cache and the executor hold this object rather than the device, so no reference cycle runs
    through the device.
    """

    def __init__(self, make: Callable[[], Any]):
        self._make = make
        self._backend: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The backend, made now if this is the first call (one thread makes it; the others wait for it)."""
        with self._lock:
            if self._backend is None:
                self._backend = self._make()
            return self._backend
