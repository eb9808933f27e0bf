"""Helpers every benchmark shares: the environment record and writing results/<script>.json."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions and machine facts to store beside every result."""
    import torch

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    if device:
        env["device"] = device
    return env


def write_result(name: str, document: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json (must hold 'environment' and 'summary')."""
    missing = {"environment", "summary"} - set(document)
    if missing:
        raise ValueError(f"result {name} lacks {sorted(missing)}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
