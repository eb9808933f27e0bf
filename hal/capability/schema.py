"""The committed JSON Schemas for `hal query --json` and `hal devices --json`, and validation against them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("capabilities.schema.json")
DEVICES_SCHEMA_PATH = Path(__file__).with_name("devices.schema.json")


def load_schema(which: str = "capabilities") -> dict[str, Any]:
    """Load the committed schema: ``"capabilities"`` or ``"devices"``."""
    path = {"capabilities": SCHEMA_PATH, "devices": DEVICES_SCHEMA_PATH}[which]
    return json.loads(path.read_text(encoding="utf-8"))


def validate(document: dict[str, Any], which: str = "capabilities") -> None:
    """Raise ``jsonschema.ValidationError`` if ``document`` does not match the committed schema.

    jsonschema is imported here, not at module import, so reading capabilities needs the standard library only.
    """
    import jsonschema

    jsonschema.validate(document, load_schema(which), cls=jsonschema.Draft202012Validator)
