"""A cost model of the attention kernels: ranks tile configs from the block map alone, without running anything.

The first call of a pattern on a shape runs the config this model ranks first, so it never waits for a sweep;
later calls time the next few (see :mod:`.tuner`). The model is three figures per kernel family:

    time_s = [tile_flop * (n_full + partial_factor * n_partial) / rate_per_sm + programs * overhead_s] / sm_count

``tile_flop`` = 4 * BLOCK_M * BLOCK_N * head_dim (the forward's two products of one tile; the backward kernels are
measured in the same unit), ``n_full`` / ``n_partial`` the tiles the kernel visits (all batches and heads),
``programs`` the launched programs (query tiles x batch x heads; key tiles x batch x KV heads for dK/dV).
``rate_per_sm`` is a family's tile rate on full tiles, ``partial_factor`` what a masked tile costs relative to a
full one, ``overhead_s`` a program's fixed time (Q load, pipeline fill, O store) per SM.

The figures are a relative non-negative least-squares fit (``python benchmarks/attention.py --fit-cost-model
benchmarks/results/attention.json``) to the autotuning timings of the 10 cases at S = 4k and 16k in that file (5
patterns; 7 forward, 3 dK/dV and 3 dQ candidates each; H100 80GB HBM3, 132 SMs, head dim 128, bf16, triton 3.6).
On them the model's first choice is within 1.03x of the fastest candidate for the forward kernel, 1.17x for dK/dV
and 1.00x for dQ; on the five 64k cases, left out of the fit, the forward choice was within 1.09x. Families that
were not measured (other tile shapes, Blackwell) take the coefficients of the nearest measured family, said so in
their source.
"""

from __future__ import annotations

from dataclasses import dataclass

from .configs import TileConfig

_FIT = ("relative least-squares fit (benchmarks/attention.py --fit-cost-model) to the autotuning timings of "
        "benchmarks/results/attention.json at S 4k and 16k, H100 80GB HBM3, D128, bf16, triton 3.6")
_H100_SMS = 132  # the card the fit ran on (datasheet: NVIDIA H100 Tensor Core GPU Architecture whitepaper, SXM5)


@dataclass(frozen=True)
class Coefficient:
    """One fitted number with its provenance, written as hal.capability's Figures write theirs (``derived:<how>`` or
    ``assumed:<why>``); kernels import torch and triton only, so the cost model keeps its own small record."""

    value: float
    unit: str
    source: str
    note: str = ""

    @property
    def kind(self) -> str:
        """``derived`` (fitted) or ``assumed`` (taken from the nearest measured family)."""
        return self.source.split(":", 1)[0]


@dataclass(frozen=True)
class FamilyCost:
    """The three figures of one kernel family (see the module docstring)."""

    rate_per_sm: Coefficient      # FLOP/s of one SM on full tiles
    partial_factor: Coefficient   # cost of a partial tile / cost of a full one
    overhead_s: Coefficient       # fixed seconds per program, per SM


def _fitted(rate_tflops_gpu: float, partial: float, overhead_us: float, note: str = "") -> FamilyCost:
    return FamilyCost(Coefficient(rate_tflops_gpu * 1e12 / _H100_SMS, "FLOP/s", f"derived:{_FIT}; GPU rate / 132 SMs", note),
                      Coefficient(partial, "ratio", f"derived:{_FIT}", note),
                      Coefficient(overhead_us * 1e-6, "s", f"derived:{_FIT}", note))


# (kernel, family) -> figures. Families: "pingpong" (Gluon, two consumer warpgroups), "gluon" (Gluon, one
# warpgroup per 64 rows), "triton_<BLOCK_M>x<BLOCK_N>".
_MEASURED: dict[tuple[str, str], FamilyCost] = {
    ("forward", "pingpong"): _fitted(676, 1.53, 6.63),       # 20 timings
    ("forward", "gluon"): _fitted(497, 1.18, 2.40),          # 10 timings
    ("forward", "triton_128x128"): _fitted(473, 1.28, 6.08),  # 20 timings
    ("forward", "triton_128x64"): _fitted(445, 1.22, 6.79),  # 10 timings
    ("forward", "triton_64x64"): _fitted(420, 0.96, 2.37),   # 10 timings
    ("dkdv", "triton_64x64"): _fitted(251, 1.05, 2.97),      # 20 timings
    ("dkdv", "triton_64x128"): _fitted(258, 1.08, 8.58),     # 10 timings
    ("dq", "triton_64x64"): _fitted(380, 1.13, 1.77),        # 10 timings
    ("dq", "triton_128x64"): _fitted(341, 1.16, 5.09),       # 10 timings
    ("dq", "triton_64x32"): _fitted(292, 0.81, 2.35),        # 10 timings
}

KERNELS = ("forward", "dkdv", "dq")


def family(config: TileConfig) -> str:
    """The kernel family a config belongs to (what the cost figures are keyed by)."""
    if config.gluon:
        return "pingpong" if config.warp_specialize else "gluon"
    return f"triton_{config.block_m}x{config.block_n}"


def family_cost(kernel: str, config: TileConfig) -> FamilyCost:
    """The figures for ``config`` of ``kernel``: measured, or the nearest measured family's (source says which)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; one of {KERNELS}")
    name = family(config)
    if (kernel, name) in _MEASURED:
        return _MEASURED[(kernel, name)]
    # nearest measured family: same kernel, Gluon or not as this config if measured, then the closest tile area
    measured = [(fam, cost) for (k, fam), cost in _MEASURED.items() if k == kernel]
    same_kind = [(fam, cost) for fam, cost in measured if _is_gluon(fam) == config.gluon] or measured
    area = config.block_m * config.block_n

    def distance(item: tuple[str, FamilyCost]) -> int:
        return abs(_family_area(item[0]) - area)

    near_name, near = min(same_kind, key=distance)
    why = f"assumed:family {name} of the {kernel} kernel not measured; the coefficients of {near_name}"
    return FamilyCost(*(Coefficient(f.value, f.unit, why) for f in (near.rate_per_sm, near.partial_factor, near.overhead_s)))


def _is_gluon(family_name: str) -> bool:
    return not family_name.startswith("triton_")


def _family_area(family_name: str) -> int:
    if family_name == "pingpong":
        return 128 * 128
    if family_name == "gluon":
        return 64 * 64
    m, n = (int(x) for x in family_name.removeprefix("triton_").split("x"))
    return m * n


@dataclass(frozen=True)
class TileCounts:
    """What one launch visits: full and partial tiles (all batches and heads) and programs launched."""

    n_full: int
    n_partial: int
    programs: int


def estimate_s(kernel: str, config: TileConfig, counts: TileCounts, head_dim: int, sm_count: int) -> float:
    """Predicted seconds of one launch of ``kernel`` with ``config`` (see the module docstring for the formula)."""
    cost = family_cost(kernel, config)
    tile_flop = 4.0 * config.block_m * config.block_n * head_dim
    work = tile_flop * (counts.n_full + cost.partial_factor.value * counts.n_partial) / cost.rate_per_sm.value
    return (work + counts.programs * cost.overhead_s.value) / sm_count


def rank(kernel: str, candidates: tuple[TileConfig, ...], counts: dict[TileConfig, TileCounts], head_dim: int,
         sm_count: int) -> list[tuple[TileConfig, float]]:
    """Candidates with their estimates, fastest first; equal estimates keep the candidate list's order."""
    estimates = [(c, estimate_s(kernel, c, counts[c], head_dim, sm_count)) for c in candidates]
    order = sorted(range(len(estimates)), key=lambda i: (estimates[i][1], i))
    return [estimates[i] for i in order]
