"""Board link over a pty: round-trip latency of small requests, throughput of batched matrix-vector requests.

Side by side, in one run:
- RTT of STATUS requests (9-byte header + CRC each way, 44-byte answer payload) through the emulated board at
  its emulated line rate and unthrottled, against a bare pty echo of the same byte counts (pyserial write,
  an echo thread on the pty master, pyserial read: what the transport alone costs);
- throughput of a prepared ``linear`` (64 in, 64 out, float32) fed batches of 1024 vectors, pipelined
  (window 4, the default) and stop-and-wait (window 1), at the emulated line rate and unthrottled;
- the same board behind a line that corrupts 0.1% and 1% of the bytes each way (one random bit flipped per
  corrupted byte): time to open (handshake, with the 5.8 kB CAPABILITIES answer of a memristor board),
  programming (write-verified), and goodput of batches of 256 vectors, results checked against float64.

line_rate_fraction = tensor bytes carried per second toward the board / line capacity (baud / 10 bytes/s,
8N1): framing, headers and CRCs count as loss. Target (issue 8): >= 0.8 at the emulated rate.
goodput_fraction = the same on the corrupting line (chunked transfers, selective repeat): retransmissions count
as loss too. Target (issue 14): programming verified and results correct at 1%, goodput reported.

    python benchmarks/serial_roundtrip.py
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import tty

import serial
import torch

import hal
from benchmarks.common import environment, write_result
from hal.drivers.serial import protocol as p
from hal.drivers.serial.framing import encode_frame
from hal.drivers.serial.protocol import Command
from hal.drivers.serial.transport import BITS_PER_BYTE, DEFAULT_BAUD

RTT_SAMPLES = 300
FEATURES = 64
BATCH = 1024
REPEATS = 3
TARGET_FRACTION = 0.8
CORRUPTION_RATES = (0.001, 0.01)
CORRUPTED_BATCH = 256
CORRUPTED_REPEATS = 2
#: Link options on the corrupting line: a shorter first timeout than the default 1 s (a lost frame with nothing after
#: it waits that long once before probes start), more resends allowed, a wider window of small frames.
CORRUPTED_OPTIONS = "timeout_s=0.2&retries=8&window=8"


def hosted_kind() -> str:
    return "memristor" if hal.is_available("memristor") else "cpu"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def board_rtt(device) -> list[float]:
    timings = []
    for _ in range(RTT_SAMPLES):
        start = time.perf_counter()
        device.client.call(Command.STATUS, answer_bytes=p.STATUS_RESPONSE.size)
        timings.append(time.perf_counter() - start)
    return timings


def bare_pty_rtt(request_bytes: int, answer_bytes: int) -> list[float]:
    """The transport alone: write request_bytes to a pty, an echo thread answers answer_bytes, read them."""
    master, slave = os.openpty()
    tty.setraw(slave)
    port = serial.serial_for_url(os.ttyname(slave), timeout=1.0)
    stop = threading.Event()

    def echo() -> None:
        pending = 0
        while not stop.is_set():
            pending += len(os.read(master, 65536))
            if pending >= request_bytes:
                pending -= request_bytes
                os.write(master, b"\x01" * answer_bytes)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    payload = b"\x01" * request_bytes
    timings = []
    for _ in range(RTT_SAMPLES):
        start = time.perf_counter()
        port.write(payload)
        got = 0
        while got < answer_bytes:
            got += len(port.read(answer_bytes - got))
        timings.append(time.perf_counter() - start)
    stop.set()
    os.write(slave, b"\x00" * request_bytes)  # wake the echo thread so it can exit
    thread.join()
    port.close()
    os.close(master)
    os.close(slave)
    return timings


def throughput(device, window: int) -> dict:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(FEATURES, FEATURES, generator=g) / 8
    x = torch.randn(BATCH, FEATURES, generator=g)
    program = device.prepare(hal.OpSpec("linear", [x], {"weight": w}), {"weight": w})
    device.client.window = window
    y = program(x)
    reference = x.double() @ w.double().T
    error = float((y.double() - reference).norm() / reference.norm())
    runs, wire = [], []
    for _ in range(REPEATS):
        sent_before = device.client.counters.bytes_tx
        start = time.perf_counter()
        program(x)
        runs.append(time.perf_counter() - start)
        wire.append(device.client.counters.bytes_tx - sent_before)
    seconds = statistics.median(runs)
    data_bytes = BATCH * FEATURES * 4
    result = {
        "window": window, "batch": BATCH, "in_features": FEATURES, "out_features": FEATURES,
        "seconds_per_batch": runs, "vectors_per_s": BATCH / seconds, "tensor_bytes_per_s": data_bytes / seconds,
        "wire_bytes_to_board_per_batch": statistics.median(wire), "relative_error_vs_float64": error,
    }
    if device.link.baud:
        capacity = device.link.baud / BITS_PER_BYTE
        result["line_capacity_bytes_per_s"] = capacity
        result["line_rate_fraction"] = data_bytes / seconds / capacity
        result["wire_fraction"] = statistics.median(wire) / seconds / capacity
    return result


def corrupted(rate: float) -> dict:
    """Open, program and run the board over a line corrupting ``rate`` of the bytes each way."""
    kind = hosted_kind()
    start = time.perf_counter()
    device = hal.device(f"{kind}:0?port=emu&baud={DEFAULT_BAUD}&faults=corrupt:{rate},seed:1&{CORRUPTED_OPTIONS}")
    try:
        open_s = time.perf_counter() - start
        tolerance = device.capabilities.ops["linear"].tolerance["float32"]
        g = torch.Generator().manual_seed(0)
        w = torch.randn(FEATURES, FEATURES, generator=g) / 8
        x = torch.randn(CORRUPTED_BATCH, FEATURES, generator=g)
        start = time.perf_counter()
        program = device.prepare(hal.OpSpec("linear", [x], {"weight": w}), {"weight": w})
        program_s = time.perf_counter() - start
        reference = x.double() @ w.double().T
        runs, errors = [], []
        for _ in range(CORRUPTED_REPEATS):
            start = time.perf_counter()
            y = program(x)
            runs.append(time.perf_counter() - start)
            errors.append(float((y.double() - reference).norm() / reference.norm()))
        seconds = statistics.median(runs)
        capacity = DEFAULT_BAUD / BITS_PER_BYTE
        board = device.status()
        counters = vars(device.client.counters)
        return {
            "corrupt_per_byte": rate, "baud": DEFAULT_BAUD, "hosted": kind, "link_options": CORRUPTED_OPTIONS,
            "open_s": open_s, "program_s": program_s,
            "programming_verified": device.program_attempts == 1 and device.verify_failures == 0,
            "program_attempts": device.program_attempts, "verify_failures": device.verify_failures,
            "batch": CORRUPTED_BATCH, "seconds_per_batch": runs, "relative_error_vs_float64": errors, "declared_tolerance": tolerance,
            "results_correct": max(errors) <= tolerance,
            "goodput_fraction": CORRUPTED_BATCH * FEATURES * 4 / seconds / capacity,
            "frame_bytes_at_end": device.client.frame_bytes, "byte_error_estimate": device.client.byte_error,
            "host_link_counters": counters, "frames_rejected_by_host": device.client.frames_rejected,
            "frames_rejected_by_board": board["rx_bad_crc"] + board["rx_bad_frame"], "duplicates_replayed_by_board": board["duplicates"],
        }
    finally:
        device.close()


def measure(baud: int) -> dict:
    kind = hosted_kind()
    device = hal.device(f"{kind}:0?port=emu&baud={baud}")
    try:
        rtt = board_rtt(device)
        return {
            "baud": baud,
            "hosted": kind,
            "board": dict(device.capabilities.identity),
            "rtt_ms": [t * 1e3 for t in rtt],
            "rtt_median_ms": statistics.median(rtt) * 1e3,
            "rtt_p99_ms": percentile(rtt, 0.99) * 1e3,
            "pipelined": throughput(device, 4),
            "stop_and_wait": throughput(device, 1),
        }
    finally:
        device.close()


def main() -> None:
    request = len(encode_frame(p.request(Command.STATUS, 1, 1).pack()))
    answer = len(encode_frame(p.Message(Command.STATUS | p.RESPONSE_BIT, 1, 1, 0, bytes(p.STATUS_RESPONSE.size)).pack()))
    bare = bare_pty_rtt(request, answer)
    emulated, unthrottled = measure(DEFAULT_BAUD), measure(0)
    lossy = {f"{rate:g}": corrupted(rate) for rate in CORRUPTION_RATES}
    at_1pct = lossy["0.01"]
    line_floor_ms = (request + answer) * BITS_PER_BYTE / DEFAULT_BAUD * 1e3
    fraction = emulated["pipelined"]["line_rate_fraction"]
    document = {
        "environment": environment(f"{emulated['hosted']} board emulator on a pty"),
        "method": __doc__.strip().split("\n\n")[1],
        "bare_pty_echo": {"request_bytes": request, "answer_bytes": answer, "rtt_ms": [t * 1e3 for t in bare],
                          "rtt_median_ms": statistics.median(bare) * 1e3, "rtt_p99_ms": percentile(bare, 0.99) * 1e3},
        "emulated_line": emulated,
        "unthrottled": unthrottled,
        "corrupting_line": lossy,
        "summary": {
            "baud": DEFAULT_BAUD,
            "rtt_median_ms": emulated["rtt_median_ms"],
            "rtt_p99_ms": emulated["rtt_p99_ms"],
            "rtt_line_time_floor_ms": line_floor_ms,
            "rtt_median_ms_unthrottled": unthrottled["rtt_median_ms"],
            "rtt_median_ms_bare_pty": statistics.median(bare) * 1e3,
            "line_rate_fraction": fraction,
            "line_rate_fraction_stop_and_wait": emulated["stop_and_wait"]["line_rate_fraction"],
            "vectors_per_s_at_baud": emulated["pipelined"]["vectors_per_s"],
            "vectors_per_s_unthrottled": unthrottled["pipelined"]["vectors_per_s"],
            "tensor_mb_per_s_unthrottled": unthrottled["pipelined"]["tensor_bytes_per_s"] / 1e6,
            "target_line_rate_fraction": TARGET_FRACTION,
            "target_met": fraction >= TARGET_FRACTION,
            "goodput_fraction_at_0_1pct": lossy["0.001"]["goodput_fraction"],
            "goodput_fraction_at_1pct": at_1pct["goodput_fraction"],
            "open_s_at_1pct": at_1pct["open_s"],
            "programming_verified_at_1pct": at_1pct["programming_verified"],
            "results_correct_at_1pct": at_1pct["results_correct"],
            "target_1pct_met": at_1pct["programming_verified"] and at_1pct["results_correct"],
        },
    }
    path = write_result("serial_roundtrip", document)
    print(f"wrote {path}")
    for key, value in document["summary"].items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")


if __name__ == "__main__":
    main()
