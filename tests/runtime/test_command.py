"""hal.runtime.command.plan_command: the `hal plan FILE` entry."""

from __future__ import annotations

import json
import textwrap

import pytest

from hal.runtime.command import EXIT_BAD_FILE, EXIT_OK, EXIT_REFUSED, parse_pins, plan_command

MODEL = textwrap.dedent(
    """
    import torch, torch.nn as nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), (torch.randn(4, 8),)
    """
)


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    import hal
    from hal.runtime import planner as plan_module

    def gathered(allow_simulated=False):
        return ([hal.device("cpu"), hal.device("memristor:0")] if allow_simulated else [hal.device("cpu")]), []

    monkeypatch.setattr(plan_module, "available_devices", gathered)
    path = tmp_path / "model.py"
    path.write_text(MODEL)
    return str(path)


def test_plan_prints_the_table(model_file, capsys):
    assert plan_command(model_file, "energy", [], False, None) == EXIT_OK
    out = capsys.readouterr().out
    assert "policy energy" in out and "cpu:0" in out and "linear+relu" in out


def test_json_and_plot(model_file, capsys, tmp_path):
    png = tmp_path / "p.png"
    assert plan_command(model_file, "latency", ["2=cpu:0"], True, str(png)) == EXIT_OK
    d = json.loads(capsys.readouterr().out)
    assert d["policy"] == "latency" and d["nodes"][1]["pinned"] is True
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bad_pins_and_files_give_exit_codes_and_reasons(model_file, tmp_path, capsys):
    assert plan_command(model_file, "latency", ["nosuch=cpu:0"], False, None) == EXIT_REFUSED
    assert "names no node" in capsys.readouterr().err
    assert plan_command(model_file, "latency", ["2"], False, None) == EXIT_REFUSED
    assert "NODE=URI" in capsys.readouterr().err
    assert plan_command(model_file, "fastest", [], False, None) == EXIT_REFUSED
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    assert plan_command(str(empty), "latency", [], False, None) == EXIT_BAD_FILE
    assert "no build()" in capsys.readouterr().err
    assert plan_command(str(tmp_path / "missing.py"), "latency", [], False, None) == EXIT_BAD_FILE


def test_parse_pins():
    assert parse_pins(["fc2=memristor:0", " a = cpu:0 "]) == {"fc2": "memristor:0", "a": "cpu:0"}


def test_emulators_take_part_only_when_allowed(model_file, capsys):
    assert plan_command(model_file, "energy", [], True, None) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["devices"] == ["cpu:0"]
    assert plan_command(model_file, "energy", [], True, None, allow_simulated=True) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["devices"] == ["cpu:0", "memristor:0"]
