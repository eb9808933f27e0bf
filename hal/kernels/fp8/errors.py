"""The error the FP8 cast functions raise on bad input.

Kernels know nothing of hal devices (``hal.errors`` sits above them), so this one class stands alone; it derives from
``ValueError``, which is what a caller passing a wrong shape, dtype or layout would expect.
"""

from __future__ import annotations


class Fp8CastError(ValueError):
    """An input or output of an FP8 cast has the wrong shape, dtype or device, or a backend that cannot run."""
