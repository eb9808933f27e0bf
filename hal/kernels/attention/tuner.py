"""Tile choices per shape bucket: the cost model's first, refined lazily by timing a few candidates, kept on disk.

A kernel's first call on a new shape bucket runs the config :mod:`.cost_model` ranks first: nothing is timed, so
the call costs one compilation per kernel. Each later call of that kernel (on a GPU) times at most one more of the
model's first :data:`REFINE_CANDIDATES` candidates, next to the result it computes with the current choice, and
switches to whichever has measured fastest; after that the choice is final. Every step is written to disk
(:mod:`.disk_cache`), so a new process starts where the last one stopped, and a finished bucket is never timed
again. Results computed while refining may differ in the last bits from one call to the next (another tile order);
``hal.kernels.attention.warmup`` finishes the refinement ahead of time.

A shape bucket is (batch x heads, sequence lengths, each rounded up to a power of two; GQA group; dtype; head dim):
shapes in one bucket share a choice. Without a GPU (the Triton interpreter) nothing is timed and the cost model's
choice is final.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import disk_cache
from .configs import TileConfig
from .cost_model import KERNELS

# How many of the cost model's candidates get timed per kernel and bucket. On the 15 measured H100 cases the
# fastest forward config was the model's first or second (its first within 1.09x, cost_model docstring); a third
# is the margin. So refinement compiles at most two configs beyond the first choice.
REFINE_CANDIDATES = 3

# Launches timed per candidate (after one untimed launch that compiles it); the median is kept. Five keep a
# refinement step to a few kernel times while one slow outlier (a clock ramp, a host hiccup) cannot decide it.
TIMED_LAUNCHES = 5

Timer = Callable[[Callable[[], object]], float]


def cuda_time_ms(run: Callable[[], object]) -> float:
    """Median milliseconds of ``run()`` on the current CUDA stream (CUDA events), after one warm-up launch."""
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(TIMED_LAUNCHES):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _config_json(config: TileConfig) -> dict:
    return dataclasses.asdict(config)


def _config_from(data: dict) -> TileConfig:
    if not isinstance(data, dict):
        raise TypeError(f"a tile config must be an object, got {type(data).__name__}")
    return TileConfig(**data)  # unknown or missing fields raise TypeError: the file is treated as corrupt


@dataclass
class KernelChoice:
    """The tile config of one kernel (forward, dkdv or dq) for one shape bucket, and how it was chosen."""

    ranked: list[TileConfig]          # the cost model's order (the candidate list's, without autotuning)
    estimates_s: list[float]          # the model's predicted seconds, same order (nan without autotuning)
    chosen: TileConfig
    timing: bool                      # whether candidates are timed (autotuning on a GPU)
    timed_ms: dict[TileConfig, float] = field(default_factory=dict)  # inf: failed to build or run
    errors: dict[TileConfig, str] = field(default_factory=dict)
    calls: int = 0                    # calls of this kernel in this process (refinement starts at the second)

    @property
    def pending(self) -> list[TileConfig]:
        """Candidates still to be timed (none once the choice is final)."""
        if not self.timing:
            return []
        return [c for c in self.ranked[:REFINE_CANDIDATES] if c not in self.timed_ms]

    @property
    def source(self) -> str:
        """How ``chosen`` was chosen: by timing, by the cost model, or as the first candidate that builds."""
        if any(math.isfinite(t) for t in self.timed_ms.values()):
            return "measured"
        return "cost model" if self.timing or not math.isnan(self.estimates_s[0]) else "first candidate"

    def fail(self, config: TileConfig, error: BaseException) -> None:
        """Record that ``config`` did not build or run, and choose the next candidate (the error says all of them)."""
        self.timed_ms[config] = math.inf
        self.errors[config] = repr(error)[:300]
        left = [c for c in self.ranked if c not in self.errors]
        if not left:
            raise RuntimeError(f"no tile config of this attention kernel built: {self._error_text()}") from error
        self.chosen = left[0]

    def record(self, config: TileConfig, ms: float) -> None:
        self.timed_ms[config] = ms
        finite = [c for c in self.ranked if math.isfinite(self.timed_ms.get(c, math.inf))]
        if finite:
            self.chosen = min(finite, key=lambda c: (self.timed_ms[c], self.ranked.index(c)))

    def _error_text(self) -> str:
        return "; ".join(f"{tuple(dataclasses.astuple(c))}: {e}" for c, e in self.errors.items())

    def to_json(self) -> dict:
        return {"ranked": [_config_json(c) for c in self.ranked], "estimates_s": self.estimates_s,
                "chosen": _config_json(self.chosen), "source": self.source,
                "timed_ms": [[_config_json(c), ms if math.isfinite(ms) else None] for c, ms in self.timed_ms.items()],
                "errors": [[_config_json(c), e] for c, e in self.errors.items()]}

    @classmethod
    def from_json(cls, data: dict, timing: bool) -> KernelChoice:
        ranked = [_config_from(c) for c in data["ranked"]]
        chosen = _config_from(data["chosen"])
        if not ranked or chosen not in ranked:
            raise ValueError("the chosen config is not among the ranked candidates")
        estimates = [float(x) for x in data["estimates_s"]]
        if len(estimates) != len(ranked):
            raise ValueError("one estimate per ranked candidate expected")
        timed = {_config_from(c): (math.inf if ms is None else float(ms)) for c, ms in data["timed_ms"]}
        errors = {_config_from(c): str(e) for c, e in data["errors"]}
        return cls(ranked, estimates, chosen, timing, timed, errors)


class BucketTuning:
    """The forward, dK/dV and dQ choices of one shape bucket of one kernel; saved after every change."""

    def __init__(self, key: dict, choices: dict[str, KernelChoice], persist: bool, loaded: bool) -> None:
        self.key = key
        self.choices = choices
        self.persist = persist
        self.loaded = loaded  # read from disk (rather than ranked in this process)
        self._final = False   # once nothing is pending nothing ever will be (read on every call)

    def config(self, kernel: str) -> TileConfig:
        return self.choices[kernel].chosen

    @property
    def pending(self) -> bool:
        """Whether some kernel still has candidates to time."""
        if not self._final:
            self._final = not any(c.pending for c in self.choices.values())
        return not self._final

    def fail(self, kernel: str, config: TileConfig, error: BaseException) -> None:
        self.choices[kernel].fail(config, error)
        self.save()

    def refine(self, kernel: str, run: Callable[[TileConfig], object], timer: Timer = cuda_time_ms) -> bool:
        """On this kernel's second and later calls: time the current choice (once) and the next candidate.

        Returns whether anything was timed. A candidate that fails to build or run is recorded and skipped; running
        out of GPU memory says nothing about the candidate, so the step ends there and is tried again later.
        """
        choice = self.choices[kernel]
        choice.calls += 1
        if choice.calls < 2 or not choice.pending:
            return False
        targets = [] if choice.chosen in choice.timed_ms else [choice.chosen]
        targets += [c for c in choice.pending if c not in targets][:1]
        for config in targets:
            try:
                choice.record(config, timer(lambda config=config: run(config)))
            except torch.cuda.OutOfMemoryError:
                break
            except Exception as e:  # noqa: BLE001  (a candidate this GPU/compiler cannot build is skipped, logged)
                choice.timed_ms[config] = math.inf
                choice.errors[config] = repr(e)[:300]
        self.save()
        return True

    def save(self) -> None:
        if self.persist:
            disk_cache.save_tuning(self.key, {kernel: c.to_json() for kernel, c in self.choices.items()})

    def summary(self) -> dict:
        """Per kernel: the chosen config, how it was chosen, and the timings so far (for logs and benchmarks)."""
        return {kernel: c.to_json() for kernel, c in self.choices.items()}


Ranker = Callable[[str], list[tuple[TileConfig, float]]]


def bucket_tuning(key: dict, rank: Ranker, *, timing: bool, persist: bool) -> BucketTuning:
    """The tuning of ``key``: from disk when a usable file exists, else ranked now by ``rank(kernel)`` (and saved)."""
    if persist:
        def parse(entry: dict) -> dict[str, KernelChoice]:
            if set(entry) != set(KERNELS):
                raise ValueError(f"expected choices for {KERNELS}, found {sorted(entry)}")
            return {kernel: KernelChoice.from_json(entry[kernel], timing) for kernel in KERNELS}

        stored = disk_cache.load_tuning(key, parse)
        if stored is not None:
            return BucketTuning(key, stored, persist, loaded=True)
    choices = {}
    for kernel in KERNELS:
        ranked = rank(kernel)
        configs = [c for c, _ in ranked]
        choices[kernel] = KernelChoice(configs, [float(s) for _, s in ranked], configs[0], timing)
    tuning = BucketTuning(key, choices, persist, loaded=False)
    tuning.save()
    return tuning


def shape_bucket(batch: int, heads: int, kv_heads: int, seq_q: int, seq_kv: int) -> dict:
    """The bucket of a shape: batch x heads and both lengths rounded up to powers of two, and the GQA group."""
    return {"batch_heads": _next_pow2(batch * heads), "group": heads // kv_heads, "seq_q": _next_pow2(seq_q),
            "seq_kv": _next_pow2(seq_kv)}


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
