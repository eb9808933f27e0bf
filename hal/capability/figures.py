"""A number with its unit and where it comes from.

Every figure hal reports says how it is known, because a capability is only useful if a
reader can tell a measurement from a datasheet claim from a derivation:

- ``measured`` or ``measured:<how>``: read off this machine (a benchmark, NVML, /proc).
- ``derived:<formula>``: computed from other figures; the formula is written out.
- ``datasheet:<document>``: a vendor's published figure.
- ``paper:<citation>``: a figure from the literature (device physics of emulators).
- ``assumed:<why>``: an engineering choice of an emulator or a default (a stuck-fault rate, a pulse
  energy, a crosstalk coefficient), neither measured nor published; the reason is written out.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE_KINDS = ("measured", "derived", "datasheet", "paper", "assumed")


@dataclass(frozen=True)
class Figure:
    """A numeric figure: ``value`` in ``unit``, with its provenance in ``source``."""

    value: float
    unit: str
    source: str
    note: str = ""

    def __post_init__(self) -> None:
        kind = self.source.split(":", 1)[0]
        if kind not in SOURCE_KINDS:
            raise ValueError(
                f"figure source {self.source!r} must start with one of {', '.join(SOURCE_KINDS)} "
                "(e.g. 'datasheet:NVIDIA H100 datasheet 2023', 'derived:sm_count * clock_hz * flops_per_clock')"
            )
        if kind in ("derived", "datasheet", "paper", "assumed") and not self.source.partition(":")[2].strip():
            raise ValueError(f"figure source {self.source!r} must say which formula/document/paper/reason after the colon")

    @classmethod
    def measured(cls, value: float, unit: str, how: str = "", note: str = "") -> Figure:
        return cls(value, unit, f"measured:{how}" if how else "measured", note)

    @classmethod
    def derived(cls, value: float, unit: str, formula: str, note: str = "") -> Figure:
        return cls(value, unit, f"derived:{formula}", note)

    @classmethod
    def datasheet(cls, value: float, unit: str, document: str, note: str = "") -> Figure:
        return cls(value, unit, f"datasheet:{document}", note)

    @classmethod
    def paper(cls, value: float, unit: str, citation: str, note: str = "") -> Figure:
        return cls(value, unit, f"paper:{citation}", note)

    @classmethod
    def assumed(cls, value: float, unit: str, why: str, note: str = "") -> Figure:
        return cls(value, unit, f"assumed:{why}", note)

    @property
    def kind(self) -> str:
        """measured, derived, datasheet, paper or assumed."""
        return self.source.split(":", 1)[0]

    def __str__(self) -> str:
        return f"{self.value:.4g} {self.unit}"
