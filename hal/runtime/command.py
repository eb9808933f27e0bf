"""What the ``hal plan FILE`` command (``hal.cli.plan``) reads from the user: the model file and the pins.

FILE is a Python file that defines ``build()`` returning ``(model, example_inputs)``: a torch.nn.Module
and a tensor or tuple of tensors to trace it with. It may also define ``PINS = {"node": "uri"}``,
default pins that ``--pin NODE=URI`` options extend or override. The command itself (options, exit codes,
output) is ``hal.cli.plan``, the one implementation.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from hal.errors import InvalidInput


def load_model_file(model_path: str) -> tuple[Any, Any, dict[str, str]]:
    """Import ``model_path`` and call its ``build()``; returns (model, example_inputs, default pins)."""
    path = Path(model_path)
    if not path.is_file():
        raise InvalidInput(f"{model_path}: no such file; give the path of a Python file that defines build()")
    spec = importlib.util.spec_from_file_location(f"hal_plan_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    build = getattr(module, "build", None)
    if not callable(build):
        raise InvalidInput(f"{model_path} defines no build() function; define build() returning (model, example_inputs)")
    result = build()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise InvalidInput(f"{model_path}: build() must return (model, example_inputs), got {type(result).__name__}")
    return result[0], result[1], dict(getattr(module, "PINS", {}))


def parse_pins(pins: list[str]) -> dict[str, str]:
    """``["fc2=memristor:0", ...]`` -> ``{"fc2": "memristor:0"}``."""
    parsed: dict[str, str] = {}
    for text in pins:
        node, sep, uri = text.partition("=")
        if not sep or not node or not uri:
            raise InvalidInput(f"--pin {text!r}: write a pin as NODE=URI, e.g. --pin fc2=memristor:0")
        parsed[node.strip()] = uri.strip()
    return parsed
