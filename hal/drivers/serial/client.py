"""Request/response over a board link: sequence numbers, timeouts, retries, pipelining, reset detection.

``BoardClient.exchange(requests)`` sends requests with a window of several in flight (a UART is full
duplex, so the next request travels while the board computes and answers the previous one), matches
answers by sequence number, and resends an idempotent request under the same sequence number when its
answer is late or was lost to a corrupted frame (the board answers a resent request from its replay
cache, so nothing runs twice). Answers from another board session (a reboot) raise ``BoardReset``;
the driver then says HELLO again and reprograms. A request is a success only when the board's answer
arrived intact with status OK.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hal.drivers.serial import protocol as p
from hal.drivers.serial.framing import FrameDecoder, encode_frame, encoded_limit
from hal.drivers.serial.protocol import Command, Message, ProtocolError, Status
from hal.drivers.serial.transport import BITS_PER_BYTE, Link

#: Each resend of a request waits this factor longer than the previous attempt (exponential backoff, as TCP
#: retransmission does), so a board that is slow rather than deaf is not buried under copies of one request.
BACKOFF = 2.0


class BoardError(Exception):
    """The board answered with a status other than OK."""

    def __init__(self, command: Command, status: int, text: str):
        name = Status(status).name if status in Status._value2member_map_ else f"status {status}"
        super().__init__(f"{command.name} refused by the board: {name}: {text}")
        self.command, self.status, self.text = command, status, text


class BoardReset(Exception):
    """The board rebooted since the session began (new boot id, or it reported a stale session)."""


class NoAnswer(TimeoutError):
    """No intact answer came back after every allowed attempt."""


@dataclass
class Request:
    command: Command
    payload: bytes = b""
    #: Payload bytes the answer is expected to carry (for the timeout's line-time allowance).
    answer_bytes: int = 0
    #: Seconds the board may compute before answering (its declared programming time for a commit).
    busy_s: float = 0.0


@dataclass
class LinkCounters:
    """What the host saw on the link (``telemetry()`` reports them)."""

    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    stray_answers: int = 0
    resets_detected: int = 0
    bytes_tx: int = 0
    bytes_rx: int = 0


@dataclass
class _InFlight:
    index: int
    request: Request
    seq: int
    wire: bytes
    deadline: float
    attempts: int = 1


@dataclass
class BoardClient:
    """The host side of the protocol over one link."""

    link: Link
    timeout_s: float = 1.0
    retries: int = 3
    window: int = 4
    session: int = 0
    max_payload: int = 1024
    counters: LinkCounters = field(default_factory=LinkCounters)
    _seq: int = 0
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)

    # ---- session
    def hello(self) -> int:
        """Open a session: agree on the protocol version and payload size; returns the board's boot id."""
        self.link.write(b"\x00")  # end any partial frame a previous host left in the board's receiver
        answer = self.exchange([Request(Command.HELLO, p.HELLO_REQUEST.pack(p.PROTOCOL_VERSION, p.MAX_PAYLOAD_LIMIT), p.HELLO_RESPONSE.size)], check_session=False)[0]
        (low, high, max_payload), _ = p.unpack(p.HELLO_RESPONSE, answer.payload, "HELLO answer")
        if not low <= p.PROTOCOL_VERSION <= high:
            raise BoardError(Command.HELLO, Status.VERSION_MISMATCH, f"board speaks protocol versions {low}..{high}, hal speaks {p.PROTOCOL_VERSION}")
        self.session = answer.session
        self.max_payload = max_payload
        self._decoder.max_message_bytes = p.HEADER_BYTES + max(max_payload, 4096)
        return self.session

    def call(self, command: Command, payload: bytes = b"", answer_bytes: int = 0, check_session: bool = True) -> Message:
        """One request, one intact OK answer (or BoardError / BoardReset / NoAnswer)."""
        return self.exchange([Request(command, payload, answer_bytes)], check_session=check_session)[0]

    # ---- the engine
    def line_time_s(self, n_bytes: int) -> float:
        return n_bytes * BITS_PER_BYTE / self.link.baud if self.link.baud else 0.0

    def exchange(self, requests: list[Request], check_session: bool = True) -> list[Message]:
        """Send ``requests`` with up to ``window`` in flight; return their answers in order."""
        answers: list[Message | None] = [None] * len(requests)
        in_flight: dict[int, _InFlight] = {}
        next_index = 0
        done = 0
        while done < len(requests):
            while next_index < len(requests) and len(in_flight) < max(1, self.window):
                entry = self._send(next_index, requests[next_index], in_flight)
                in_flight[entry.seq] = entry
                next_index += 1
            earliest = min(e.deadline for e in in_flight.values())
            for message in self._receive(earliest):
                entry = in_flight.get(message.seq)
                if entry is None or message.request_command != entry.request.command or not message.is_response:
                    self.counters.stray_answers += 1  # a late answer to an attempt already answered
                    continue
                del in_flight[message.seq]
                self._check(entry.request.command, message, check_session)
                answers[entry.index] = message
                done += 1
            now = time.monotonic()
            for entry in [e for e in in_flight.values() if e.deadline <= now]:
                self._retry(entry, in_flight)
        return answers  # type: ignore[return-value]

    def _send(self, index: int, request: Request, in_flight: dict[int, _InFlight]) -> _InFlight:
        self._seq = (self._seq + 1) & 0xFFFF
        wire = encode_frame(p.request(request.command, self._seq, self.session, request.payload).pack())
        ahead = sum(len(e.wire) + e.request.answer_bytes for e in in_flight.values())
        allowance = self.line_time_s(ahead + len(wire) + encoded_limit(p.HEADER_BYTES + request.answer_bytes) + 1)
        entry = _InFlight(index, request, self._seq, wire, time.monotonic() + self.timeout_s + request.busy_s + allowance)
        self._write(wire)
        self.counters.requests += 1
        return entry

    def _retry(self, entry: _InFlight, in_flight: dict[int, _InFlight]) -> None:
        self.counters.timeouts += 1
        if entry.request.command not in p.IDEMPOTENT:
            raise NoAnswer(f"{entry.request.command.name} got no answer within its timeout; it is not idempotent, so it was not resent")
        if entry.attempts > self.retries:
            raise NoAnswer(f"{entry.request.command.name} got no intact answer after {entry.attempts} attempts "
                           f"(timeout {self.timeout_s:g} s doubling per attempt, + line time at {self.link.baud or 'unlimited'} baud)")
        entry.attempts += 1
        self.counters.retries += 1
        ahead = sum(len(e.wire) + e.request.answer_bytes for e in in_flight.values())
        backoff = self.timeout_s * BACKOFF ** (entry.attempts - 1)  # a busy board is not flooded with copies
        entry.deadline = time.monotonic() + backoff + entry.request.busy_s + self.line_time_s(ahead + entry.request.answer_bytes + 32)
        self._write(b"\x00" + entry.wire)  # the leading delimiter closes any torn frame the board is holding

    def _write(self, wire: bytes) -> None:
        self.link.write(wire)
        self.counters.bytes_tx += len(wire)

    def _receive(self, deadline: float) -> list[Message]:
        """Intact messages that arrive before ``deadline`` (returns as soon as at least one did)."""
        while True:
            remaining = deadline - time.monotonic()
            data = self.link.read(max(0.0, min(remaining, 0.05)))
            if data:
                self.counters.bytes_rx += len(data)
                messages = []
                for raw in self._decoder.feed(data):
                    try:
                        messages.append(Message.unpack(raw))
                    except ProtocolError:
                        continue
                if messages:
                    return messages
            if remaining <= 0:
                return []

    def _check(self, command: Command, message: Message, check_session: bool) -> None:
        if message.status == Status.STALE_SESSION or (check_session and message.session != self.session):
            self.counters.resets_detected += 1
            raise BoardReset(f"the board rebooted (session {self.session:#010x} -> {message.session:#010x}) while answering {command.name}")
        if message.status != Status.OK:
            raise BoardError(command, message.status, message.error_text())

    @property
    def frames_rejected(self) -> int:
        """Frames from the board dropped by the COBS/CRC checks."""
        return self._decoder.rejected
