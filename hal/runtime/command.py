"""The ``hal plan FILE --policy P [--pin NODE=URI ...] [--json] [--plot out.png]`` command.

FILE is a Python file that defines ``build()`` returning ``(model, example_inputs)``: a torch.nn.Module
and a tensor or tuple of tensors to trace it with. It may also define ``PINS = {"node": "uri"}``,
default pins that ``--pin`` options extend or override. Nothing runs on a device: the command captures,
places and explains. Emulators take part only when pinned or with ``allow_simulated`` (``hal.runtime.planner``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from hal.errors import HalError, InvalidInput

#: Exit codes: 0 planned, 1 the model file is unusable, 2 planning refused (bad pins, unsupported ops, ...).
EXIT_OK, EXIT_BAD_FILE, EXIT_REFUSED = 0, 1, 2


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


def plan_command(model_path: str, policy: str, pins: list[str], as_json: bool, plot: str | None, allow_simulated: bool = False) -> int:
    """Plan the model of ``model_path`` and print the plan (table, or JSON with ``as_json``); returns an exit code.

    ``allow_simulated`` lets the emulators found here take part (by default only real devices and pinned ones do).
    """
    from hal.runtime.planner import plan as make_plan

    out = Console(soft_wrap=True)
    err = Console(stderr=True)
    try:
        model, example_inputs, default_pins = load_model_file(model_path)
    except HalError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return EXIT_BAD_FILE
    except Exception as exc:  # noqa: BLE001 (the user's file failed: say so, with the exception, not a traceback wall)
        err.print(f"[red]error:[/red] {model_path} failed while loading or building: {type(exc).__name__}: {exc}")
        return EXIT_BAD_FILE
    try:
        the_plan = make_plan(model, example_inputs, policy=policy, pins={**default_pins, **parse_pins(pins)}, allow_simulated=allow_simulated)
    except HalError as exc:
        err.print(f"[red]error:[/red] {exc}")
        return EXIT_REFUSED
    if as_json:
        out.print_json(the_plan.to_json())
    else:
        out.print(str(the_plan), end="", markup=False, highlight=False)
    if plot:
        the_plan.save_plot(plot)
        err.print(f"plot written to {plot}")
    return EXIT_OK
