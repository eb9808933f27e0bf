"""What a fusion pass did: how many rewrites it made and where, and the candidates it left alone with the reason."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from hal.drivers.nvidia.passes.nodes import ensure_values
from hal.errors import InvalidInput

#: Rows of the activation up to which the passes fuse by default: the kernels' small-M range (1..64 rows).
DEFAULT_MAX_ROWS = 64


@dataclass(frozen=True)
class PassResult:
    """One pass over one graph: ``fired`` rewrites, ``details`` (one line per rewrite: what became which kernel
    call) and ``skipped`` (one line per near-miss: the candidate and why it stays as it is)."""

    name: str
    fired: int
    details: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"{self.name}: fired {self.fired}"]
        lines += [f"  + {d}" for d in self.details]
        lines += [f"  - {s}" for s in self.skipped]
        return "\n".join(lines)


@dataclass(frozen=True)
class FusionReport:
    """Every pass ``apply_passes`` ran on one graph, in the order it ran them."""

    results: tuple[PassResult, ...]

    @property
    def fired(self) -> dict[str, int]:
        """Rewrites per pass name."""
        return {r.name: r.fired for r in self.results}

    def __getitem__(self, name: str) -> PassResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no pass {name!r} ran; these did: {', '.join(r.name for r in self.results) or 'none'}")

    def __str__(self) -> str:
        return "\n".join(str(r) for r in self.results) or "no fusion pass ran"


@dataclass
class Log:
    """What a pass collects while it runs, turned into its PassResult at the end."""

    name: str
    details: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def fired(self, line: str) -> None:
        self.details.append(line)

    def skip(self, line: str) -> None:
        self.skipped.append(line)

    def result(self) -> PassResult:
        return PassResult(self.name, len(self.details), tuple(self.details), tuple(self.skipped))


def run_pass(name: str, gm: fx.GraphModule, example_inputs: Sequence[Any], max_rows: int, body: Callable[[fx.Graph, Log, int], None]) -> PassResult:
    """Check ``max_rows``, give the graph its values, run ``body(graph, log, max_rows)``, recompile if it rewrote."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise InvalidInput(f"max_rows takes a whole number >= 1 (rows of the activation up to which a pass fuses), got {max_rows!r}")
    ensure_values(gm, example_inputs)
    log = Log(name)
    body(gm.graph, log, max_rows)
    if log.details:
        gm.graph.lint()
        gm.recompile()
    return log.result()
