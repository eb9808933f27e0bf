"""The committed JSON Schemas of every ``--json`` output of the ``hal`` command, and validation against them.

One file per document, ``hal/capability/<name>.schema.json``:

=================== =========================================
name                document
=================== =========================================
capabilities        ``hal query URI --json``
capabilities_list   ``hal query --all --json``
devices             ``hal devices --json``
doctor              ``hal doctor --json``
bench               ``hal bench URI --json``
plan                ``hal plan FILE --json``
=================== =========================================

Schemas refer to each other by their ``$id`` (the list of capabilities reuses the capabilities schema,
doctor reuses the device record of the devices schema); ``validate`` resolves those references among the
committed files only, never over the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).parent
SCHEMA_NAMES = ("capabilities", "capabilities_list", "devices", "doctor", "bench", "plan")
SCHEMA_PATH = SCHEMA_DIR / "capabilities.schema.json"
DEVICES_SCHEMA_PATH = SCHEMA_DIR / "devices.schema.json"


def schema_path(which: str) -> Path:
    """The file of the committed schema ``which`` (one of ``SCHEMA_NAMES``)."""
    if which not in SCHEMA_NAMES:
        raise ValueError(f"no committed schema {which!r}; the schemas are: {', '.join(SCHEMA_NAMES)}")
    return SCHEMA_DIR / f"{which}.schema.json"


def load_schema(which: str = "capabilities") -> dict[str, Any]:
    """Load the committed schema ``which`` (one of ``SCHEMA_NAMES``)."""
    return json.loads(schema_path(which).read_text(encoding="utf-8"))


def validate(document: Any, which: str = "capabilities") -> None:
    """Raise ``jsonschema.ValidationError`` if ``document`` does not match the committed schema ``which``.

    jsonschema is imported here, not at module import, so reading capabilities needs the standard library only.
    """
    import jsonschema
    from referencing import Registry, Resource

    schemas = {name: load_schema(name) for name in SCHEMA_NAMES}
    registry = Registry().with_resources((schema["$id"], Resource.from_contents(schema)) for schema in schemas.values())
    jsonschema.Draft202012Validator(schemas[which], registry=registry).validate(document)
