"""Fault injection for the board emulator: what can go wrong on a serial link and on an analog board.

A plan is written ``name:value`` pairs joined by commas, both on the emulator's command line
(``--faults drop:0.001,brownout:5``) and in a device URI (``memristor:0?port=emu&faults=corrupt:0.01``):

==============  ==========================================================================================
drop:P          each byte, in either direction, is lost with probability P (a UART overrun)
corrupt:P       each byte, in either direction, has one random bit flipped with probability P (line noise)
delay:S         each answer is held back S seconds before it is sent (a busy board, a slow USB bridge)
delay_p:P       only a fraction P of answers is delayed (default 1)
disconnect:N    after N received frames the board closes its end of the link for good (cable pulled)
brownout:N      the board reboots while receiving its N-th RUN request sent whole (in one frame, not as a
                transfer) and never answers it (supply dip); it comes back with a new boot id and empty slots
stuck:N         N array cells are stuck at the high-conductance state (they read back as the largest
                weight magnitude whatever was written): write-verify must refuse the program
seed:K          seed of the fault random generator (default 0), so a failing test repeats
==============  ==========================================================================================
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class FaultPlan:
    """The faults one emulated board injects (all off by default)."""

    drop: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    delay_p: float = 1.0
    disconnect: int = 0
    brownout: int = 0
    stuck: int = 0
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """Read ``name:value,name:value``; ValueError names the bad entry and the known names."""
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | int] = {}
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            name, sep, text = entry.partition(":")
            if not sep or name not in types:
                raise ValueError(f"fault entry {entry!r} is not name:value with name one of {', '.join(types)}")
            try:
                values[name] = int(text) if types[name] == "int" else float(text)
            except ValueError:
                raise ValueError(f"fault {name} needs a{'n integer' if types[name] == 'int' else ' number'}, got {text!r}") from None
        plan = cls(**values)
        for name in ("drop", "corrupt", "delay_p"):
            if not 0.0 <= getattr(plan, name) <= 1.0:
                raise ValueError(f"fault {name} is a probability in [0, 1], got {getattr(plan, name)}")
        if min(plan.delay, plan.disconnect, plan.brownout, plan.stuck) < 0:
            raise ValueError("fault delay, disconnect, brownout and stuck must not be negative")
        return plan

    def __str__(self) -> str:
        default = FaultPlan()
        return ",".join(f"{f.name}:{getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) != getattr(default, f.name))

    @property
    def touches_bytes(self) -> bool:
        return self.drop > 0 or self.corrupt > 0


class ByteFaults:
    """Applies the drop/corrupt part of a plan to a byte stream (one instance per direction)."""

    def __init__(self, plan: FaultPlan, stream: int):
        self.plan = plan
        self.rng = random.Random(plan.seed * 2 + stream)
        self.dropped = 0
        self.corrupted = 0

    def apply(self, data: bytes) -> bytes:
        if not self.plan.touches_bytes:
            return data
        out = bytearray()
        for byte in data:
            if self.rng.random() < self.plan.drop:
                self.dropped += 1
                continue
            if self.rng.random() < self.plan.corrupt:
                self.corrupted += 1
                byte ^= 1 << self.rng.randrange(8)
            out.append(byte)
        return bytes(out)
