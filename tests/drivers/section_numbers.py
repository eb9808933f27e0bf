"""Every number of a capability section, for the tests that check each one carries its source."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from hal.capability import Figure


def numbers(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (path, value) pair of a section that is a bare number or a Figure."""
    if isinstance(value, Figure):
        yield path, value
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, (int, float)):
        yield path, value
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from numbers(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
