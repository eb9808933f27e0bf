"""BoardDevice: a memristor, photonic (or any matrix-vector) board reached over a serial link.

``hal.device("memristor:0?port=/dev/ttyUSB0")`` speaks the board protocol (docs/serial-protocol.md) on that
port; ``?port=emu`` starts the board emulator behind a pseudo-terminal (hosting ``memristor:0`` through the
registry), ``?port=loop://`` runs it in this process, ``?port=socket://host:7000`` reaches one over TCP.
The device's kind is the board's kind: the board's CAPABILITIES answer must name it.

The device holds the link and its session; the work is done by small parts it owns: ``slots.py`` (which
matrix is in which board slot), ``compiler.py`` (an OpSpec as a write-verified slot and RUN requests),
``cost.py`` (estimates), ``capabilities.py`` (what the board declares), ``client.py`` (the protocol engine).

Integrity: programming is write-verify; every frame carries a CRC-32 and a sequence number, long messages
travel in chunks, and lost or corrupted frames are sent again; an answer from a new board session (a
reboot) makes the driver say HELLO again, reprogram what it had programmed and repeat the request. A
result is returned only when the board answered it intact with status OK. A board that stops answering
fails the call within the client's silence budget, and the device closes itself, so that the next
``hal.device(uri)`` opens the board afresh.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from hal.capability import Capabilities, Figure
from hal.device import Check, Cost, Device, DeviceInfo, DeviceURI, OpSpec, Option, Program, Support, bounded_float, bounded_int
from hal.drivers.serial import discovery
from hal.drivers.serial import protocol as p
from hal.drivers.serial.capabilities import board_capabilities, check_answer
from hal.drivers.serial.client import BoardClient, BoardError, BoardReset, NoAnswer, Request
from hal.drivers.serial.compiler import BoardCompiler, matrix_shape
from hal.drivers.serial.cost import BoardCostModel
from hal.drivers.serial.faults import FaultPlan
from hal.drivers.serial.protocol import Command, ProtocolError, Status
from hal.drivers.serial.slots import SlotAllocator
from hal.drivers.serial.transport import DEFAULT_BAUD, EmulatorSpec, LinkLost, open_link
from hal.errors import CapacityExceeded, DeviceFailure, DeviceUnavailable, InvalidInput

T = TypeVar("T")

#: Times one operation may meet a rebooted board (each time: HELLO, reprogram, repeat) before giving up.
MAX_RECOVERIES = 3
#: STATUS round trips, answered at the first attempt, timed at open for the measured round-trip figure, and the
#: most STATUS requests sent to get them (on a line that loses half its frames, a few are answered at once).
RTT_SAMPLES, RTT_TRIES = 5, 50
EMULATED = ("emu", "loop://")


def _faults(text: str) -> str:
    return str(FaultPlan.parse(text))


class BoardDevice(Device):
    """A board behind a serial link; its kind, ops and figures come from the board's own answers."""

    kind = "serial"
    refuses_nonfinite = True
    OPTIONS = {
        "port": Option(str, None, "the link: a serial device (/dev/ttyUSB0, COM3), a pyserial URL (socket://host:port), 'emu' (board emulator on a pty) or 'loop://' (emulator in this process)"),
        "baud": Option(bounded_int(0), DEFAULT_BAUD, f"line rate in baud, 8N1 (default {DEFAULT_BAUD}); for emulated boards the rate they emulate, 0 = unthrottled"),
        "timeout_s": Option(bounded_float(0, include_low=False), 1.0, "seconds to wait for an answer beyond the time its bytes take on the line; doubles with each resend"),
        "retries": Option(bounded_int(0), 3, "times a frame is resent after its answer is overdue (a board silent through all of them fails the call)"),
        "window": Option(bounded_int(1, 32), 4, "frames in flight at once (1 = stop-and-wait)"),
        "device": Option(str, "", "emulated boards only: the hosted device's own options, URL-encoded (device=tile%3D128 hosts memristor:0?tile=128)"),
        "faults": Option(_faults, "", "emulated boards only: fault plan, e.g. faults=drop:0.001,brownout:5 (see hal/drivers/serial/faults.py)"),
    }

    def __init__(self, uri: DeviceURI | str, kind: str | None = None):
        self.kind = kind or DeviceURI.parse(uri).kind
        super().__init__(uri)
        port = self.options["port"]
        if not port:
            raise InvalidInput(f"{self.uri}: a board needs ?port=..., e.g. ?port=/dev/ttyUSB0 or ?port=emu")
        if port not in EMULATED and (self.options["device"] or self.options["faults"]):
            raise InvalidInput(f"{self.uri}: device= and faults= configure the board emulator; they apply to port=emu or port=loop:// only")
        self._link_lock = threading.RLock()
        self._seed: int | None = None
        spec = EmulatorSpec(self.kind, self.options["device"], self.options["faults"], self.options["baud"])
        try:
            self.link = open_link(port, self.options["baud"], spec)
        except LinkLost as exc:
            raise DeviceUnavailable(str(self.uri), str(exc), "check the port name and that nothing else holds it (`hal doctor` lists ports)") from None
        except Exception as exc:  # noqa: BLE001 (the in-process emulator could not host its device: reported)
            raise DeviceUnavailable(str(self.uri), f"the board emulator failed to start: {type(exc).__name__}: {exc}", f"check that hal.device('{self.kind}:0') opens") from None
        self.client = BoardClient(self.link, self.options["timeout_s"], self.options["retries"], self.options["window"])
        try:
            self._handshake()
        except (DeviceFailure, LinkLost) as exc:
            self.link.close()
            raise DeviceUnavailable(str(self.uri), f"no board answered the handshake on {port}: {exc}",
                                    "check the cable, power and baud rate (?baud=), and that the board runs hal protocol firmware") from None
        except BaseException:
            self.link.close()
            raise
        self.slots = SlotAllocator(int(self.board["slots"]))
        self.compiler = BoardCompiler(str(self.uri), self.client, self.board, self.slots, self._call)
        self.cost_model = BoardCostModel(self.link.baud, self.round_trip_s, self._ask_estimate)

    def _handshake(self) -> None:
        self.identity, self.board = self.client.identify()
        check_answer(self.board)
        if self.board["kind"] != self.kind:
            raise DeviceUnavailable(str(self.uri), f"the board on {self.options['port']} is a {self.board['kind']!r} board, not {self.kind!r}",
                                    f"open it as {self.board['kind']}:{self.index}?port={self.options['port']}")
        self.round_trips_s = self._clean_round_trips()
        self.round_trip_s = statistics.median(self.round_trips_s)

    def _clean_round_trips(self) -> list[float]:
        """Seconds of STATUS round trips answered at their first attempt (a resent one times the timeout, not the link)."""
        timings: list[float] = []
        for _ in range(RTT_TRIES):
            retries = self.client.counters.retries
            start = time.perf_counter()
            self.client.call(Command.STATUS, answer_bytes=p.STATUS_RESPONSE.size)
            if self.client.counters.retries == retries:
                timings.append(time.perf_counter() - start)
            if len(timings) == RTT_SAMPLES:
                break
        if not timings:
            raise NoAnswer(f"none of {RTT_TRIES} STATUS requests was answered at the first attempt; the line loses too much")
        return timings

    # ---- discovery
    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        """Boards on the ports the user opted in to probing (HAL_SERIAL_PORTS); without it, one entry saying how to opt in."""
        ports = discovery.configured_ports()
        if not ports:
            return [DeviceInfo(uri="serial:0", kind="serial", available=False,
                               reason=f"board discovery is opt-in: no serial port is probed unless {discovery.PORTS_VARIABLE} lists it",
                               fix=discovery.OPT_IN)]
        infos = []
        counts: dict[str, int] = {}
        for report in discovery.scan(ports):
            if report.answered:
                index = counts.get(report.kind, 0)
                counts[report.kind] = index + 1
                infos.append(DeviceInfo(uri=f"{report.kind}:{index}?port={report.device}", kind=report.kind, available=True,
                                        simulated=report.simulated, summary={k: str(v) for k, v in report.identity.items()}))
            else:
                infos.append(DeviceInfo(uri=f"serial:0?port={report.device}", kind="serial", available=False, reason=report.problem,
                                        fix="not a hal board, wrong baud, or board unpowered; remove it from " + discovery.PORTS_VARIABLE))
        return infos

    @classmethod
    def diagnose(cls) -> list[Check]:
        """Libraries, pseudo-terminals, the system's serial ports, and the handshake on the opted-in ones."""
        import os

        import cobs
        import crcmod
        import serial

        checks = [Check("serial libraries", True, f"pyserial {serial.__version__}, cobs {getattr(cobs, '__version__', 'installed')}, crcmod {getattr(crcmod, '__version__', 'installed')}")]
        try:
            master, slave = os.openpty()
            os.close(master)
            os.close(slave)
            checks.append(Check("pseudo-terminals (board emulator)", True, "os.openpty works: ?port=emu is usable"))
        except OSError as exc:
            checks.append(Check("pseudo-terminals (board emulator)", False, str(exc), "use ?port=loop:// (in-process emulator) instead"))
        configured = discovery.configured_ports()
        for r in discovery.system_ports():
            if r.device not in configured:
                checks.append(Check(f"serial port {r.device} ({r.description})", True, f"not probed: hal writes only to ports listed in {discovery.PORTS_VARIABLE}"))
        if not configured:
            checks.append(Check("board discovery", True, "opt-in, and no port is opted in", discovery.OPT_IN))
        for r in discovery.scan(configured):
            detail = f"{r.kind} board {r.identity.get('model', '')} firmware {r.identity.get('firmware', '?')}" if r.answered else r.problem
            checks.append(Check(f"serial port {r.device} ({r.description})", r.answered, detail, "" if r.answered else "not a hal board, wrong baud, or board unpowered"))
        return checks

    # ---- capabilities, support, cost
    def _build_capabilities(self) -> Capabilities:
        round_trip = Figure.measured(self.round_trip_s, "s", f"median of {len(self.round_trips_s)} STATUS round trips at open, each answered at its first attempt")
        return board_capabilities(str(self.uri), self.kind, self.identity, self.board, self.link, self.client.max_payload, round_trip)

    def _check(self, op: OpSpec) -> Support | None:
        rows, cols = matrix_shape(op)
        limit_rows, limit_cols = int(self.board["max_rows"]), int(self.board["max_cols"])
        if rows > limit_rows or cols > limit_cols:
            return Support.no(f"{self.uri} holds matrices up to {limit_rows}x{limit_cols} (out x in); this {op.name} needs {rows}x{cols}. Split the layer.")
        if op.name == "linear" and op.attr("activation") not in ("none", "relu"):
            return Support.no(f"{self.uri} applies activation 'none' or 'relu' after the array, not {op.attr('activation')!r}")
        per_vector = max(p.RUN.size + cols * 4, p.RUN_RESPONSE.size + rows * 4)
        if per_vector > self.client.max_payload:
            return Support.no(f"one {cols}-in/{rows}-out vector needs {per_vector} payload bytes; the board's frames carry {self.client.max_payload}")
        return None

    def estimate(self, op: OpSpec) -> Cost:
        return self.cost_model.estimate(op)

    def _ask_estimate(self, rows: int, cols: int, batch: int) -> dict[str, Any]:
        answer = self._call(lambda: self.client.call(Command.ESTIMATE, p.ESTIMATE.pack(rows, cols, batch)))
        return p.decode_json(answer.payload, "ESTIMATE")

    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        return Program(op, self, self.estimate(op), self.compiler.runner(op, params))

    @property
    def program_attempts(self) -> int:
        """Slot programmings started (each write-verified)."""
        return self.compiler.program_attempts

    @property
    def verify_failures(self) -> int:
        """Programmings whose read-back disagreed with what was written."""
        return self.compiler.verify_failures

    # ---- every board action
    def _call(self, action: Callable[[], T]) -> T:
        """Run a board action holding the link; a reboot is recovered from, link and board failures become hal errors.

        A board that stopped answering (or a link that is gone) closes this device: its programs are invalidated,
        the registry forgets it, and the next ``hal.device(uri)`` opens the board again.
        """
        with self._link_lock:
            self._ensure_open()
            rebooted = False
            for _ in range(MAX_RECOVERIES + 1):
                try:
                    if rebooted:
                        self._recover()
                    return action()
                except BoardReset:
                    rebooted = True
                except (NoAnswer, LinkLost) as exc:
                    self.close()
                    raise DeviceFailure(f"{self.uri}: the board stopped answering ({exc}). The device was closed; hal.device({str(self.uri)!r}) "
                                        "opens it again. Check the link; `hal doctor` tries ports listed in HAL_SERIAL_PORTS.") from None
                except BoardError as exc:
                    raise self._translate(exc) from None
                except ProtocolError as exc:
                    raise ProtocolError(f"{self.uri}: the board broke the protocol: {exc}") from None
            raise DeviceFailure(f"{self.uri}: the board rebooted {MAX_RECOVERIES + 1} times during one operation; check its power supply")

    def _recover(self) -> None:
        """After a reboot: a new session, nothing programmed any more, the seed given again."""
        self.slots.forget_all()
        self.client.hello()
        if self._seed is not None:
            self.client.call(Command.SEED, p.SEED.pack(self._seed), 0)

    def _translate(self, exc: BoardError) -> Exception:
        if exc.status == Status.CAPACITY:
            return CapacityExceeded(f"{self.uri}: {exc.text}")
        if exc.status == Status.INVALID_VALUE:
            return InvalidInput(f"{self.uri}: {exc.text}")
        return DeviceFailure(f"{self.uri}: {exc}")

    # ---- lifecycle
    def manual_seed(self, seed: int) -> None:
        """Seed the board's noise sources (the emulator seeds its hosted device); repeated after a reboot."""
        self._seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self._call(lambda: self.client.call(Command.SEED, p.SEED.pack(self._seed), 0))

    def status(self) -> dict[str, int]:
        """The board's STATUS counters (boot id, frames, CRC rejects, duplicates, programs, runs, resets)."""
        answer = self._call(lambda: self.client.call(Command.STATUS, answer_bytes=p.STATUS_RESPONSE.size))
        values, _ = p.unpack(p.STATUS_RESPONSE, answer.payload, "STATUS answer")
        return dict(zip(p.STATUS_FIELDS, values))

    def reset_board(self) -> None:
        """Ask the board to reboot, confirm it did (a new boot id), and open a new session."""
        with self._link_lock:
            before = self.client.session
            try:
                self.client.exchange([Request(Command.RESET, answer_bytes=0)])
            except NoAnswer:
                pass  # the answer may be lost with the reboot; the new session below tells
            except (LinkLost, BoardError) as exc:
                raise DeviceFailure(f"{self.uri}: RESET failed ({exc})") from None
            self._call(self._recover)
            if self.client.session == before:
                raise DeviceFailure(f"{self.uri}: the board did not reboot on RESET (boot id unchanged)")

    def telemetry(self) -> dict[str, Any]:
        counters = self.client.counters
        return {
            "board": self.status(),
            "link": {**vars(counters), "frames_rejected": self.client.frames_rejected, "frame_bytes": self.client.frame_bytes,
                     "byte_error_estimate": self.client.byte_error,
                     "program_attempts": self.program_attempts, "verify_failures": self.verify_failures},
        }

    def synchronize(self) -> None:
        """Every board request is answered before its call returns; nothing is queued."""

    def close(self) -> None:
        if self.closed:
            return
        with self._link_lock:
            self.link.close()
        super().close()
