"""The `hal` command: devices, query, doctor, bench, demo, exit codes, JSON validity."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hal.capability import validate
from hal.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_devices_table_lists_cpu():
    result = run("devices")
    assert result.exit_code == 0, result.output
    assert "cpu:0" in result.output


def test_devices_all_json_is_schema_valid_and_has_reasons():
    result = run("devices", "--all", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    validate(doc, "devices")
    by_uri = {d["uri"]: d for d in doc["devices"]}
    assert by_uri["cpu:0"]["available"]
    assert all(d["reason"] for d in doc["devices"] if not d["available"])


def test_query_json_is_schema_valid():
    result = run("query", "cpu:0", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    validate(doc)
    assert doc["ops"]["matmul"]["dtypes"]


def test_query_all_json():
    result = run("query", "--all", "--json")
    assert result.exit_code == 0, result.output
    for doc in json.loads(result.output)["devices"]:
        validate(doc)


def test_query_human_readable_shows_sources():
    result = run("query", "cpu")
    assert result.exit_code == 0, result.output
    assert "measured" in result.output and "matmul" in result.output


@pytest.mark.parametrize("uri", ["nosuch:0", "cpu:7", "cpu:0?bogus=1"])
def test_unknown_or_unavailable_device_exits_3(uri):
    result = run("query", uri)
    assert result.exit_code == 3
    assert "error" in result.output


def test_usage_error_exits_2():
    assert run("query").exit_code == 2
    assert run("devices", "--bogus").exit_code == 2


def test_watch_without_telemetry_is_a_clear_error():
    result = run("query", "cpu:0", "--watch", "0.1", "--count", "1")
    assert result.exit_code == 3
    assert "telemetry" in result.output


def test_doctor_covers_every_driver():
    result = run("doctor", "--json")
    assert result.exit_code == 0, result.output
    kinds = {d["kind"] for d in json.loads(result.output)["drivers"]}
    assert {"cpu", "hopper", "memristor", "photonic", "loihi2", "ibm_qpu"} <= kinds


def test_bench_reports_measured_and_estimate():
    result = run("bench", "cpu", "--size", "32", "--repeat", "3", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["measured_median_s"] > 0 and doc["estimated_s"] > 0


def test_demo_runs_ops_on_available_devices():
    result = run("demo")
    assert result.exit_code == 0, result.output
    assert "cpu:0" in result.output


def test_python_dash_m_hal_is_the_same_cli():
    proc = subprocess.run([sys.executable, "-m", "hal", "devices", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    validate(json.loads(proc.stdout), "devices")
