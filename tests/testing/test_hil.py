"""The hal.testing.hil pytest plugin: targets, fixtures, measurements with limits, JSON records."""

from __future__ import annotations

import json

import pytest
import torch  # noqa: F401 (imported before the in-process runs: see below)

from hal.testing.hil import HilRecord, Measurement, Target

# pytester's in-process runs forget the modules first imported inside them, and torch (like numpy) cannot be
# imported twice in one process; imported here, before any inner run, it stays loaded for all of them.

pytest_plugins = ["pytester"]

INNER = '''
import torch
import pytest

def test_measures_within_limits(hil_device, hil_record):
    x, w = torch.randn(3, 8), torch.randn(4, 8)
    error = float((hil_device.linear(x, w) - x @ w.T).norm() / (x @ w.T).norm())
    hil_record.measure("relative_error", error, "1", high=1e-5)

def test_measurement_out_of_limits(hil_device, hil_record):
    hil_record.measure("too_big", 5.0, "V", low=0.0, high=1.0)

@pytest.mark.hil(kinds=["photonic"])
def test_other_kind_only(hil_device):
    pass

def test_fault_board(hil_board, hil_record):
    board = hil_board("stuck:1")
    hil_record.measure("slots", board.capabilities.sections["board"].slots, low=1)
'''


def _records(directory) -> dict[str, dict]:
    return {json.loads(p.read_text())["test_name"].split("::")[-1]: json.loads(p.read_text()) for p in directory.glob("*.json")}


def test_plugin_runs_targets_and_writes_records(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER)
    records = pytester.path / "records"
    result = pytester.runpytest_inprocess("-p", "hal.testing.hil", "--hil-target", "cpu=loop://", "--hil-records", str(records), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*HIL measurement(s) outside limits: too_big=5.0*"])
    found = _records(records)
    ok = found["test_measures_within_limits[cpu=loop://]"]
    assert ok["outcome"] == "PASS" and ok["dut_id"] == "EMU-LOOP"
    assert ok["metadata"]["firmware"].startswith("hal-emu") and ok["metadata"]["target"] == {"kind": "cpu", "url": "loop://"}
    assert ok["measurements"][0]["validators"] == ["x <= 1e-05"] and ok["measurements"][0]["outcome"] == "PASS"
    bad = found["test_measurement_out_of_limits[cpu=loop://]"]
    assert bad["outcome"] == "FAIL" and bad["measurements"][0]["outcome"] == "FAIL" and "too_big" in bad["failure"]
    assert found["test_other_kind_only[none]"]["outcome"] == "SKIP"
    assert found["test_fault_board"]["outcome"] == "PASS"


def test_fault_boards_skip_on_real_targets(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner="def test_faults(hil_board):\n    hil_board('drop:0.1')\n\n"
                                   "def test_faults_of_another_kind(hil_board):\n    hil_board('drop:0.1', kind='cpu')\n")
    result = pytester.runpytest_inprocess("-p", "hal.testing.hil", "--hil-target", "memristor=socket://127.0.0.1:9", "--hil-records", str(pytester.path / "r"))
    result.assert_outcomes(skipped=2)  # no emulator is started when only real boards were given


def test_bad_target_is_a_usage_error() -> None:
    with pytest.raises(pytest.UsageError, match="KIND=URL"):
        Target.parse("memristor")
    assert Target.parse("photonic=socket://lab:7000").uri(baud=0) == "photonic:0?port=socket://lab:7000&baud=0"


def test_measurement_limits() -> None:
    record = HilRecord("t", 0)
    assert record.measure("a", 0.5, low=0, high=1)
    assert not record.measure("b", float("nan"), high=1)
    assert not record.measure("c", "text", low=0)
    assert record.measure("d", "free text")
    assert [m.name for m in record.failed_measurements] == ["b", "c"]
    assert Measurement("e", float("inf")).to_dict()["measured_value"] == "inf"
