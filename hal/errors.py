"""The hal error family: every error names what was wrong and what to do about it.

Each class also derives from the built-in exception a Python user would expect to catch
(ValueError for bad values, TypeError for bad dtypes, RuntimeError for device state), so
`except ValueError` keeps working around hal calls.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HalError(Exception):
    """Base of every error hal raises on purpose."""


class UnknownDevice(HalError, ValueError):
    """A device string names a kind no installed driver provides, or is malformed."""

    def __init__(self, text: str, known: Iterable[str] = (), problem: str | None = None):
        known = sorted(set(known))
        kind = text.split("?")[0].split(":")[0]
        close = difflib.get_close_matches(kind, known, n=3, cutoff=0.5)
        msg = problem or f"no driver provides the device kind {kind!r} (from {text!r})"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        if known:
            msg += f" Known kinds: {', '.join(known)}."
        msg += " Run `hal doctor` to see every driver and why it is or is not available."
        super().__init__(msg)
        self.text = text
        self.close_matches = close


class DeviceUnavailable(HalError, RuntimeError):
    """The driver exists but the device cannot be used here; `reason` says why, `fix` how to fix it."""

    def __init__(self, uri: str, reason: str, fix: str = ""):
        msg = f"{uri} is unavailable: {reason}"
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)
        self.uri, self.reason, self.fix = uri, reason, fix


class UnsupportedOp(HalError, NotImplementedError):
    """The device cannot run this op (or not with these attributes/shapes/dtypes); the message says which constraint failed."""


class ShapeError(HalError, ValueError):
    """Input shapes do not fit the op (or the shapes a Program was prepared for)."""


class DTypeError(HalError, TypeError):
    """An input dtype is not one the op or device accepts."""


class DeviceMismatch(HalError, ValueError):
    """A tensor lives on a different torch device than the one the hal device computes on."""


class InvalidInput(HalError, ValueError):
    """An input value the device refuses: NaN/inf where refused, out-of-range options, malformed attributes."""


class CapacityExceeded(HalError, RuntimeError):
    """The work does not fit the device (memory, tiles, cores, qubits); the message gives needed vs available."""

    def __init__(self, message: str, needed: float | None = None, available: float | None = None):
        super().__init__(message)
        self.needed, self.available = needed, available


class ProgramInvalidated(HalError, RuntimeError):
    """A Program was used after the device resources it lived on were reprogrammed or closed."""


class DeviceFailure(HalError, RuntimeError):
    """The device failed while running (lost link, hardware fault): the runtime drops it and re-plans."""
