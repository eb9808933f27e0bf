"""Block maps: the pattern evaluated once per (query tile, key tile).

Each tile is EMPTY (no pair attends: skipped), PARTIAL (the kernel evaluates the mask) or FULL (every pair attends:
no mask work). Kernels never scan the map; they walk compressed index lists, as FlexAttention's BlockMask does:
for every query tile the key tiles that are partial, then those that are full (and the transpose, for the backward
pass that walks query tiles per key tile). A sliding window therefore costs O(S·W), not O(S²).

The mask is evaluated once per shape, at a fine granularity (:data:`FINE_TILE` positions); the states of every
tile size that granularity divides are reduced from it (a tile is full when all its sub-tiles are, empty when all
are), so the cost model and the kernels' several tile sizes cost one O(S_q·S_kv) evaluation, not one each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .expr import evaluate
from .patterns import Pattern

EMPTY, PARTIAL, FULL = 0, 1, 2

# Elements of the boolean mask evaluated at once while building a map (bounds peak memory, about 64 MiB of bools).
_CHUNK_ELEMENTS = 1 << 26

# Positions per side of the tiles the mask is evaluated at; every candidate tile of configs.py is a multiple of it.
FINE_TILE = 32


@dataclass(frozen=True)
class TileLists:
    """Compressed tile lists along one axis: for row ``r`` of ``(map_b, map_h, rows)`` the columns to visit.

    ``partial_count[..., r]`` columns ``partial_index[..., r, :count]`` need the mask; ``full_count`` /
    ``full_index`` likewise need none. Index tensors are int32 of shape ``(map_b, map_h, rows, cols)``.
    """

    partial_count: torch.Tensor
    partial_index: torch.Tensor
    full_count: torch.Tensor
    full_index: torch.Tensor


@dataclass(frozen=True)
class BlockMap:
    """Tile states ``(map_b, map_h, q_tiles, kv_tiles)`` (map_b / map_h are 1 when the pattern ignores b / h)."""

    block_m: int
    block_n: int
    states: torch.Tensor
    by_query: TileLists
    by_key: TileLists

    @property
    def visited_fraction(self) -> float:
        """Share of tiles the kernels compute (partial or full)."""
        return float((self.states != EMPTY).float().mean())


def _lists(states: torch.Tensor) -> TileLists:
    partial = states == PARTIAL
    fullt = states == FULL
    order_p = torch.argsort((~partial).to(torch.int8), dim=-1, stable=True)
    order_f = torch.argsort((~fullt).to(torch.int8), dim=-1, stable=True)
    return TileLists(partial.sum(-1).to(torch.int32).contiguous(), order_p.to(torch.int32).contiguous(),
                     fullt.sum(-1).to(torch.int32).contiguous(), order_f.to(torch.int32).contiguous())


def tile_states(pattern: Pattern, batch: int, heads: int, seq_q: int, seq_kv: int, block_m: int, block_n: int,
                device: torch.device) -> torch.Tensor:
    """Evaluate the pattern on every (q, kv) pair, a chunk of query rows at a time, and reduce it per tile."""
    map_b = batch if pattern.depends_on_batch() else 1
    map_h = heads if pattern.depends_on_head() else 1
    q_tiles = -(-seq_q // block_m)
    kv_tiles = -(-seq_kv // block_n)
    states = torch.empty(map_b, map_h, q_tiles, kv_tiles, dtype=torch.int8, device=device)
    tensors = pattern.tensors_on(device)
    kv_idx = torch.arange(kv_tiles * block_n, device=device)
    kv_valid = kv_idx < seq_kv
    tiles_per_chunk = max(1, _CHUNK_ELEMENTS // (block_m * kv_tiles * block_n))
    for b in range(map_b):
        for h in range(map_h):
            env_bh = {"b": torch.tensor(b, device=device), "h": torch.tensor(h, device=device)}
            for t0 in range(0, q_tiles, tiles_per_chunk):
                t1 = min(q_tiles, t0 + tiles_per_chunk)
                q_idx = torch.arange(t0 * block_m, t1 * block_m, device=device)
                # padding rows/columns are evaluated at the last real index (so tensor lookups stay in range)
                # and then cleared by the validity masks below
                env = dict(env_bh, q_idx=q_idx.clamp(max=seq_q - 1)[:, None],
                           kv_idx=kv_idx.clamp(max=seq_kv - 1)[None, :])
                allowed = torch.as_tensor(evaluate(pattern.mask, env, tensors), device=device)
                allowed = allowed.expand(q_idx.numel(), kv_idx.numel())
                allowed = allowed & kv_valid[None, :] & (q_idx < seq_q)[:, None]
                tiles = allowed.view(t1 - t0, block_m, kv_tiles, block_n)
                any_ = tiles.any(dim=3).any(dim=1)
                all_ = tiles.all(dim=3).all(dim=1)
                states[b, h, t0:t1] = torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8)
    return states


def coarsen(states: torch.Tensor, factor_m: int, factor_n: int, q_tiles: int, kv_tiles: int) -> torch.Tensor:
    """Tile states of ``factor_m x factor_n`` times larger tiles: full if every sub-tile is, empty if every one is.

    ``q_tiles`` / ``kv_tiles`` are the coarse counts; sub-tiles past the fine map's edge count as empty (they hold
    only padding positions), exactly as :func:`tile_states` treats padding.
    """
    if factor_m == factor_n == 1:
        return states
    pad_q = q_tiles * factor_m - states.shape[2]
    pad_kv = kv_tiles * factor_n - states.shape[3]
    padded = F.pad(states, (0, pad_kv, 0, pad_q), value=EMPTY)
    blocks = padded.view(*states.shape[:2], q_tiles, factor_m, kv_tiles, factor_n)
    all_full = (blocks == FULL).all(dim=5).all(dim=3)
    any_set = (blocks != EMPTY).any(dim=5).any(dim=3)
    return torch.where(all_full, FULL, torch.where(any_set, PARTIAL, EMPTY)).to(torch.int8)


def lists_of(states: torch.Tensor) -> tuple[TileLists, TileLists]:
    """The (by query tile, by key tile) lists of a states tensor ``(map_b, map_h, q_tiles, kv_tiles)``."""
    return _lists(states), _lists(states.transpose(-1, -2).contiguous())


def build_block_map(pattern: Pattern, batch: int, heads: int, seq_q: int, seq_kv: int, block_m: int,
                    block_n: int, device: torch.device) -> BlockMap:
    states = tile_states(pattern, batch, heads, seq_q, seq_kv, block_m, block_n, device)
    return BlockMap(block_m, block_n, states, *lists_of(states))


def _fine_size(block: int) -> int:
    return math.gcd(block, FINE_TILE)


class BlockMapCache:
    """Block maps keyed by pattern structure + tensor contents + shapes + tile sizes + device.

    Tile states are reduced from one fine evaluation per (pattern, shape, device) (see :func:`coarsen`); the
    lists of a tile size are built when a kernel first asks for that size.
    """

    def __init__(self) -> None:
        self._maps: dict[tuple, BlockMap] = {}
        self._states: dict[tuple, torch.Tensor] = {}

    def _shape_key(self, pattern: Pattern, batch: int, heads: int, seq_q: int, seq_kv: int,
                   device: torch.device) -> tuple:
        return (pattern.key(), batch if pattern.depends_on_batch() else 1, heads if pattern.depends_on_head() else 1,
                seq_q, seq_kv, str(device))

    def states(self, pattern: Pattern, batch: int, heads: int, seq_q: int, seq_kv: int, block_m: int, block_n: int,
               device: torch.device) -> torch.Tensor:
        """Tile states ``(map_b, map_h, q_tiles, kv_tiles)`` at ``block_m x block_n`` (no lists built)."""
        shape = self._shape_key(pattern, batch, heads, seq_q, seq_kv, device)
        key = (*shape, block_m, block_n)
        if key not in self._states:
            fine_m, fine_n = _fine_size(block_m), _fine_size(block_n)
            fine_key = (*shape, fine_m, fine_n)
            if fine_key not in self._states:
                self._states[fine_key] = tile_states(pattern, batch, heads, seq_q, seq_kv, fine_m, fine_n, device)
            self._states[key] = coarsen(self._states[fine_key], block_m // fine_m, block_n // fine_n,
                                        -(-seq_q // block_m), -(-seq_kv // block_n))
        return self._states[key]

    def get(self, pattern: Pattern, batch: int, heads: int, seq_q: int, seq_kv: int, block_m: int, block_n: int,
            device: torch.device) -> BlockMap:
        key = (*self._shape_key(pattern, batch, heads, seq_q, seq_kv, device), block_m, block_n)
        if key not in self._maps:
            states = self.states(pattern, batch, heads, seq_q, seq_kv, block_m, block_n, device)
            self._maps[key] = BlockMap(block_m, block_n, states, *lists_of(states))
        return self._maps[key]
