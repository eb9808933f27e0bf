"""The errors the selective-scan functions raise on bad input.

Kernels know nothing of hal devices (``hal.errors`` sits above them), so this small family stands alone; each class
also derives from the builtin a caller would expect (``ValueError`` for a wrong shape or value, ``TypeError`` for a
wrong dtype), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class ScanInputError(ValueError):
    """An input of a selective-scan function has the wrong shape, value, device or layout."""


class ScanDtypeError(ScanInputError, TypeError):
    """An input has a dtype the chosen backend does not take, or inputs that must share a dtype do not."""


class ScanUnsupportedError(ScanInputError):
    """The input is well formed but beyond what the chosen backend supports (e.g. d_state above the kernel's limit)."""


class ScanNonFiniteError(ScanInputError):
    """``check_finite=True`` found a NaN or an infinity in an input."""
