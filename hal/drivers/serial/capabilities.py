"""A board's Capabilities, from its IDENTIFY and CAPABILITIES answers and what the host measured of the link."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.drivers.serial import protocol as p
from hal.drivers.serial.transport import BITS_PER_BYTE, Link

#: Keys a board's CAPABILITIES answer must hold (docs/serial-protocol.md, section 6.3).
REQUIRED_KEYS = ("kind", "paradigm", "simulated", "ops", "slots", "max_rows", "max_cols", "readback_tolerance")


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


def check_answer(board: dict[str, Any]) -> None:
    """ProtocolError if the CAPABILITIES answer lacks a required key."""
    for key in REQUIRED_KEYS:
        if key not in board:
            raise p.ProtocolError(f"the board's CAPABILITIES answer lacks {key!r} (see docs/serial-protocol.md)")


def board_capabilities(uri: str, kind: str, identity: dict[str, Any], board: dict[str, Any], link: Link,
                       max_payload: int, round_trip: Figure) -> Capabilities:
    """Capabilities of the board: ops and figures as the board declares them, the link as the host measured it."""
    ops = {}
    for name, decl in board["ops"].items():
        ops[name] = OpSupport(tuple(decl["dtypes"]), {k: float(v) for k, v in decl["tolerance"].items()},
                              {k: int(v) for k, v in decl.get("limits", {}).items()}, decl.get("notes", ""))
    source = f"datasheet:CAPABILITIES answer of {identity.get('model', 'the board')} firmware {identity.get('firmware', '?')}"
    line_rate = None
    if link.baud:
        line_rate = Figure.derived(link.baud / BITS_PER_BYTE, "B/s", f"baud / {BITS_PER_BYTE} bit times per byte (8N1) = {link.baud} / {BITS_PER_BYTE}")
    section = BoardSection(
        transport=link.transport, port=link.url, baud_rate=link.baud, framing="COBS + CRC-32/ISO-HDLC, chunked transfers",
        protocol_version=p.PROTOCOL_VERSION, max_payload_bytes=max_payload, slots=int(board["slots"]),
        max_rows=int(board["max_rows"]), max_cols=int(board["max_cols"]), line_rate=line_rate, round_trip=round_trip,
    )
    sections: dict[str, Any] = {k: v for k, v in board.get("sections", {}).items() if k != "board"}
    sections["board"] = section
    peak = _figures(board.get("peak", {}))
    if line_rate is not None:
        peak["link_bytes_per_s"] = line_rate
    memory = Figure(float(board["memory_bytes"]), "B", source) if "memory_bytes" in board else None
    names = {k: str(v) for k, v in identity.items()}
    names.update(port=link.url, transport=link.transport)
    return Capabilities(
        uri=uri, kind=kind, paradigm=Paradigm(board["paradigm"]), simulated=bool(board["simulated"]),
        identity=names, ops=ops, deterministic=bool(board.get("deterministic", True)), memory_bytes=memory,
        peak=peak, energy=_figures(board.get("energy", {})), sections=sections,
        notes=[*board.get("notes", []), "float32 on the wire; results come from the board over the link (write-verified programming)."],
    )


def _figures(table: dict[str, Any]) -> dict[str, Figure]:
    """The board's figures that carry a value, a unit and a source; a figure without provenance is not reported."""
    figures = {}
    for name, d in table.items():
        try:
            figures[name] = Figure(float(d["value"]), str(d["unit"]), str(d["source"]), str(d.get("note", "")))
        except (KeyError, TypeError, ValueError):
            continue
    return figures
