"""Tile configurations of the scan kernels: the candidates Triton's autotuner picks among on a GPU.

Chosen from register budgets, not yet from measurement (no GPU was at hand when they were written; the GPU
session's benchmark, benchmarks/selective_scan.py, is where they get pruned):

* S6 holds (BLOCK_D, d_state, BLOCK_T) fp32 tiles, about six of them live at once in the backward; the element
  budget below keeps that near 32 to 64 values per thread (255 registers per thread on sm_90, datasheet: NVIDIA
  H100 Tensor Core GPU Architecture whitepaper). BLOCK_T is fixed per d_state, not tuned, because the forward saves
  the state at every BLOCK_T-th position for the backward, which must walk the same chunks.
* SSD holds the (BLOCK_P, d_state) fp32 state and (BLOCK_Q, BLOCK_Q) / (BLOCK_Q, d_state) tiles. BLOCK_Q is the
  kernels' chunk length: a smaller chunk costs fewer flops per token (2 Q (d_state + head_dim) intra-chunk against
  4 head_dim d_state for the state terms) but more sequential steps; 64 balances them at d_state 128, head_dim 64.

Under TRITON_INTERPRET=1 every kernel has one small config, so tests cross several tiles at small sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hal.kernels import interpreting


@dataclass(frozen=True)
class S6Tile:
    """BLOCK_T (positions per chunk, fixed) and the (BLOCK_D, num_warps) candidates for one d_state bucket."""

    block_t: int
    candidates: tuple[tuple[int, int], ...]


# keyed by d_state padded to a power of two; BLOCK_D * d_state * BLOCK_T stays near 2048-4096 elements per 4 warps
S6_GPU: dict[int, S6Tile] = {
    1: S6Tile(32, ((16, 4), (32, 4), (64, 8))),
    2: S6Tile(32, ((16, 4), (32, 4), (64, 8))),
    4: S6Tile(32, ((8, 4), (16, 4), (32, 8))),
    8: S6Tile(32, ((4, 4), (8, 4), (16, 8))),
    16: S6Tile(32, ((4, 4), (8, 4), (8, 8))),
    32: S6Tile(32, ((2, 4), (4, 4), (4, 8))),
    64: S6Tile(16, ((2, 4), (4, 4), (4, 8))),
    128: S6Tile(16, ((1, 4), (2, 4), (2, 8))),
    256: S6Tile(16, ((1, 4), (1, 8), (2, 8))),
}
S6_INTERPRETER = S6Tile(8, ((4, 1),))


def s6_tile(d_state_padded: int) -> S6Tile:
    """The S6 tile family for a padded d_state (a power of two up to 256)."""
    return S6_INTERPRETER if interpreting() else S6_GPU[d_state_padded]


@dataclass(frozen=True)
class SsdTile:
    block_q: int
    block_p: int
    num_warps: int
    num_stages: int


# forward: (BLOCK_Q, BLOCK_P, warps, stages); BLOCK_P above head_dim is capped by the launcher
SSD_FWD_GPU = (SsdTile(64, 64, 4, 2), SsdTile(64, 64, 8, 2), SsdTile(64, 32, 4, 2), SsdTile(128, 64, 8, 2),
               SsdTile(32, 64, 4, 2))
SSD_BWD_BLOCK_Q_GPU = 64  # the backward and its state recompute share one chunk length (the saved chunk states)
SSD_BWD_GPU = (SsdTile(64, 64, 8, 1), SsdTile(64, 32, 4, 1), SsdTile(64, 64, 4, 1))
SSD_INTERPRETER = SsdTile(16, 16, 1, 1)
