"""Which serial ports to probe for boards, and what answers on them (for probe and `hal doctor`).

Probing writes a HELLO frame to a port, and a device that is not a hal board (a modem, a 3D printer, a
console, a PLC) may act on bytes it did not expect. So hal probes only ports it was given: those listed in
the ``HAL_SERIAL_PORTS`` environment variable (comma-separated, e.g. ``/dev/ttyUSB0,socket://lab-pc:7000``).
Without it, nothing is written anywhere; a board is still opened by naming its port in a device URI
(``memristor:0?port=/dev/ttyUSB0``). Listing the ports the system has (``serial.tools.list_ports``) only
reads the system's device tables.

The listed ports are tried in parallel with a short timeout and no retries, and the whole scan is bounded,
so a port with a silent or unrelated device costs one timeout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import serial
from serial.tools import list_ports

from hal.drivers.serial.client import BoardClient, NoAnswer
from hal.drivers.serial.transport import DEFAULT_BAUD, Link
from hal.errors import DeviceFailure

HANDSHAKE_TIMEOUT_S = 0.5
#: The environment variable that opts ports in to probing.
PORTS_VARIABLE = "HAL_SERIAL_PORTS"
OPT_IN = (f"set {PORTS_VARIABLE} to the ports to probe (e.g. {PORTS_VARIABLE}=/dev/ttyUSB0,socket://lab-pc:7000), "
          "or open a board by naming its port: hal.device('memristor:0?port=/dev/ttyUSB0') (an emulated one: ?port=emu)")


@dataclass
class PortReport:
    """One serial port and what (if anything) answered on it."""

    device: str
    description: str = ""
    hwid: str = ""
    answered: bool = False
    identity: dict[str, object] = field(default_factory=dict)
    kind: str = ""
    simulated: bool = False
    problem: str = ""


def configured_ports(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The ports the user opted in to probing (``HAL_SERIAL_PORTS``), in the order given, without repeats."""
    ports = [part.strip() for part in environ.get(PORTS_VARIABLE, "").split(",")]
    return list(dict.fromkeys(port for port in ports if port))


def system_ports() -> list[PortReport]:
    """The serial ports the system lists, with their descriptions (nothing is opened or written)."""
    return [PortReport(p.device, p.description or "", p.hwid or "") for p in sorted(list_ports.comports(), key=lambda p: p.device)]


def handshake(port: str, baud: int = DEFAULT_BAUD, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> tuple[dict, dict]:
    """HELLO, IDENTIFY, CAPABILITIES on ``port``: the board's identity and capabilities, or an exception."""
    handle = serial.serial_for_url(port, baudrate=baud, timeout=0.05)
    link = Link(handle, port, baud)
    try:
        return BoardClient(link, timeout_s=timeout_s, retries=0).identify()
    finally:
        link.close()


def _try(report: PortReport, baud: int, timeout_s: float) -> None:
    try:
        identity, capabilities = handshake(report.device, baud, timeout_s)
    except NoAnswer:
        report.problem = f"no answer to the handshake within {timeout_s:g} s at {baud} baud"
    except (DeviceFailure, ConnectionError, serial.SerialException, OSError, ValueError) as exc:
        report.problem = f"{type(exc).__name__}: {exc}"
    else:
        report.answered = True
        report.identity = identity
        report.kind = str(capabilities.get("kind", ""))
        report.simulated = bool(capabilities.get("simulated", False))


def scan(ports: list[str], baud: int = DEFAULT_BAUD, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> list[PortReport]:
    """The handshake on each of ``ports`` (all tried at once, time-bounded), described as the system lists them."""
    known = {r.device: r for r in system_ports()}
    reports = [PortReport(port, known[port].description, known[port].hwid) if port in known else PortReport(port) for port in ports]
    threads = [threading.Thread(target=_try, args=(r, baud, timeout_s), daemon=True) for r in reports]
    for t in threads:
        t.start()
    for t, report in zip(threads, reports):
        t.join(timeout_s * 4 + 1.0)
        if t.is_alive():
            report.problem = "the port did not open or close in time"
    return reports
