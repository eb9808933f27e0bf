"""From an OpSpec to work on the board: a matrix written into a slot (write-verified), then RUN requests through it.

``linear`` programs its weight once, when it is prepared; ``matmul`` programs its second operand on every call.
Programming is write-verify: stage the values (PROGRAM_BEGIN, PROGRAM_WRITE), commit them with the CRC of the
staged bytes (PROGRAM_COMMIT), read back what the array holds (READBACK) and compare within the board's declared
tolerance; a program that fails twice is refused, and nothing runs on it. Every board action goes through the
device's ``guard``, which recovers from a reboot (HELLO, reprogram, repeat) and turns link and board failures
into hal errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from hal.device import OpSpec
from hal.drivers.serial import protocol as p
from hal.drivers.serial.client import BoardClient, Request
from hal.drivers.serial.framing import crc32
from hal.drivers.serial.protocol import Command
from hal.drivers.serial.slots import Resident, SlotAllocator
from hal.errors import DeviceFailure

T = TypeVar("T")
Guard = Callable[[Callable[[], T]], T]

#: Programming attempts before write-verify declares the array defective.
PROGRAM_ATTEMPTS = 2
#: A read-back cell fails verification when it is further from the written value than this many
#: standard deviations of the per-cell error the board's tolerance allows (tolerance * rms of the matrix).
VERIFY_SIGMAS = 6.0


def matrix_shape(op: OpSpec) -> tuple[int, int]:
    """(rows, cols) = (out, in) of the matrix programmed into the array for ``op``."""
    if op.name == "matmul":
        b = op.inputs[1].shape
        return b[-1] or 1, b[-2] or 1
    weight = op.param("weight")
    return weight.shape[0], weight.shape[1]


def vectors(op: OpSpec) -> int:
    """Input vectors one call streams through the array (open dimensions count as 1)."""
    shape = op.inputs[0].shape[:-1]
    return math.prod(s or 1 for s in shape) if shape else 1


class BoardCompiler:
    """Builds the run functions of board Programs and programs the board's slots for them."""

    def __init__(self, uri: str, client: BoardClient, board: dict[str, Any], slots: SlotAllocator, guard: Guard):
        self.uri = uri
        self.client = client
        self.board = board
        self.slots = slots
        self.guard = guard
        self.program_attempts = 0
        self.verify_failures = 0

    def runner(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
        """The run function of a Program for a supported ``linear`` or ``matmul``; a linear's weight is programmed now."""
        if op.name == "linear":
            weight = params["weight"].detach().to("cpu", torch.float32).numpy().copy()
            bias = params.get("bias")
            resident = Resident(weight, None if bias is None else bias.detach().to("cpu", torch.float32).numpy().copy(), op.attr("activation") == "relu")
            self.guard(lambda: self.ensure_programmed(resident))

            def run_linear(x: torch.Tensor) -> torch.Tensor:
                flat = x.detach().to("cpu", torch.float32).reshape(-1, resident.cols).numpy()
                y = self.guard(lambda: self.mvm(resident, flat))
                return torch.from_numpy(y).reshape(*x.shape[:-1], resident.rows)

            return run_linear

        def run_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            a3 = a.detach().to("cpu", torch.float32).expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
            b3 = b.detach().to("cpu", torch.float32).expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
            if b.dim() == 2:  # one matrix for every batch element: program it once
                y = self._matmul_one(a3.reshape(-1, a.shape[-1]).numpy(), b3[0].numpy())
                return torch.from_numpy(y).reshape(*batch, a.shape[-2], b.shape[-1])
            outs = [torch.from_numpy(self._matmul_one(ai.numpy(), bi.numpy())) for ai, bi in zip(a3, b3)]
            return torch.stack(outs).reshape(*batch, a.shape[-2], b.shape[-1])

        return run_matmul

    def _matmul_one(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a @ b with b (K, N) programmed as an N x K matrix and a's rows streamed through it."""
        resident = Resident(np.ascontiguousarray(b.T), None, False)
        return self.guard(lambda: self.mvm(resident, a))

    # ---- programming
    def ensure_programmed(self, resident: Resident) -> None:
        """Program ``resident`` into a slot unless the board holds it in this session already."""
        if self.slots.holds(resident, self.client.session):
            return
        slot = self.slots.claim()
        self._write_verify(slot, resident)
        self.slots.assign(slot, resident, self.client.session)

    def _write_verify(self, slot: int, resident: Resident) -> None:
        """Stage, commit (CRC of the staged bytes), read back and compare; refuse the program if cells disagree."""
        values = resident.values().astype(np.float32)
        problem = ""
        for _ in range(PROGRAM_ATTEMPTS):
            self.program_attempts += 1
            self._stage_and_commit(slot, resident, values)
            problem = self._verify(resident, self._read_back(slot, values.size))
            if not problem:
                return
            self.verify_failures += 1
        raise DeviceFailure(f"{self.uri}: write-verify of slot {slot} failed {PROGRAM_ATTEMPTS} times: {problem}. "
                            "The array has defective cells; use another board or map the layer around them.")

    def _stage_and_commit(self, slot: int, resident: Resident, values: np.ndarray) -> None:
        flags = (p.FLAG_BIAS if resident.bias is not None else 0) | (p.FLAG_RELU if resident.relu else 0)
        chunk = (self.client.max_payload - p.PROGRAM_WRITE.size) // 4
        begin = Request(Command.PROGRAM_BEGIN, p.PROGRAM_BEGIN.pack(slot, resident.rows, resident.cols, flags), 0)
        writes = [Request(Command.PROGRAM_WRITE, p.PROGRAM_WRITE.pack(slot, start) + p.floats_to_bytes(values[start:start + chunk]), 0)
                  for start in range(0, values.size, chunk)]
        self.client.exchange([begin])  # BEGIN must land before the writes it sizes
        self.client.exchange(writes)
        commit = Request(Command.PROGRAM_COMMIT, p.PROGRAM_COMMIT.pack(slot, crc32(p.floats_to_bytes(values))), 0, float(self.board.get("program_time_s", 0.0)))
        self.client.exchange([commit])

    def _read_back(self, slot: int, size: int) -> np.ndarray:
        chunk = self.client.max_payload // 4
        requests = [Request(Command.READBACK, p.READBACK.pack(slot, start, min(chunk, size - start)), min(chunk, size - start) * 4)
                    for start in range(0, size, chunk)]
        answers = self.client.exchange(requests)
        realized = np.concatenate([p.bytes_to_floats(a.payload, "READBACK answer") for a in answers])
        if realized.size != size:
            raise DeviceFailure(f"{self.uri}: read back {realized.size} values of a {size}-value slot")
        return realized

    def _verify(self, resident: Resident, realized: np.ndarray) -> str:
        """'' if the read-back matches the written matrix within the board's tolerance, else what disagrees."""
        tolerance = float(self.board["readback_tolerance"])
        n = resident.rows * resident.cols
        written, read = resident.weight.reshape(-1).astype(np.float64), realized[:n].astype(np.float64)
        if not np.isfinite(read).all():
            return "the board read back NaN/inf"
        scale = float(np.sqrt(np.mean(written ** 2))) or 1.0
        error = np.abs(read - written)
        band = VERIFY_SIGMAS * tolerance * scale
        bad = np.flatnonzero(error > band)
        relative = float(np.linalg.norm(read - written) / (np.linalg.norm(written) or 1.0))
        allowed = int(float(self.board.get("defect_allowance", 0.0)) * n)
        if bad.size <= allowed and relative <= tolerance:
            return ""
        worst = int(np.argmax(error))
        r, c = divmod(worst, resident.cols)
        return (f"{bad.size} of {n} cells (the board allows {allowed}) differ from the written weights by more than {band:.3g} "
                f"(worst: cell ({r}, {c}) written {written[worst]:.4g}, read {read[worst]:.4g}); "
                f"relative error {relative:.3g} vs tolerance {tolerance:.3g}")

    # ---- running
    def mvm(self, resident: Resident, x: np.ndarray) -> np.ndarray:
        """y = x W^T (+ b) on the board, ``x`` (batch, cols) split into requests that fit the payload limit."""
        self.ensure_programmed(resident)
        slot = resident.slot
        per_request = max(1, min((self.client.max_payload - p.RUN.size) // (resident.cols * 4),
                                 (self.client.max_payload - p.RUN_RESPONSE.size) // (resident.rows * 4)))
        requests = [Request(Command.RUN, p.RUN.pack(slot, len(part)) + p.floats_to_bytes(part), p.RUN_RESPONSE.size + len(part) * resident.rows * 4)
                    for part in (x[i:i + per_request] for i in range(0, len(x), per_request))]
        outputs = []
        for request, answer in zip(requests, self.client.exchange(requests)):
            (batch, rows), data = p.unpack(p.RUN_RESPONSE, answer.payload, "RUN answer", trailing=True)
            y = p.bytes_to_floats(data, "RUN answer")
            sent = (len(request.payload) - p.RUN.size) // (4 * resident.cols)
            if batch != sent or rows != resident.rows or y.size != batch * rows:
                raise DeviceFailure(f"{self.uri}: RUN answer holds {batch}x{rows} values ({y.size} floats) for a {sent}x{resident.rows} request")
            outputs.append(y.reshape(batch, rows))
        return np.concatenate(outputs) if outputs else np.zeros((0, resident.rows), np.float32)
