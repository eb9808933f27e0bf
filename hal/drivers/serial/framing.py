"""Frames on the wire: COBS-encoded (message + CRC-32), each followed by one 0x00 delimiter.

COBS (Cheshire & Baker, "Consistent Overhead Byte Stuffing", IEEE/ACM ToN 1999) removes every zero
byte from the frame at a cost of at most one byte per 254, so 0x00 marks frame ends unambiguously and
a receiver resynchronises at the next zero after any garbage. The CRC is CRC-32/ISO-HDLC (the zlib /
Ethernet CRC: polynomial 0x04C11DB7 reflected, init 0xFFFFFFFF, final xor 0xFFFFFFFF, check value
0xCBF43926 for ASCII "123456789"), appended little-endian. Libraries: ``cobs`` and ``crcmod-plus``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import crcmod.predefined
from cobs import cobs

from hal.drivers.serial.protocol import HEADER_BYTES, MAX_PAYLOAD_LIMIT

DELIMITER = b"\x00"
CRC_BYTES = 4
crc32 = crcmod.predefined.mkCrcFun("crc-32")


def encoded_limit(max_message_bytes: int) -> int:
    """Longest COBS encoding of a message of ``max_message_bytes`` plus its CRC (delimiter excluded)."""
    raw = max_message_bytes + CRC_BYTES
    return raw + raw // 254 + 1


def encode_frame(message: bytes) -> bytes:
    """The wire bytes of one message: COBS(message + CRC-32 little-endian) + 0x00."""
    return cobs.encode(message + crc32(message).to_bytes(CRC_BYTES, "little")) + DELIMITER


@dataclass
class FrameDecoder:
    """Splits a byte stream at 0x00 delimiters and returns the messages whose COBS and CRC check out.

    Every rejected frame is counted by cause; nothing malformed is ever returned. Input longer than
    the largest legal frame without a delimiter is discarded up to the next delimiter, so garbage
    cannot grow the buffer without bound.
    """

    max_message_bytes: int = HEADER_BYTES + MAX_PAYLOAD_LIMIT
    frames_ok: int = 0
    bad_cobs: int = 0
    bad_crc: int = 0
    too_short: int = 0
    oversize: int = 0
    _buffer: bytearray = field(default_factory=bytearray)
    _discarding: bool = False

    @property
    def rejected(self) -> int:
        return self.bad_cobs + self.bad_crc + self.too_short + self.oversize

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the complete, valid messages it finished (header + payload, CRC removed)."""
        limit = encoded_limit(self.max_message_bytes)
        messages: list[bytes] = []
        start = 0
        while True:
            end = data.find(DELIMITER, start)
            if end < 0:
                break
            chunk = data[start:end]
            start = end + 1
            if self._discarding:
                self._discarding = False
                self._buffer.clear()
                continue
            self._buffer += chunk
            frame = bytes(self._buffer)
            self._buffer.clear()
            if not frame:
                continue  # consecutive delimiters: an idle line or a resync marker
            if len(frame) > limit:
                self.oversize += 1
                continue
            message = self._check(frame)
            if message is not None:
                messages.append(message)
        rest = data[start:]
        if not self._discarding:
            self._buffer += rest
            if len(self._buffer) > limit:
                self.oversize += 1
                self._buffer.clear()
                self._discarding = True
        return messages

    def _check(self, frame: bytes) -> bytes | None:
        try:
            raw = cobs.decode(frame)
        except cobs.DecodeError:
            self.bad_cobs += 1
            return None
        if len(raw) < HEADER_BYTES + CRC_BYTES:
            self.too_short += 1
            return None
        message, received = raw[:-CRC_BYTES], int.from_bytes(raw[-CRC_BYTES:], "little")
        if crc32(message) != received:
            self.bad_crc += 1
            return None
        self.frames_ok += 1
        return message

    def reset(self) -> None:
        """Forget any partial frame (after a reconnect)."""
        self._buffer.clear()
        self._discarding = False
