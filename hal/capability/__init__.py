"""Capability model: pure data describing what a device is and can do (no torch import here)."""

from hal.capability.figures import Figure
from hal.capability.model import Capabilities, OpSupport, Paradigm, to_jsonable
from hal.capability.schema import SCHEMA_PATH, load_schema, validate

__all__ = ["Capabilities", "Figure", "OpSupport", "Paradigm", "SCHEMA_PATH", "load_schema", "to_jsonable", "validate"]
