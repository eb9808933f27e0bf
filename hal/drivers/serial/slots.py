"""The board's weight slots as the host sees them: which matrix each slot holds, in which session, which to evict.

A board has a few slots (its CAPABILITIES answer says how many). The host keeps every matrix it programmed
(a ``Resident``) so that it can program it again after an eviction or a reboot; this allocator only decides
where each one lives. Eviction is least recently used, as a cache's: the evicted matrix stays with its
Program on the host and is written again, write-verified, when it is next used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)
class Resident:
    """A matrix the host keeps so it can program a slot, and program it again after an eviction or a reboot."""

    weight: np.ndarray  # (rows, cols) float32
    bias: np.ndarray | None
    relu: bool
    slot: int | None = None
    session: int = 0

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    @property
    def cols(self) -> int:
        return self.weight.shape[1]

    def values(self) -> np.ndarray:
        """What the board stages for this matrix: the weights row-major, then the bias."""
        flat = self.weight.reshape(-1)
        return np.concatenate([flat, self.bias]) if self.bias is not None else flat


class SlotAllocator:
    """Which Resident holds which of the board's ``count`` slots, most recently used last."""

    def __init__(self, count: int):
        self._holders: list[Resident | None] = [None] * count
        self._use_order: list[int] = []

    @property
    def count(self) -> int:
        return len(self._holders)

    def holds(self, resident: Resident, session: int) -> bool:
        """Whether ``resident`` is programmed on the board in ``session`` (if so it becomes the most recently used)."""
        slot = resident.slot
        if slot is None or self._holders[slot] is not resident or resident.session != session:
            return False
        self._touch(slot)
        return True

    def claim(self) -> int:
        """A slot for a new matrix: a free one, else the least recently used one, whose matrix is evicted."""
        free = [i for i, holder in enumerate(self._holders) if holder is None]
        slot = free[0] if free else self._use_order[0]
        evicted = self._holders[slot]
        if evicted is not None:
            evicted.slot = None
        self._holders[slot] = None
        return slot

    def assign(self, slot: int, resident: Resident, session: int) -> None:
        """Record that ``slot`` now holds ``resident`` (programmed and verified in ``session``)."""
        resident.slot, resident.session = slot, session
        self._holders[slot] = resident
        self._touch(slot)

    def forget_all(self) -> None:
        """The board lost every slot (it rebooted): nothing is programmed any more."""
        self._holders = [None] * len(self._holders)
        self._use_order.clear()

    def _touch(self, slot: int) -> None:
        if slot in self._use_order:
            self._use_order.remove(slot)
        self._use_order.append(slot)
