"""BoardDevice: a memristor, photonic (or any matrix-vector) board reached over a serial link.

``hal.device("memristor:0?port=/dev/ttyUSB0")`` speaks the board protocol (docs/serial-protocol.md) on that
port; ``?port=emu`` starts the board emulator behind a pseudo-terminal (hosting ``memristor:0`` through the
registry), ``?port=loop://`` runs it in this process, ``?port=socket://host:7000`` reaches one over TCP.
The device's kind is the board's kind: the board's CAPABILITIES answer must name it.

Integrity: programming is write-verify (stage, commit with a CRC of the staged values, read back what the
array holds and compare within the board's declared tolerance); every frame carries a CRC-32 and a
sequence number, and lost or corrupted answers are asked again; an answer from a new board session (a
reboot) makes the driver say HELLO again, reprogram what it had programmed and repeat the request. A
result is returned only when the board answered it intact with status OK.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.device import Check, Cost, Device, DeviceInfo, DeviceURI, OpSpec, Option, Program, Support, bounded_float, bounded_int
from hal.drivers.serial import protocol as p
from hal.drivers.serial.client import BoardClient, BoardError, BoardReset, LinkCounters, NoAnswer, Request
from hal.drivers.serial.faults import FaultPlan
from hal.drivers.serial.framing import crc32, encoded_limit
from hal.drivers.serial.protocol import Command, ProtocolError, Status
from hal.drivers.serial.transport import BITS_PER_BYTE, DEFAULT_BAUD, EmulatorSpec, LinkLost, open_link
from hal.errors import CapacityExceeded, DeviceFailure, DeviceUnavailable, InvalidInput

#: Times one operation may meet a rebooted board (each time: HELLO, reprogram, repeat) before giving up.
MAX_RECOVERIES = 3
#: Programming attempts before write-verify declares the array defective.
PROGRAM_ATTEMPTS = 2
#: A read-back cell fails verification when it is further from the written value than this many
#: standard deviations of the per-cell error the board's tolerance allows (tolerance * rms of the matrix).
VERIFY_SIGMAS = 6.0
#: STATUS round trips timed at open for the measured round-trip figure.
RTT_SAMPLES = 5
EMULATED = ("emu", "loop://")


def _faults(text: str) -> str:
    return str(FaultPlan.parse(text))


@dataclass
class BoardSection:
    """The ``board`` capability section: how the board is reached and what the link can carry."""

    transport: str
    port: str
    baud_rate: int
    framing: str
    protocol_version: int
    max_payload_bytes: int
    slots: int
    max_rows: int
    max_cols: int
    line_rate: Figure | None
    round_trip: Figure


@dataclass
class Resident:
    """A matrix the host keeps so it can program a slot, and program it again after an eviction or a reboot."""

    weight: np.ndarray  # (rows, cols) float32
    bias: np.ndarray | None
    relu: bool
    slot: int | None = None
    session: int = 0

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    @property
    def cols(self) -> int:
        return self.weight.shape[1]

    def values(self) -> np.ndarray:
        flat = self.weight.reshape(-1)
        return np.concatenate([flat, self.bias]) if self.bias is not None else flat


class BoardDevice(Device):
    """A board behind a serial link; its kind, ops and figures come from the board's own answers."""

    kind = "serial"
    refuses_nonfinite = True
    OPTIONS = {
        "port": Option(str, None, "the link: a serial device (/dev/ttyUSB0, COM3), a pyserial URL (socket://host:port), 'emu' (board emulator on a pty) or 'loop://' (emulator in this process)"),
        "baud": Option(bounded_int(0), DEFAULT_BAUD, f"line rate in baud, 8N1 (default {DEFAULT_BAUD}); for emulated boards the rate they emulate, 0 = unthrottled"),
        "timeout_s": Option(bounded_float(0, include_low=False), 1.0, "seconds to wait for an answer beyond the time its bytes take on the line"),
        "retries": Option(bounded_int(0), 3, "times an idempotent request is resent after a timeout or a corrupted answer"),
        "window": Option(bounded_int(1, 32), 4, "requests in flight at once (1 = stop-and-wait)"),
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
        self._residents: list[Resident | None] = []
        self._use_order: list[int] = []
        self._estimates: dict[tuple[int, int, int], dict[str, Any]] = {}
        self._seed: int | None = None
        self.program_attempts = 0
        self.verify_failures = 0
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
        except (NoAnswer, LinkLost, BoardError, BoardReset, ProtocolError) as exc:
            self.link.close()
            raise DeviceUnavailable(str(self.uri), f"no board answered the handshake on {port}: {exc}",
                                    "check the cable, power and baud rate (?baud=), and that the board runs hal protocol firmware") from None
        except BaseException:
            self.link.close()
            raise

    def _handshake(self) -> None:
        self.client.hello()
        self.identity = p.decode_json(self.client.call(Command.IDENTIFY).payload, "IDENTIFY")
        self.board = p.decode_json(self.client.call(Command.CAPABILITIES).payload, "CAPABILITIES")
        for key in ("kind", "paradigm", "simulated", "ops", "slots", "max_rows", "max_cols", "readback_tolerance"):
            if key not in self.board:
                raise ProtocolError(f"the board's CAPABILITIES answer lacks {key!r} (see docs/serial-protocol.md)")
        if self.board["kind"] != self.kind:
            raise DeviceUnavailable(str(self.uri), f"the board on {self.options['port']} is a {self.board['kind']!r} board, not {self.kind!r}",
                                    f"open it as {self.board['kind']}:{self.index}?port={self.options['port']}")
        self._residents = [None] * int(self.board["slots"])
        timings = []
        for _ in range(RTT_SAMPLES):
            start = time.perf_counter()
            self.client.call(Command.STATUS, answer_bytes=p.STATUS_RESPONSE.size)
            timings.append(time.perf_counter() - start)
        self.round_trip_s = statistics.median(timings)

    # ---- discovery
    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        """Emulated boards for the kinds whose drivers are installed, and every port that answers the handshake."""
        from hal import registry
        from hal.drivers.serial import discovery

        infos = []
        for kind in ("memristor", "photonic"):
            if kind in registry.drivers():
                hosted = registry.probe(kind)
                available = any(i.available for i in hosted)
                reason = "" if available else f"the board emulator hosts {kind}:0, which is unavailable: {hosted[0].reason if hosted else 'not probed'}"
                infos.append(DeviceInfo(uri=f"{kind}:0?port=emu", kind=kind, available=available, reason=reason,
                                        fix="" if available else f"see `hal doctor` for {kind}", simulated=True,
                                        summary={"transport": "pty", "emulator": "python -m hal.drivers.serial.board"}))
        try:
            reports = discovery.scan()
        except Exception as exc:  # noqa: BLE001 (probe never raises)
            return infos + [DeviceInfo(uri="serial:0", kind="serial", available=False, reason=f"listing serial ports failed: {exc}", fix="check pyserial (pip install 'hal[serial]')")]
        counts: dict[str, int] = {}
        for report in reports:
            if report.answered:
                index = counts.get(report.kind, 0)
                counts[report.kind] = index + 1
                infos.append(DeviceInfo(uri=f"{report.kind}:{index}?port={report.device}", kind=report.kind, available=True,
                                        simulated=report.simulated, summary={k: str(v) for k, v in report.identity.items()}))
        return infos

    @classmethod
    def diagnose(cls) -> list[Check]:
        """Libraries, pseudo-terminals, and every serial port with the result of its handshake."""
        import os

        import cobs
        import crcmod
        import serial

        from hal.drivers.serial import discovery

        checks = [Check("serial libraries", True, f"pyserial {serial.__version__}, cobs {getattr(cobs, '__version__', 'installed')}, crcmod {getattr(crcmod, '__version__', 'installed')}")]
        try:
            master, slave = os.openpty()
            os.close(master)
            os.close(slave)
            checks.append(Check("pseudo-terminals (board emulator)", True, "os.openpty works: ?port=emu is usable"))
        except OSError as exc:
            checks.append(Check("pseudo-terminals (board emulator)", False, str(exc), "use ?port=loop:// (in-process emulator) instead"))
        reports = discovery.scan()
        if not reports:
            checks.append(Check("serial ports", True, "no serial ports found", "connect a board, or use ?port=emu"))
        for r in reports:
            detail = f"{r.kind} board {r.identity.get('model', '')} firmware {r.identity.get('firmware', '?')}" if r.answered else r.problem
            checks.append(Check(f"serial port {r.device} ({r.description})", r.answered, detail, "" if r.answered else "not a hal board, wrong baud, or board unpowered"))
        return checks

    # ---- capabilities
    def _build_capabilities(self) -> Capabilities:
        b = self.board
        ops = {}
        for name, decl in b["ops"].items():
            ops[name] = OpSupport(tuple(decl["dtypes"]), {k: float(v) for k, v in decl["tolerance"].items()},
                                  {k: int(v) for k, v in decl.get("limits", {}).items()}, decl.get("notes", ""))
        source = f"datasheet:CAPABILITIES answer of {self.identity.get('model', 'the board')} firmware {self.identity.get('firmware', '?')}"
        line_rate = None
        if self.link.baud:
            line_rate = Figure.derived(self.link.baud / BITS_PER_BYTE, "B/s", f"baud / {BITS_PER_BYTE} bit times per byte (8N1) = {self.link.baud} / {BITS_PER_BYTE}")
        section = BoardSection(
            transport=self.link.transport, port=self.link.url, baud_rate=self.link.baud, framing="COBS + CRC-32/ISO-HDLC",
            protocol_version=p.PROTOCOL_VERSION, max_payload_bytes=self.client.max_payload, slots=int(b["slots"]),
            max_rows=int(b["max_rows"]), max_cols=int(b["max_cols"]), line_rate=line_rate,
            round_trip=Figure.measured(self.round_trip_s, "s", f"median of {RTT_SAMPLES} STATUS round trips at open"),
        )
        sections: dict[str, Any] = {k: v for k, v in b.get("sections", {}).items() if k != "board"}
        sections["board"] = section
        peak = self._figures(b.get("peak", {}))
        if line_rate is not None:
            peak["link_bytes_per_s"] = line_rate
        memory = Figure(float(b["memory_bytes"]), "B", source) if "memory_bytes" in b else None
        identity = {k: str(v) for k, v in self.identity.items()}
        identity.update(port=self.link.url, transport=self.link.transport)
        return Capabilities(
            uri=str(self.uri), kind=self.kind, paradigm=Paradigm(b["paradigm"]), simulated=bool(b["simulated"]),
            identity=identity, ops=ops, deterministic=bool(b.get("deterministic", True)), memory_bytes=memory,
            peak=peak, energy=self._figures(b.get("energy", {})), sections=sections,
            notes=[*b.get("notes", []), "float32 on the wire; results come from the board over the link (write-verified programming)."],
        )

    @staticmethod
    def _figures(table: dict[str, Any]) -> dict[str, Figure]:
        figures = {}
        for name, d in table.items():
            try:
                figures[name] = Figure(float(d["value"]), str(d["unit"]), str(d["source"]), str(d.get("note", "")))
            except (KeyError, TypeError, ValueError):
                continue  # a figure without provenance is not reported
        return figures

    # ---- support and cost
    def _check(self, op: OpSpec) -> Support | None:
        rows, cols = self._matrix_shape(op)
        limit_rows, limit_cols = int(self.board["max_rows"]), int(self.board["max_cols"])
        if rows > limit_rows or cols > limit_cols:
            return Support.no(f"{self.uri} holds matrices up to {limit_rows}x{limit_cols} (out x in); this {op.name} needs {rows}x{cols}. Split the layer.")
        if op.name == "linear" and op.attr("activation") not in ("none", "relu"):
            return Support.no(f"{self.uri} applies activation 'none' or 'relu' after the array, not {op.attr('activation')!r}")
        per_vector = max(p.RUN.size + cols * 4, p.RUN_RESPONSE.size + rows * 4)
        if per_vector > self.client.max_payload:
            return Support.no(f"one {cols}-in/{rows}-out vector needs {per_vector} payload bytes; the board's frames carry {self.client.max_payload}")
        return None

    @staticmethod
    def _matrix_shape(op: OpSpec) -> tuple[int, int]:
        """(rows, cols) = (out, in) of the matrix programmed into the array for ``op``."""
        if op.name == "matmul":
            b = op.inputs[1].shape
            return b[-1] or 1, b[-2] or 1
        weight = op.param("weight")
        return weight.shape[0], weight.shape[1]

    @staticmethod
    def _batch(op: OpSpec) -> int:
        shape = op.inputs[0].shape[:-1]
        return math.prod(s or 1 for s in shape) if shape else 1

    def estimate(self, op: OpSpec) -> Cost:
        """Line time of the bytes each way (full duplex: the larger direction bounds a pipelined stream) plus one
        measured round trip, plus the board's own compute estimate (ESTIMATE command); matmul adds programming."""
        rows, cols = self._matrix_shape(op)
        batch = self._batch(op)
        compute = self._board_estimate(rows, cols, batch)
        byte_time = BITS_PER_BYTE / self.link.baud if self.link.baud else 0.0
        to_board = encoded_limit(p.HEADER_BYTES + p.RUN.size + batch * cols * 4)
        to_host = encoded_limit(p.HEADER_BYTES + p.RUN_RESPONSE.size + batch * rows * 4)
        latency = max(to_board, to_host) * byte_time + self.round_trip_s + compute["latency_s"]
        formula = f"max(request, answer bytes) * {BITS_PER_BYTE} / baud + measured round trip + board compute ({compute['formula']})"
        if op.name == "matmul":
            latency += 2 * rows * cols * 4 * byte_time  # write and read back the second operand
            formula += " + programming (write + read back of the second operand)"
        return Cost(latency, float(compute["energy_j"]), float(compute["error"]), formula)

    def _board_estimate(self, rows: int, cols: int, batch: int) -> dict[str, Any]:
        key = (rows, cols, batch)
        if key not in self._estimates:
            answer = self._call(lambda: self.client.call(Command.ESTIMATE, p.ESTIMATE.pack(rows, cols, batch), 256))
            self._estimates[key] = p.decode_json(answer.payload, "ESTIMATE")
        return self._estimates[key]

    # ---- programs
    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        if op.name == "linear":
            weight = params["weight"].detach().to("cpu", torch.float32).numpy().copy()
            bias = params.get("bias")
            resident = Resident(weight, None if bias is None else bias.detach().to("cpu", torch.float32).numpy().copy(), op.attr("activation") == "relu")
            self._call(lambda: self._ensure_programmed(resident))

            def run_linear(x: torch.Tensor) -> torch.Tensor:
                flat = x.detach().to("cpu", torch.float32).reshape(-1, resident.cols).numpy()
                y = self._call(lambda: self._mvm(resident, flat))
                return torch.from_numpy(y).reshape(*x.shape[:-1], resident.rows)

            return Program(op, self, self.estimate(op), run_linear)

        def run_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            a3 = a.detach().to("cpu", torch.float32).expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
            b3 = b.detach().to("cpu", torch.float32).expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
            if b.dim() == 2:  # one matrix for every batch element: program it once
                resident = Resident(b3[0].T.contiguous().numpy(), None, False)
                y = self._call(lambda: self._mvm(resident, a3.reshape(-1, a.shape[-1]).numpy()))
                return torch.from_numpy(y).reshape(*batch, a.shape[-2], b.shape[-1])
            outs = [torch.from_numpy(self._matmul_one(ai.numpy(), bi.numpy())) for ai, bi in zip(a3, b3)]
            return torch.stack(outs).reshape(*batch, a.shape[-2], b.shape[-1])

        return Program(op, self, self.estimate(op), run_matmul)

    def _matmul_one(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a @ b with b (K, N) programmed as an N x K matrix and a's rows streamed through it."""
        resident = Resident(np.ascontiguousarray(b.T), None, False)
        return self._call(lambda: self._mvm(resident, a))

    def _call(self, action):
        """Run a board action holding the link; a reboot is recovered from, link and board failures become hal errors."""
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
                    raise DeviceFailure(f"{self.uri}: the board stopped answering ({exc}). Check the link; `hal doctor` tries the port.") from None
                except BoardError as exc:
                    raise self._translate(exc) from None
            raise DeviceFailure(f"{self.uri}: the board rebooted {MAX_RECOVERIES + 1} times during one operation; check its power supply")

    def _recover(self) -> None:
        """After a reboot: a new session, nothing programmed any more, the seed given again."""
        self._residents = [None] * len(self._residents)
        self._use_order.clear()
        self.client.hello()
        if self._seed is not None:
            self.client.call(Command.SEED, p.SEED.pack(self._seed))

    def _translate(self, exc: BoardError) -> Exception:
        if exc.status == Status.CAPACITY:
            return CapacityExceeded(f"{self.uri}: {exc.text}")
        if exc.status == Status.INVALID_VALUE:
            return InvalidInput(f"{self.uri}: {exc.text}")
        return DeviceFailure(f"{self.uri}: {exc}")

    def _ensure_programmed(self, resident: Resident) -> None:
        slot = resident.slot
        if slot is not None and self._residents[slot] is resident and resident.session == self.client.session:
            self._touch(slot)
            return
        free = [i for i, r in enumerate(self._residents) if r is None]
        slot = free[0] if free else self._use_order[0]
        evicted = self._residents[slot]
        if evicted is not None:
            evicted.slot = None
        self._residents[slot] = None
        self._write_verify(slot, resident)
        resident.slot, resident.session = slot, self.client.session
        self._residents[slot] = resident
        self._touch(slot)

    def _touch(self, slot: int) -> None:
        if slot in self._use_order:
            self._use_order.remove(slot)
        self._use_order.append(slot)

    def _write_verify(self, slot: int, resident: Resident) -> None:
        """Stage, commit (CRC of the staged bytes), read back and compare; refuse the program if cells disagree."""
        values = resident.values().astype(np.float32)
        problem = ""
        for _ in range(PROGRAM_ATTEMPTS):
            self.program_attempts += 1
            self._program(slot, resident, values)
            problem = self._verify(resident, self._read_back(slot, values.size))
            if not problem:
                return
            self.verify_failures += 1
        raise DeviceFailure(f"{self.uri}: write-verify of slot {slot} failed {PROGRAM_ATTEMPTS} times: {problem}. "
                            "The array has defective cells; use another board or map the layer around them.")

    def _program(self, slot: int, resident: Resident, values: np.ndarray) -> None:
        flags = (p.FLAG_BIAS if resident.bias is not None else 0) | (p.FLAG_RELU if resident.relu else 0)
        chunk = (self.client.max_payload - p.PROGRAM_WRITE.size) // 4
        requests = [Request(Command.PROGRAM_BEGIN, p.PROGRAM_BEGIN.pack(slot, resident.rows, resident.cols, flags))]
        requests += [Request(Command.PROGRAM_WRITE, p.PROGRAM_WRITE.pack(slot, start) + p.floats_to_bytes(values[start:start + chunk]))
                     for start in range(0, values.size, chunk)]
        self.client.exchange(requests[:1])  # BEGIN must land before the writes it sizes
        self.client.exchange(requests[1:])
        commit = Request(Command.PROGRAM_COMMIT, p.PROGRAM_COMMIT.pack(slot, crc32(p.floats_to_bytes(values))), busy_s=float(self.board.get("program_time_s", 0.0)))
        self.client.exchange([commit])

    def _read_back(self, slot: int, size: int) -> np.ndarray:
        chunk = self.client.max_payload // 4
        requests = [Request(Command.READBACK, p.READBACK.pack(slot, start, min(chunk, size - start)), min(chunk, size - start) * 4)
                    for start in range(0, size, chunk)]
        answers = self.client.exchange(requests)
        realized = np.concatenate([p.bytes_to_floats(a.payload, "READBACK answer") for a in answers])
        if realized.size != size:
            raise DeviceFailure(f"{self.uri}: read back {realized.size} values of a {size}-value slot")
        return realized

    def _verify(self, resident: Resident, realized: np.ndarray) -> str:
        """'' if the read-back matches the written matrix within the board's tolerance, else what disagrees."""
        tolerance = float(self.board["readback_tolerance"])
        n = resident.rows * resident.cols
        written, read = resident.weight.reshape(-1).astype(np.float64), realized[:n].astype(np.float64)
        if not np.isfinite(read).all():
            return "the board read back NaN/inf"
        scale = float(np.sqrt(np.mean(written ** 2))) or 1.0
        error = np.abs(read - written)
        band = VERIFY_SIGMAS * tolerance * scale
        bad = np.flatnonzero(error > band)
        relative = float(np.linalg.norm(read - written) / (np.linalg.norm(written) or 1.0))
        allowed = int(float(self.board.get("defect_allowance", 0.0)) * n)
        if bad.size <= allowed and relative <= tolerance:
            return ""
        worst = int(np.argmax(error))
        r, c = divmod(worst, resident.cols)
        return (f"{bad.size} of {n} cells (the board allows {allowed}) differ from the written weights by more than {band:.3g} "
                f"(worst: cell ({r}, {c}) written {written[worst]:.4g}, read {read[worst]:.4g}); "
                f"relative error {relative:.3g} vs tolerance {tolerance:.3g}")

    def _mvm(self, resident: Resident, x: np.ndarray) -> np.ndarray:
        """y = x W^T (+ b) on the board, ``x`` (batch, cols) split into frames that fit the payload limit."""
        self._ensure_programmed(resident)
        slot = resident.slot
        per_request = max(1, min((self.client.max_payload - p.RUN.size) // (resident.cols * 4),
                                 (self.client.max_payload - p.RUN_RESPONSE.size) // (resident.rows * 4)))
        requests = [Request(Command.RUN, p.RUN.pack(slot, len(part)) + p.floats_to_bytes(part), p.RUN_RESPONSE.size + len(part) * resident.rows * 4)
                    for part in (x[i:i + per_request] for i in range(0, len(x), per_request))]
        outputs = []
        for request, answer in zip(requests, self.client.exchange(requests)):
            (batch, rows), data = p.unpack(p.RUN_RESPONSE, answer.payload, "RUN answer", trailing=True)
            y = p.bytes_to_floats(data, "RUN answer")
            sent = (len(request.payload) - p.RUN.size) // (4 * resident.cols)
            if batch != sent or rows != resident.rows or y.size != batch * rows:
                raise DeviceFailure(f"{self.uri}: RUN answer holds {batch}x{rows} values ({y.size} floats) for a {sent}x{resident.rows} request")
            outputs.append(y.reshape(batch, rows))
        return np.concatenate(outputs) if outputs else np.zeros((0, resident.rows), np.float32)

    # ---- lifecycle
    def manual_seed(self, seed: int) -> None:
        """Seed the board's noise sources (the emulator seeds its hosted device); repeated after a reboot."""
        self._seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self._call(lambda: self.client.call(Command.SEED, p.SEED.pack(self._seed)))

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
                self.client.call(Command.RESET)
            except NoAnswer:
                pass  # the answer may be lost with the reboot; the new session below tells
            except (LinkLost, BoardError) as exc:
                raise DeviceFailure(f"{self.uri}: RESET failed ({exc})") from None
            self._call(self._recover)
            if self.client.session == before:
                raise DeviceFailure(f"{self.uri}: the board did not reboot on RESET (boot id unchanged)")

    def telemetry(self) -> dict[str, Any]:
        counters: LinkCounters = self.client.counters
        return {
            "board": self.status(),
            "link": {**vars(counters), "frames_rejected": self.client.frames_rejected,
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
