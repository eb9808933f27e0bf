"""The board's side of transfers: requests that arrive in chunks (PUT), answers that leave in chunks (GET).

A message longer than the host's frame limit travels as a transfer named by the carried request's sequence
number. The host stages the request's bytes with PUT (any chunk size, any order, resends harmless), the board
runs the request once its last byte arrived and keeps the answer, and the host reads the answer back with GET
in chunks of its choosing. Each chunk is one frame with its own CRC, so a corrupted byte costs one chunk; the
host resends only the chunks whose acknowledgement did not come (selective repeat). The board keeps the
``TRANSFER_DEPTH`` most recent transfers (the host never has more open); an older one is forgotten.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from hal.drivers.serial.framing import crc32
from hal.drivers.serial.protocol import TRANSFER_DEPTH


class TransferIncomplete(Exception):
    """GET of a transfer whose request has not fully arrived, or that the board does not know (any more)."""


@dataclass
class Transfer:
    """One transfer: the request's bytes as they arrive, then the answer's bytes and their CRC."""

    total: int
    request: bytearray
    arrived: bytearray  # one byte per request byte: 1 once it arrived
    missing: int
    answer: bytes | None = None
    answer_crc: int = 0

    @classmethod
    def expecting(cls, total: int) -> Transfer:
        return cls(total, bytearray(total), bytearray(total), total)


@dataclass
class TransferTable:
    """The transfers a board remembers, most recent last; bounded by ``depth``."""

    depth: int = TRANSFER_DEPTH
    _open: OrderedDict[int, Transfer] = field(default_factory=OrderedDict)

    def put(self, transfer_id: int, offset: int, total: int, data: bytes) -> bytes | None:
        """Stage ``data`` at ``offset`` of a ``total``-byte request; the whole request once its last byte arrived.

        A PUT naming a different total than the transfer's starts the transfer again (the host reused the id).
        ValueError if the chunk overruns the total.
        """
        if offset + len(data) > total:
            raise ValueError(f"PUT of {len(data)} bytes at {offset} overruns the transfer's {total} bytes")
        entry = self._open.get(transfer_id)
        if entry is None or entry.total != total:
            entry = Transfer.expecting(total)
            self._open[transfer_id] = entry
            while len(self._open) > self.depth:
                self._open.popitem(last=False)
        if entry.answer is not None:
            return None  # a resent chunk of a request that already ran
        end = offset + len(data)
        entry.missing -= len(data) - entry.arrived.count(1, offset, end)
        entry.request[offset:end] = data
        entry.arrived[offset:end] = b"\x01" * len(data)
        return bytes(entry.request) if entry.missing == 0 else None

    def answered(self, transfer_id: int, answer: bytes) -> None:
        """Keep the answer to a transfer's request for GET (the request's bytes are no longer needed)."""
        entry = self._open[transfer_id]
        entry.answer, entry.answer_crc = answer, crc32(answer)
        entry.request, entry.arrived = bytearray(), bytearray()

    def answer(self, transfer_id: int) -> tuple[bytes, int]:
        """The answer bytes of a transfer and their CRC-32; TransferIncomplete if it has none (yet)."""
        entry = self._open.get(transfer_id)
        if entry is None:
            raise TransferIncomplete(f"the board holds no transfer {transfer_id} (never begun, or forgotten after {self.depth} newer ones); PUT its request again")
        if entry.answer is None:
            raise TransferIncomplete(f"transfer {transfer_id} still misses {entry.missing} of its {entry.total} request bytes; PUT them")
        return entry.answer, entry.answer_crc

    def clear(self) -> None:
        self._open.clear()
