"""The `hal` command: devices, query, doctor, bench, demo, plan; exit codes, stdout/stderr, JSON validity, tables."""

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from hal import registry
from hal.capability import validate
from hal.cli import EXIT_BROKEN_DRIVER, EXIT_DEVICE, EXIT_FAILED, EXIT_USAGE, FAMILY_ROWS_MAX, _devices_table, app
from hal.device import DeviceInfo
from hal.drivers.cpu import CpuDevice

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def json_out(result, schema):
    """The command's stdout as JSON, checked against its committed schema (stdout holds nothing else)."""
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    validate(document, schema)
    return document


class Flock(CpuDevice):
    """A driver with a large family of named devices and one unavailable device whose reason is long."""

    kind = "flock"
    LONG_REASON = "the enclosure reports " + ", ".join(f"sensor {i} out of range" for i in range(12))

    @classmethod
    def probe(cls):
        birds = [DeviceInfo(uri=f"flock:bird_{i:02d}", kind="flock", available=True, simulated=True, paradigm="digital", summary={"family": "bird"}) for i in range(FAMILY_ROWS_MAX + 4)]
        return [*birds, DeviceInfo(uri="flock:nest", kind="flock", available=False, reason=cls.LONG_REASON, fix="reseat the sensors")]


class RaisingProbe(CpuDevice):
    kind = "raising"

    @classmethod
    def probe(cls):
        raise OSError("the board's USB bridge answered garbage")


@pytest.fixture
def fake_drivers(monkeypatch):
    """Only cpu and fake drivers (fast, and independent of what this machine has)."""
    table = {
        "cpu": registry.drivers()["cpu"],
        "flock": registry.DriverEntry("flock", "test_cli:Flock"),
    }
    monkeypatch.setattr(registry, "_drivers", table)
    monkeypatch.setattr(registry, "_probed", {})
    return table


@pytest.fixture
def emulators_only(monkeypatch):
    """The real cpu and emulator drivers only (the 68 fake IBM backends take seconds to describe; see the slow test)."""
    table = {kind: registry.drivers()[kind] for kind in ("cpu", "memristor", "photonic", "loihi2")}
    monkeypatch.setattr(registry, "_drivers", table)
    monkeypatch.setattr(registry, "_probed", {})


# --------------------------------------------------------------------------- devices


def test_devices_table_lists_cpu():
    result = run("devices")
    assert result.exit_code == 0, result.output
    assert "cpu:0" in result.stdout


def test_devices_all_json_is_schema_valid_and_has_reasons():
    doc = json_out(run("devices", "--all", "--json"), "devices")
    by_uri = {d["uri"]: d for d in doc["devices"]}
    assert by_uri["cpu:0"]["available"]
    assert all(d["reason"] for d in doc["devices"] if not d["available"])


def test_a_large_family_is_one_row_and_all_expands_it(fake_drivers):
    collapsed = run("devices", "--kind", "flock")
    assert collapsed.exit_code == 0, collapsed.output
    assert f"flock:bird_* ({FAMILY_ROWS_MAX + 4} devices, bird)" in collapsed.stdout and "bird_03" not in collapsed.stdout
    assert "`hal devices --all` lists each" in collapsed.stderr
    expanded = run("devices", "--kind", "flock", "--all")
    assert all(f"flock:bird_{i:02d}" in expanded.stdout for i in range(FAMILY_ROWS_MAX + 4))
    assert len(json_out(run("devices", "--kind", "flock", "--json"), "devices")["devices"]) == FAMILY_ROWS_MAX + 4


def test_tables_print_in_full_when_stdout_is_not_a_terminal(fake_drivers):
    result = run("devices", "--all", "--kind", "flock")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if "flock:nest" in line)
    assert Flock.LONG_REASON in line


@pytest.mark.parametrize("width", [60, 100, 160])
def test_device_table_fits_a_terminal_and_cuts_nothing(width):
    from rich.console import Console

    rows = [["flock:nest", "flock", "digital", f"[red]no[/red]: {Flock.LONG_REASON}", "no", "-", "-"], ["cpu:0", "cpu", "digital", "yes", "no", "23.5 GiB", "33.8 Gflop/s float32"]]
    console = Console(width=width, record=True)
    console.print(_devices_table(rows, "hal devices", width))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= width
    body = [line.split("│")[1:-1] for line in lines if line.startswith("│")]
    column = ["".join(cells[i].strip() for cells in body) for i in range(7)]  # each column's text, wrapped lines joined
    assert column[3].replace(" ", "") == f"no:{Flock.LONG_REASON}yes".replace(" ", "")
    assert column[6].replace(" ", "") == "-33.8Gflop/sfloat32"


def test_unknown_kind_exits_3_on_stderr():
    result = run("devices", "--kind", "nosuch")
    assert result.exit_code == EXIT_DEVICE and result.stdout == "" and "Known kinds" in result.stderr


# --------------------------------------------------------------------------- query


def test_query_json_is_schema_valid():
    doc = json_out(run("query", "cpu:0", "--json"), "capabilities")
    assert doc["ops"]["matmul"]["dtypes"]


def test_query_all_json_is_one_schema_valid_document(emulators_only):
    doc = json_out(run("query", "--all", "--json"), "capabilities_list")
    assert {d["uri"] for d in doc["devices"]} == {"cpu:0", "memristor:0", "photonic:0", "loihi2:0"}


@pytest.mark.slow
def test_query_all_json_of_this_machine_is_schema_valid():
    doc = json_out(run("query", "--all", "--json"), "capabilities_list")
    assert "cpu:0" in {d["uri"] for d in doc["devices"]}


def test_query_all_reports_devices_that_fail_and_exits_3(fake_drivers):
    result = run("query", "--all", "--json")
    assert result.exit_code == EXIT_DEVICE
    document = json.loads(result.stdout)
    validate(document, "capabilities_list")
    assert [d["uri"] for d in document["devices"]] == ["cpu:0"]
    assert "flock:bird_00 was probed available but failed" in result.stderr


def test_query_human_readable_shows_sources():
    result = run("query", "cpu")
    assert result.exit_code == 0, result.output
    assert "measured" in result.stdout and "matmul" in result.stdout


@pytest.mark.parametrize("uri", ["nosuch:0", "cpu:7", "cpu:0?bogus=1", "memristor:-1", "memristor:abc", "photonic:5"])
def test_unknown_or_unavailable_device_exits_3_with_the_error_on_stderr(uri):
    result = run("query", uri, "--json")
    assert result.exit_code == EXIT_DEVICE
    assert result.stdout == "" and result.stderr.startswith("error:")


@pytest.mark.parametrize("args", [("query",), ("query", "cpu", "--all"), ("query", "--all", "--watch", "1"), ("query", "cpu", "--count", "2"), ("query", "cpu", "--watch", "-1"), ("devices", "--bogus")])
def test_usage_errors_exit_2_on_stderr(args):
    result = run(*args)
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == "" and result.stderr


def test_watch_on_a_device_without_telemetry_is_a_failed_request_not_an_unknown_device():
    result = run("query", "cpu:0", "--watch", "0.1", "--count", "1")
    assert result.exit_code == EXIT_FAILED
    assert "telemetry" in result.stderr


# --------------------------------------------------------------------------- doctor


def test_doctor_covers_every_driver_and_exits_0_when_none_is_broken():
    doc = json_out(run("doctor", "--json"), "doctor")
    entries = {d["kind"]: d for d in doc["drivers"]}
    assert {"cpu", "hopper", "memristor", "photonic", "loihi2", "ibm_qpu"} <= set(entries)
    assert entries["cpu"]["status"] == "available"


def test_doctor_exits_4_for_a_broken_driver_and_says_which(fake_drivers):
    fake_drivers["raising"] = registry.DriverEntry("raising", "test_cli:RaisingProbe")
    fake_drivers["gone"] = registry.DriverEntry("gone", "no_such_module_anywhere:Device")
    result = run("doctor", "--json")
    assert result.exit_code == EXIT_BROKEN_DRIVER
    doc = json.loads(result.stdout)
    validate(doc, "doctor")
    status = {d["kind"]: d["status"] for d in doc["drivers"]}
    assert status == {"cpu": "available", "flock": "available", "gone": "broken", "raising": "broken"}
    assert "gone, raising" in result.stderr
    assert run("doctor").exit_code == EXIT_BROKEN_DRIVER


# --------------------------------------------------------------------------- bench


def test_bench_reports_measured_and_estimate():
    doc = json_out(run("bench", "cpu", "--size", "32", "--repeat", "3", "--json"), "bench")
    assert doc["measured_median_s"] > 0 and doc["estimated_s"] > 0 and doc["repeat"] == 3 and doc["size"] == 32


@pytest.mark.parametrize("args", [("--size", "-1"), ("--size", "0"), ("--repeat", "0"), ("--op", "nosuch")])
def test_bench_refuses_bad_arguments_as_usage_errors(args):
    result = run("bench", "cpu", *args)
    assert result.exit_code == EXIT_USAGE and result.stdout == ""


def test_bench_of_an_op_the_device_does_not_run_is_a_failed_request():
    result = run("bench", "ibm_qpu:aer", "--size", "4")
    assert result.exit_code == EXIT_FAILED and "does not run matmul" in result.stderr


# --------------------------------------------------------------------------- demo


def test_demo_runs_ops_on_available_devices(emulators_only):
    result = run("demo")
    assert result.exit_code == 0, result.output
    assert "cpu:0" in result.stdout


# --------------------------------------------------------------------------- plan


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
    from hal.runtime import planner

    monkeypatch.setattr(planner, "available_devices", lambda *args, **kwargs: ([hal.device("cpu")], []))
    path = tmp_path / "model.py"
    path.write_text(MODEL)
    return str(path)


def test_plan_json_is_schema_valid(model_file):
    doc = json_out(run("plan", model_file, "--pin", "2=cpu:0", "--json"), "plan")
    assert doc["policy"] == "latency" and doc["nodes"][1]["pinned"] is True


@pytest.mark.parametrize(("args", "code"), [
    (("--pin", "2=memristor:5"), EXIT_DEVICE),
    (("--pin", "2=nosuch:0"), EXIT_DEVICE),
    (("--policy", "fastest"), EXIT_USAGE),
    (("--pin", "2"), EXIT_USAGE),
    (("--pin", "nosuch=cpu:0"), EXIT_USAGE),
])
def test_plan_exit_codes_follow_the_table(model_file, args, code):
    result = run("plan", model_file, *args)
    assert result.exit_code == code, result.output
    assert result.stdout == "" and result.stderr.startswith("error:")


def test_plan_places_on_emulators_only_when_asked(model_file, monkeypatch):
    import hal
    from hal.runtime import planner

    asked = []
    monkeypatch.setattr(planner, "available_devices", lambda allow_simulated=False: asked.append(allow_simulated) or ([hal.device("cpu")], []))
    assert run("plan", model_file).exit_code == 0 and run("plan", model_file, "--simulated").exit_code == 0
    assert asked == [False, True]


def test_plan_of_a_missing_or_failing_file(tmp_path):
    assert run("plan", str(tmp_path / "missing.py")).exit_code == EXIT_USAGE
    failing = tmp_path / "failing.py"
    failing.write_text("def build():\n    raise RuntimeError('no data')\n")
    result = run("plan", str(failing))
    assert result.exit_code == EXIT_FAILED and "no data" in result.stderr


# --------------------------------------------------------------------------- the process


def test_python_dash_m_hal_is_the_same_cli():
    proc = subprocess.run([sys.executable, "-m", "hal", "devices", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    validate(json.loads(proc.stdout), "devices")


def test_help_imports_no_torch():
    code = "import sys, runpy\nsys.argv = ['hal', '--help']\ntry:\n    runpy.run_module('hal', run_name='__main__')\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "devices" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "False"
