"""The runtime examples run end to end on a machine with only the CPU (other devices hidden)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hal import registry
from hal.device import DeviceInfo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cpu_only(monkeypatch):
    cpu = DeviceInfo("cpu:0", "cpu", True)
    monkeypatch.setattr(registry, "probe_all", lambda *a, **k: [cpu])


def test_hybrid_digits_on_cpu_only(cpu_only, capsys, tmp_path):
    load("hybrid_digits").main(["--policy", "energy", "--plot", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert "one-layer-per-paradigm placement skipped" in out
    row = next(line for line in out.splitlines() if line.startswith("energy "))
    accuracy, float_accuracy = (float(v) for v in row.split()[1:3])
    assert accuracy == float_accuracy > 0.9
    assert (tmp_path / "p_energy.png").is_file()


def test_hybrid_jamba_on_cpu_only(cpu_only, capsys):
    load("hybrid_jamba").main(["--policy", "accuracy"])
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("policy accuracy"))
    assert "attention on cpu:0, selective_scan on cpu:0" in line
    assert float(line.split("float64 ")[1].split()[0]) < 1e-5


def test_available_devices_skips_board_transports_and_unavailable_devices_and_notes_failures(monkeypatch):
    from hal.runtime import available_devices

    infos = [DeviceInfo("cpu:0", "cpu", True), DeviceInfo("serial:0", "serial", True), DeviceInfo("nosuch:0", "nosuch", True), DeviceInfo("memristor:0", "memristor", False)]
    monkeypatch.setattr(registry, "probe_all", lambda *a, **k: infos)
    devices, notes = available_devices()
    assert [str(d) for d in devices] == ["cpu:0"]
    assert len(notes) == 1 and notes[0].startswith("nosuch:0 was probed available but did not open")


def test_compile_and_convert_takes_a_stock_model_to_the_crossbar_both_ways(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    results = load("compile_and_convert").main()
    assert results["torch.compile(backend='hal')"] == results["float"]  # delegated to Inductor: the same arithmetic
    assert results["torch.compile, cpu + memristor"] > 0.9 and results["hal.nn.convert, memristor"] > 0.9
    assert "one (claimed)" in capsys.readouterr().out  # the crossbar ran its three layers as one Program


def test_mamba_generate_decodes_as_the_full_forward():
    """Run as a user runs it: a fresh process without TRITON_INTERPRET (which the CPU test session sets, and under
    which the scans would run in Triton's interpreter, minutes instead of seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "mamba_generate.py"), "--steps", "20"], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    difference = float(out.split("max |logit difference| = ")[1].split()[0])
    assert difference < 1e-4 and "generated:" in out
