"""hal: one PyTorch-shaped API over GPUs, neuromorphic, quantum, analog and photonic devices.

    import hal
    hal.devices()                      # available devices (DeviceInfo records); all=True adds the unavailable ones
    d = hal.device("cpu")              # open a device by string, torch.device style
    y = d.matmul(a, b)                 # eager op
    p = d.prepare(hal.OpSpec("linear", inputs=[x], params={"weight": w}), {"weight": w}); p(x)
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from hal import registry
from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.device import Check, Cost, Device, DeviceInfo, DeviceURI, OpSpec, Program, Support, TensorSpec
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

__version__ = "0.1.0"

_current: contextvars.ContextVar[Device | None] = contextvars.ContextVar("hal_current_device", default=None)


def device(uri: str | Device | None = None) -> Device:
    """Open (or return the already open) device named by ``uri``; with no argument, the current device.

    Raises UnknownDevice for a kind no driver provides (with close matches), DeviceUnavailable with the
    probe's reason when the hardware or library is missing, InvalidInput for bad options.
    """
    if isinstance(uri, Device):
        return uri
    if uri is None:
        return current_device()
    return registry.open_device(uri)


def devices(all: bool = False, kind: str | None = None, refresh: bool = False) -> list[DeviceInfo]:
    """Probed devices: the available ones, or every known one with ``all=True`` (each with its reason)."""
    infos = registry.probe(kind, refresh) if kind else registry.probe_all(refresh)
    return [i for i in infos if all or i.available]


def is_available(kind_or_uri: str) -> bool:
    """Whether a device of this kind (``"hopper"``) or this exact device (``"hopper:1"``) is available."""
    uri = DeviceURI.parse(kind_or_uri)
    if uri.kind not in registry.drivers():
        return False
    infos = registry.probe(uri.kind)
    if ":" not in kind_or_uri.split("?")[0]:
        return any(i.available for i in infos)
    return any(i.available and DeviceURI.parse(i.uri).base() == uri.base() for i in infos)


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


def __getattr__(name: str):
    """``hal.runtime`` is imported on first use, so ``import hal`` stays light."""
    if name == "runtime":
        import importlib

        return importlib.import_module("hal.runtime")
    raise AttributeError(f"module 'hal' has no attribute {name!r}")


__all__ = [
    "Capabilities", "CapacityExceeded", "Check", "Cost", "DTypeError", "Device", "DeviceFailure", "DeviceInfo",
    "DeviceMismatch", "DeviceURI", "DeviceUnavailable", "Figure", "HalError", "InvalidInput", "OpSpec", "OpSupport",
    "Paradigm", "Program", "ProgramInvalidated", "ShapeError", "Support", "TensorSpec", "UnknownDevice",
    "UnsupportedOp", "current_device", "device", "device_count", "device_scope", "devices", "is_available",
]
