"""Driver discovery through the ``hal.drivers`` entry-point group, time-bounded probing, open devices.

Built-in drivers are registered in pyproject.toml exactly like third-party ones, so a new driver is
a ``pip install`` away: an entry point ``kind = "package.module:DeviceClass"``.

Probing never raises: a driver whose module fails to import, whose probe raises or hangs past the
time limit, becomes an unavailable device with that reason, and the registry remembers that the
driver itself is broken (``hal doctor`` exits non-zero for it), which is not the same as a device
that is merely absent (the probe says so with a reason).

Opening checks the device string against what the driver's probe lists: an index the probe does not
list (``memristor:5``, ``memristor:abc``) is refused with the devices that exist, and a listed device
the probe reports unavailable is refused with the probe's reason, so ``hal.device`` opens exactly what
``hal.is_available`` says is there. Named devices follow the same rule: the IBM driver's probe lists
the ideal simulator, every fake backend and, when an account is configured, the account's real
processors (asking the service); when it cannot reach them it lists an unavailable placeholder whose
reason is passed on. A device string with a ``port`` option (``memristor:0?port=/dev/ttyUSB0``) is a
board reached over a serial link, opened by the driver registered as ``serial`` whatever its kind; it
is in no probe list, so the board driver checks it when it connects.
"""

from __future__ import annotations

import difflib
import os
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from hal.errors import DeviceUnavailable, UnknownDevice

if TYPE_CHECKING:
    from hal.device import Check, Device, DeviceInfo, DeviceURI

ENTRY_POINT_GROUP = "hal.drivers"
#: Torch modules that drivers provide to ``hal.nn`` by name (``hal.nn.QuantumLayer``), as ``name = "module:Class"``.
MODULE_ENTRY_POINT_GROUP = "hal.modules"
BOARD_DRIVER = "serial"
#: Seconds a driver's probe may take before it is reported as hung (override: HAL_PROBE_TIMEOUT_S).
PROBE_TIMEOUT_S = float(os.environ.get("HAL_PROBE_TIMEOUT_S", "30"))
#: Devices named one by one in an error about a missing index; beyond this the error says how many more and where to see them.
LISTED_IN_ERRORS = 8


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


@dataclass(frozen=True)
class _Probe:
    """One driver's probe result: its devices, and why the driver itself is broken ("" when it is not)."""

    devices: list[DeviceInfo]
    broken: str = ""


@dataclass(frozen=True)
class DriverHealth:
    """What ``hal doctor`` reports for one driver.

    ``broken`` says why the driver itself does not work (its module fails to import, its probe raises
    or hangs, its doctor checks raise); it is empty for a working driver, whose devices may still be
    absent (each then says why in ``devices``).
    """

    kind: str
    target: str
    devices: list[DeviceInfo]
    checks: list[Check] = field(default_factory=list)
    broken: str = ""


class _BrokenDriver(Exception):
    """The driver's module or class could not be loaded (raised inside the probe thread, reported as broken)."""


_drivers: dict[str, DriverEntry] | None = None
_probed: dict[str, _Probe] = {}
_open: dict[str, Device] = {}
_lock = threading.Lock()


def drivers() -> dict[str, DriverEntry]:
    """Every registered driver by kind (entry points of the ``hal.drivers`` group)."""
    global _drivers
    if _drivers is None:
        _drivers = {ep.name: DriverEntry(ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return _drivers


def module_names() -> list[str]:
    """Names of the torch modules drivers provide to ``hal.nn`` (entry points of the ``hal.modules`` group)."""
    return sorted(ep.name for ep in entry_points(group=MODULE_ENTRY_POINT_GROUP))


def load_module(name: str) -> type:
    """The module class a driver provides under ``name``; DeviceUnavailable naming the extra when its driver cannot load."""
    found = [ep for ep in entry_points(group=MODULE_ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise AttributeError(f"no driver provides a module named {name!r}; the provided modules are: {', '.join(module_names()) or 'none'}")
    entry = DriverEntry(name, found[0].value)
    try:
        return entry.load()
    except Exception as exc:  # noqa: BLE001 (an optional dependency missing: reported with the fix)
        driver = entry.target.split(".")[2] if entry.target.startswith("hal.drivers.") else entry.target
        raise DeviceUnavailable(f"hal.nn.{name}", f"its driver module {entry.target} failed to import ({type(exc).__name__}: {exc})", _install_hint(driver)) from exc


def device_kinds() -> list[str]:
    """Kinds a user can name (the board transport is reached through ``?port=``, not by its own kind)."""
    return sorted(k for k in drivers() if k != BOARD_DRIVER)


def _missing_dependency(entry: DriverEntry, exc: BaseException) -> str | None:
    """The package a driver module needs but is not installed (an absent optional dependency), else None.

    A missing module of the driver's own package (the entry point names a module that is not there) is
    a broken installation, not a missing dependency.
    """
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    own_package = entry.target.partition(":")[0].split(".")[0]
    missing_package = exc.name.split(".")[0]
    return None if missing_package == own_package else missing_package


def _load_failure(entry: DriverEntry, exc: Exception) -> DeviceUnavailable:
    """The error for a driver whose module or class did not load, saying which dependency is missing if one is."""
    missing = _missing_dependency(entry, exc)
    if missing is not None:
        return DeviceUnavailable(f"{entry.kind}:*", f"its driver {entry.target} needs {missing!r}, which is not installed", _install_hint(entry.kind))
    return DeviceUnavailable(f"{entry.kind}:*", f"its driver {entry.target} failed to import ({type(exc).__name__}: {exc})", _install_hint(entry.kind))


def load_driver(kind: str) -> type[Device]:
    """The Device class for ``kind``; UnknownDevice if no driver has that kind, DeviceUnavailable if it fails to import."""
    entry = drivers().get(kind)
    if entry is None:
        raise UnknownDevice(kind, device_kinds())
    try:
        return entry.load()
    except Exception as exc:  # an optional dependency or a broken plugin: report, never crash
        raise _load_failure(entry, exc) from exc


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


def _probe_driver(kind: str, timeout_s: float) -> _Probe:
    """Load and probe one driver in a bounded thread; classify what went wrong as absent or broken."""
    from hal.device import DeviceInfo

    entry = drivers().get(kind)

    def run() -> list[DeviceInfo]:
        if entry is None:
            raise UnknownDevice(kind, device_kinds())
        try:
            cls = entry.load()
        except Exception as exc:  # noqa: BLE001 (classified: a missing optional dependency is absence, the rest is a broken driver)
            failure = _load_failure(entry, exc)
            if _missing_dependency(entry, exc) is not None:
                raise failure from exc
            raise _BrokenDriver(failure.reason, failure.fix) from exc
        return cls.probe()

    def unavailable(reason: str, fix: str) -> list[DeviceInfo]:
        return [DeviceInfo(uri=f"{kind}:0", kind=kind, available=False, reason=reason, fix=fix)]

    result, error = _run_bounded(run, timeout_s)
    if isinstance(error, DeviceUnavailable):
        return _Probe(unavailable(error.reason, error.fix))
    if isinstance(error, _BrokenDriver):
        reason, fix = error.args
        return _Probe(unavailable(reason, fix), broken=reason)
    if isinstance(error, UnknownDevice):
        return _Probe(unavailable(str(error), "run `hal doctor` to see the installed drivers"), broken=str(error))
    if error is not None:
        reason = f"probe failed: {type(error).__name__}: {error}"
        return _Probe(unavailable(reason, "run `hal doctor` for details"), broken=reason)
    if not isinstance(result, list) or not all(isinstance(i, DeviceInfo) for i in result):
        reason = f"probe returned {type(result).__name__}, not a list of DeviceInfo"
        return _Probe(unavailable(reason, "fix the driver's probe()"), broken=reason)
    return _Probe(result)


def _probed_record(kind: str, refresh: bool, timeout_s: float | None) -> _Probe:
    with _lock:
        if not refresh and kind in _probed:
            return _probed[kind]
    record = _probe_driver(kind, PROBE_TIMEOUT_S if timeout_s is None else timeout_s)
    with _lock:
        _probed[kind] = record
    return record


def probe(kind: str, refresh: bool = False, timeout_s: float | None = None) -> list[DeviceInfo]:
    """Probe one driver's devices (cached per process unless ``refresh``); never raises."""
    return _probed_record(kind, refresh, timeout_s).devices


def probe_all(refresh: bool = False) -> list[DeviceInfo]:
    """Probe every driver in parallel (each time-bounded); one list, in kind order.

    The contract (and with it torch, which every driver imports) is imported here, in the calling thread,
    so that no probe thread is the first to initialise torch's extension modules.
    """
    import hal.device  # noqa: F401

    kinds = drivers()
    results: dict[str, list[DeviceInfo]] = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, probe(k, refresh)), daemon=True) for k in kinds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PROBE_TIMEOUT_S + 5)
    return [info for k in sorted(kinds) for info in results.get(k, [])]


def listed(uri: DeviceURI) -> DeviceInfo | None:
    """The probe's record of the device ``kind:index`` (options ignored), or None if the probe does not list it."""
    from hal.device import DeviceURI

    for info in probe(uri.kind):
        if DeviceURI.parse(info.uri).base() == uri.base():
            return info
    return None


def health(kind: str) -> DriverHealth:
    """One driver's devices, its own doctor checks, and whether the driver itself is broken (never raises)."""
    from hal.device import Check

    record = _probed_record(kind, refresh=False, timeout_s=None)
    target = drivers()[kind].target
    if record.broken:
        return DriverHealth(kind, target, record.devices, [], record.broken)
    try:
        cls = load_driver(kind)
    except DeviceUnavailable:  # an optional dependency is missing: the probe already says so
        return DriverHealth(kind, target, record.devices)
    result, error = _run_bounded(cls.diagnose, PROBE_TIMEOUT_S)
    if error is None:
        return DriverHealth(kind, target, record.devices, list(result or []))
    missing = _missing_dependency(drivers()[kind], error)
    if missing is not None:
        check = Check(f"{kind} dependencies", False, f"{missing!r} is not installed", _install_hint(kind))
        return DriverHealth(kind, target, record.devices, [check])
    reason = f"its doctor checks raised {type(error).__name__}: {error}"
    return DriverHealth(kind, target, record.devices, [Check(f"{kind} diagnostics", False, reason)], reason)


def _listing(infos: list[DeviceInfo]) -> str:
    """The devices a driver lists, for an error: available ones by name (the first few, then how many more and
    where to see them), then every unavailable one with its reason (a placeholder there says what is missing)."""
    available = [i.uri for i in infos if i.available]
    unavailable = [f"{i.uri} ({i.reason})" for i in infos if not i.available]
    parts = []
    if available:
        more = len(available) - LISTED_IN_ERRORS
        text = ", ".join(available[:LISTED_IN_ERRORS])
        parts.append(f"available: {text}" + (f" and {more} more (`hal devices --kind {infos[0].kind}` lists them)" if more > 0 else ""))
    if unavailable:
        parts.append(f"unavailable: {'; '.join(unavailable)}")
    return "; ".join(parts)


def _check_listed(uri: DeviceURI) -> None:
    """Refuse a device the driver's probe does not list, or lists as unavailable (see the module docstring)."""
    info = listed(uri)
    if info is not None:
        if not info.available:
            raise DeviceUnavailable(str(uri), info.reason, info.fix)
        return
    infos = probe(uri.kind)
    if not infos:
        raise DeviceUnavailable(str(uri), f"the {uri.kind} driver lists no devices on this machine", f"run `hal doctor` to see why no {uri.kind} device is found")
    available = [i.uri.split("?")[0] for i in infos if i.available]
    close = difflib.get_close_matches(uri.base(), available, n=3, cutoff=0.6)
    reason = f"there is no {uri.kind} device {str(uri.index)!r} here; the {uri.kind} driver lists {_listing(infos)}"
    fixes = [f"use {' or '.join(close)}" if close else f"use one of the available devices, e.g. {available[0]}"] if available else []
    fixes += [f"for {i.uri}: {i.fix}" for i in infos if not i.available and i.fix]
    fix = "; ".join(fixes) or f"no {uri.kind} device is available here; `hal doctor` says why"
    raise DeviceUnavailable(str(uri), reason, fix)


def open_device(text: str) -> Device:
    """The open Device for a device string (one instance per canonical URI, like torch.device identity).

    The device must be one the driver's probe lists as available (boards named by ``?port=`` excepted).
    """
    from hal.device import DeviceURI

    uri = DeviceURI.parse(text)
    if uri.kind not in drivers() or uri.kind == BOARD_DRIVER:
        raise UnknownDevice(text, device_kinds())
    key = str(uri)
    with _lock:
        device = _open.get(key)
    if device is not None and not device.closed:
        return device
    board = "port" in uri.option_map and BOARD_DRIVER in drivers()
    if not board:
        _check_listed(uri)
    driver_kind = BOARD_DRIVER if board else uri.kind
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
