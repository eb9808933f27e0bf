"""hal.runtime.command: the model file and the pins that `hal plan FILE` reads (the command is tested in tests/test_cli.py)."""

from __future__ import annotations

import re
import textwrap

import pytest
import torch

from hal.errors import InvalidInput
from hal.runtime.command import load_model_file, parse_pins

MODEL = textwrap.dedent(
    """
    import torch, torch.nn as nn

    PINS = {"2": "cpu:0"}

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), (torch.randn(4, 8),)
    """
)


def test_load_model_file_returns_the_model_its_inputs_and_default_pins(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(MODEL)
    model, inputs, pins = load_model_file(str(path))
    assert isinstance(model, torch.nn.Sequential) and inputs[0].shape == (4, 8)
    assert pins == {"2": "cpu:0"}


@pytest.mark.parametrize(("text", "says"), [
    ("x = 1\n", "no build()"),
    ("def build():\n    return 1\n", "must return (model, example_inputs)"),
])
def test_a_file_without_a_usable_build_is_refused_with_the_fix(tmp_path, text, says):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=re.escape(says)):
        load_model_file(str(path))


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="no such file"):
        load_model_file(str(tmp_path / "missing.py"))


def test_parse_pins():
    assert parse_pins(["fc2=memristor:0", " a = cpu:0 "]) == {"fc2": "memristor:0", "a": "cpu:0"}
    for bad in ("2", "=cpu:0", "fc2="):
        with pytest.raises(InvalidInput, match="NODE=URI"):
            parse_pins([bad])
