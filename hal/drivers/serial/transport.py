"""The host's end of a board link, on pyserial's ``serial_for_url``.

``port`` in a device URI names the link:

- a serial device (``/dev/ttyUSB0``, ``COM3``) or any pyserial URL (``socket://host:7000``, ``rfc2217://``);
- ``emu``: start the board emulator (``python -m hal.drivers.serial.board --pty``) as a child process
  and open the pseudo-terminal it prints;
- ``loop://``: run the emulator's firmware in this process on a thread, joined to the host by two
  pyserial ``loop://`` ports (host -> board and board -> host). No process, no pty: the quickest
  link, for tests and notebooks.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import serial

try:
    from termios import error as TermiosError
except ImportError:  # not a POSIX system: pyserial reports its port errors as SerialException / OSError only
    TermiosError = OSError

#: Bit times per byte on an 8N1 UART: start bit, 8 data bits, stop bit.
BITS_PER_BYTE = 10
#: Default line rate: 921600 baud, a standard rate that the common USB-UART bridges support
#: (datasheets: FTDI FT232R up to 3 Mbaud, Silicon Labs CP2102N up to 3 Mbaud).
DEFAULT_BAUD = 921_600
#: Seconds the emulator process may take to start (it imports torch and opens its hosted device).
EMULATOR_START_TIMEOUT_S = 120.0


#: Shortest write timeout handed to pyserial: a write timeout of 0 would make its writes non-blocking (a partial
#: write returns silently), so a call out of time still gets this long to finish a frame.
MIN_WRITE_TIMEOUT_S = 1e-3


class LinkLost(ConnectionError):
    """The link is gone (port unplugged, board process ended, socket closed)."""


class LinkStalled(TimeoutError):
    """A write did not finish within its timeout: the board stopped reading (part of the frame may be on the line)."""


@dataclass(frozen=True)
class EmulatorSpec:
    """What to start behind ``port=emu`` / ``port=loop://``."""

    kind: str
    device_options: str = ""
    faults: str = ""
    baud: int = DEFAULT_BAUD


class Link:
    """A byte pipe to a board over one pyserial port."""

    transport = "serial"

    def __init__(self, port: serial.SerialBase, url: str, baud: int):
        self.port = port
        self.url = url
        #: Line rate in baud used for timeouts and line-rate figures (0: no line limit, e.g. a socket or unthrottled pty).
        self.baud = baud

    def write(self, data: bytes, timeout_s: float) -> None:
        """Write ``data`` within ``timeout_s``: LinkStalled if the port takes it no faster, LinkLost if it is gone."""
        try:
            self.port.write_timeout = max(timeout_s, MIN_WRITE_TIMEOUT_S)
            self.port.write(data)
        except serial.SerialTimeoutException:
            raise LinkStalled(f"{self.url} took no more bytes for {timeout_s:.3g} s: the board is not reading") from None
        except (serial.SerialException, OSError) as exc:
            raise LinkLost(f"writing to {self.url} failed: {exc}") from None

    def read(self, timeout_s: float) -> bytes:
        """Whatever arrives within ``timeout_s`` (b"" if nothing)."""
        try:
            self.port.timeout = max(timeout_s, 0.0)
            first = self.port.read(max(1, self.port.in_waiting))
            if first:
                more = self.port.in_waiting
                return first + (self.port.read(more) if more else b"")
            return first
        except (serial.SerialException, OSError) as exc:
            raise LinkLost(f"reading from {self.url} failed: {exc}") from None

    def describe(self) -> dict[str, object]:
        return {"transport": self.transport, "port": self.url, "baud_rate": self.baud}

    def close(self) -> None:
        """Drop unsent output first: a tty holds its close until its output drains, which a stopped board never does."""
        try:
            self.port.reset_output_buffer()
        except (serial.SerialException, OSError, TermiosError):  # a port already gone: nothing left to drop
            pass
        try:
            self.port.close()
        except (serial.SerialException, OSError):
            pass


class EmulatorLink(Link):
    """A pty to a board emulator process this link started (and stops on close)."""

    transport = "pty"

    def __init__(self, spec: EmulatorSpec):
        self.spec = spec
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process; closed in _stop)
        command = [sys.executable, "-m", "hal.drivers.serial.board", "--kind", spec.kind, "--pty", "--baud", str(spec.baud)]
        if spec.device_options:
            command += ["--device-options", spec.device_options]
        if spec.faults:
            command += ["--faults", spec.faults]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)
        path = self._first_line()
        port = serial.serial_for_url(path, baudrate=spec.baud or DEFAULT_BAUD, timeout=0.1, exclusive=True)
        super().__init__(port, path, spec.baud)

    def _first_line(self) -> str:
        deadline = time.monotonic() + EMULATOR_START_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, min(remaining, 0.5)))
            if ready:
                byte = os.read(self.process.stdout.fileno(), 1)
                if byte:
                    line += byte
                    continue
            if self.process.poll() is not None or remaining <= 0:
                self._stop()
                raise LinkLost(f"the board emulator did not start: {self._failure(line)}")
        text = line.decode().strip()
        if text.startswith("ERROR"):
            self._stop()
            raise LinkLost(f"the board emulator refused to start: {text[6:]}")
        return text

    def _failure(self, line: bytes) -> str:
        self._stderr.seek(0)
        tail = self._stderr.read()[-600:].decode(errors="replace").strip()
        return (line.decode(errors="replace") + " " + tail).strip() or f"exit status {self.process.returncode}"

    def read(self, timeout_s: float) -> bytes:
        try:
            return super().read(timeout_s)
        except LinkLost:
            if self.process.poll() is not None:
                raise LinkLost(f"the board emulator behind {self.url} exited (status {self.process.returncode})") from None
            raise

    def _stop(self) -> None:
        """End the emulator with SIGKILL: it keeps nothing that needs an orderly exit, and SIGKILL also ends a stopped
        (SIGSTOP) process at once, where SIGTERM would wait for it to be continued."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self._stderr.close()

    def close(self) -> None:
        super().close()
        self._stop()


class InProcessLink(Link):
    """The emulator's firmware on a thread of this process, joined by two pyserial ``loop://`` ports."""

    transport = "loop"

    def __init__(self, spec: EmulatorSpec):
        from hal.drivers.serial.board import BoardServer, config_for
        from hal.drivers.serial.faults import FaultPlan
        from hal.drivers.serial.firmware import Firmware

        plan = FaultPlan.parse(spec.faults)
        firmware = Firmware(config_for(spec.kind, spec.device_options, plan, 8, 16 << 10, "EMU-LOOP"))
        to_board = serial.serial_for_url("loop://", timeout=0.1)
        to_host = serial.serial_for_url("loop://", timeout=0.1)
        self._board_end = _LoopBoardEnd(to_board, to_host)
        self.server = BoardServer(firmware, self._board_end, plan, spec.baud)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="board-emulator")
        self._thread.start()
        super().__init__(_LoopHostEnd(to_board, to_host), "loop://", spec.baud)

    def write(self, data: bytes, timeout_s: float) -> None:
        """No write timeout: the in-process board drains its queue on a thread of this process, so a write cannot stall
        (and pyserial's loop:// would time writes out against its 9600 baud model of the line)."""
        try:
            self.port.write(data)
        except serial.SerialException as exc:
            raise LinkLost(f"writing to {self.url} failed: {exc}") from None

    def close(self) -> None:
        self.server.close()
        self._thread.join(2.0)


class _LoopHostEnd:
    """Looks like a pyserial port to Link: writes go to the board, reads come from it."""

    def __init__(self, to_board: serial.SerialBase, to_host: serial.SerialBase):
        self._tx, self._rx = to_board, to_host

    @property
    def in_waiting(self) -> int:
        return self._rx.in_waiting

    @property
    def timeout(self) -> float | None:
        return self._rx.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._rx.timeout = value

    def read(self, size: int) -> bytes:
        return self._rx.read(size)

    def write(self, data: bytes) -> int:
        return self._tx.write(data)


class _LoopBoardEnd:
    """The board's side of the loopback pair (a BoardLink)."""

    def __init__(self, to_board: serial.SerialBase, to_host: serial.SerialBase):
        self._rx, self._tx = to_board, to_host

    def read(self, timeout_s: float) -> bytes:
        if not self._rx.is_open:
            raise EOFError("loopback closed")
        self._rx.timeout = timeout_s
        try:
            first = self._rx.read(1)
            return first + (self._rx.read(self._rx.in_waiting) if first and self._rx.in_waiting else b"")
        except serial.SerialException as exc:
            raise EOFError(str(exc)) from None

    def write(self, data: bytes) -> None:
        if self._tx.is_open:
            self._tx.write(data)

    def close(self) -> None:
        self._rx.close()
        self._tx.close()


def open_link(port: str, baud: int, spec: EmulatorSpec) -> Link:
    """Open the link named by ``port`` (see the module docstring); LinkLost if it cannot be opened."""
    if port == "emu":
        return EmulatorLink(spec)
    if port == "loop://":
        return InProcessLink(spec)
    try:
        handle = serial.serial_for_url(port, baudrate=baud, timeout=0.1)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise LinkLost(f"cannot open {port}: {exc}") from None
    link = Link(handle, port, 0 if port.startswith("socket://") else baud)
    if port.startswith("socket://"):
        link.transport = "socket"
    return link
