"""The CPU reference driver: every vocabulary op with torch, and a float64 reference mode."""

from hal.drivers.cpu.driver import CpuDevice

__all__ = ["CpuDevice"]
