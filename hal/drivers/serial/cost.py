"""The cost of one call on a board: its bytes on the line, a measured round trip, and the board's own estimate.

The line is full duplex, so a pipelined stream is bounded by the larger direction: request bytes toward the
board or answer bytes back, each at 10 bit times per byte (8N1). The round trip is measured at open. Compute
latency, energy and error come from the board's ESTIMATE answer (the emulator asks its hosted device), asked
once per matrix shape and batch and kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hal.device import Cost, OpSpec
from hal.drivers.serial import protocol as p
from hal.drivers.serial.compiler import matrix_shape, vectors
from hal.drivers.serial.framing import encoded_limit
from hal.drivers.serial.transport import BITS_PER_BYTE

#: Asks the board for the cost of a (rows, cols, batch) matrix-vector product: its ESTIMATE answer.
BoardEstimate = Callable[[int, int, int], dict[str, Any]]


class BoardCostModel:
    """Latency, energy and error of ops on one board, from the line rate, a measured round trip and ESTIMATE."""

    def __init__(self, baud: int, round_trip_s: float, ask_board: BoardEstimate):
        self.byte_time_s = BITS_PER_BYTE / baud if baud else 0.0
        self.round_trip_s = round_trip_s
        self._ask_board = ask_board
        self._board_estimates: dict[tuple[int, int, int], dict[str, Any]] = {}

    def estimate(self, op: OpSpec) -> Cost:
        """Line time of the larger direction plus one measured round trip, plus the board's compute estimate;
        matmul adds programming its second operand (written and read back)."""
        rows, cols = matrix_shape(op)
        batch = vectors(op)
        compute = self._board_estimate(rows, cols, batch)
        to_board = encoded_limit(p.HEADER_BYTES + p.RUN.size + batch * cols * 4)
        to_host = encoded_limit(p.HEADER_BYTES + p.RUN_RESPONSE.size + batch * rows * 4)
        latency = max(to_board, to_host) * self.byte_time_s + self.round_trip_s + compute["latency_s"]
        formula = f"max(request, answer bytes) * {BITS_PER_BYTE} / baud + measured round trip + board compute ({compute['formula']})"
        if op.name == "matmul":
            latency += 2 * rows * cols * 4 * self.byte_time_s
            formula += " + programming (write + read back of the second operand)"
        return Cost(latency, float(compute["energy_j"]), float(compute["error"]), formula)

    def _board_estimate(self, rows: int, cols: int, batch: int) -> dict[str, Any]:
        key = (rows, cols, batch)
        if key not in self._board_estimates:
            self._board_estimates[key] = self._ask_board(rows, cols, batch)
        return self._board_estimates[key]
