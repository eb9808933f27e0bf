"""The device's crossbar tiles: which Program owns each, capacity checks, and overwriting the oldest when full.

Tiles are a finite resource. A weight needing more tiles than the device has is refused (``capacity_problem``
names the tiles needed and the fix); when the free tiles run out, the oldest programs are overwritten and
invalidated, so calling them raises ``ProgramInvalidated`` instead of computing with another weight.
"""

from __future__ import annotations

import threading
from typing import Protocol

from hal.drivers.memristor.tile import TileGrid


class TileOwner(Protocol):
    """What the allocator needs of a Program that owns tiles."""

    tiles: list[int]

    def invalidate(self, reason: str) -> None: ...


class TileAllocator:
    """``count`` tiles of ``rows`` x ``cols`` device pairs and their owners, oldest program first."""

    def __init__(self, uri: str, count: int, rows: int, cols: int):
        self.uri, self.count, self.rows, self.cols = uri, count, rows, cols
        self._owners: list[TileOwner | None] = [None] * count
        self._programs: list[TileOwner] = []  # oldest first
        self._lock = threading.RLock()  # programs may be prepared and released on several threads

    def capacity_problem(self, op_name: str, grid: TileGrid) -> str | None:
        """Why a (stack, inputs, outputs) weight cannot fit the device at all, or None when it can."""
        if grid.tiles <= self.count:
            return None
        return (
            f"{self.uri} holds {self.count} tiles of {self.rows}x{self.cols}; this {op_name} stores {grid.stack} x "
            f"{grid.inputs}x{grid.outputs} weights and needs {grid.tiles} tiles ({grid.stack} x {grid.row_blocks} x {grid.col_blocks}). "
            f"Pass ?tiles={grid.tiles} or split the layer."
        )

    def allocate(self, program: TileOwner, count: int, op_name: str) -> list[int]:
        """Give ``count`` free tiles to ``program``, overwriting (and invalidating) the oldest programs when needed."""
        with self._lock:
            free = [i for i, owner in enumerate(self._owners) if owner is None]
            while len(free) < count:
                victim = self._programs[0]
                self.free(victim, f"its tiles {victim.tiles} were reprogrammed for a {op_name} (the device holds {self.count} tiles; pass ?tiles=N for more)")
                free = [i for i, owner in enumerate(self._owners) if owner is None]
            chosen = free[:count]
            for i in chosen:
                self._owners[i] = program
            self._programs.append(program)
            return chosen

    def free(self, program: TileOwner, reason: str) -> None:
        """Take ``program``'s tiles back and invalidate it with ``reason``."""
        with self._lock:
            for i in program.tiles:
                if self._owners[i] is program:
                    self._owners[i] = None
            if program in self._programs:
                self._programs.remove(program)
            program.invalidate(reason)

    def free_all(self, reason: str) -> None:
        """Invalidate every program on the device (it is closing)."""
        with self._lock:
            for program in list(self._programs):
                self.free(program, reason)

    def programs(self) -> list[TileOwner]:
        """The programs owning tiles now, oldest first."""
        with self._lock:
            return list(self._programs)

    @property
    def in_use(self) -> int:
        """Tiles owned by a program now."""
        return sum(owner is not None for owner in self._owners)
