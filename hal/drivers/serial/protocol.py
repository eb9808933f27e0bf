"""The board wire protocol, version 2: message header, command codes, status codes, payload layouts.

A message is a 9-byte little-endian header followed by a command-specific payload::

    offset size field
    0      1    version   protocol version (PROTOCOL_VERSION)
    1      1    command   command code; a response carries the request's code | RESPONSE_BIT
    2      2    seq       sequence number chosen by the host, echoed in the response
    4      4    session   requests: the board session (boot id) the host believes is current, 0 if none;
                          responses: the board's current boot id
    8      1    status    requests: 0; responses: a Status code

``framing.py`` wraps a message with a CRC-32 and COBS for the wire. A message longer than the host's current
frame limit travels as a *transfer*: numbered chunks, each in its own frame with its own CRC (PUT toward the
board, GET back), so a corrupted byte costs one chunk, not the message (``client.py``). This module only packs
and unpacks messages and their payloads; it does no I/O. ``docs/serial-protocol.md`` is the firmware author's
reference.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from hal.errors import DeviceFailure

#: Version 2 added transfers (PUT, GET, status INCOMPLETE) and in-order answers (section 7 of the spec).
PROTOCOL_VERSION = 2
RESPONSE_BIT = 0x80
HEADER = struct.Struct("<BBHIB")
HEADER_BYTES = HEADER.size
#: Largest payload a board may declare; both sides refuse bigger frames before decoding them.
MAX_PAYLOAD_LIMIT = 1 << 20
#: Transfers a board must remember at once (section 7 of the spec); the host keeps no more open.
TRANSFER_DEPTH = 8


class ProtocolError(DeviceFailure):
    """A message that breaks the protocol: wrong length, unknown code, malformed payload, an answer that does not
    answer its request. A DeviceFailure: a board that says something the protocol does not allow cannot be trusted."""


class Command(enum.IntEnum):
    """Request codes. Idempotent commands may be resent with the same seq after a timeout."""

    HELLO = 0x01
    IDENTIFY = 0x02
    CAPABILITIES = 0x03
    PROGRAM_BEGIN = 0x10
    PROGRAM_WRITE = 0x11
    PROGRAM_COMMIT = 0x12
    READBACK = 0x13
    RUN = 0x20
    ESTIMATE = 0x21
    STATUS = 0x30
    SEED = 0x31
    RESET = 0x3F
    PUT = 0x40
    GET = 0x41


#: Commands whose effect does not change when they are executed twice, so a lost answer can be asked again.
#: RESET is the exception: resending it could reset a board twice; the host checks STATUS instead.
IDEMPOTENT = frozenset(set(Command) - {Command.RESET})
#: Commands a board answers whatever session the request names (they open or inspect a session).
SESSIONLESS = frozenset({Command.HELLO, Command.IDENTIFY, Command.CAPABILITIES, Command.STATUS, Command.RESET})
#: Commands whose request carries no payload; stray bytes after the header are MALFORMED.
EMPTY_REQUEST = frozenset({Command.IDENTIFY, Command.CAPABILITIES, Command.STATUS, Command.RESET})


class Status(enum.IntEnum):
    """Response status codes; anything but OK carries a UTF-8 explanation as its payload."""

    OK = 0
    VERSION_MISMATCH = 1
    UNKNOWN_COMMAND = 2
    MALFORMED = 3
    STALE_SESSION = 4
    NO_SUCH_SLOT = 5
    NOT_PROGRAMMED = 6
    CAPACITY = 7
    CHECKSUM = 8
    DEVICE_ERROR = 9
    INVALID_VALUE = 10
    INCOMPLETE = 11


@dataclass(frozen=True)
class Message:
    """One decoded message (request or response)."""

    command: int
    seq: int
    session: int
    status: int = Status.OK
    payload: bytes = b""
    version: int = PROTOCOL_VERSION

    @property
    def is_response(self) -> bool:
        return bool(self.command & RESPONSE_BIT)

    @property
    def request_command(self) -> int:
        return self.command & ~RESPONSE_BIT

    def pack(self) -> bytes:
        return HEADER.pack(self.version, self.command, self.seq & 0xFFFF, self.session & 0xFFFFFFFF, self.status) + self.payload

    @classmethod
    def unpack(cls, data: bytes) -> Message:
        if len(data) < HEADER_BYTES:
            raise ProtocolError(f"message of {len(data)} bytes is shorter than the {HEADER_BYTES}-byte header")
        version, command, seq, session, status = HEADER.unpack_from(data)
        return cls(command, seq, session, status, bytes(data[HEADER_BYTES:]), version)

    def error_text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


def request(command: Command, seq: int, session: int, payload: bytes = b"") -> Message:
    return Message(int(command), seq, session, Status.OK, payload)


def response(req: Message, session: int, status: Status = Status.OK, payload: bytes = b"") -> Message:
    return Message(req.request_command | RESPONSE_BIT, req.seq, session, int(status), payload)


# --------------------------------------------------------------------------- payload layouts

HELLO_REQUEST = struct.Struct("<BI")  # host's highest protocol version, largest payload the host accepts
HELLO_RESPONSE = struct.Struct("<BBI")  # board's lowest and highest protocol version, board's largest payload
PROGRAM_BEGIN = struct.Struct("<BIIB")  # slot, rows (out features), cols (in features), flags
PROGRAM_WRITE = struct.Struct("<BI")  # slot, element offset; then float32 values
PROGRAM_COMMIT = struct.Struct("<BI")  # slot, CRC-32 of the staged float32 bytes
READBACK = struct.Struct("<BII")  # slot, element offset, element count
RUN = struct.Struct("<BI")  # slot, batch; then batch * cols float32
RUN_RESPONSE = struct.Struct("<II")  # batch, rows; then batch * rows float32
ESTIMATE = struct.Struct("<III")  # rows, cols, batch; the answer is JSON {latency_s, energy_j, error, formula}
SEED = struct.Struct("<Q")
PUT = struct.Struct("<HII")  # transfer id (the carried request's seq), byte offset, total bytes; then the bytes
GET = struct.Struct("<HII")  # transfer id, byte offset, byte count
GET_RESPONSE = struct.Struct("<II")  # total bytes of the answer message, its CRC-32; then the bytes asked for
STATUS_FIELDS = (
    "boot_id", "uptime_ms", "rx_frames", "rx_bad_crc", "rx_bad_frame", "tx_frames", "duplicates",
    "programs", "runs", "resets", "slots_programmed",
)
STATUS_RESPONSE = struct.Struct("<" + "I" * len(STATUS_FIELDS))

FLAG_BIAS = 0x01
FLAG_RELU = 0x02
FLOAT = np.dtype("<f4")


def floats_to_bytes(values: np.ndarray) -> bytes:
    """Little-endian IEEE-754 float32 bytes of ``values`` (row-major)."""
    return np.ascontiguousarray(values, dtype=FLOAT).tobytes()


def bytes_to_floats(data: bytes | memoryview, what: str) -> np.ndarray:
    if len(data) % 4:
        raise ProtocolError(f"{what}: {len(data)} bytes is not a whole number of float32 values")
    return np.frombuffer(data, dtype=FLOAT).astype(np.float32)


def unpack(layout: struct.Struct, payload: bytes, what: str, trailing: bool = False) -> tuple[tuple[Any, ...], bytes]:
    """Split ``payload`` into the fixed fields of ``layout`` and the rest (which must be empty unless ``trailing``)."""
    if len(payload) < layout.size or (not trailing and len(payload) != layout.size):
        raise ProtocolError(f"{what} payload is {len(payload)} bytes; its layout needs {layout.size}{' or more' if trailing else ''}")
    return layout.unpack_from(payload), payload[layout.size:]


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_json(payload: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"{what} payload is not UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} payload must be a JSON object, got {type(obj).__name__}")
    return obj
