"""The small floating-point formats FP8 training and the block-scaled formats use, as data.

Each format is defined by its exponent and mantissa widths and its largest finite value; those come from the
format specifications, named in ``source``:

- E4M3 (``torch.float8_e4m3fn``) and E5M2 (``torch.float8_e5m2``): OCP 8-bit Floating Point Specification (OFP8),
  revision 1.0, 2023. E4M3 has no infinity (its one NaN code per sign is S.1111.111), E5M2 is IEEE-like.
- E2M1 (the NVFP4 / MXFP4 element), E8M0 (the MX block scale): OCP Microscaling Formats (MX) Specification v1.0, 2023.

The unit roundoff of a format with ``m`` stored mantissa bits is 2^-(m+1): the largest relative error of
round-to-nearest in the normal range, the number every error bound in hal.precision is built from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hal.errors import InvalidInput

OFP8_SPEC = "OCP 8-bit Floating Point Specification (OFP8) rev 1.0, 2023"
MX_SPEC = "OCP Microscaling Formats (MX) Specification v1.0, 2023"


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: widths, range, and the torch dtype that stores it (None: hal emulates it)."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max_value: float
    dtype: torch.dtype | None
    source: str

    @property
    def unit_roundoff(self) -> float:
        """2^-(mantissa_bits + 1): largest relative rounding error in the normal range."""
        return 2.0 ** -(self.mantissa_bits + 1)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, 2^(1 - bias)."""
        return 2.0 ** (1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value, 2^(1 - bias - mantissa_bits)."""
        return 2.0 ** (1 - self.bias - self.mantissa_bits)

    @property
    def max_exponent(self) -> int:
        """Exponent of the largest power of two the format holds (E4M3: 8, since 256 <= 448 < 512)."""
        exponent = 0
        while 2.0 ** (exponent + 1) <= self.max_value:
            exponent += 1
        return exponent


E4M3 = FloatFormat("e4m3", 4, 3, 7, 448.0, torch.float8_e4m3fn, OFP8_SPEC)
E5M2 = FloatFormat("e5m2", 5, 2, 15, 57344.0, torch.float8_e5m2, OFP8_SPEC)
E2M1 = FloatFormat("e2m1", 2, 1, 1, 6.0, None, MX_SPEC)

FP8_FORMATS = {f.name: f for f in (E4M3, E5M2)}


def fp8_format(name: str | FloatFormat) -> FloatFormat:
    """The FP8 format called ``name`` ("e4m3" or "e5m2"), or ``name`` itself if it is already one."""
    if isinstance(name, FloatFormat):
        if name.name not in FP8_FORMATS:
            raise InvalidInput(f"{name.name} is not an FP8 format; use one of {sorted(FP8_FORMATS)}")
        return name
    try:
        return FP8_FORMATS[name]
    except KeyError:
        raise InvalidInput(f"unknown FP8 format {name!r}; use one of {sorted(FP8_FORMATS)}") from None
