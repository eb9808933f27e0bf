"""Board protocol, framing, firmware and BoardDevice, in process (loop:// links); the pty HIL suite is test_serial_hil.py."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hal
from hal.capability import validate

for _module in ("serial", "cobs", "crcmod"):  # the 'serial' extra
    pytest.importorskip(_module, reason=f"{_module} is not installed (pip install 'hal[serial]')")

from hal.drivers.serial import BoardDevice, discovery  # noqa: E402
from hal.drivers.serial import protocol as p  # noqa: E402
from hal.drivers.serial.client import BoardClient, BoardError, NoAnswer, Request  # noqa: E402
from hal.drivers.serial.faults import FaultPlan  # noqa: E402
from hal.drivers.serial.firmware import BoardConfig, Firmware, read_array  # noqa: E402
from hal.drivers.serial.framing import FrameDecoder, crc32, encode_frame  # noqa: E402
from hal.drivers.serial.protocol import Command, Message, Status  # noqa: E402
from hal.drivers.serial.transport import EmulatorSpec, InProcessLink  # noqa: E402
from hal.errors import CapacityExceeded, DeviceFailure, DeviceUnavailable, InvalidInput  # noqa: E402
from hal.testing.conformance import DeviceConformance  # noqa: E402

# --------------------------------------------------------------------------- framing


def test_crc_is_crc32_iso_hdlc() -> None:
    assert crc32(b"123456789") == 0xCBF43926  # the catalogued check value of CRC-32/ISO-HDLC


def test_frame_round_trip_and_no_zero_inside() -> None:
    message = p.request(Command.RUN, 7, 0xDEADBEEF, bytes(range(256)) * 3).pack()
    wire = encode_frame(message)
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    decoder = FrameDecoder()
    assert decoder.feed(wire[:5]) == []  # partial frame: nothing yet
    assert decoder.feed(wire[5:]) == [message]


def test_decoder_resynchronises_after_garbage() -> None:
    good = p.request(Command.STATUS, 1, 0).pack()
    decoder = FrameDecoder()
    out = decoder.feed(b"\x17\x42garbage\x00" + encode_frame(good) + b"\x00\x00" + encode_frame(good))
    assert out == [good, good]
    assert decoder.rejected == 1


def test_decoder_bounds_its_buffer() -> None:
    decoder = FrameDecoder(max_message_bytes=64)
    good = p.request(Command.STATUS, 1, 0).pack()
    assert decoder.feed(b"\x01" * 10_000) == []
    assert len(decoder._buffer) < 200 and decoder.oversize == 1
    assert decoder.feed(b"\x01" * 10 + b"\x00" + encode_frame(good)) == [good]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.integers(1, 64))
def test_fuzz_random_bytes_never_yield_a_bad_message(data: bytes, split: int) -> None:
    decoder = FrameDecoder(max_message_bytes=256)
    accepted = []
    for start in range(0, len(data), split):  # fed in pieces, as a serial port delivers them
        accepted += decoder.feed(data[start:start + split])
    accepted += decoder.feed(b"\x00")
    pieces = [piece for piece in data.split(b"\x00") if piece]
    # every delimited piece was either a genuine frame (its own encoding) or counted as rejected
    assert len(accepted) + decoder.rejected == len(pieces)
    assert all(encode_frame(m)[:-1] in pieces and len(m) >= p.HEADER_BYTES for m in accepted)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(max_size=300),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from(["flip", "drop", "insert", "set"])), min_size=1, max_size=4),
)
def test_fuzz_mutated_frames_are_rejected(payload: bytes, edits: list) -> None:
    message = p.request(Command.RUN, 3, 11, payload).pack()
    wire = bytearray(encode_frame(message)[:-1])
    for position, value, kind in edits:
        i = position % (len(wire) + (kind == "insert"))
        if kind == "flip" and i < len(wire):
            wire[i] ^= 1 << (value % 8)
        elif kind == "drop" and i < len(wire) and len(wire) > 1:
            del wire[i]
        elif kind == "insert":
            wire.insert(i, value)
        elif i < len(wire):
            wire[i] = value
    decoder = FrameDecoder(max_message_bytes=1024)
    accepted = decoder.feed(bytes(wire) + b"\x00")
    # nothing but the original message can come out (edits that cancel out give it back intact);
    # every piece that is not it was counted as rejected
    assert all(m == message for m in accepted)
    assert len(accepted) + decoder.rejected == len([piece for piece in bytes(wire).split(b"\x00") if piece])


_FIRMWARE = Firmware(BoardConfig(kind="cpu", slots=2, max_rows=64, max_cols=64, memory_bytes=64 * 64 * 4 * 2 + 1024))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_fuzz_firmware_answers_any_checked_frame_without_crashing(raw: bytes) -> None:
    firmware = _FIRMWARE
    reply = firmware.handle(raw)
    if reply is not None:
        assert reply.is_response and reply.session == firmware.boot_id
        assert reply.status in Status._value2member_map_


# --------------------------------------------------------------------------- firmware

def _ask(firmware: Firmware, command: Command, payload: bytes = b"", seq: int = 1, session: int | None = None) -> Message:
    raw = p.request(command, seq, firmware.boot_id if session is None else session, payload).pack()
    return firmware.handle(raw)


def test_firmware_refuses_stale_session_and_unknown_commands() -> None:
    fw = Firmware(BoardConfig(kind="cpu"))
    assert _ask(fw, Command.RUN, p.RUN.pack(0, 0), session=fw.boot_id ^ 1).status == Status.STALE_SESSION
    assert fw.handle(Message(0x55, 2, fw.boot_id).pack()).status == Status.UNKNOWN_COMMAND
    assert fw.handle(Message(int(Command.STATUS), 3, 0, version=9).pack()).status == Status.VERSION_MISMATCH
    assert _ask(fw, Command.RUN, p.RUN.pack(0, 1) + b"\x00" * 4, seq=4).status == Status.NOT_PROGRAMMED
    assert _ask(fw, Command.PROGRAM_BEGIN, p.PROGRAM_BEGIN.pack(9, 2, 2, 0), seq=5).status == Status.NO_SUCH_SLOT
    assert _ask(fw, Command.PROGRAM_BEGIN, p.PROGRAM_BEGIN.pack(0, 5000, 2, 0), seq=6).status == Status.CAPACITY
    assert _ask(fw, Command.HELLO, b"\x01", seq=7).status == Status.MALFORMED


def test_firmware_program_commit_checks_crc_and_nan() -> None:
    fw = Firmware(BoardConfig(kind="cpu"))
    assert _ask(fw, Command.PROGRAM_BEGIN, p.PROGRAM_BEGIN.pack(0, 2, 2, 0)).status == Status.OK
    values = np.array([1, 2, 3, np.nan], np.float32)
    assert _ask(fw, Command.PROGRAM_WRITE, p.PROGRAM_WRITE.pack(0, 0) + p.floats_to_bytes(values), seq=2).status == Status.OK
    assert _ask(fw, Command.PROGRAM_COMMIT, p.PROGRAM_COMMIT.pack(0, 1234), seq=3).status == Status.CHECKSUM
    assert _ask(fw, Command.PROGRAM_COMMIT, p.PROGRAM_COMMIT.pack(0, crc32(p.floats_to_bytes(values))), seq=4).status == Status.INVALID_VALUE


def test_firmware_replays_a_resent_request_instead_of_running_it_again() -> None:
    fw = Firmware(BoardConfig(kind="cpu"))
    first = _ask(fw, Command.PROGRAM_BEGIN, p.PROGRAM_BEGIN.pack(0, 2, 2, 0), seq=40)
    again = _ask(fw, Command.PROGRAM_BEGIN, p.PROGRAM_BEGIN.pack(0, 2, 2, 0), seq=40)
    assert again is first and fw.counters.duplicates == 1


def test_read_array_recovers_weights_and_bias() -> None:
    w, b = torch.randn(5, 7), torch.randn(5)

    def program(x: torch.Tensor) -> torch.Tensor:
        return x @ w.T + b

    weight, offset = read_array(program, 7)
    assert np.allclose(weight, w.numpy(), atol=1e-5) and np.allclose(offset, b.numpy(), atol=1e-5)


def test_fault_plan_parses_and_refuses() -> None:
    plan = FaultPlan.parse("drop:0.01,brownout:3,seed:7")
    assert (plan.drop, plan.brownout, plan.seed) == (0.01, 3, 7)
    assert FaultPlan.parse(str(plan)) == plan
    for bad in ("drop", "nosuch:1", "drop:2", "stuck:x", "delay:-1"):
        with pytest.raises(ValueError):
            FaultPlan.parse(bad)


# --------------------------------------------------------------------------- client over an in-process board


@pytest.fixture
def loop_client():
    link = InProcessLink(EmulatorSpec("cpu", baud=0))
    client = BoardClient(link, timeout_s=0.5, retries=2)
    client.hello()
    yield client
    link.close()


def test_client_pipelines_and_orders_answers(loop_client: BoardClient) -> None:
    answers = loop_client.exchange([Request(Command.STATUS) for _ in range(10)])
    assert [a.request_command for a in answers] == [Command.STATUS] * 10
    assert len({a.seq for a in answers}) == 10


def test_client_raises_board_errors(loop_client: BoardClient) -> None:
    with pytest.raises(BoardError, match="NOT_PROGRAMMED"):
        loop_client.call(Command.RUN, p.RUN.pack(0, 1) + b"\x00" * 4)


def test_client_gives_up_on_a_silent_link() -> None:
    link = InProcessLink(EmulatorSpec("cpu", baud=0, faults="drop:1"))
    client = BoardClient(link, timeout_s=0.05, retries=2)
    try:
        with pytest.raises(NoAnswer, match="3 attempts"):
            client.hello()
        assert client.counters.retries == 2
    finally:
        link.close()


# --------------------------------------------------------------------------- BoardDevice (loop://)

LOOP = "cpu:0?port=loop://&baud=0"


def test_board_device_computes_linear_with_bias_and_relu() -> None:
    d = hal.device(LOOP)
    x, w, b = torch.randn(9, 20), torch.randn(6, 20), torch.randn(6)
    assert torch.allclose(d.linear(x, w, b), x @ w.T + b, atol=1e-5)
    assert torch.allclose(d.linear(x, w, b, activation="relu"), torch.relu(x @ w.T + b), atol=1e-5)


def test_board_device_batches_beyond_one_frame() -> None:
    d = hal.device(LOOP)
    x, w = torch.randn(300, 64), torch.randn(64, 64)  # 300 x 64 x 4 B = 75 kB: several 16 kB frames
    before = d.client.counters.requests
    assert torch.allclose(d.linear(x, w), x @ w.T, atol=1e-4)
    assert d.client.counters.requests - before >= 5


def test_board_device_matmul_batched_operands() -> None:
    d = hal.device(LOOP)
    a, b = torch.randn(2, 3, 5), torch.randn(2, 5, 4)
    assert torch.allclose(d.matmul(a, b), a @ b, atol=1e-5)


def test_board_device_reprograms_evicted_slots() -> None:
    d = hal.device(LOOP)
    x = torch.randn(2, 4)
    weights = [torch.randn(3, 4) for _ in range(len(d._residents) + 2)]
    programs = [d.prepare(hal.OpSpec("linear", [x], {"weight": w}), {"weight": w}) for w in weights]
    for w, program in zip(weights, programs):  # the first ones were evicted by the later ones
        assert torch.allclose(program(x), x @ w.T, atol=1e-5)


def test_board_device_refuses_nan_and_oversize() -> None:
    d = hal.device(LOOP)
    with pytest.raises(InvalidInput):
        d.linear(torch.full((1, 4), float("nan")), torch.randn(2, 4))
    assert not d.supports(hal.OpSpec("linear", [torch.randn(1, 2000)], {"weight": torch.randn(2, 2000)}))


def test_board_device_options_are_checked() -> None:
    with pytest.raises(InvalidInput, match="faults"):
        hal.device("cpu:0?port=loop://&faults=nosuch:1")
    with pytest.raises(InvalidInput, match="emulator"):
        BoardDevice("cpu:0?port=/dev/nonexistent&faults=drop:0.1", kind="cpu")
    with pytest.raises(DeviceUnavailable, match="cannot open"):
        hal.device("cpu:0?port=/dev/hal-no-such-port")


def test_board_device_capabilities_validate_and_name_the_board() -> None:
    d = hal.device(LOOP)
    caps = d.capabilities
    validate(caps.to_dict())
    assert caps.kind == "cpu" and caps.simulated
    assert caps.identity["firmware"].startswith("hal-emu") and caps.identity["transport"] == "loop"
    assert caps.sections["board"].round_trip.kind == "measured"
    assert d.estimate(hal.OpSpec("linear", [torch.randn(4, 16)], {"weight": torch.randn(8, 16)})).latency_s > 0


def test_write_verify_refuses_stuck_cells() -> None:
    d = BoardDevice("cpu:0?port=loop://&baud=0&faults=stuck:20", kind="cpu")
    try:
        with pytest.raises(DeviceFailure, match=r"20 of 256 cells .* differ"):
            d.linear(torch.randn(2, 16), torch.randn(16, 16))
        assert d.verify_failures == 2
    finally:
        d.close()


def test_capacity_errors_come_back_as_capacity_exceeded() -> None:
    d = BoardDevice("cpu:0?port=loop://&baud=0", kind="cpu")
    try:
        firmware = d.link.server.firmware
        firmware.config = replace(firmware.config, memory_bytes=1024)  # a board with 1 KiB of staging memory
        with pytest.raises(CapacityExceeded, match="staging needs 2048 bytes"):
            d.linear(torch.randn(1, 32), torch.randn(16, 32))
    finally:
        d.close()


def test_hosted_device_options_pass_through() -> None:
    d = BoardDevice("cpu:0?port=loop://&baud=0&device=precision%3Dfloat64", kind="cpu")
    try:
        assert d.capabilities.identity["hosted"] == "cpu:0?precision=float64"
    finally:
        d.close()


def test_socket_transport_and_handshake_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    board = subprocess.Popen([sys.executable, "-m", "hal.drivers.serial.board", "--kind", "cpu", "--tcp", "0", "--baud", "0"],
                             stdout=subprocess.PIPE, text=True)
    try:
        url = board.stdout.readline().strip()
        assert url.startswith("socket://127.0.0.1:")
        identity, capabilities = discovery.handshake(url)
        assert identity["model"] == "cpu-board-emulator" and capabilities["kind"] == "cpu"
        with pytest.raises(DeviceUnavailable, match="is a 'cpu' board, not 'memristor'"):
            BoardDevice(f"memristor:0?port={url}", kind="memristor")
        silent_master, silent = os.openpty()  # a port where nothing answers
        ports = [SimpleNamespace(device=os.ttyname(silent), description="silent", hwid="pty"), SimpleNamespace(device=url, description="board", hwid="tcp")]
        monkeypatch.setattr(discovery.list_ports, "comports", lambda: ports)
        try:
            reports = {r.description: r for r in discovery.scan(timeout_s=0.3)}
        finally:
            os.close(silent_master)
            os.close(silent)
        assert reports["board"].answered and reports["board"].kind == "cpu"
        assert not reports["silent"].answered and "no answer" in reports["silent"].problem
        d = BoardDevice(f"cpu:0?port={url}", kind="cpu")
        try:
            assert d.capabilities.identity["transport"] == "socket"
            x, w = torch.randn(3, 8), torch.randn(2, 8)
            assert torch.allclose(d.linear(x, w), x @ w.T, atol=1e-5)
        finally:
            d.close()
    finally:
        board.terminate()
        board.wait(10)


def test_probe_lists_emulators_and_does_not_hang() -> None:
    infos = BoardDevice.probe()
    assert all(i.uri.split("?")[1].startswith("port=") for i in infos)
    assert {c.name for c in BoardDevice.diagnose()} >= {"serial libraries", "pseudo-terminals (board emulator)"}


class TestConformanceCpuBoard(DeviceConformance):
    uri = LOOP


@pytest.mark.skipif(not hal.is_available("memristor"), reason="the memristor driver is not available")
class TestConformanceMemristorBoard(DeviceConformance):
    uri = "memristor:0?port=loop://&baud=0&device=seed%3D0"


@pytest.mark.skipif(not hal.is_available("photonic"), reason="the photonic driver is not available")
class TestConformancePhotonicBoard(DeviceConformance):
    uri = "photonic:0?port=loop://&baud=0"
