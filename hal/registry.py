"""Driver discovery through the ``hal.drivers`` entry-point group, time-bounded probing, open devices.

Built-in drivers are registered in pyproject.toml exactly like third-party ones, so a new driver is
a ``pip install`` away: an entry point ``kind = "package.module:DeviceClass"``.

Probing never raises: a driver whose module fails to import, whose probe raises or hangs past the
time limit, becomes an unavailable device with that reason. A device string with a ``port`` option
(``memristor:0?port=/dev/ttyUSB0``) is a board reached over a serial link and is opened by the
driver registered as ``serial``, whatever its kind.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from hal.errors import DeviceUnavailable, UnknownDevice

if TYPE_CHECKING:
    from hal.device import Check, Device, DeviceInfo

ENTRY_POINT_GROUP = "hal.drivers"
BOARD_DRIVER = "serial"
#: Seconds a driver's probe may take before it is reported as hung (override: HAL_PROBE_TIMEOUT_S).
PROBE_TIMEOUT_S = float(os.environ.get("HAL_PROBE_TIMEOUT_S", "30"))


@dataclass
class DriverEntry:
    """One registered driver: its kind and the ``module:Class`` it points at."""

    kind: str
    target: str

    def load(self) -> type[Device]:
        """Import the driver class; ImportError/AttributeError propagate for the caller to report."""
        module_name, _, attr = self.target.partition(":")
        module = __import__(module_name, fromlist=[attr])
        return getattr(module, attr)


_drivers: dict[str, DriverEntry] | None = None
_probed: dict[str, list[DeviceInfo]] = {}
_open: dict[str, Device] = {}
_lock = threading.Lock()


def drivers() -> dict[str, DriverEntry]:
    """Every registered driver by kind (entry points of the ``hal.drivers`` group)."""
    global _drivers
    if _drivers is None:
        _drivers = {ep.name: DriverEntry(ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return _drivers


def device_kinds() -> list[str]:
    """Kinds a user can name (the board transport is reached through ``?port=``, not by its own kind)."""
    return sorted(k for k in drivers() if k != BOARD_DRIVER)


def load_driver(kind: str) -> type[Device]:
    """The Device class for ``kind``; UnknownDevice if no driver has that kind, DeviceUnavailable if it fails to import."""
    entry = drivers().get(kind)
    if entry is None:
        raise UnknownDevice(kind, device_kinds())
    try:
        return entry.load()
    except Exception as exc:  # an optional dependency or a broken plugin: report, never crash
        raise DeviceUnavailable(f"{kind}:*", f"its driver {entry.target} failed to import ({type(exc).__name__}: {exc})", _install_hint(kind)) from exc


def _install_hint(kind: str) -> str:
    extras = {"hopper": "gpu", "blackwell": "gpu", "cuda": "gpu", "ibm_qpu": "quantum", "loihi2": "neuromorphic", "serial": "serial"}
    extra = extras.get(kind)
    return f"pip install 'hal[{extra}]'" if extra else "reinstall hal (pip install -e .)"


def _run_bounded(fn, timeout_s: float):
    """Run ``fn`` in a daemon thread; return (result, error) or (None, TimeoutError) if it outlives ``timeout_s``."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 (reported, never raised)
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="hal-probe")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return None, TimeoutError(f"probe did not answer within {timeout_s:g} s")
    return box.get("result"), box.get("error")


def probe(kind: str, refresh: bool = False, timeout_s: float | None = None) -> list[DeviceInfo]:
    """Probe one driver's devices (cached per process unless ``refresh``); never raises."""
    from hal.device import DeviceInfo

    with _lock:
        if not refresh and kind in _probed:
            return _probed[kind]
    limit = PROBE_TIMEOUT_S if timeout_s is None else timeout_s

    def run() -> list[DeviceInfo]:
        return load_driver(kind).probe()

    result, error = _run_bounded(run, limit)
    if error is not None:
        if isinstance(error, DeviceUnavailable):
            reason, fix = error.reason, error.fix
        else:
            reason, fix = f"probe failed: {type(error).__name__}: {error}", "run `hal doctor` for details"
        result = [DeviceInfo(uri=f"{kind}:0", kind=kind, available=False, reason=reason, fix=fix)]
    with _lock:
        _probed[kind] = result
    return result


def probe_all(refresh: bool = False) -> list[DeviceInfo]:
    """Probe every driver in parallel (each time-bounded); one list, in kind order."""
    kinds = drivers()
    results: dict[str, list[DeviceInfo]] = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, probe(k, refresh)), daemon=True) for k in kinds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PROBE_TIMEOUT_S + 5)
    return [info for k in sorted(kinds) for info in results.get(k, [])]


def diagnose(kind: str) -> list[Check]:
    """The driver's own doctor checks; a raising check becomes a failed Check (import failures show in probe)."""
    from hal.device import Check

    try:
        cls = load_driver(kind)
    except DeviceUnavailable:
        return []
    result, error = _run_bounded(cls.diagnose, PROBE_TIMEOUT_S)
    if error is not None:
        return [Check(f"{kind} diagnostics", False, f"{type(error).__name__}: {error}")]
    return list(result or [])


def open_device(text: str) -> Device:
    """The open Device for a device string (one instance per canonical URI, like torch.device identity)."""
    from hal.device import DeviceURI

    uri = DeviceURI.parse(text)
    if uri.kind not in drivers() or uri.kind == BOARD_DRIVER:
        raise UnknownDevice(text, device_kinds())
    key = str(uri)
    with _lock:
        device = _open.get(key)
    if device is not None and not device.closed:
        return device
    driver_kind = BOARD_DRIVER if "port" in uri.option_map and BOARD_DRIVER in drivers() else uri.kind
    cls = load_driver(driver_kind)
    device = cls(uri) if driver_kind == uri.kind else cls(uri, kind=uri.kind)  # type: ignore[call-arg]
    with _lock:
        _open[key] = device
    return device


def forget(device: Device) -> None:
    """Drop a closed device from the open-device table."""
    with _lock:
        if _open.get(str(device.uri)) is device:
            del _open[str(device.uri)]
