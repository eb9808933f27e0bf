"""Board protocol, framing, firmware and BoardDevice, in process (loop:// links); the pty HIL suite is test_serial_hil.py."""

from __future__ import annotations

import ast
import gc
import os
import subprocess
import sys
import weakref
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

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
from hal.drivers.serial.client import MIN_FRAME_BYTES, BoardClient, BoardError, NoAnswer, Request, best_frame_bytes  # noqa: E402
from hal.drivers.serial.faults import FaultPlan  # noqa: E402
from hal.drivers.serial.firmware import BoardConfig, Firmware, read_array  # noqa: E402
from hal.drivers.serial.framing import FrameDecoder, crc32, encode_frame  # noqa: E402
from hal.drivers.serial.protocol import Command, Message, ProtocolError, Status  # noqa: E402
from hal.drivers.serial.slots import Resident, SlotAllocator  # noqa: E402
from hal.drivers.serial.transfer import TransferIncomplete, TransferTable  # noqa: E402
from hal.drivers.serial.transport import EmulatorSpec, InProcessLink  # noqa: E402
from hal.errors import CapacityExceeded, DeviceFailure, DeviceUnavailable, HalError, InvalidInput, ProgramInvalidated  # noqa: E402
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


def test_firmware_refuses_stray_payload_bytes() -> None:
    fw = Firmware(BoardConfig(kind="cpu"))
    for seq, command in enumerate((Command.STATUS, Command.IDENTIFY, Command.CAPABILITIES, Command.RESET), start=1):
        answer = _ask(fw, command, b"\x01", seq=seq)
        assert answer.status == Status.MALFORMED and "carries no payload" in answer.error_text()
    assert not fw.reboot_requested
    assert _ask(fw, Command.STATUS, seq=9).status == Status.OK


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


def _program_slot(fw: Firmware, slot: int, weight: np.ndarray, seq: int) -> int:
    rows, cols = weight.shape
    assert _ask(fw, Command.PROGRAM_BEGIN, p.PROGRAM_BEGIN.pack(slot, rows, cols, 0), seq=seq).status == Status.OK
    assert _ask(fw, Command.PROGRAM_WRITE, p.PROGRAM_WRITE.pack(slot, 0) + p.floats_to_bytes(weight), seq=seq + 1).status == Status.OK
    commit = _ask(fw, Command.PROGRAM_COMMIT, p.PROGRAM_COMMIT.pack(slot, crc32(p.floats_to_bytes(weight))), seq=seq + 2)
    assert commit.status == Status.OK, commit.error_text()
    return seq + 3


@pytest.fixture
def no_cyclic_gc():
    """Reference counting only: what is freed here is freed deterministically, not by a collector pass."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.mark.skipif(not hal.is_available("memristor"), reason="the memristor driver is not available")
def test_firmware_frees_replaced_programs_at_once(no_cyclic_gc) -> None:
    fw = Firmware(BoardConfig(kind="memristor", device_options="seed=0&tiles=4&tile=16", slots=2))
    rng = np.random.default_rng(0)
    seq = _program_slot(fw, 0, rng.standard_normal((8, 8)).astype(np.float32), 1)
    first = weakref.ref(fw.slots[0].program)
    seq = _program_slot(fw, 0, rng.standard_normal((8, 8)).astype(np.float32), seq)
    assert first() is None  # the replaced program is gone without a collector pass (it was a reference cycle)
    replaced = []
    for i in range(12):  # far more programmings than the hosted device has tiles
        replaced.append(weakref.ref(fw.slots[0].program))
        seq = _program_slot(fw, i % 2, rng.standard_normal((8, 8)).astype(np.float32), seq)
    assert sum(ref() is not None for ref in replaced) <= 2  # at most what the two slots hold now
    held = fw.slots[0].program
    assert _ask(fw, Command.HELLO, p.HELLO_REQUEST.pack(p.PROTOCOL_VERSION, 1024), seq=seq).status == Status.OK
    with pytest.raises(ProgramInvalidated):  # a new session released what the slots held
        held(torch.zeros(1, 8))


def test_transfer_table_reassembles_in_any_order_and_bounds_itself() -> None:
    table = TransferTable(depth=2)
    message = bytes(range(200))
    assert table.put(7, 100, 200, message[100:]) is None
    assert table.put(7, 100, 200, message[100:]) is None  # a resent chunk changes nothing
    with pytest.raises(TransferIncomplete, match="misses 100 of its 200"):
        table.answer(7)
    assert table.put(7, 0, 200, message[:100]) == message
    table.answered(7, b"answer")
    assert table.answer(7) == (b"answer", crc32(b"answer"))
    assert table.put(7, 0, 200, message[:100]) is None  # a late resend after the request ran
    with pytest.raises(ValueError, match="overruns"):
        table.put(8, 150, 200, message[:100])
    table.put(8, 0, 10, b"x" * 5)
    table.put(9, 0, 10, b"x" * 5)  # a third open transfer: the oldest (7) is forgotten
    with pytest.raises(TransferIncomplete, match="holds no transfer 7"):
        table.answer(7)


def test_firmware_runs_a_request_carried_in_chunks() -> None:
    fw = Firmware(BoardConfig(kind="cpu"))
    carried = p.request(Command.CAPABILITIES, 40, fw.boot_id).pack()
    assert _ask(fw, Command.GET, p.GET.pack(40, 0, 100), seq=1).status == Status.INCOMPLETE
    assert _ask(fw, Command.PUT, p.PUT.pack(40, 4, len(carried)) + carried[4:], seq=2).status == Status.OK
    assert _ask(fw, Command.PUT, p.PUT.pack(40, 0, len(carried)) + carried[:4], seq=3).status == Status.OK
    first = _ask(fw, Command.GET, p.GET.pack(40, 0, 1000), seq=4)
    (total, crc), data = p.unpack(p.GET_RESPONSE, first.payload, "GET", trailing=True)
    rest = _ask(fw, Command.GET, p.GET.pack(40, 1000, total), seq=5)
    answer = data + p.unpack(p.GET_RESPONSE, rest.payload, "GET", trailing=True)[1]
    assert total > 1000 and len(answer) == total and crc32(answer) == crc
    inner = Message.unpack(answer)
    assert inner.seq == 40 and inner.request_command == Command.CAPABILITIES and p.decode_json(inner.payload, "CAPABILITIES")["kind"] == "cpu"
    nested = p.request(Command.GET, 41, fw.boot_id, p.GET.pack(40, 0, 10)).pack()
    assert _ask(fw, Command.PUT, p.PUT.pack(41, 0, len(nested)) + nested, seq=6).status == Status.MALFORMED
    assert _ask(fw, Command.PUT, p.PUT.pack(42, 0, 1 << 20) + b"x", seq=7).status == Status.CAPACITY


def test_best_frame_follows_the_byte_error_rate() -> None:
    assert best_frame_bytes(0.0, MIN_FRAME_BYTES, 16393) == 16393
    sizes = [best_frame_bytes(e, MIN_FRAME_BYTES, 16393) for e in (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == MIN_FRAME_BYTES
    # about the optimum sqrt(h / p) for h = 27 bytes of overhead (header, PUT fields, CRC, COBS, delimiter)
    assert 40 <= sizes[3] <= 80 and 350 <= sizes[1] <= 700


def test_slot_allocator_evicts_the_least_recently_used() -> None:
    slots = SlotAllocator(2)
    a, b, c = (Resident(np.zeros((1, 1), np.float32), None, False) for _ in range(3))
    for resident in (a, b):
        slots.assign(slots.claim(), resident, session=5)
    assert slots.holds(a, 5) and not slots.holds(a, 6)  # a is now the most recently used
    slots.assign(slots.claim(), c, session=5)
    assert b.slot is None and slots.holds(a, 5) and slots.holds(c, 5)
    slots.forget_all()
    assert not slots.holds(a, 5) and not slots.holds(c, 5)


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
        with pytest.raises(NoAnswer, match="3 overdue attempts"):
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
    weights = [torch.randn(3, 4) for _ in range(d.slots.count + 2)]
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


@pytest.mark.parametrize("rate", [0.001, 0.01])
def test_board_works_through_byte_corruption(rate: float) -> None:
    # the 5.8 kB CAPABILITIES answer, the weights, the read-back and the results travel in chunks with their own CRC
    d = BoardDevice(f"cpu:0?port=loop://&baud=0&faults=corrupt:{rate},seed:2&timeout_s=0.2&retries=6", kind="cpu")
    try:
        g = torch.Generator().manual_seed(3)
        x, w, b = torch.randn(8, 40, generator=g), torch.randn(24, 40, generator=g), torch.randn(24, generator=g)
        program = d.prepare(hal.OpSpec("linear", [x], {"weight": w, "bias": b}), {"weight": w, "bias": b})
        assert (d.program_attempts, d.verify_failures) == (1, 0)
        assert torch.allclose(program(x), x @ w.T + b, atol=1e-5)
        status = d.status()
        assert d.client.frames_rejected + status["rx_bad_crc"] + status["rx_bad_frame"] > 0 and d.client.counters.retries > 0
        assert d.client.frame_bytes < d.client.max_frame_bytes  # the frame limit followed the line down
    finally:
        d.close()


def test_protocol_errors_are_hal_errors_and_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    assert issubclass(ProtocolError, HalError) and issubclass(ProtocolError, DeviceFailure)
    d = BoardDevice("cpu:0?port=loop://&baud=0&timeout_s=0.2&retries=1", kind="cpu")
    try:
        firmware = d.link.server.firmware
        honest = firmware.handle

        def confused(raw: bytes):
            answer = honest(raw)
            return replace(answer, command=Command.SEED | p.RESPONSE_BIT) if answer.request_command == Command.STATUS else answer

        monkeypatch.setattr(firmware, "handle", confused)
        with pytest.raises(ProtocolError, match=r"answered request \d+ \(STATUS\) as if it were SEED"):
            d.status()
        assert not d.closed
    finally:
        d.close()


def test_a_lost_link_closes_the_device_so_that_it_reopens() -> None:
    uri = "cpu:0?port=loop://&baud=0&faults=disconnect:14&timeout_s=0.1&retries=1"
    d = hal.device(uri)
    x, w = torch.randn(2, 8), torch.randn(4, 8)
    with pytest.raises(DeviceFailure, match="stopped answering.*was closed"):
        for _ in range(10):
            d.linear(x, w)
    assert d.closed
    again = hal.device(uri)
    try:
        assert again is not d and not again.closed and again.capabilities.kind == "cpu"  # a new link and handshake
    finally:
        again.close()


def test_write_verify_refuses_stuck_cells() -> None:
    d = BoardDevice("cpu:0?port=loop://&baud=0&faults=stuck:20", kind="cpu")
    try:
        # a fixed weight: with a random one, a stuck cell may hold the largest weight already and not differ
        weight = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
        with pytest.raises(DeviceFailure, match=r"20 of 256 cells .* differ"):
            d.linear(torch.randn(2, 16), weight)
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


def test_socket_transport_and_opted_in_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
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
        silent_port = os.ttyname(silent)
        monkeypatch.setenv(discovery.PORTS_VARIABLE, f"{silent_port}, {url}")
        try:
            infos = {i.uri: i for i in BoardDevice.probe()}
        finally:
            os.close(silent_master)
            os.close(silent)
        assert infos[f"cpu:0?port={url}"].available
        assert not infos[f"serial:0?port={silent_port}"].available and "no answer" in infos[f"serial:0?port={silent_port}"].reason
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


def test_probe_writes_to_no_port_it_was_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(discovery.PORTS_VARIABLE, raising=False)
    monkeypatch.setattr(discovery.list_ports, "comports", lambda: [SimpleNamespace(device="/dev/ttyS9", description="a modem", hwid="pnp")])

    def no_opening(*args, **kwargs):
        raise AssertionError(f"probing opened a serial port: {args}")

    monkeypatch.setattr(discovery.serial, "serial_for_url", no_opening)
    infos = BoardDevice.probe()
    assert len(infos) == 1 and not infos[0].available and infos[0].kind == "serial"
    assert "opt-in" in infos[0].reason and discovery.PORTS_VARIABLE in infos[0].fix and "?port=" in infos[0].fix
    checks = {c.name: c for c in BoardDevice.diagnose()}
    assert "not probed" in checks["serial port /dev/ttyS9 (a modem)"].detail
    assert {"serial libraries", "pseudo-terminals (board emulator)", "board discovery"} <= set(checks)
    assert discovery.configured_ports({discovery.PORTS_VARIABLE: " /dev/ttyUSB0,,socket://lab:7000, /dev/ttyUSB0"}) == ["/dev/ttyUSB0", "socket://lab:7000"]


def test_serial_modules_do_not_import_the_package_root() -> None:
    package = Path(BoardDevice.__module__.replace(".", "/")).parent
    root = Path(hal.__file__).parent.parent
    submodules = {p.stem for p in Path(hal.__file__).parent.iterdir()}
    for path in sorted((root / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert all(a.name != "hal" for a in node.names), f"{path.name} imports hal"
            elif isinstance(node, ast.ImportFrom) and node.module == "hal":
                assert all(a.name in submodules for a in node.names), f"{path.name} imports from the hal package root"


class TestConformanceCpuBoard(DeviceConformance):
    uri = LOOP


@pytest.mark.skipif(not hal.is_available("memristor"), reason="the memristor driver is not available")
class TestConformanceMemristorBoard(DeviceConformance):
    uri = "memristor:0?port=loop://&baud=0&device=seed%3D0"


@pytest.mark.skipif(not hal.is_available("photonic"), reason="the photonic driver is not available")
class TestConformancePhotonicBoard(DeviceConformance):
    uri = "photonic:0?port=loop://&baud=0"
