"""Dynamic sparse attention: each query block attends to the key blocks its pooled content selects.

    sparse = compile_attention(patterns.topk_blocks(k=16, block=64) & patterns.causal(), head_dim=128)
    out = sparse(q, k, v)                       # selection, then attention over the selected blocks
    sel = sparse.select(q, k)                   # or the two steps apart: a BlockSelection ...
    out = sparse.attend(q, k, v, sel)           # ... and the attention given it (autograd works)

Two kernels per call. The selection (:mod:`.selection`) pools queries and keys per block and picks each query
block's key blocks (:class:`.patterns.TopKBlocks` says how). The attention is the block-sparse forward and
backward of :mod:`.kernel`: the selection becomes the per-query-tile lists of key tiles those kernels walk
(partial tiles, where the static pattern masks, then full ones) and their transpose for dK/dV. The selection is not
differentiable; gradients are those of attention restricted to the selected blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import configs as cfg
from . import cost_model
from .blockmap import EMPTY, FULL, PARTIAL, TileLists
from .codegen import load_module
from .expr import PatternError
from .kernel import AttentionKernel
from .patterns import ScoreMod, TopKBlocks
from .selection import SELECTION_SOURCE

# Query blocks per selection program (the M of its score product; Triton's dot needs at least 16) and key blocks
# per product step (fewer at head dim 256, whose pooled tiles would otherwise hold 64 x 256 floats).
_SELECT_BQ = 16
# Key blocks one selection program holds in registers (a row of scores): 16384 blocks of 64 are 1M positions.
MAX_KV_BLOCKS = 16384


@dataclass(frozen=True)
class BlockSelection:
    """The key blocks each query block attends to: ``index[b, h, i, :count[b, h, i]]``.

    ``index`` is int32 ``(B, H, q_blocks, k)`` (own block first when eligible, then by descending score; unused
    slots hold 0), ``count`` int32 ``(B, H, q_blocks)``; blocks are ``block`` positions long.
    """

    index: torch.Tensor
    count: torch.Tensor
    block: int
    seq_q: int
    seq_kv: int
    _lists: dict = field(default_factory=dict, compare=False, repr=False)  # (block_m, block_n, by_key) -> lists

    @property
    def kv_blocks(self) -> int:
        return -(-self.seq_kv // self.block)

    def selected(self) -> torch.Tensor:
        """Boolean ``(B, H, q_blocks, kv_blocks)``: which key blocks each query block attends to."""
        batch, heads, q_blocks, k = self.index.shape
        used = torch.arange(k, device=self.index.device) < self.count[..., None]
        # unused slots write into an extra column (dropped), so they never overwrite a used slot's True
        target = torch.where(used, self.index.long(), self.kv_blocks)
        out = torch.zeros(batch, heads, q_blocks, self.kv_blocks + 1, dtype=torch.bool, device=self.index.device)
        return out.scatter_(-1, target, True)[..., :-1]

    def mask(self) -> torch.Tensor:
        """Boolean ``(B, H, S_q, S_kv)``: pairs inside selected blocks (the static pattern not applied)."""
        rows = torch.arange(self.seq_q, device=self.index.device) // self.block
        cols = torch.arange(self.seq_kv, device=self.index.device) // self.block
        return self.selected()[:, :, rows][:, :, :, cols]


class DynamicSparseAttention:
    """Attention over key blocks chosen per call from the inputs' content (:class:`.patterns.TopKBlocks`).

    Call it like :class:`.kernel.AttentionKernel`: ``(q, k, v, scale=None, return_lse=False)``; ``select`` and
    ``attend`` are the two steps. The static pattern's tiles (partial or full inside each chosen block) come from its
    block map, so ``& causal()`` masks only the diagonal block.
    """

    def __init__(self, spec: TopKBlocks, score_mod: ScoreMod | None, head_dim: int, dtype: torch.dtype,
                 arch: str | None, autotune: bool = True) -> None:
        self.spec = spec
        self.attention = _SelectedTilesKernel(spec, score_mod, head_dim, dtype, arch, autotune)

    @property
    def head_dim(self) -> int:
        return self.attention.head_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.attention.dtype

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                 return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.attend(q, k, v, self.select(q, k), scale=scale, return_lse=return_lse)

    # ------------------------------------------------------------------------------------------------ selection
    def select(self, q: torch.Tensor, k: torch.Tensor) -> BlockSelection:
        """The key blocks each query block attends to (no gradient: the selection is not differentiable)."""
        self.attention.check_inputs(q, k, k)
        batch, heads, seq_q, head_dim = q.shape
        block = self.spec.block
        q_blocks, kv_blocks = -(-seq_q // block), -(-k.shape[2] // block)
        if kv_blocks > MAX_KV_BLOCKS:
            raise PatternError(f"topk_blocks: {kv_blocks} key blocks of {block} exceed the selection kernel's "
                               f"{MAX_KV_BLOCKS}; use a larger block (block={2 * block})")
        module = load_module(SELECTION_SOURCE)
        with torch.no_grad():
            q_pooled = self._pool(module, q, q_blocks)
            k_pooled = self._pool(module, k, kv_blocks)
            states = self.attention.block_maps.states(self.spec.static, batch, heads, seq_q, k.shape[2], block, block,
                                                      q.device)
            map_b, map_h = states.shape[0], states.shape[1]
            index = torch.empty(batch, heads, q_blocks, self.spec.k, dtype=torch.int32, device=q.device)
            count = torch.empty(batch, heads, q_blocks, dtype=torch.int32, device=q.device)
            scores = torch.empty(batch * heads, q_blocks, kv_blocks, dtype=torch.float32, device=q.device)
            grid = (-(-q_blocks // _SELECT_BQ), batch * heads)
            module.select_blocks[grid](
                q_pooled, k_pooled, states, scores, index, count, q_blocks, kv_blocks, heads, heads // k.shape[1],
                map_h if map_b > 1 else 0, 1 if map_h > 1 else 0, self.spec.k, HEAD_DIM=head_dim, BQ=_SELECT_BQ,
                BK=64 if head_dim <= 128 else 32, NBK=_next_pow2(kv_blocks), KP2=_next_pow2(self.spec.k),
                num_warps=4 if kv_blocks <= 4096 else 8)
        return BlockSelection(index, count, block, seq_q, k.shape[2])

    def _pool(self, module, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
        batch, heads, seq, head_dim = x.shape
        out = torch.empty(batch, heads, n_blocks, head_dim, dtype=torch.float32, device=x.device)
        block = self.spec.block
        module.pool_blocks[(n_blocks, batch * heads)](
            x, out, seq, n_blocks, x.stride(0), x.stride(1), x.stride(2), heads, BLOCK=block, ROWS=min(block, 32),
            HEAD_DIM=head_dim, num_warps=4)
        return out

    # ------------------------------------------------------------------------------------------------ attention
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection, *,
               scale: float | None = None, return_lse: bool = False):
        """Attention of every query over the key blocks ``selection`` gives it (masked by the static pattern)."""
        self.attention.check_inputs(q, k, v)
        if (selection.seq_q, selection.seq_kv, selection.block) != (q.shape[2], k.shape[2], self.spec.block) or \
                tuple(selection.index.shape[:2]) != tuple(q.shape[:2]):
            raise PatternError(f"this selection was made for (B, H) = {tuple(selection.index.shape[:2])}, S_q = "
                               f"{selection.seq_q}, S_kv = {selection.seq_kv}, block {selection.block}; these inputs "
                               f"are {tuple(q.shape[:2])}, {q.shape[2]}, {k.shape[2]}, block {self.spec.block}: "
                               "select on these inputs first")
        scale = self.head_dim ** -0.5 if scale is None else float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be positive and finite, got {scale}")
        out, lse = _SelectedAttention.apply(q, k, v, self, selection, scale)
        return (out, lse) if return_lse else out

    def tile_lists(self, selection: BlockSelection, block_m: int, block_n: int, by_key: bool) -> TileLists:
        """The kernels' tile lists for ``selection`` at ``block_m x block_n`` tiles (cached on the selection)."""
        key = (block_m, block_n, by_key)
        if key not in selection._lists:
            selection._lists[key] = self._build_lists(selection, block_m, block_n, by_key)
        return selection._lists[key]

    def _build_lists(self, selection: BlockSelection, block_m: int, block_n: int, by_key: bool) -> TileLists:
        batch, heads, q_blocks, k = selection.index.shape
        device = selection.index.device
        per_m, per_n = self.spec.block // block_m, self.spec.block // block_n
        q_tiles, kv_tiles = -(-selection.seq_q // block_m), -(-selection.seq_kv // block_n)
        # every selected block -> its key tiles; every query block -> its query tiles
        used = torch.arange(k, device=device) < selection.count[..., None]
        tiles = selection.index[..., None].long() * per_n + torch.arange(per_n, device=device)
        ok = used[..., None] & (tiles < kv_tiles)
        tiles = tiles.reshape(batch, heads, q_blocks, k * per_n).repeat_interleave(per_m, dim=2)[:, :, :q_tiles]
        ok = ok.reshape(batch, heads, q_blocks, k * per_n).repeat_interleave(per_m, dim=2)[:, :, :q_tiles]
        tiles = torch.where(ok, tiles, 0)
        base = self.attention.block_maps.states(self.spec.static, batch, heads, selection.seq_q, selection.seq_kv,
                                                block_m, block_n, device).expand(batch, heads, q_tiles, kv_tiles)
        state = torch.where(ok, torch.gather(base, 3, tiles), EMPTY)
        if by_key:
            return _key_major(tiles, state, kv_tiles)
        return _query_major(tiles, state)


def _query_major(tiles: torch.Tensor, state: torch.Tensor) -> TileLists:
    """Lists by query tile: the partial key tiles, then (separately) the full ones; width = tiles per row."""
    lists = []
    for kind in (PARTIAL, FULL):
        hit = state == kind
        order = torch.argsort((~hit).to(torch.int8), dim=-1, stable=True)
        lists += [hit.sum(-1).to(torch.int32).contiguous(), tiles.gather(-1, order).to(torch.int32).contiguous()]
    return TileLists(*lists)


def _key_major(tiles: torch.Tensor, state: torch.Tensor, kv_tiles: int) -> TileLists:
    """Lists by key tile: the query tiles that visit it, partial first (each in query order); width = the most."""
    batch, heads, q_tiles, width = tiles.shape
    device = tiles.device
    q_index = torch.arange(q_tiles, device=device).view(1, 1, q_tiles, 1).expand_as(tiles)
    row = (torch.arange(batch * heads, device=device).view(batch, heads, 1, 1) * kv_tiles + tiles)
    visited = state != EMPTY
    row, q_index, is_full = row[visited], q_index[visited], (state[visited] == FULL).long()
    rows = batch * heads * kv_tiles
    group = row * 2 + is_full  # entries come in query order; a stable sort keeps it within each group
    order = torch.argsort(group, stable=True)
    group, q_index = group[order], q_index[order]
    sizes = torch.bincount(group, minlength=2 * rows)
    starts = torch.cumsum(sizes, 0) - sizes
    position = torch.arange(group.numel(), device=device) - starts[group]
    width_needed = max(1, int(sizes.max()))
    lists = []
    for kind in (0, 1):  # partial, full
        pick = (group % 2) == kind
        index = torch.zeros(rows, width_needed, dtype=torch.int32, device=device)
        index[group[pick] // 2, position[pick]] = q_index[pick].to(torch.int32)
        count = sizes.view(rows, 2)[:, kind].to(torch.int32)
        lists += [count.view(batch, heads, kv_tiles).contiguous(),
                  index.view(batch, heads, kv_tiles, width_needed).contiguous()]
    return TileLists(*lists)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class _SelectedTilesKernel(AttentionKernel):
    """The block-sparse kernels of the static pattern, with tile configs that divide the selection's block."""

    def __init__(self, spec: TopKBlocks, score_mod: ScoreMod | None, head_dim: int, dtype: torch.dtype,
                 arch: str | None, autotune: bool) -> None:
        super().__init__(spec.static, score_mod, head_dim, dtype, arch, autotune)
        self.spec = spec

    def candidates(self, kernel: str, device: torch.device) -> tuple[cfg.TileConfig, ...]:
        every = super().candidates(kernel, device)
        fitting = tuple(c for c in every if self.spec.block % c.block_m == 0 and self.spec.block % c.block_n == 0)
        if not fitting:
            tiles = sorted({(c.block_m, c.block_n) for c in every})
            raise PatternError(f"topk_blocks(block={self.spec.block}): no {kernel} tile config of this GPU divides the "
                               f"block (tiles {tiles}); use block={max(max(t) for t in tiles)} or larger")
        return fitting

    def structure(self) -> dict:
        return dict(super().structure(), topk_blocks=[self.spec.k, self.spec.block])

    def tile_counts(self, kernel: str, config: cfg.TileConfig, q: torch.Tensor, k: torch.Tensor
                    ) -> cost_model.TileCounts:
        """Expected tiles: ``min(k, eligible)`` blocks per query block, the partial ones (the diagonal of causal)
        first; each block is ``(block / BLOCK_M) x (block / BLOCK_N)`` tiles."""
        batch, heads, seq_q, _ = q.shape
        block = self.spec.block
        states = self.block_maps.states(self.pattern, batch, heads, seq_q, k.shape[2], block, block, q.device)
        eligible = (states != EMPTY).sum(-1)
        chosen = eligible.clamp(max=self.spec.k)
        partial = torch.minimum(chosen, (states == PARTIAL).sum(-1))
        per_block = (block // config.block_m) * (block // config.block_n)
        copies = batch * heads // (states.shape[0] * states.shape[1])
        q_tiles, kv_tiles = -(-seq_q // config.block_m), -(-k.shape[2] // config.block_n)
        rows = kv_tiles * batch * k.shape[1] if kernel == "dkdv" else q_tiles * batch * heads
        return cost_model.TileCounts(int((chosen - partial).sum()) * per_block * copies,
                                     int(partial.sum()) * per_block * copies, rows)


class _SelectedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sparse: DynamicSparseAttention, selection: BlockSelection, scale: float):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        kernel = sparse.attention

        def run(config: cfg.TileConfig):
            lists = sparse.tile_lists(selection, config.block_m, config.block_n, by_key=False)
            return kernel.forward(q, k, v, scale, config, lists)

        out, lse = kernel.launch_tuned("forward", q, k, run)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.sparse, ctx.selection, ctx.scale = sparse, selection, scale
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        q, k, v, out, lse = ctx.saved_tensors
        sparse: DynamicSparseAttention = ctx.sparse
        kernel, selection = sparse.attention, ctx.selection
        if d_out is None:
            d_out = torch.zeros_like(out)
        d_out = d_out.contiguous()
        delta = kernel.delta(out, d_out, lse, d_lse.float().contiguous() if d_lse is not None else None)

        def dkdv(config: cfg.TileConfig):
            lists = sparse.tile_lists(selection, config.block_m, config.block_n, by_key=True)
            return kernel.backward_dkdv(q, k, v, d_out, lse, delta, ctx.scale, config, lists)

        def dq(config: cfg.TileConfig):
            lists = sparse.tile_lists(selection, config.block_m, config.block_n, by_key=False)
            return kernel.backward_dq(q, k, v, d_out, lse, delta, ctx.scale, config, lists)

        dk, dv = kernel.launch_tuned("dkdv", q, k, dkdv)
        d_q = kernel.launch_tuned("dq", q, k, dq)
        return d_q, dk, dv, None, None, None
