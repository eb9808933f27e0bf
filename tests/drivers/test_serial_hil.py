"""The hardware-in-the-loop suite: boards over ptys (emulated by default; ``--hil-target`` points it at real ones).

Clean-board tests run against every target (by default the memristor and photonic emulators that are
available). Fault-injection tests open private emulated boards hosting ``cpu``: link and board faults
are independent of the array physics, and a cpu-hosted emulator starts in about two seconds.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

import hal
from hal.drivers.serial.protocol import PROTOCOL_VERSION
from hal.errors import DeviceFailure
from hal.testing.samples import relative_error

pytest_plugins = ["hal.testing.hil"]

#: Seconds allowed beyond the silence budget for closing the link (killing the emulator, joining its threads).
STOP_MARGIN_S = 1.0


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    y = x.double() @ w.double().T
    return y + b.double() if b is not None else y


# --------------------------------------------------------------------------- every target


def test_board_identity(hil_device, hil_record) -> None:
    identity = hil_device.capabilities.identity
    assert identity["firmware"] and identity["serial"]
    hil_record.measure("protocol_version", int(identity["protocol"]), low=PROTOCOL_VERSION, high=PROTOCOL_VERSION)
    hil_record.measure("handshake_round_trip", hil_device.round_trip_s, "s")


def test_linear_within_declared_tolerance(hil_device, hil_record) -> None:
    tolerance = hil_device.capabilities.ops["linear"].tolerance["float32"]
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(32, 64, generator=g), torch.randn(16, 64, generator=g) / 8, torch.randn(16, generator=g) / 8
    error = relative_error(hil_device.linear(x, w, b), _reference(x, w, b))
    hil_record.measure("linear_relative_error", error, "1", high=tolerance, docstring="||y - y_ref||_F / ||y_ref||_F vs float64")


def test_programming_is_write_verified(hil_device, hil_record) -> None:
    attempts, failures = hil_device.program_attempts, hil_device.verify_failures
    w = torch.randn(8, 32) / 4
    program = hil_device.prepare(hal.OpSpec("linear", [torch.randn(4, 32)], {"weight": w}), {"weight": w})
    assert program.valid
    hil_record.measure("program_attempts", hil_device.program_attempts - attempts, low=1, high=1)
    hil_record.measure("verify_failures", hil_device.verify_failures - failures, low=0, high=0)


def test_board_reset_is_detected_and_reprogrammed(hil_device, hil_record) -> None:
    x, w = torch.randn(4, 32), torch.randn(8, 32) / 4
    program = hil_device.prepare(hal.OpSpec("linear", [x], {"weight": w}), {"weight": w})
    before = hil_device.status()
    hil_device.reset_board()
    after = hil_device.status()
    assert after["boot_id"] != before["boot_id"] and after["slots_programmed"] == 0
    y = program(x)  # the program's slot was lost with the reboot: reprogrammed (write-verified) before running
    tolerance = hil_device.capabilities.ops["linear"].tolerance["float32"]
    hil_record.measure("error_after_reset", relative_error(y, _reference(x, w)), high=tolerance)
    assert hil_device.status()["programs"] == 1


# --------------------------------------------------------------------------- fault injection (emulated boards)


_G = torch.Generator().manual_seed(2)
_W = torch.randn(16, 32, generator=_G)
_X = {batch: torch.randn(batch, 32, generator=_G) for batch in (4, 8, 16)}


def _run_linear(device, batch: int = 16) -> float:
    """One linear call with the same weight tensor each time (programmed once, then only RUN requests)."""
    x = _X[batch]
    return relative_error(device.linear(x, _W), _reference(x, _W))


def test_corrupted_bytes_are_caught_and_retried(hil_board, hil_record) -> None:
    board = hil_board("corrupt:0.0001,seed:3", kind="cpu", retries=6, timeout_s=0.1)
    for _ in range(10):
        hil_record.measure("relative_error", _run_linear(board, 16), high=1e-5)
    link, status = board.client.counters, board.status()
    rejected = board.client.frames_rejected + status["rx_bad_crc"] + status["rx_bad_frame"]
    hil_record.attach("telemetry", {"link": vars(link), "board": status})
    hil_record.measure("frames_rejected", rejected, low=1)
    assert link.retries >= 1


def test_dropped_bytes_are_caught_and_retried(hil_board, hil_record) -> None:
    board = hil_board("drop:0.0001,seed:4", kind="cpu", retries=6, timeout_s=0.1)
    for _ in range(10):
        hil_record.measure("relative_error", _run_linear(board, 16), high=1e-5)
    hil_record.measure("retries", board.client.counters.retries, low=1)


def test_late_answers_are_asked_again_and_replayed_not_rerun(hil_board, hil_record) -> None:
    board = hil_board("delay:0.12,delay_p:0.3,seed:5", kind="cpu", timeout_s=0.05, retries=6, window=1)
    runs_before = board.status()["runs"]
    requests_before = board.client.counters.requests
    for _ in range(6):
        hil_record.measure("relative_error", _run_linear(board, 4), high=1e-5)
    status = board.status()
    hil_record.measure("duplicates_replayed", status["duplicates"], low=1)
    # one RUN request per call, each executed once however often it was resent
    assert status["runs"] - runs_before == 6
    assert board.client.counters.requests - requests_before >= 6


def test_disconnect_fails_cleanly_without_hanging(hil_board, hil_record) -> None:
    board = hil_board("disconnect:12", kind="cpu", timeout_s=0.2, retries=2)
    start = time.monotonic()
    with pytest.raises(DeviceFailure, match="stopped answering"):
        for _ in range(20):
            _run_linear(board, 4)
    hil_record.measure("seconds_to_failure", time.monotonic() - start, "s")


def test_brownout_mid_run_is_detected_and_reprogrammed(hil_board, hil_record) -> None:
    board = hil_board("brownout:3", kind="cpu", timeout_s=0.2)
    errors = [_run_linear(board, 8) for _ in range(5)]
    hil_record.measure("worst_relative_error", max(errors), high=1e-5)
    hil_record.measure("resets_detected", board.client.counters.resets_detected, low=1, high=1)
    assert board.status()["resets"] == 2  # power-on, then the brown-out


def test_stuck_cells_fail_write_verify(hil_board, hil_record) -> None:
    board = hil_board("stuck:12,seed:6", kind="cpu")
    with pytest.raises(DeviceFailure, match="write-verify"):
        _run_linear(board, 4)
    hil_record.measure("verify_failures", board.verify_failures, low=1)


def test_stopped_board_fails_within_the_budget_and_reopens(hil_board, hil_record) -> None:
    board = hil_board(kind="cpu", timeout_s=0.2, retries=2)
    x, w = torch.randn(256, 64), torch.randn(64, 64)  # 64 kB of inputs: 16 kB RUN frames, more than a pty buffers
    program = board.prepare(hal.OpSpec("linear", [x], {"weight": w}), {"weight": w})
    process = board.link.process
    budget_s = board.client.silence_budget_s()
    os.kill(process.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(DeviceFailure, match="stopped answering"):
            program(x)
        seconds = time.monotonic() - start
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
    hil_record.measure("seconds_to_failure", seconds, "s", high=budget_s + STOP_MARGIN_S,
                       docstring="a stopped board fails the call within the client's silence budget (+ closing the link)")
    assert board.closed and process.poll() is not None  # the device closed itself and ended its emulator
    hil_record.measure("write_stalls", board.client.counters.write_stalls, low=1)
