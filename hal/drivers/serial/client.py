"""Request/response over a board link: sequence numbers, chunked transfers, selective repeat, reset detection.

``BoardClient.exchange(requests)`` sends requests with a window of several frames in flight (a UART is full
duplex, so the next request travels while the board computes and answers the previous one) and matches
answers by sequence number. A request, or an answer, longer than the current frame limit travels as a
*transfer* (``transfer.py``): numbered chunks, each in its own frame with its own CRC, PUT toward the board
and read back with GET, so a corrupted byte costs one chunk instead of the whole message.

Selective repeat: only the frames whose answer did not come are sent again; a request sent whole keeps its
sequence number (the board answers a resend from its replay cache, so nothing runs twice), a chunk gets a new
one (so its answer names the attempt it answers). A board answers in the order requests arrive, so an answer
to a later frame shows at once that an earlier unanswered one was lost (the loss inference of TCP's RACK,
RFC 8985). On a line that corrupted frames lately, a frame with nothing answered after it is probed: sent
again once the smoothed round trip plus four mean deviations passed (RFC 6298's retransmission timeout,
beyond line time), the interval growing by that much with each probe (RFC 8985's tail loss probe). Neither
kind of resend counts against ``retries``, which bounds the resends of a frame whose answer is overdue by
``timeout_s`` (each wait twice the previous: exponential backoff). The frame limit follows the line: from
the share of frames lost, the client estimates the byte error rate and picks the frame size that carries
the most data per line byte (``best_frame_bytes``), down to ``MIN_FRAME_BYTES`` on a noisy line and up to
the board's payload limit on a clean one.

Budget: a board that stops answering is given up on after ``silence_budget_s`` with no intact answer
(NoAnswer); writes time out too, so a board that stopped reading cannot block a call past that budget.
Answers from another board session (a reboot) raise ``BoardReset``; the driver then says HELLO again and
reprograms. A request is a success only when the board's answer arrived intact with status OK.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hal.drivers.serial import protocol as p
from hal.drivers.serial.framing import FrameDecoder, crc32, encode_frame, encoded_limit
from hal.drivers.serial.protocol import Command, Message, ProtocolError, Status
from hal.drivers.serial.transport import BITS_PER_BYTE, Link, LinkStalled
from hal.errors import DeviceFailure

#: Each overdue resend of a frame waits this factor longer than the previous attempt (exponential backoff, as TCP
#: retransmission does), so a board that is slow rather than deaf is not buried under copies of one request.
BACKOFF = 2.0
#: Smallest frame (message bytes: header + payload) the frame limit may shrink to: a PUT of 29 data bytes. An
#: engineering choice: below it the 9-byte header, 10-byte PUT fields and 6 bytes of CRC, COBS and delimiter
#: outweigh the data, whatever the line.
MIN_FRAME_BYTES = 48
#: Weight of the past in the loss estimate: every attempt multiplies the earlier counts by this, so the estimate
#: follows about the last 1 / (1 - 0.98) = 50 frames. An engineering choice: long enough to average the luck of
#: single frames, short enough to follow a line that gets better or worse within a call.
LOSS_MEMORY = 0.98
#: Resends of one frame that are not overdue ones: prompted by answers to later frames, or probes. They do not count
#: against ``retries``; the bound only stops a frame the board never answers (e.g. one its receiver refuses) from
#: being resent for as long as other frames get through. At 1% byte corruption a 48-byte frame and its
#: answer are lost together with probability about 0.5, so 32 straight losses happen with probability 2e-10.
QUICK_RESENDS = 32
#: Weights of a new round-trip sample in the smoothed round trip and in its mean deviation (RFC 6298's alpha, beta).
RTT_GAIN, RTT_DEVIATION_GAIN = 1 / 8, 1 / 4
#: Shortest probe interval: the scheduling jitter of a host thread, so a board answering at once is not probed
#: before its answer could be read. An engineering choice.
MIN_PROBE_S = 2e-3
#: The line counts as corrupting frames while the decayed count of frames known lost on it (answers that failed their
#: COBS/CRC check, requests whose later neighbours were answered first; weighted as LOSS_MEMORY weighs losses) is at
#: least this, i.e. one within about the last 35 attempts. Only then are frames probed and the frame limit lowered:
#: a late answer alone is no evidence of a bad line (the board may be computing), and probing a slow board, or
#: cutting its frames smaller, only queues more requests behind the one it is busy with.
CORRUPTION_EVIDENCE = 0.5


class BoardError(DeviceFailure):
    """The board answered with a status other than OK."""

    def __init__(self, command: Command, status: int, text: str):
        name = Status(status).name if status in Status._value2member_map_ else f"status {status}"
        super().__init__(f"{command.name} refused by the board: {name}: {text}")
        self.command, self.status, self.text = command, status, text


class BoardReset(DeviceFailure):
    """The board rebooted since the session began (new boot id, or it reported a stale session)."""


class NoAnswer(DeviceFailure, TimeoutError):
    """No intact answer came back within the silence budget (the board stopped answering or reading)."""


@dataclass
class Request:
    command: Command
    payload: bytes = b""
    #: Payload bytes of the answer (for the frame choice and the timeout's line-time allowance); None if unknown,
    #: in which case the answer is read back as a transfer, whatever its size.
    answer_bytes: int | None = None
    #: Seconds the board may compute before answering (its declared programming time for a commit).
    busy_s: float = 0.0


@dataclass
class LinkCounters:
    """What the host saw on the link (``telemetry()`` reports them)."""

    requests: int = 0
    transfers: int = 0
    retries: int = 0
    timeouts: int = 0
    stray_answers: int = 0
    resets_detected: int = 0
    write_stalls: int = 0
    bytes_tx: int = 0
    bytes_rx: int = 0


def best_frame_bytes(byte_error: float, smallest: int, largest: int) -> int:
    """The frame size (message bytes) that carries the most data per line byte when each byte is lost with
    probability ``byte_error``: data bytes / wire bytes x probability that the frame and its answer both arrive.

    Candidates are ``smallest`` times powers of 2^(1/4) up to ``largest``; a clean line gets ``largest``.
    """
    if byte_error <= 0.0 or smallest >= largest:
        return largest
    answer_wire = encoded_limit(p.HEADER_BYTES) + 1
    overhead = p.HEADER_BYTES + p.PUT.size

    def goodput(message_bytes: int) -> float:
        wire = encoded_limit(message_bytes) + 1
        return (message_bytes - overhead) / wire * (1.0 - byte_error) ** (wire + answer_wire)

    steps = int(math.log(largest / smallest, 2) * 4)
    candidates = {min(largest, round(smallest * 2 ** (k / 4))) for k in range(steps + 2)}
    return max(sorted(candidates), key=goodput)


@dataclass
class _Job:
    """One request of an exchange and how far it got."""

    index: int
    request: Request
    seq: int
    message: bytes
    transferred: bool = False
    puts_left: int = 0
    answer: bytearray | None = None
    answer_crc: int = 0
    gets_left: int = 0


@dataclass(eq=False)
class _Piece:
    """One frame's worth of work: a request sent whole, or one PUT or GET chunk of a transfer, and its attempts."""

    job: _Job
    command: Command
    payload: bytes
    answer_bytes: int
    offset: int = 0
    length: int = 0
    seq: int = 0  # of the latest attempt
    wire: bytes = b""
    #: Transmission order of each attempt by its sequence number. A chunk is resent under a new number (PUT and
    #: GET change nothing when repeated), so its answer names the attempt it answers; a request sent whole keeps
    #: its number, so that the board's replay cache answers a resend without running it again.
    stamps: dict[int, int] = field(default_factory=dict)
    sent_at: float = 0.0
    line_s: float = 0.0  # line time of the bytes ahead of its answer when it was last sent, its own included
    deadline: float = 0.0  # when its answer is overdue
    probe_at: float = math.inf  # when it is probed
    timeouts: int = 0
    quick_resends: int = 0
    probes: int = 0

    @property
    def chunk(self) -> bool:
        return self.command in (Command.PUT, Command.GET)

    @property
    def stamp(self) -> int:
        """Transmission order of the latest attempt."""
        return self.stamps[self.seq]


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
    #: Current frame limit (message bytes) and the largest the board allows.
    frame_bytes: int = p.HEADER_BYTES + 1024
    max_frame_bytes: int = p.HEADER_BYTES + 1024
    _seq: int = 0
    _stamp: int = 0
    _torn: bool = False
    _srtt: float | None = None
    _rttvar: float = 0.0
    _attempts: float = 0.0
    _losses: float = 0.0
    _attempt_bytes: float = 0.0
    _line_losses: float = 0.0
    _rejected_seen: int = 0
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)

    # ---- session
    def hello(self) -> int:
        """Open a session: agree on the protocol version and payload size; returns the board's boot id."""
        self._write(b"\x00", time.monotonic() + self.timeout_s)  # end any partial frame a previous host left in the board's receiver
        request = Request(Command.HELLO, p.HELLO_REQUEST.pack(p.PROTOCOL_VERSION, p.MAX_PAYLOAD_LIMIT), p.HELLO_RESPONSE.size)
        answer = self.exchange([request], check_session=False)[0]
        (low, high, max_payload), _ = p.unpack(p.HELLO_RESPONSE, answer.payload, "HELLO answer")
        if not low <= p.PROTOCOL_VERSION <= high:
            raise BoardError(Command.HELLO, Status.VERSION_MISMATCH, f"board speaks protocol versions {low}..{high}, hal speaks {p.PROTOCOL_VERSION}")
        self.session = answer.session
        self.max_payload = max_payload
        self.max_frame_bytes = p.HEADER_BYTES + max_payload
        self.frame_bytes = best_frame_bytes(self.byte_error, MIN_FRAME_BYTES, self.max_frame_bytes)
        self._decoder.max_message_bytes = p.HEADER_BYTES + max(max_payload, 4096)
        return self.session

    def identify(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """HELLO, then the board's IDENTIFY and CAPABILITIES answers (JSON objects, read back in chunks)."""
        self.hello()
        identity, capabilities = self.exchange([Request(Command.IDENTIFY), Request(Command.CAPABILITIES)])
        return p.decode_json(identity.payload, "IDENTIFY"), p.decode_json(capabilities.payload, "CAPABILITIES")

    def call(self, command: Command, payload: bytes = b"", answer_bytes: int | None = None, check_session: bool = True) -> Message:
        """One request, one intact OK answer (or BoardError / BoardReset / NoAnswer / ProtocolError)."""
        return self.exchange([Request(command, payload, answer_bytes)], check_session=check_session)[0]

    # ---- figures
    def line_time_s(self, n_bytes: int) -> float:
        return n_bytes * BITS_PER_BYTE / self.link.baud if self.link.baud else 0.0

    def silence_budget_s(self, busy_s: float = 0.0) -> float:
        """Longest a call waits on a board that stopped answering or reading, before NoAnswer: one overdue wait per
        attempt, timeout_s x (1 + 2 + ... + 2^retries), each + busy_s + the line time of a full window of the
        largest frames both ways (the most that can be ahead of an answer)."""
        window_s = self.line_time_s(2 * max(1, self.window) * (encoded_limit(self.max_frame_bytes) + 1))
        return sum(self.timeout_s * BACKOFF ** k + busy_s + window_s for k in range(self.retries + 1))

    @property
    def corrupting(self) -> bool:
        """Whether the line lost frames lately (see CORRUPTION_EVIDENCE)."""
        return self._line_losses >= CORRUPTION_EVIDENCE

    @property
    def byte_error(self) -> float:
        """Estimated probability that a byte is lost or corrupted, from the recent share of frames lost:
        1 - (1 - loss share) ^ (1 / mean bytes per frame and answer); 0 on a line not corrupting frames."""
        if self._losses <= 0.0 or not self.corrupting:
            return 0.0
        loss = min(self._losses / self._attempts, 0.99)
        return 1.0 - (1.0 - loss) ** (self._attempts / self._attempt_bytes)

    def _observe_round_trip(self, piece: _Piece, now: float) -> None:
        """Smooth the round trip, beyond line time, of a frame answered at its first attempt."""
        sample = max(now - piece.sent_at - piece.line_s, 0.0)
        if self._srtt is None:
            self._srtt, self._rttvar = sample, sample / 2
        else:
            self._rttvar = (1 - RTT_DEVIATION_GAIN) * self._rttvar + RTT_DEVIATION_GAIN * abs(self._srtt - sample)
            self._srtt = (1 - RTT_GAIN) * self._srtt + RTT_GAIN * sample

    def _observe(self, piece: _Piece, lost: bool, on_the_line: bool = False) -> None:
        """Count an attempt of ``piece`` (``lost``; ``on_the_line``: known lost by the line, not just late)."""
        rejected = self._decoder.rejected
        self._line_losses = self._line_losses * LOSS_MEMORY + (rejected - self._rejected_seen) + float(on_the_line)
        self._rejected_seen = rejected
        self._attempts = self._attempts * LOSS_MEMORY + 1.0
        self._losses = self._losses * LOSS_MEMORY + float(lost)
        self._attempt_bytes = self._attempt_bytes * LOSS_MEMORY + len(piece.wire) + encoded_limit(p.HEADER_BYTES + piece.answer_bytes) + 1
        self.frame_bytes = best_frame_bytes(self.byte_error, MIN_FRAME_BYTES, self.max_frame_bytes)

    # ---- the engine
    def exchange(self, requests: list[Request], check_session: bool = True) -> list[Message]:
        """Send ``requests`` with up to ``window`` frames in flight; return their answers in order."""
        return _Exchange(self, requests, check_session).run()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    def _write(self, wire: bytes, deadline: float) -> None:
        """Write one frame, giving up at ``deadline``; a frame torn by a write timeout is closed by the next write's 0x00."""
        if self._torn:
            wire = b"\x00" + wire
        try:
            self.link.write(wire, max(deadline - time.monotonic(), 0.0))
        except LinkStalled:
            self.counters.write_stalls += 1
            self._torn = True
        else:
            self._torn = False
        self.counters.bytes_tx += len(wire)

    def _receive(self, deadline: float) -> list[Message]:
        """Intact messages that arrive before ``deadline`` (returns as soon as at least one did)."""
        while True:
            remaining = deadline - time.monotonic()
            data = self.link.read(max(0.0, min(remaining, 0.05)))
            if data:
                self.counters.bytes_rx += len(data)
                messages = [Message.unpack(raw) for raw in self._decoder.feed(data)]
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


class _Exchange:
    """One ``exchange``: its requests as jobs, their frames queued and in flight, the answers gathered."""

    def __init__(self, client: BoardClient, requests: list[Request], check_session: bool):
        self.client = client
        self.requests = requests
        self.check_session = check_session
        self.answers: list[Message | None] = [None] * len(requests)
        self.started = 0
        self.done = 0
        self.open_transfers = 0
        self.ready: deque[_Piece] = deque()
        self.flying: list[_Piece] = []
        self.by_seq: dict[int, _Piece] = {}  # every attempt's sequence number -> its piece, while the piece flies

    def run(self) -> list[Message]:
        while self.done < len(self.requests):
            self._fill()
            wake = min(min(q.deadline, q.probe_at) for q in self.flying)
            for message in self.client._receive(wake):
                self._answered(message)
            now = time.monotonic()
            for piece in [q for q in self.flying if q.deadline <= now]:
                self._overdue(piece)
            self._probe(now)
        return self.answers  # type: ignore[return-value]

    # ---- sending
    def _fill(self) -> None:
        while len(self.flying) < max(1, self.client.window):
            if not self.ready and not self._start_job():
                return
            self._transmit(self.ready.popleft())

    def _start_job(self) -> bool:
        """Queue the frames of the next request; False if none is left or the board's transfer table is full."""
        if self.started == len(self.requests):
            return False
        request = self.requests[self.started]
        limit = self.client.frame_bytes
        fits = p.HEADER_BYTES + len(request.payload) <= limit and request.answer_bytes is not None and p.HEADER_BYTES + request.answer_bytes <= limit
        transferred = not fits and request.command in p.IDEMPOTENT  # RESET is tiny, and never resent
        if transferred and self.open_transfers >= p.TRANSFER_DEPTH:
            return False
        seq = self.client._next_seq()
        job = _Job(self.started, request, seq, p.request(request.command, seq, self.client.session, request.payload).pack())
        if transferred:
            self.ready.extend(self._put_pieces(job))
        else:
            self.ready.append(_Piece(job, request.command, request.payload, request.answer_bytes or 0, seq=seq, wire=encode_frame(job.message)))
        self.started += 1
        return True

    def _put_pieces(self, job: _Job) -> list[_Piece]:
        """The PUT chunks of ``job``'s request, which from now on travels as a transfer."""
        if not job.transferred:
            job.transferred = True
            self.open_transfers += 1
            self.client.counters.transfers += 1
        step = self.client.frame_bytes - p.HEADER_BYTES - p.PUT.size
        pieces = [self._chunk(job, Command.PUT, offset, min(step, len(job.message) - offset)) for offset in range(0, len(job.message), step)]
        job.puts_left = len(pieces)
        return pieces

    def _chunk(self, job: _Job, command: Command, offset: int, length: int) -> _Piece:
        if command == Command.PUT:
            return _Piece(job, command, p.PUT.pack(job.seq, offset, len(job.message)) + job.message[offset:offset + length], 0, offset, length)
        return _Piece(job, command, p.GET.pack(job.seq, offset, length), p.GET_RESPONSE.size + length, offset, length)

    def _transmit(self, piece: _Piece, resend: bool = False, overdue: bool = False) -> None:
        """Send ``piece``. Its deadline is set when it is first sent and after each overdue wait, never by a probe or an
        inferred loss: those resends cannot stretch a call past the silence budget."""
        client = self.client
        if piece.chunk:  # every attempt of a chunk is numbered anew (see _Piece.stamps)
            piece.seq = client._next_seq()
            piece.wire = encode_frame(p.request(piece.command, piece.seq, client.session, piece.payload).pack())
        client._stamp += 1
        piece.stamps[piece.seq] = client._stamp
        self.by_seq[piece.seq] = piece
        if not resend:
            client.counters.requests += 1
            self.flying.append(piece)
        ahead = sum(len(q.wire) + q.answer_bytes for q in self.flying if q is not piece)
        busy_s = piece.job.request.busy_s
        line_s = client.line_time_s(ahead + len(piece.wire) + encoded_limit(p.HEADER_BYTES + piece.answer_bytes) + 1)
        now = time.monotonic()
        piece.sent_at, piece.line_s = now, line_s
        if overdue or not piece.deadline:
            piece.deadline = now + client.timeout_s * BACKOFF ** piece.timeouts + busy_s + line_s
        if client._srtt is not None and client.corrupting:
            interval = min(max(client._srtt + 4 * client._rttvar, MIN_PROBE_S) * (piece.probes + 1), client.timeout_s)
            piece.probe_at = now + interval + line_s  # not + busy_s: a lost request is found without waiting out the longest computation
        earliest = min(q.deadline for q in self.flying)
        client._write((b"\x00" if resend else b"") + piece.wire, earliest)  # a resend's 0x00 closes any torn frame at the board

    def _land(self, piece: _Piece) -> None:
        """``piece`` is no longer in flight (answered, or replaced by other pieces)."""
        self.flying.remove(piece)
        for seq in piece.stamps:
            self.by_seq.pop(seq, None)

    # ---- losses
    def _overdue(self, piece: _Piece) -> None:
        client = self.client
        client.counters.timeouts += 1
        command = piece.job.request.command
        if command not in p.IDEMPOTENT:
            raise NoAnswer(f"{command.name} got no answer within its timeout; it is not idempotent, so it was not resent")
        if piece.timeouts >= client.retries:
            raise NoAnswer(f"{command.name} got no intact answer for {client.silence_budget_s(piece.job.request.busy_s):.3g} s "
                           f"({piece.timeouts + 1} overdue attempts, timeout {client.timeout_s:g} s doubling per attempt, "
                           f"+ line time at {client.link.baud or 'unlimited'} baud)")
        piece.timeouts += 1
        self._resend(piece, overdue=True)

    def _probe(self, now: float) -> None:
        """Resend the frames whose probe time passed with no answer after them to show they were lost."""
        for piece in [q for q in self.flying if q.probe_at <= now]:
            if piece.quick_resends >= QUICK_RESENDS or piece.job.request.command not in p.IDEMPOTENT:
                piece.probe_at = math.inf
                continue
            piece.probes += 1
            self._resend(piece)

    def _resend(self, piece: _Piece, overdue: bool = False, inferred: bool = False) -> None:
        """Send a lost frame again (``inferred``: known lost from a later answer; a probed one counts as lost too, as
        on a line that loses frames it most likely was).
        One longer than the frame limit (which shrank since it was sent) is replaced: a chunk by smaller chunks of
        the same bytes, a request sent whole by a transfer of the same request. The first replacement keeps the
        frame's deadline (or starts the next overdue wait, if the frame was overdue)."""
        client = self.client
        client.counters.retries += 1
        client._observe(piece, lost=True, on_the_line=inferred)
        if not overdue:
            piece.quick_resends += 1
        limit = client.frame_bytes
        job = piece.job
        if max(len(piece.wire), p.HEADER_BYTES + piece.answer_bytes) <= limit:
            self._transmit(piece, resend=True, overdue=overdue)
            return
        if piece.command == Command.PUT or (piece.command == Command.GET and job.answer is not None):
            overhead = p.HEADER_BYTES + (p.PUT.size if piece.command == Command.PUT else p.GET_RESPONSE.size)
            end = piece.offset + piece.length
            parts = [self._chunk(job, piece.command, offset, min(limit - overhead, end - offset)) for offset in range(piece.offset, end, limit - overhead)]
            if piece.command == Command.PUT:
                job.puts_left += len(parts) - 1
            else:
                job.gets_left += len(parts) - 1
        elif piece.command == Command.GET:  # the first GET, which learns the answer's size: ask for less
            parts = [self._chunk(job, Command.GET, 0, limit - p.HEADER_BYTES - p.GET_RESPONSE.size)]
        elif self.open_transfers < p.TRANSFER_DEPTH:  # the same request (same seq) as a transfer: the replay cache still answers it once
            parts = self._put_pieces(job)
        else:
            self._transmit(piece, resend=True, overdue=overdue)
            return
        self._land(piece)
        for part in parts:
            part.timeouts = piece.timeouts
        if not overdue:
            parts[0].deadline = piece.deadline  # sent next, in the replaced frame's place; the others wait for the window
        self.ready.extendleft(reversed(parts))

    # ---- answers
    def _answered(self, message: Message) -> None:
        piece = self.by_seq.get(message.seq)
        if piece is None:
            self.client.counters.stray_answers += 1  # a late answer to an attempt already answered
            return
        if not message.is_response:
            raise ProtocolError(f"the link returned request {message.seq} ({_name(message.command)}) instead of an answer: the port echoes, it is no hal board")
        if message.request_command != piece.command:
            raise ProtocolError(f"the board answered request {message.seq} ({piece.command.name}) as if it were {_name(message.request_command)}")
        # which attempt this answers: a chunk's exactly; a request sent whole, at least its first
        answered = piece.stamps[message.seq] if piece.chunk else min(piece.stamps.values())
        self._land(piece)
        self.client._observe(piece, lost=False)
        if len(piece.stamps) == 1:
            self.client._observe_round_trip(piece, time.monotonic())
        lost = [q for q in self.flying if q.stamp < answered and q.quick_resends < QUICK_RESENDS and q.job.request.command in p.IDEMPOTENT]
        for other in lost:  # the board answers in order: a frame sent before the one answered, and unanswered, was lost
            self._resend(other, inferred=True)
        job = piece.job
        command = job.request.command
        self.client._check(command, message, self.check_session)
        if piece.command == Command.PUT:
            job.puts_left -= 1
            if job.puts_left == 0:
                self.ready.append(self._chunk(job, Command.GET, 0, self.client.frame_bytes - p.HEADER_BYTES - p.GET_RESPONSE.size))
        elif piece.command == Command.GET:
            self._got_chunk(piece, message)
        else:
            self._finish(job, message)

    def _got_chunk(self, piece: _Piece, message: Message) -> None:
        job = piece.job
        (total, crc), data = p.unpack(p.GET_RESPONSE, message.payload, "GET answer", trailing=True)
        if job.answer is None:
            job.answer, job.answer_crc = bytearray(total), crc
            step = self.client.frame_bytes - p.HEADER_BYTES - p.GET_RESPONSE.size
            rest = [self._chunk(job, Command.GET, offset, min(step, total - offset)) for offset in range(piece.offset + piece.length, total, step)]
            job.gets_left = 1 + len(rest)
            self.ready.extend(rest)
        expected = min(piece.length, total - piece.offset)
        if total != len(job.answer) or crc != job.answer_crc or len(data) != expected:
            raise ProtocolError(f"GET answers of transfer {job.seq} disagree: {total} bytes with CRC {crc:#010x} and {len(data)} bytes "
                                f"at {piece.offset}, after {len(job.answer)} bytes with CRC {job.answer_crc:#010x} and {expected} expected")
        job.answer[piece.offset:piece.offset + len(data)] = data
        job.gets_left -= 1
        if job.gets_left:
            return
        if crc32(bytes(job.answer)) != job.answer_crc:
            raise ProtocolError(f"the answer of transfer {job.seq} does not match its CRC after reassembly")
        inner = Message.unpack(bytes(job.answer))
        if not inner.is_response or inner.seq != job.seq or inner.request_command != job.request.command:
            raise ProtocolError(f"transfer {job.seq} ({job.request.command.name}) holds an answer to {_name(inner.request_command)} {inner.seq}")
        self.open_transfers -= 1
        self.client._check(job.request.command, inner, self.check_session)
        self._finish(job, inner)

    def _finish(self, job: _Job, answer: Message) -> None:
        self.answers[job.index] = answer
        self.done += 1


def _name(command: int) -> str:
    code = command & ~p.RESPONSE_BIT
    return Command(code).name if code in Command._value2member_map_ else f"command 0x{code:02x}"
