"""The board firmware of the emulator: the protocol state machine in front of a hosted hal device.

``Firmware.handle(request) -> response`` is everything a real board's firmware does between its UART
and its analog/photonic array: check version and session, answer duplicate requests from a replay
cache, reassemble requests that arrive in chunks and keep their answers for reading back in chunks
(``transfer.py``), stage weights, program them on commit (here: ``prepare`` a ``linear`` Program on the
hosted device, opened through the registry as ``memristor:0``), measure what was actually programmed
(read back), run batched matrix-vector products, count everything. It does no I/O; ``board.py`` feeds it
frames from a pty, socket or loopback.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib.metadata import version

import numpy as np
import torch

from hal.device import Device, OpSpec, Program, TensorSpec
from hal.drivers.serial import protocol as p
from hal.drivers.serial.framing import crc32
from hal.drivers.serial.protocol import Command, Message, ProtocolError, Status
from hal.drivers.serial.transfer import TransferIncomplete, TransferTable
from hal.errors import CapacityExceeded, HalError, ProgramInvalidated
from hal.registry import open_device

#: Requests remembered for replay: a resent request (same seq, same bytes) gets the stored answer
#: instead of being executed again. Must exceed the host's pipeline window.
REPLAY_DEPTH = 64


def read_array(program, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Measure the matrix and offset a programmed array realizes, through its own matrix-vector path.

    The inputs are the first ``cols`` columns of a Sylvester-Hadamard matrix H of order n >= cols (entries
    +-1, mutually orthogonal columns) and one all-zero vector. With Y = H W^T + b the estimate is
    W^T = H^T (Y - b) / n: every cell is measured n times with full-scale inputs, so read and converter
    noise average down by sqrt(n) instead of swamping one-cell reads (unit vectors use 1/cols of the range).
    """
    order = 1 << max(0, (cols - 1).bit_length())
    hadamard = np.ones((1, 1), dtype=np.float32)
    while hadamard.shape[0] < order:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    probe = hadamard[:, :cols]
    out = program(torch.from_numpy(np.vstack([probe, np.zeros((1, cols), np.float32)]))).to(torch.float64).numpy()
    offset = out[-1]
    weight_t = probe.T.astype(np.float64) @ (out[:-1] - offset) / order
    return weight_t.T, offset


@dataclass(frozen=True)
class BoardConfig:
    """What the emulated board is: the hosted device, its memory, its limits, its identity."""

    kind: str
    device_options: str = ""
    slots: int = 8
    max_rows: int = 1024
    max_cols: int = 1024
    #: Staging memory in bytes shared by all slots (float32 weights + bias), like a board's SRAM.
    memory_bytes: int = 8 << 20
    #: Largest payload the board accepts or sends; bigger batches are split by the host.
    max_payload: int = 16 << 10
    #: Number of array cells stuck at the high-conductance state (fault injection); positions are
    #: drawn per matrix shape from ``stuck_seed``, so the same cells fail every time that shape is programmed.
    stuck_cells: int = 0
    stuck_seed: int = 0
    #: Fraction of cells write-verify may find outside its band (the array's known defects, which the hosted
    #: device's declared tolerance already covers). A design choice of the emulator: 5 per 1000, above the
    #: default stuck-device rates of the memristor emulator (1e-4 at g_min + 1e-4 at g_max per device).
    defect_allowance: float = 0.005
    #: Longest a PROGRAM_COMMIT may take to answer (programming + read-back measurement). A design choice
    #: of the emulator that covers a 1024x1024 memristor program on a loaded host; hosts wait this long.
    program_time_s: float = 10.0
    serial_number: str = "EMU-0"

    @property
    def hosted_uri(self) -> str:
        return f"{self.kind}:0" + (f"?{self.device_options}" if self.device_options else "")


@dataclass
class Slot:
    """One weight slot: staged float32 values, then (after commit) the hosted Program and its read-back."""

    rows: int
    cols: int
    flags: int
    staged: np.ndarray
    program: Program | None = None
    realized: np.ndarray | None = None

    @property
    def has_bias(self) -> bool:
        return bool(self.flags & p.FLAG_BIAS)

    def discard_program(self, reason: str) -> None:
        """Give the committed program back to the hosted device now (see ``release_program``)."""
        if self.program is not None:
            release_program(self.program, reason)
        self.program = None
        self.realized = None


def _released(*inputs: torch.Tensor) -> torch.Tensor:
    raise ProgramInvalidated("this board slot was reprogrammed; its program no longer exists")


def release_program(program: Program, reason: str) -> None:
    """Free a program the board no longer holds at once, not at the next cyclic garbage collection.

    The program is invalidated; a hosted device that lends programs resources (the memristor driver's tiles)
    gets them back through the program's ``release()``; and the program's run function is dropped, because a
    run closure that refers to its own program (as the memristor driver's does) forms a reference cycle that
    reference counting cannot free: a board reprogramming its slots would otherwise grow by every replaced
    program's arrays until the collector runs.
    """
    release = getattr(program, "release", None)
    if callable(release):
        release()
    program.invalidate(reason)
    program.run = _released


@dataclass
class Counters:
    rx_frames: int = 0
    rx_bad_crc: int = 0
    rx_bad_frame: int = 0
    tx_frames: int = 0
    duplicates: int = 0
    programs: int = 0
    runs: int = 0
    resets: int = 0


class BoardFault(Exception):
    """A request the firmware refuses; carries the status code sent back."""

    def __init__(self, status: Status, text: str):
        super().__init__(text)
        self.status = status


@dataclass
class Firmware:
    """Protocol engine of one board. ``reboot()`` models power-on: new boot id, empty slots."""

    config: BoardConfig
    boot_id: int = 0
    counters: Counters = field(default_factory=Counters)
    slots: dict[int, Slot] = field(default_factory=dict)
    transfers: TransferTable = field(default_factory=TransferTable)
    reboot_requested: bool = False
    _booted_at: float = 0.0
    _replay: OrderedDict = field(default_factory=OrderedDict)
    _device: Device | None = None

    def __post_init__(self) -> None:
        self._device = open_device(self.config.hosted_uri)
        if "linear" not in self._device.capabilities.ops:
            raise ValueError(f"{self.config.hosted_uri} does not run 'linear'; a board needs a device that computes matrix-vector products")
        self.reboot()

    @property
    def device(self) -> Device:
        return self._device

    def _clear_slots(self, reason: str) -> None:
        for slot in self.slots.values():
            slot.discard_program(reason)
        self.slots.clear()

    def reboot(self) -> None:
        """Power cycle: a fresh nonzero boot id, no programmed slots, counters zeroed (RAM) except ``resets``,
        which a board keeps in non-volatile memory (it counts power-ons, the first included)."""
        resets = self.counters.resets
        self.boot_id = secrets.randbits(32) or 1
        self.counters = Counters(resets=resets + 1)
        self._clear_slots("the board rebooted")
        self.transfers.clear()
        self._replay.clear()
        self.reboot_requested = False
        self._booted_at = time.monotonic()

    # ---- the request loop's entry point
    def handle(self, raw: bytes) -> Message | None:
        """Answer one CRC-checked message; None for frames that are not requests (nothing to answer)."""
        self.counters.rx_frames += 1
        try:
            request = Message.unpack(raw)
        except ProtocolError:
            self.counters.rx_bad_frame += 1
            return None
        if request.is_response:
            self.counters.rx_bad_frame += 1
            return None
        if request.version != p.PROTOCOL_VERSION:
            text = f"board speaks protocol version {p.PROTOCOL_VERSION}, request is version {request.version}"
            return self._answer(request, Status.VERSION_MISMATCH, text.encode())
        key = crc32(raw)
        cached = self._replay.get(request.seq)
        if cached is not None and cached[0] == key:
            self.counters.duplicates += 1
            return cached[1]
        reply = self._execute(request)
        self._replay[request.seq] = (key, reply)
        self._replay.move_to_end(request.seq)
        while len(self._replay) > REPLAY_DEPTH:
            self._replay.popitem(last=False)
        return reply

    def _answer(self, request: Message, status: Status = Status.OK, payload: bytes = b"") -> Message:
        self.counters.tx_frames += 1
        return p.response(request, self.boot_id, status, payload)

    def _execute(self, request: Message) -> Message:
        try:
            command = Command(request.command)
        except ValueError:
            return self._answer(request, Status.UNKNOWN_COMMAND, f"unknown command 0x{request.command:02x}".encode())
        if command not in p.SESSIONLESS and request.session != self.boot_id:
            text = f"request names session {request.session:#010x}, board is in session {self.boot_id:#010x} (it rebooted); say HELLO and reprogram"
            return self._answer(request, Status.STALE_SESSION, text.encode())
        if command in p.EMPTY_REQUEST and request.payload:
            return self._answer(request, Status.MALFORMED, f"{command.name} carries no payload; this one has {len(request.payload)} bytes".encode())
        handler = getattr(self, f"_cmd_{command.name.lower()}")
        try:
            return self._answer(request, Status.OK, handler(request.payload))
        except BoardFault as fault:
            return self._answer(request, fault.status, str(fault).encode())
        except ProtocolError as exc:
            return self._answer(request, Status.MALFORMED, str(exc).encode())
        except Exception as exc:  # noqa: BLE001 (firmware never dies on a request: the host is told what failed)
            return self._answer(request, Status.DEVICE_ERROR, f"{type(exc).__name__}: {exc}".encode())

    # ---- commands
    def _cmd_hello(self, payload: bytes) -> bytes:
        (host_version, host_max_payload), _ = p.unpack(p.HELLO_REQUEST, payload, "HELLO")
        if host_version < p.PROTOCOL_VERSION:
            raise BoardFault(Status.VERSION_MISMATCH, f"board needs protocol version >= {p.PROTOCOL_VERSION}, host offers {host_version}")
        self._clear_slots("a host opened a new session")
        self.transfers.clear()
        return p.HELLO_RESPONSE.pack(p.PROTOCOL_VERSION, p.PROTOCOL_VERSION, min(self.config.max_payload, host_max_payload))

    def _cmd_identify(self, payload: bytes) -> bytes:
        return p.encode_json({
            "vendor": "hal",
            "model": f"{self.config.kind}-board-emulator",
            "serial": self.config.serial_number,
            "firmware": f"hal-emu {version('hal')}",
            "protocol": p.PROTOCOL_VERSION,
            "hosted": self.config.hosted_uri,
        })

    def _cmd_capabilities(self, payload: bytes) -> bytes:
        hosted = self._device.capabilities.to_dict()
        tolerance = hosted["ops"]["linear"]["tolerance"].get("float32")
        if tolerance is None:
            tolerance = max(hosted["ops"]["linear"]["tolerance"].values())
        limits = {"max_in_features": self.config.max_cols, "max_out_features": self.config.max_rows}
        op = {"dtypes": ["float32"], "tolerance": {"float32": tolerance}, "limits": limits}
        return p.encode_json({
            "kind": self.config.kind,
            "paradigm": hosted["paradigm"],
            "simulated": True,
            "deterministic": hosted["deterministic"],
            "ops": {"linear": dict(op, notes="activation none or relu (ReLU applied by the board after the array)"),
                    "matmul": dict(op, notes="the second operand is programmed into a slot for each call")},
            "slots": self.config.slots,
            "max_rows": self.config.max_rows,
            "max_cols": self.config.max_cols,
            "memory_bytes": self.config.memory_bytes,
            "max_payload": self.config.max_payload,
            "readback_tolerance": tolerance,
            "defect_allowance": self.config.defect_allowance,
            "program_time_s": self.config.program_time_s,
            "peak": hosted["peak"],
            "energy": hosted["energy"],
            "sections": hosted["sections"],
            "notes": hosted["notes"],
        })

    def _slot(self, index: int, programmed: bool = False) -> Slot:
        if index >= self.config.slots:
            raise BoardFault(Status.NO_SUCH_SLOT, f"slot {index} does not exist; the board has slots 0..{self.config.slots - 1}")
        slot = self.slots.get(index)
        if slot is None or (programmed and slot.program is None):
            raise BoardFault(Status.NOT_PROGRAMMED, f"slot {index} holds no committed program")
        return slot

    def _cmd_program_begin(self, payload: bytes) -> bytes:
        (index, rows, cols, flags), _ = p.unpack(p.PROGRAM_BEGIN, payload, "PROGRAM_BEGIN")
        if index >= self.config.slots:
            raise BoardFault(Status.NO_SUCH_SLOT, f"slot {index} does not exist; the board has slots 0..{self.config.slots - 1}")
        if not (0 < rows <= self.config.max_rows and 0 < cols <= self.config.max_cols):
            raise BoardFault(Status.CAPACITY, f"a {rows}x{cols} matrix does not fit the {self.config.max_rows}x{self.config.max_cols} array")
        if flags & ~(p.FLAG_BIAS | p.FLAG_RELU):
            raise BoardFault(Status.MALFORMED, f"unknown flag bits {flags:#04x}")
        size = rows * cols + (rows if flags & p.FLAG_BIAS else 0)
        used = sum(s.staged.size for i, s in self.slots.items() if i != index) * 4
        if used + size * 4 > self.config.memory_bytes:
            raise BoardFault(Status.CAPACITY, f"staging needs {size * 4} bytes, {self.config.memory_bytes - used} of {self.config.memory_bytes} are free")
        previous = self.slots.pop(index, None)
        if previous is not None:
            previous.discard_program(f"slot {index} was programmed again")
        self.slots[index] = Slot(rows, cols, flags, np.zeros(size, dtype=np.float32))
        return b""

    def _cmd_program_write(self, payload: bytes) -> bytes:
        (index, offset), data = p.unpack(p.PROGRAM_WRITE, payload, "PROGRAM_WRITE", trailing=True)
        slot = self._slot(index)
        values = p.bytes_to_floats(data, "PROGRAM_WRITE")
        if offset + values.size > slot.staged.size:
            raise BoardFault(Status.MALFORMED, f"write of {values.size} values at {offset} overruns the slot's {slot.staged.size}")
        slot.staged[offset:offset + values.size] = values
        slot.discard_program(f"slot {index} was written again")
        return b""

    def _cmd_program_commit(self, payload: bytes) -> bytes:
        (index, expected), _ = p.unpack(p.PROGRAM_COMMIT, payload, "PROGRAM_COMMIT")
        slot = self._slot(index)
        got = crc32(slot.staged.astype("<f4").tobytes())
        if got != expected:
            raise BoardFault(Status.CHECKSUM, f"staged values have CRC {got:#010x}, host sent {expected:#010x}; rewrite the slot")
        if not np.isfinite(slot.staged).all():
            raise BoardFault(Status.INVALID_VALUE, f"{int((~np.isfinite(slot.staged)).sum())} staged values are NaN/inf")
        weight = slot.staged[: slot.rows * slot.cols].reshape(slot.rows, slot.cols).copy()
        self._stick(weight)
        bias = slot.staged[slot.rows * slot.cols:] if slot.has_bias else None
        slot.discard_program(f"slot {index} was committed again")
        slot.program, slot.realized = self._program(weight, bias)
        self.counters.programs += 1
        return b""

    def _stick(self, weight: np.ndarray) -> None:
        """Cells stuck at the high-conductance state read as the largest weight magnitude, whatever was written."""
        n = min(self.config.stuck_cells, weight.size)
        if n == 0:
            return
        rng = np.random.default_rng([self.config.stuck_seed, *weight.shape])
        cells = rng.choice(weight.size, size=n, replace=False)
        weight.reshape(-1)[cells] = float(np.abs(weight).max()) or 1.0

    def _program(self, weight: np.ndarray, bias: np.ndarray | None) -> tuple[Program, np.ndarray]:
        """Program the hosted device, then measure what it holds (``realized``: weights row-major, then bias)."""
        params = {"weight": torch.from_numpy(weight)}
        if bias is not None:
            params["bias"] = torch.from_numpy(bias.copy())
        op = OpSpec("linear", inputs=[TensorSpec((None, weight.shape[1]))], params=params)
        try:
            program = self._device.prepare(op, params)
        except CapacityExceeded as exc:
            raise BoardFault(Status.CAPACITY, str(exc)) from None
        except HalError as exc:
            raise BoardFault(Status.DEVICE_ERROR, f"{type(exc).__name__}: {exc}") from None
        try:
            realized_weight, realized_bias = read_array(program, weight.shape[1])
        except HalError as exc:
            release_program(program, "its read-back failed")
            raise BoardFault(Status.DEVICE_ERROR, f"{type(exc).__name__}: {exc}") from None
        realized = realized_weight.reshape(-1)
        if bias is not None:
            realized = np.concatenate([realized, realized_bias])
        return program, realized.astype(np.float32)

    def _cmd_readback(self, payload: bytes) -> bytes:
        (index, offset, count), _ = p.unpack(p.READBACK, payload, "READBACK")
        slot = self._slot(index, programmed=True)
        if offset + count > slot.realized.size or count * 4 > self.config.max_payload:
            raise BoardFault(Status.MALFORMED, f"read of {count} values at {offset} exceeds the slot ({slot.realized.size}) or the payload limit")
        return p.floats_to_bytes(slot.realized[offset:offset + count])

    def _cmd_run(self, payload: bytes) -> bytes:
        (index, batch), data = p.unpack(p.RUN, payload, "RUN", trailing=True)
        slot = self._slot(index, programmed=True)
        x = p.bytes_to_floats(data, "RUN")
        if x.size != batch * slot.cols:
            raise BoardFault(Status.MALFORMED, f"RUN carries {x.size} values; batch {batch} x {slot.cols} inputs needs {batch * slot.cols}")
        if p.RUN_RESPONSE.size + batch * slot.rows * 4 > self.config.max_payload:
            raise BoardFault(Status.CAPACITY, f"the answer to a batch of {batch} would exceed the {self.config.max_payload}-byte payload limit")
        if not np.isfinite(x).all():
            raise BoardFault(Status.INVALID_VALUE, f"{int((~np.isfinite(x)).sum())} input values are NaN/inf")
        y = slot.program(torch.from_numpy(x.reshape(batch, slot.cols)))
        if slot.flags & p.FLAG_RELU:
            y = torch.relu(y)
        self.counters.runs += 1
        return p.RUN_RESPONSE.pack(batch, slot.rows) + p.floats_to_bytes(y.to(torch.float32).numpy())

    def _cmd_estimate(self, payload: bytes) -> bytes:
        (rows, cols, batch), _ = p.unpack(p.ESTIMATE, payload, "ESTIMATE")
        if not (rows and cols and batch):
            raise BoardFault(Status.MALFORMED, "ESTIMATE needs nonzero rows, cols and batch")
        op = OpSpec("linear", inputs=[TensorSpec((batch, cols))], params={"weight": TensorSpec((rows, cols))})
        cost = self._device.estimate(op)
        return p.encode_json({"latency_s": cost.latency_s, "energy_j": cost.energy_j, "error": cost.error, "formula": f"{self.config.hosted_uri}: {cost.formula}"})

    def _cmd_status(self, payload: bytes) -> bytes:
        c = self.counters
        programmed = sum(1 << i for i, s in self.slots.items() if s.program is not None and i < 32)
        uptime_ms = int((time.monotonic() - self._booted_at) * 1000) & 0xFFFFFFFF
        return p.STATUS_RESPONSE.pack(
            self.boot_id, uptime_ms, c.rx_frames, c.rx_bad_crc, c.rx_bad_frame, c.tx_frames, c.duplicates,
            c.programs, c.runs, c.resets, programmed,
        )

    def _cmd_seed(self, payload: bytes) -> bytes:
        (seed,), _ = p.unpack(p.SEED, payload, "SEED")
        self._device.manual_seed(seed)
        return b""

    def _cmd_reset(self, payload: bytes) -> bytes:
        self.reboot_requested = True
        return b""

    # ---- transfers (transfer.py): requests that arrive in chunks, answers read back in chunks
    def _cmd_put(self, payload: bytes) -> bytes:
        (transfer, offset, total), data = p.unpack(p.PUT, payload, "PUT", trailing=True)
        if total > p.HEADER_BYTES + self.config.max_payload:
            raise BoardFault(Status.CAPACITY, f"a {total}-byte request exceeds the {p.HEADER_BYTES}-byte header + {self.config.max_payload}-byte payload limit")
        try:
            request = self.transfers.put(transfer, offset, total, data)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        if request is None:
            return b""
        carried = Message.unpack(request)
        if carried.is_response or carried.request_command in (Command.PUT, Command.GET):
            raise ProtocolError(f"transfer {transfer} carries command 0x{carried.command:02x}; a transfer carries one request other than PUT or GET")
        self.transfers.answered(transfer, self.handle(request).pack())
        return b""

    def _cmd_get(self, payload: bytes) -> bytes:
        (transfer, offset, count), _ = p.unpack(p.GET, payload, "GET")
        try:
            answer, crc = self.transfers.answer(transfer)
        except TransferIncomplete as exc:
            raise BoardFault(Status.INCOMPLETE, str(exc)) from None
        if offset > len(answer) or p.GET_RESPONSE.size + count > self.config.max_payload:
            raise BoardFault(Status.MALFORMED, f"GET of {count} bytes at {offset} exceeds the {len(answer)}-byte answer or the payload limit")
        return p.GET_RESPONSE.pack(len(answer), crc) + answer[offset:offset + count]
