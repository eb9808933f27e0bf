"""Fake devices for the runtime tests: chosen costs, paradigms, supported ops, capacities, claims and failure injection.

Each fake computes with the torch kernels (so results are checkable) and counts prepares and calls. A fake
with ``claim_ops`` claims every subgraph made only of those ops and runs it as one Program, which programs a
copy of its weights at prepare (as a device programming conductances would: a later in-place weight update
reaches it only if the runtime prepares it again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import torch
from torch import nn

from hal import ops as vocabulary
from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.device import Cost, Device, DeviceInfo, OpSpec, Program, Support
from hal.errors import DeviceFailure
from hal.kernels.torch_ops import TORCH_OPS
from hal.subgraph import Subgraph, run_wired


class FakeDevice(Device):
    """A configurable fake; subclasses made by ``fake()`` set the class attributes."""

    kind = "fake"
    paradigm = Paradigm.DIGITAL
    simulated = True
    ops: tuple[str, ...] = tuple(vocabulary.VOCABULARY)
    s_per_flop = 1e-12
    j_per_flop = 1e-12
    fixed_s = 0.0
    error = 1e-6
    memory_bytes: float | None = None
    fail_on_call: int | None = None
    on_run: Callable[[OpSpec], None] | None = None
    #: Ops of the subgraphs this fake claims (none: it declines every claim, as the contract's default does).
    claim_ops: tuple[str, ...] = ()
    #: Its subgraph estimate is this factor times the sum of the ops' estimates.
    claim_factor = 0.5
    #: Declares that its estimates include its paradigm conversion at the edge (``Capabilities.estimates_include_edge_conversion``).
    converts_in_estimates = False

    def __init__(self, uri):
        super().__init__(uri)
        self.prepared = 0
        self.subgraphs_prepared = 0
        self.calls = 0
        self._count = threading.Lock()

    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        return [DeviceInfo(f"{cls.kind}:0", cls.kind, True)]

    def _build_capabilities(self) -> Capabilities:
        memory = Figure.measured(self.memory_bytes, "B", "test fake") if self.memory_bytes is not None else None
        caps = Capabilities(
            uri=str(self.uri), kind=self.kind, paradigm=self.paradigm, simulated=self.simulated, identity={},
            ops={name: OpSupport(("float32",), {"float32": 1e-3}) for name in self.ops}, memory_bytes=memory,
        )
        caps.estimates_include_edge_conversion = self.converts_in_estimates
        return caps

    def estimate(self, op: OpSpec) -> Cost:
        flops = vocabulary.flops(op)
        return Cost(self.fixed_s + flops * self.s_per_flop, flops * self.j_per_flop, self.error, "fake")

    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        self.prepared += 1
        fn, attrs = TORCH_OPS[op.name], dict(op.attrs)

        def run(*inputs: torch.Tensor) -> torch.Tensor:
            self._called(op)
            return fn(inputs, params, attrs)

        return Program(op, self, self.estimate(op), run)

    def _called(self, op: OpSpec) -> None:
        """Count a Program call; fail it from call ``fail_on_call`` on; tell ``on_run``."""
        with self._count:
            self.calls += 1
            calls = self.calls
        if self.fail_on_call is not None and calls >= self.fail_on_call:
            raise DeviceFailure(f"{self.uri}: injected link loss")
        if self.on_run is not None:
            self.on_run(op)

    def claim(self, sub: Subgraph) -> Support:
        if not self.claim_ops:
            return super().claim(sub)
        others = sorted({op.name for op in sub.ops} - set(self.claim_ops))
        return Support.no(f"{self.uri} claims only groups of {', '.join(self.claim_ops)}, not {', '.join(others)}") if others else Support.yes()

    def estimate_subgraph(self, sub: Subgraph) -> Cost:
        total = super().estimate_subgraph(sub)
        f = self.claim_factor
        return Cost(total.latency_s * f, total.energy_j * f, total.error * f, f"fake: {f} x the ops' sum")

    def _compile_subgraph(self, sub: Subgraph, params: list[dict[str, torch.Tensor]]) -> Program:
        self.subgraphs_prepared += 1
        programmed = [{k: v.detach().clone() for k, v in p.items()} for p in params]
        steps = [lambda *xs, op=op, p=p: TORCH_OPS[op.name](xs, p, dict(op.attrs)) for op, p in zip(sub.ops, programmed)]
        spec = sub.as_opspec()

        def run(*inputs: torch.Tensor):
            self._called(spec)
            return run_wired(sub, steps, inputs)

        program = Program(spec, self, self.estimate_subgraph(sub), run)
        program.path = f"{len(sub.ops)} ops composed by the fake"  # what a real driver's Program says of itself
        return program


def fake(kind: str, **attrs) -> FakeDevice:
    """A fresh fake device ``kind:0`` whose class sets ``attrs`` (ops, costs, paradigm, memory, claims, failure)."""
    if "ops" in attrs and not isinstance(attrs["ops"], tuple):
        attrs["ops"] = tuple(attrs["ops"])
    if attrs.get("on_run") is not None:
        attrs["on_run"] = staticmethod(attrs["on_run"])
    cls = type(f"Fake_{kind}", (FakeDevice,), {"kind": kind, **attrs})
    return cls(f"{kind}:0")


def fleet(names: Iterable[str] = ("alpha", "beta", "gamma", "delta", "epsilon")) -> list[FakeDevice]:
    """Five digital fakes with spread-out speeds and energies (the benchmark's device set)."""
    out = []
    for i, name in enumerate(names):
        out.append(fake(name, s_per_flop=1e-12 * (i + 1), j_per_flop=1e-12 * (5 - i), error=1e-6 * (1 + (i * 7) % 5)))
    return out


class WritesInPlace(nn.Module):
    """A model that doubles its input in place before a Linear (the runtime must order and protect that write)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        x.mul_(2)
        return self.fc(x)


class ActTwice(nn.Module):
    """``ReLU(inplace=True)`` whose input is read again afterwards: eager reads the rectified values."""

    def __init__(self):
        super().__init__()
        self.fc, self.act = nn.Linear(4, 4), nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.fc(x)
        r = self.act(h)
        return h + r
