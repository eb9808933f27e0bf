"""Which serial ports exist, and which of them answer the board handshake (for probe and `hal doctor`).

Every port is tried in parallel with a short timeout and no retries, and the whole scan is bounded, so a
machine with no ports answers at once and a port with a silent or unrelated device costs one timeout.
The handshake sends one HELLO frame; a device that is not a hal board ignores a frame it cannot parse.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import serial
from serial.tools import list_ports

from hal.drivers.serial.client import BoardClient, BoardError, NoAnswer
from hal.drivers.serial.protocol import Command, ProtocolError, decode_json
from hal.drivers.serial.transport import DEFAULT_BAUD, Link, LinkLost

HANDSHAKE_TIMEOUT_S = 0.5


@dataclass
class PortReport:
    """One serial port and what (if anything) answered on it."""

    device: str
    description: str
    hwid: str
    answered: bool = False
    identity: dict[str, object] = field(default_factory=dict)
    kind: str = ""
    simulated: bool = False
    problem: str = ""


def handshake(port: str, baud: int = DEFAULT_BAUD, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> tuple[dict, dict]:
    """HELLO, IDENTIFY, CAPABILITIES on ``port``: the board's identity and capabilities, or an exception."""
    handle = serial.serial_for_url(port, baudrate=baud, timeout=0.05)
    link = Link(handle, port, baud)
    try:
        client = BoardClient(link, timeout_s=timeout_s, retries=0)
        client.hello()
        identity = decode_json(client.call(Command.IDENTIFY).payload, "IDENTIFY")
        capabilities = decode_json(client.call(Command.CAPABILITIES).payload, "CAPABILITIES")
        return identity, capabilities
    finally:
        link.close()


def _try(report: PortReport, baud: int, timeout_s: float) -> None:
    try:
        identity, capabilities = handshake(report.device, baud, timeout_s)
    except NoAnswer:
        report.problem = f"no answer to HELLO within {timeout_s:g} s at {baud} baud"
    except (BoardError, ProtocolError, LinkLost, serial.SerialException, OSError, ValueError) as exc:
        report.problem = f"{type(exc).__name__}: {exc}"
    else:
        report.answered = True
        report.identity = identity
        report.kind = str(capabilities.get("kind", ""))
        report.simulated = bool(capabilities.get("simulated", False))


def scan(baud: int = DEFAULT_BAUD, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> list[PortReport]:
    """Every port pyserial lists, each with the result of a handshake (all tried at once, time-bounded)."""
    reports = [PortReport(p.device, p.description or "", p.hwid or "") for p in sorted(list_ports.comports(), key=lambda p: p.device)]
    threads = [threading.Thread(target=_try, args=(r, baud, timeout_s), daemon=True) for r in reports]
    for t in threads:
        t.start()
    for t, report in zip(threads, reports):
        t.join(timeout_s * 4 + 1.0)
        if t.is_alive():
            report.problem = "the port did not open or close in time"
    return reports
