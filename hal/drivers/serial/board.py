"""The board emulator: firmware behind a pseudo-terminal, a TCP socket or a loopback, with fault injection.

    python -m hal.drivers.serial.board --kind memristor --pty            # prints the pty path, e.g. /dev/pts/7
    python -m hal.drivers.serial.board --kind photonic --tcp 7000        # prints socket://127.0.0.1:7000
    python -m hal.drivers.serial.board --kind memristor --pty --baud 115200 --faults drop:0.001,brownout:5

The emulated line is full duplex at ``--baud`` with 8N1 framing (10 bit times per byte): bytes from
the host are delivered to the firmware no faster than the line carries them, and answers leave no
faster either. ``--baud 0`` removes the throttle (pty speed). ``hal.device("memristor:0?port=emu")``
starts this process itself; see ``faults.py`` for the fault plan.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import select
import socket
import sys
import threading
import time
import tty
from typing import Protocol

from hal.drivers.serial.faults import ByteFaults, FaultPlan
from hal.drivers.serial.firmware import BoardConfig, Firmware
from hal.drivers.serial.framing import FrameDecoder, encode_frame
from hal.drivers.serial.protocol import HEADER_BYTES, Command
from hal.drivers.serial.transport import BITS_PER_BYTE, DEFAULT_BAUD


class BoardLink(Protocol):
    """The board's end of a link."""

    def read(self, timeout_s: float) -> bytes: ...  # b"" when nothing arrived; EOFError when the link is gone
    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class PtyLink:
    """The master side of a pseudo-terminal; the host opens the slave path like any serial port."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline: a binary 8-bit clean line
        self.path = os.ttyname(self._slave)

    def read(self, timeout_s: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if not ready:
            return b""
        try:
            return os.read(self.master, 65536)
        except OSError as exc:
            raise EOFError(f"pty closed ({exc})") from None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view):]

    def close(self) -> None:
        for fd in (self.master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


class TcpLink:
    """A TCP listener that serves one host connection at a time (pyserial's ``socket://`` connects to it)."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self._server = socket.create_server((host, port))
        self.url = f"socket://{host}:{self._server.getsockname()[1]}"
        self._conn: socket.socket | None = None

    def _connection(self, timeout_s: float) -> socket.socket | None:
        if self._conn is None:
            ready, _, _ = select.select([self._server], [], [], timeout_s)
            if ready:
                self._conn, _ = self._server.accept()
                self._conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn

    def read(self, timeout_s: float) -> bytes:
        conn = self._connection(timeout_s)
        if conn is None:
            return b""
        ready, _, _ = select.select([conn], [], [], timeout_s)
        if not ready:
            return b""
        data = conn.recv(65536)
        if not data:  # the host hung up: wait for the next one
            conn.close()
            self._conn = None
        return data

    def write(self, data: bytes) -> None:
        if self._conn is not None:
            try:
                self._conn.sendall(data)
            except OSError:
                self._conn = None

    def close(self) -> None:
        for s in (self._conn, self._server):
            if s is not None:
                s.close()


class LineClock:
    """When bytes of one direction of an emulated UART finish arriving: each byte takes 10 bit times.

    A transfer starts when the line is free and its bytes are ready, whichever is later; lateness of the
    emulator's own thread (sleep overshoot) is not charged to the line, so a continuous stream runs at the
    line rate rather than below it.
    """

    def __init__(self, baud: int):
        self.byte_time_s = BITS_PER_BYTE / baud if baud else 0.0
        self.free_at = 0.0

    def wait(self, n_bytes: int, ready_at: float | None = None) -> None:
        """Block until ``n_bytes`` that were ready at ``ready_at`` (default: now) have been carried."""
        if not self.byte_time_s:
            return
        now = time.perf_counter()
        self.free_at = max(self.free_at, now if ready_at is None else ready_at) + n_bytes * self.byte_time_s
        delay = self.free_at - now
        if delay > 0:
            time.sleep(delay)


#: A read that finds bytes waiting within this many seconds of the line falling free continues a stream.
STREAM_GAP_S = 0.002


class BoardServer:
    """Runs firmware on a link: receive (paced, faults applied), decode, answer (delayed, faults, paced)."""

    def __init__(self, firmware: Firmware, link: BoardLink, plan: FaultPlan | None = None, baud: int = DEFAULT_BAUD):
        plan = plan or FaultPlan()
        self.firmware = firmware
        self.link = link
        self.plan = plan
        self.rx_clock = LineClock(baud)
        self.tx_clock = LineClock(baud)
        self.tx_chunk = max(16, baud // BITS_PER_BYTE // 1000) if baud else 1 << 16
        self.rx_faults = ByteFaults(plan, 0)
        self.tx_faults = ByteFaults(plan, 1)
        self.delay_rng = random.Random(plan.seed * 2 + 2)
        self.decoder = FrameDecoder()
        self.stop = threading.Event()
        self.frames_seen = 0
        self.runs_seen = 0
        self._inbox: queue.Queue[bytes | None] = queue.Queue()
        self._outbox: queue.Queue[tuple[bytes | None, float]] = queue.Queue()

    def _receive(self) -> None:
        while not self.stop.is_set():
            asked = time.perf_counter()
            try:
                data = self.link.read(0.2)
            except (EOFError, OSError):
                break
            if data:
                waiting = time.perf_counter() - asked < STREAM_GAP_S and asked - self.rx_clock.free_at < STREAM_GAP_S
                self.rx_clock.wait(len(data), self.rx_clock.free_at if waiting else None)
                self._inbox.put(self.rx_faults.apply(data))
        self._inbox.put(None)

    def serve_forever(self, parent_pid: int | None = None) -> None:
        """Serve until ``stop`` is set, the link closes, a disconnect fault fires, or the parent process dies."""
        threading.Thread(target=self._receive, daemon=True, name="board-rx").start()
        transmitter = threading.Thread(target=self._transmit, daemon=True, name="board-tx")
        transmitter.start()
        while not self.stop.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                break
            try:
                data = self._inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            if data is None:
                break
            for raw in self.decoder.feed(data):
                if not self._serve_frame(raw):
                    self.close()
                    return
            self.firmware.counters.rx_bad_crc = self.decoder.bad_crc
            self.firmware.counters.rx_bad_frame = self.decoder.bad_cobs + self.decoder.too_short + self.decoder.oversize
        self.close()

    def _serve_frame(self, raw: bytes) -> bool:
        """Answer one frame; False when a disconnect fault ends the link."""
        self.frames_seen += 1
        if self.plan.disconnect and self.frames_seen >= self.plan.disconnect:
            return False
        if len(raw) > 1 and raw[1] == Command.RUN and len(raw) >= HEADER_BYTES:
            self.runs_seen += 1
            if self.runs_seen == self.plan.brownout:
                self.firmware.reboot()
                return True
        reply = self.firmware.handle(raw)
        if reply is not None:
            if self.plan.delay and self.delay_rng.random() < self.plan.delay_p:
                time.sleep(self.plan.delay)
            self._send(self.tx_faults.apply(encode_frame(reply.pack())))
        if self.firmware.reboot_requested:
            self.firmware.reboot()
        return True

    def _send(self, wire: bytes) -> None:
        """Queue an answer for the transmitter (like a UART's DMA transmit: the firmware goes on with the next request)."""
        self._outbox.put((wire, time.perf_counter()))

    def _transmit(self) -> None:
        while True:
            wire, queued_at = self._outbox.get()
            if wire is None:
                return
            for start in range(0, len(wire), self.tx_chunk):
                chunk = wire[start:start + self.tx_chunk]
                self.tx_clock.wait(len(chunk), queued_at)
                try:
                    self.link.write(chunk)
                except (EOFError, OSError):
                    return

    def close(self) -> None:
        self.stop.set()
        self._outbox.put((None, 0.0))
        self.link.close()


def config_for(kind: str, device_options: str, plan: FaultPlan, slots: int, max_payload: int, serial_number: str) -> BoardConfig:
    return BoardConfig(kind=kind, device_options=device_options, slots=slots, max_payload=max_payload,
                       stuck_cells=plan.stuck, stuck_seed=plan.seed, serial_number=serial_number)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hal.drivers.serial.board", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", required=True, help="hosted hal device kind: memristor, photonic, cpu")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal and print its path")
    where.add_argument("--tcp", type=int, metavar="PORT", help="serve on 127.0.0.1:PORT (0 picks one) and print its socket:// URL")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD, help=f"emulated line rate, 8N1 (default {DEFAULT_BAUD}; 0 = unthrottled)")
    parser.add_argument("--device-options", default="", help="options of the hosted device, e.g. 'tile=128&seed=0'")
    parser.add_argument("--faults", default="", help="fault plan, e.g. 'drop:0.001,brownout:5' (see hal/drivers/serial/faults.py)")
    parser.add_argument("--slots", type=int, default=BoardConfig.slots, help="weight slots")
    parser.add_argument("--max-payload", type=int, default=BoardConfig.max_payload, help="largest payload in bytes")
    parser.add_argument("--serial-number", default=f"EMU-{os.getpid()}", help="serial number reported by IDENTIFY")
    args = parser.parse_args(argv)
    try:
        plan = FaultPlan.parse(args.faults)
        firmware = Firmware(config_for(args.kind, args.device_options, plan, args.slots, args.max_payload, args.serial_number))
    except Exception as exc:  # noqa: BLE001 (the parent reads this line and reports it)
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        return 2
    link: BoardLink
    if args.pty:
        link = PtyLink()
        print(link.path, flush=True)
    else:
        link = TcpLink(args.tcp)
        print(link.url, flush=True)
    BoardServer(firmware, link, plan, args.baud).serve_forever(parent_pid=os.getppid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
