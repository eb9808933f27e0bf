"""The errors the fused linear functions raise on bad input.

Kernels know nothing of hal devices (``hal.errors`` sits above them), so this small family stands alone, as the
selective-scan kernels' does; each class also derives from the builtin a caller would expect (``ValueError`` for a
wrong shape or value, ``TypeError`` for a wrong dtype), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class GemmInputError(ValueError):
    """An argument of ``norm_linear`` / ``gated_linear`` has the wrong type or value."""


class GemmShapeError(GemmInputError):
    """An argument has the wrong shape or layout (strides) for the fused linear."""


class GemmDtypeError(GemmInputError, TypeError):
    """An argument has a dtype the fused linear does not take, or arguments that must share a dtype do not."""


class GemmDeviceError(GemmInputError):
    """An argument lives on another device than ``x``."""
