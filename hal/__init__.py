"""hal: one PyTorch-shaped API over GPUs, neuromorphic, quantum, analog and photonic devices.

    import hal
    hal.devices()                      # available devices (DeviceInfo records); all=True adds the unavailable ones
    d = hal.device("cpu")              # open a device by string, torch.device style
    y = d.matmul(a, b)                 # eager op
    p = d.prepare(hal.OpSpec("linear", inputs=[x], params={"weight": w}), {"weight": w}); p(x)

``import hal`` is light: it loads the errors, the capability data and the registry, not torch and no driver.
The contract (``hal.Device``, ``hal.OpSpec``, ...) and with it torch is imported on first use, drivers when
a device of their kind is probed or opened, ``hal.runtime`` when it is first named. So ``hal --help`` starts
without torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import sys
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hal import registry
from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.errors import (
    CapacityExceeded,
    DeviceFailure,
    DeviceMismatch,
    DeviceUnavailable,
    DTypeError,
    HalError,
    InvalidInput,
    ProgramInvalidated,
    ShapeError,
    UnknownDevice,
    UnsupportedOp,
)

if TYPE_CHECKING:
    from hal.device import Check, Cost, Device, DeviceInfo, DeviceURI, OpSpec, Program, Support, TensorSpec

#: Names of the contract (hal/device.py, which imports torch), resolved on first use by ``__getattr__``.
_CONTRACT_NAMES = ("Check", "Cost", "Device", "DeviceInfo", "DeviceURI", "OpSpec", "Program", "Support", "TensorSpec")

__version__ = "0.1.0"

_current: contextvars.ContextVar[Device | None] = contextvars.ContextVar("hal_current_device", default=None)


def device(uri: str | Device | None = None) -> Device:
    """Open (or return the already open) device named by ``uri``; with no argument, the current device.

    Raises UnknownDevice for a kind no driver provides (with close matches), DeviceUnavailable with the
    probe's reason when the hardware or library is missing or the index is not one the driver lists (with
    the devices it does list), InvalidInput for bad options.
    """
    if uri is None:
        return current_device()
    if isinstance(uri, str):
        return registry.open_device(uri)
    from hal.device import Device

    if isinstance(uri, Device):
        return uri
    return registry.open_device(uri)


def devices(all: bool = False, kind: str | None = None, refresh: bool = False) -> list[DeviceInfo]:
    """Probed devices: the available ones, or every known one with ``all=True`` (each with its reason)."""
    infos = registry.probe(kind, refresh) if kind else registry.probe_all(refresh)
    return [i for i in infos if all or i.available]


def is_available(kind_or_uri: str) -> bool:
    """Whether a device of this kind (``"hopper"``) or this exact device (``"hopper:1"``) is available."""
    from hal.device import DeviceURI

    uri = DeviceURI.parse(kind_or_uri)
    if uri.kind not in registry.drivers():
        return False
    if ":" not in kind_or_uri.split("?")[0]:
        return any(i.available for i in registry.probe(uri.kind))
    info = registry.listed(uri)
    return info is not None and info.available


def device_count(kind: str) -> int:
    """Number of available devices of ``kind`` (0 if none or no such driver)."""
    if kind not in registry.drivers():
        return 0
    return sum(1 for i in registry.probe(kind) if i.available)


def current_device() -> Device:
    """The device set by the innermost ``device_scope``, else ``cpu:0``."""
    dev = _current.get()
    return dev if dev is not None else device("cpu:0")


@contextlib.contextmanager
def device_scope(uri: str | Device) -> Iterator[Device]:
    """Make ``uri`` the current device inside a ``with`` block (like ``torch.cuda.device``)."""
    token = _current.set(device(uri))
    try:
        yield _current.get()  # type: ignore[misc]
    finally:
        _current.reset(token)


def __getattr__(name: str) -> Any:
    """The contract's names, ``hal.runtime`` and ``hal.distributed`` are imported on first use, so ``import hal`` stays light."""
    if name in _CONTRACT_NAMES:
        return getattr(importlib.import_module("hal.device"), name)
    if name in ("runtime", "distributed"):
        return importlib.import_module(f"hal.{name}")
    if name == "explain":
        return importlib.import_module("hal.runtime.dynamo").explain
    raise AttributeError(f"module 'hal' has no attribute {name!r}")


class _FrontDoor(types.ModuleType):
    """The ``hal`` module's type: keeps ``hal.device`` the function when the submodule ``hal.device`` is imported.

    Importing a submodule sets it as an attribute of its package, so the first ``from hal.device import ...``
    (which now happens after this module ran, since the contract is imported lazily) would replace the function
    ``hal.device`` by the module. The module stays reachable as ``sys.modules["hal.device"]``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "device" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _FrontDoor

__all__ = [
    "Capabilities", "CapacityExceeded", "Check", "Cost", "DTypeError", "Device", "DeviceFailure", "DeviceInfo",
    "DeviceMismatch", "DeviceURI", "DeviceUnavailable", "Figure", "HalError", "InvalidInput", "OpSpec", "OpSupport",
    "Paradigm", "Program", "ProgramInvalidated", "ShapeError", "Support", "TensorSpec", "UnknownDevice",
    "UnsupportedOp", "current_device", "device", "device_count", "device_scope", "devices", "is_available",
]
