"""The compiled attention kernel: launches the generated Triton kernels, chooses tiles, wires up autograd."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch

from . import configs as cfg
from . import cost_model, disk_cache
from .blockmap import FULL, PARTIAL, BlockMap, BlockMapCache, TileLists
from .codegen import gluon_module_source, load_module, module_source
from .expr import PatternError
from .patterns import Pattern, ScoreMod, TopKBlocks, from_mask_mod, from_score_mod, full, shift_slots
from .tuner import BucketTuning, bucket_tuning, shape_bucket

if TYPE_CHECKING:
    from .dynamic import DynamicSparseAttention

T = TypeVar("T")

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)


class AttentionKernel:
    """Fused attention for one pattern / score modification, head dimension and dtype.

    Call it as ``kernel(q, k, v, scale=None, return_lse=False)`` with ``q`` of shape ``(B, H, S_q, D)`` and ``k``,
    ``v`` of shape ``(B, H_kv, S_kv, D)`` where ``H_kv`` divides ``H`` (GQA / MQA). Autograd works through it.
    Block maps are cached per input shape; tile choices per shape bucket, in memory and on disk (:mod:`.tuner`).
    """

    def __init__(self, pattern: Pattern, score_mod: ScoreMod | None, head_dim: int, dtype: torch.dtype,
                 arch: str | None, autotune: bool = True) -> None:
        self.pattern = pattern
        self.score_mod = score_mod
        self.head_dim = head_dim
        self.dtype = dtype
        self.arch = arch
        self.autotune = autotune
        score_expr = None
        if score_mod is not None:
            score_expr = shift_slots(score_mod.score, len(pattern.tensors))
        n_tensors = len(pattern.tensors) + (len(score_mod.tensors) if score_mod else 0)
        self.source = module_source(pattern.mask, score_expr, n_tensors)
        self.gluon_source = gluon_module_source(pattern.mask, score_expr, n_tensors)
        self.block_maps = BlockMapCache()
        self._modules: dict[tuple[bool, bool], object] = {}
        self._tuned: dict[tuple, BucketTuning] = {}      # exact (q shape, k shape, device) -> its bucket's tuning
        self._buckets: dict[str, BucketTuning] = {}      # bucket key digest -> tuning
        self._launched: set[tuple] = set()                # (kernel, config, shapes) launched once in this process

    @property
    def module(self):
        """The generated Triton module (loaded once per process and interpreter mode)."""
        return self._load(self.source)

    @property
    def gluon_module(self):
        """The generated Gluon module of the Hopper forward kernel (imports triton.experimental.gluon)."""
        return self._load(self.gluon_source)

    def _load(self, source: str):
        # looked up on every call: keep the module here rather than hash the source each time
        key = (source is self.source, cfg.interpreting())
        if key not in self._modules:
            self._modules[key] = load_module(source)
        return self._modules[key]

    # ------------------------------------------------------------------------------------------------ public
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                 return_lse: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self.check_inputs(q, k, v)
        scale = self.head_dim ** -0.5 if scale is None else float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be positive and finite, got {scale}")
        out, lse = _AttentionFunction.apply(q, k, v, self, scale)
        return (out, lse) if return_lse else out

    def configs_for(self, q: torch.Tensor, k: torch.Tensor) -> tuple[cfg.TileConfig, cfg.TileConfig, cfg.TileConfig]:
        """The (forward, dK/dV, dQ) tile configs the next call on these shapes uses."""
        tuning = self.tuning_for(q, k)
        return tuning.config("forward"), tuning.config("dkdv"), tuning.config("dq")

    def tuning_for(self, q: torch.Tensor, k: torch.Tensor) -> BucketTuning:
        """The tile choices of these shapes' bucket: from memory, from disk, or ranked now by the cost model."""
        shapes = (q.shape, k.shape, q.device)  # looked up on every call: hashable as they are
        if shapes not in self._tuned:
            key = self._tuning_key(q, k)
            name = disk_cache.digest(key)
            if name not in self._buckets:
                self._buckets[name] = bucket_tuning(key, functools.partial(self.rank_candidates, q, k),
                                                    timing=self.autotune and q.device.type == "cuda",
                                                    persist=self.autotune)
            self._tuned[shapes] = self._buckets[name]
        return self._tuned[shapes]

    def block_map(self, q: torch.Tensor, k: torch.Tensor, block_m: int, block_n: int) -> BlockMap:
        batch, heads, seq_q, _ = q.shape
        return self.block_maps.get(self.pattern, batch, heads, seq_q, k.shape[2], block_m, block_n, q.device)

    # ------------------------------------------------------------------------------------------------ checks
    def check_inputs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Raise a clear error when q, k, v do not fit this kernel (rank, dtype, head dim, device, GQA)."""
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.dim() != 4:
                raise ValueError(f"{name} must be (batch, heads, seq, head_dim), got shape {tuple(t.shape)}")
            if t.dtype != self.dtype:
                raise ValueError(f"{name} is {t.dtype} but this kernel was compiled for {self.dtype}; "
                                 f"convert it or compile_attention(..., dtype={t.dtype})")
            if t.shape[-1] != self.head_dim:
                raise ValueError(f"{name} has head_dim {t.shape[-1]} but this kernel was compiled for "
                                 f"{self.head_dim}")
            if t.device != q.device:
                raise ValueError(f"q, k, v must be on one device; {name} is on {t.device}, q on {q.device}")
        if k.shape != v.shape:
            raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
        if k.shape[0] != q.shape[0]:
            raise ValueError(f"batch of q ({q.shape[0]}) and k ({k.shape[0]}) differ")
        if q.shape[1] % k.shape[1]:
            raise ValueError(f"q has {q.shape[1]} heads, k/v {k.shape[1]}: the KV heads must divide the query heads "
                             "(GQA/MQA)")
        if min(q.shape[2], k.shape[2]) == 0:
            raise ValueError("empty sequence: q and k need at least one position")
        if q.device.type != "cuda" and not cfg.interpreting():
            raise RuntimeError(f"the Triton attention kernel runs on a CUDA GPU (got a tensor on {q.device}); on a CPU "
                               "set TRITON_INTERPRET=1 before importing triton, or use "
                               "hal.kernels.attention.reference.attention_reference")

    # ------------------------------------------------------------------------------------------------ tuning
    def _arch_name(self, device: torch.device) -> str:
        name = self.arch or cfg.detect_arch(device)
        if name not in cfg.ARCHITECTURES:
            raise ValueError(f"unknown arch {name!r}; choose one of {sorted(cfg.ARCHITECTURES)}")
        return name

    def candidates(self, kernel: str, device: torch.device) -> tuple[cfg.TileConfig, ...]:
        """The architecture's candidate tile configs of ``kernel`` (forward, dkdv, dq) for this head dim."""
        arch = cfg.ARCHITECTURES[self._arch_name(device)]
        table = {"forward": arch.forward, "dkdv": arch.backward_dkdv, "dq": arch.backward_dq}[kernel]
        return table[self.head_dim]

    def structure(self) -> dict:
        """What the tile choice depends on besides shapes and device: the generated code and the candidates."""
        return {"source": disk_cache.digest([self.source, self.gluon_source])}

    def _tuning_key(self, q: torch.Tensor, k: torch.Tensor) -> dict:
        arch = self._arch_name(q.device)
        if q.device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(q.device)
            device = f"{torch.cuda.get_device_name(q.device)} (sm_{major}{minor})"
        else:
            device = "triton interpreter" if cfg.interpreting() else q.device.type
        candidates = {kernel: [dataclasses.astuple(c) for c in self.candidates(kernel, q.device)]
                      for kernel in cost_model.KERNELS}
        return {"device": device, "arch": arch, "kernel": self.structure(), "candidates": disk_cache.digest(candidates),
                "bucket": shape_bucket(q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2]),
                "dtype": str(self.dtype), "head_dim": self.head_dim}

    def rank_candidates(self, q: torch.Tensor, k: torch.Tensor, kernel: str) -> list[tuple[cfg.TileConfig, float]]:
        """Candidates of ``kernel`` in cost-model order (list order, estimates nan, without autotuning)."""
        candidates = self.candidates(kernel, q.device)
        if not self.autotune:
            return [(c, math.nan) for c in candidates]
        counts = {c: self.tile_counts(kernel, c, q, k) for c in candidates}
        sm_count = torch.cuda.get_device_properties(q.device).multi_processor_count if q.device.type == "cuda" else 1
        return cost_model.rank(kernel, candidates, counts, self.head_dim, sm_count)

    def tile_counts(self, kernel: str, config: cfg.TileConfig, q: torch.Tensor, k: torch.Tensor
                    ) -> cost_model.TileCounts:
        """Full and partial tiles ``kernel`` visits with ``config`` on these shapes, and its programs."""
        batch, heads, seq_q, _ = q.shape
        states = self.block_maps.states(self.pattern, batch, heads, seq_q, k.shape[2], config.block_m,
                                        config.block_n, q.device)
        copies = batch * heads // (states.shape[0] * states.shape[1])
        rows = states.shape[3] * batch * k.shape[1] if kernel == "dkdv" else states.shape[2] * batch * heads
        return cost_model.TileCounts(int((states == FULL).sum()) * copies, int((states == PARTIAL).sum()) * copies,
                                     rows)

    def _binaries(self, name: str, config: cfg.TileConfig | None, q: torch.Tensor, k: torch.Tensor):
        """Triton's compiled kernels under hal's cache dir for a launch that may compile (the first of its kind)."""
        if q.device.type != "cuda":
            return contextlib.nullcontext()
        key = (name, config, q.shape, k.shape, q.dtype, q.device)
        if key in self._launched:
            return contextlib.nullcontext()
        self._launched.add(key)
        return disk_cache.triton_binaries()

    @staticmethod
    def run_chosen(tuning: BucketTuning, kernel: str, run: Callable[[cfg.TileConfig], object], device: torch.device):
        """``run(config)`` with the bucket's choice; on a GPU a config that fails to build yields to the next.

        Running out of GPU memory is not the config's fault: it is raised, and the choice kept.
        """
        while True:
            config = tuning.config(kernel)
            try:
                return run(config)
            except Exception as e:  # noqa: BLE001  (compile/resource errors come in many Triton types)
                if device.type != "cuda" or isinstance(e, torch.cuda.OutOfMemoryError):
                    raise
                tuning.fail(kernel, config, e)

    def refine(self, tuning: BucketTuning, kernel: str, run: Callable[[cfg.TileConfig], object],
               device: torch.device) -> None:
        """One lazy refinement step (:meth:`BucketTuning.refine`) where timing is possible: a GPU, not capturing."""
        if device.type == "cuda" and tuning.pending and not torch.cuda.is_current_stream_capturing():
            tuning.refine(kernel, run)

    def launch_tuned(self, kernel: str, q: torch.Tensor, k: torch.Tensor, run: Callable[[cfg.TileConfig], T]) -> T:
        """``run(config)`` with the shape bucket's choice for ``kernel`` (forward, dkdv, dq), then one refinement step."""
        tuning = self.tuning_for(q, k)
        result = self.run_chosen(tuning, kernel, run, q.device)
        self.refine(tuning, kernel, run, q.device)
        return result

    # ------------------------------------------------------------------------------------------------ launches
    def _tensor_args(self, device: torch.device) -> list:
        tensors = list(self.pattern.tensors_on(device))
        if self.score_mod is not None:
            tensors += list(self.score_mod.tensors_on(device))
        args: list = []
        for t in tensors:
            args += [t, t.numel()]
        return args

    @staticmethod
    def _map_args(lists: TileLists, by_key: bool) -> tuple[list, list]:
        """Kernel arguments of tile lists ``(map_b, map_h, rows, width)``: rows are query tiles (key tiles with
        ``by_key``); ``width`` is the lists' row stride, which the kernels name kv_tiles (q_tiles with ``by_key``)."""
        map_b, map_h, rows, width = lists.partial_index.shape
        q_tiles, kv_tiles = (width, rows) if by_key else (rows, width)
        return [lists.partial_count, lists.partial_index, lists.full_count, lists.full_index], \
            [q_tiles, kv_tiles, map_h if map_b > 1 else 0, 1 if map_h > 1 else 0]

    def forward(self, q, k, v, scale: float, config: cfg.TileConfig | None = None, lists: TileLists | None = None):
        """Raw forward launch (no autograd): returns ``(out, lse)``; lse is float32 ``(B, H, S_q)``.

        ``lists`` (by query tile, at ``config``'s tiles) replaces the pattern's block map: the dynamic sparse kernel
        passes the key tiles it selected. Without ``config``, the shape bucket's choice (:meth:`launch_tuned`).
        """
        if config is None:
            _lists_need_config(lists)
            return self.launch_tuned("forward", q, k, lambda c: self.forward(q, k, v, scale, c))
        batch, heads, seq_q, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty((batch, heads, seq_q), device=q.device, dtype=torch.float32)
        if lists is None:
            lists = self.block_map(q, k, config.block_m, config.block_n).by_query
        lists, map_scalars = self._map_args(lists, by_key=False)
        grid = (map_scalars[0], batch * heads)
        if config.gluon:
            with self._binaries("forward_gluon", config, q, k):
                self._forward_gluon(q, k, v, out, lse, lists, map_scalars, grid, scale, config)
            return out, lse
        desc_k, desc_v = k, v
        if config.use_tma:
            from triton.tools.tensor_descriptor import TensorDescriptor
            rows = k.shape[0] * k.shape[1] * k.shape[2]
            desc_k = TensorDescriptor(k, [rows, self.head_dim], [self.head_dim, 1], [config.block_n, self.head_dim])
            desc_v = TensorDescriptor(v, [rows, self.head_dim], [self.head_dim, 1], [config.block_n, self.head_dim])
        with self._binaries("forward", config, q, k):
            self.module.attention_forward[grid](
                q, k, v, desc_k, desc_v, out, lse, *lists, scale,
                q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                seq_q, k.shape[2], heads, heads // k.shape[1], *map_scalars, *self._tensor_args(q.device),
                HEAD_DIM=self.head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                HAS_SCORE=self.score_mod is not None, DOT_F32=self._dot_f32(q), USE_TMA=config.use_tma,
                WARP_SPECIALIZE=config.warp_specialize, SINGLE_LOOP=config.single_loop, num_warps=config.num_warps,
                num_stages=config.num_stages)
        return out, lse

    def _forward_gluon(self, q, k, v, out, lse, lists, map_scalars, grid, scale: float, config: cfg.TileConfig):
        """Launch the Gluon Hopper forward: Q, K, V reach it as TMA descriptors over (rows, head_dim) views."""
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        if self.head_dim not in (64, 128):
            raise ValueError(f"the Gluon forward kernel takes head_dim 64 or 128, not {self.head_dim}")
        if not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous()):
            raise ValueError("the Gluon forward kernel reads q, k, v through TMA and needs them contiguous")
        element = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16

        def descriptor(t: torch.Tensor, block_rows: int) -> TensorDescriptor:
            rows = t.shape[0] * t.shape[1] * t.shape[2]
            layout = _shared_layout(block_rows, self.head_dim, element)
            return TensorDescriptor(t, [rows, self.head_dim], [self.head_dim, 1], [block_rows, self.head_dim],
                                    layout)

        args = [out, lse, *lists, scale, out.stride(0), out.stride(1), out.stride(2), q.shape[2], k.shape[2],
                q.shape[1], q.shape[1] // k.shape[1], *map_scalars, *self._tensor_args(q.device)]
        constants = {"HEAD_DIM": self.head_dim, "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
                     "STAGES": config.num_stages, "HAS_SCORE": self.score_mod is not None}
        kv = (descriptor(k, config.block_n), descriptor(v, config.block_n))
        if config.warp_specialize:
            # two consumer warpgroups of num_warps = 4 take half the query rows each; a one-warp loader feeds them
            self.gluon_module.attention_forward_gluon_pingpong[grid](
                descriptor(q, config.block_m // 2), *kv, *args, **constants, CONSUMER_REGS=_PINGPONG_REGS[0],
                LOADER_REGS=_PINGPONG_REGS[1], num_warps=4)
        else:
            self.gluon_module.attention_forward_gluon[grid](descriptor(q, config.block_m), *kv, *args, **constants,
                                                            num_warps=config.num_warps)

    def delta(self, out, d_out, lse, d_lse):
        """``rowsum(dO * O) - dlse`` in float32, ``(B, H, S_q)``; one fused pass over O and dO."""
        delta = torch.empty_like(lse)
        rows = lse.numel()
        block = 64
        with self._binaries("delta", None, out, lse):
            self.module.attention_backward_delta[(_cdiv(rows, block),)](
                out, d_out, lse, d_lse if d_lse is not None else lse, delta, rows, HEAD_DIM=self.head_dim,
                BLOCK=block, HAS_DLSE=d_lse is not None, num_warps=4)
        return delta

    def _bwd_common(self, q, k, v, do):
        return [q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
                q.shape[2], k.shape[2], q.shape[1], q.shape[1] // k.shape[1]]

    def backward_dkdv(self, q, k, v, do, lse, delta, scale: float, config: cfg.TileConfig | None = None,
                      lists: TileLists | None = None):
        """Raw dK/dV launch; ``lists`` (by key tile) replaces the pattern's block map. Without ``config``, the bucket's
        choice."""
        if config is None:
            _lists_need_config(lists)
            return self.launch_tuned("dkdv", q, k, lambda c: self.backward_dkdv(q, k, v, do, lse, delta, scale, c))
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        if lists is None:
            lists = self.block_map(q, k, config.block_m, config.block_n).by_key
        lists, map_scalars = self._map_args(lists, by_key=True)
        grid = (map_scalars[1], k.shape[0] * k.shape[1])
        with self._binaries("dkdv", config, q, k):
            self.module.attention_backward_dkdv[grid](
                q, k, v, do, lse, delta, dk, dv, *lists, scale, *self._bwd_common(q, k, v, do), *map_scalars,
                *self._tensor_args(q.device), HEAD_DIM=self.head_dim, BLOCK_M=config.block_m,
                BLOCK_N=config.block_n, HAS_SCORE=self.score_mod is not None, DOT_F32=self._dot_f32(q),
                num_warps=config.num_warps, num_stages=config.num_stages)
        return dk, dv

    def backward_dq(self, q, k, v, do, lse, delta, scale: float, config: cfg.TileConfig | None = None,
                    lists: TileLists | None = None):
        """Raw dQ launch; ``lists`` (by query tile) replaces the pattern's block map. Without ``config``, the bucket's
        choice."""
        if config is None:
            _lists_need_config(lists)
            return self.launch_tuned("dq", q, k, lambda c: self.backward_dq(q, k, v, do, lse, delta, scale, c))
        dq = torch.empty_like(q)
        if lists is None:
            lists = self.block_map(q, k, config.block_m, config.block_n).by_query
        lists, map_scalars = self._map_args(lists, by_key=False)
        grid = (map_scalars[0], q.shape[0] * q.shape[1])
        with self._binaries("dq", config, q, k):
            self.module.attention_backward_dq[grid](
                q, k, v, do, lse, delta, dq, *lists, scale, *self._bwd_common(q, k, v, do), *map_scalars,
                *self._tensor_args(q.device), HEAD_DIM=self.head_dim, BLOCK_M=config.block_m,
                BLOCK_N=config.block_n, HAS_SCORE=self.score_mod is not None, DOT_F32=self._dot_f32(q),
                num_warps=config.num_warps, num_stages=config.num_stages)
        return dq

    def _dot_f32(self, q: torch.Tensor) -> bool:
        """The CPU interpreter multiplies bf16 matrices wrongly (seen with triton 3.9): upcast there only."""
        return q.device.type != "cuda" and q.dtype == torch.bfloat16

    def __repr__(self) -> str:
        score = f", score_mod={self.score_mod.name}" if self.score_mod else ""
        return f"AttentionKernel({self.pattern.name}{score}, head_dim={self.head_dim}, dtype={self.dtype})"


@functools.cache
def _shared_layout(rows: int, cols: int, element):
    """The swizzled shared-memory layout of a (rows, cols) TMA tile (built once per shape: it is read every call)."""
    from triton.experimental.gluon import language as gl
    return gl.NVMMASharedLayout.get_default_for([rows, cols], element)


# Registers per thread the ping-pong kernel's partitions ask for (setmaxnreg): consumer warpgroup, loader warp.
# The loader needs few; the register file (64K per SM) goes to the two consumers, as in FlashAttention-3.
_PINGPONG_REGS = (232, 24)


def _lists_need_config(lists: TileLists | None) -> None:
    if lists is not None:
        raise ValueError("tile lists are built for one tile config: pass that config with them")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kernel: AttentionKernel, scale: float):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = kernel.forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.kernel, ctx.scale = kernel, scale
        ctx.set_materialize_grads(False)  # an unused lse gets no zero-filled gradient tensor
        return out, lse

    @staticmethod
    def backward(ctx, d_out, d_lse):
        q, k, v, out, lse = ctx.saved_tensors
        kernel: AttentionKernel = ctx.kernel
        if d_out is None:
            d_out = torch.zeros_like(out)
        d_out = d_out.contiguous()
        # dS = P (dP - delta) + P d_lse: the lse gradient folds into delta
        delta = kernel.delta(out, d_out, lse, d_lse.float().contiguous() if d_lse is not None else None)
        dk, dv = kernel.backward_dkdv(q, k, v, d_out, lse, delta, ctx.scale)
        dq = kernel.backward_dq(q, k, v, d_out, lse, delta, ctx.scale)
        return dq, dk, dv, None, None


_kernels: dict[tuple, AttentionKernel | DynamicSparseAttention] = {}


def compile_attention(pattern: Pattern | TopKBlocks | None = None, *, mask_mod: Callable[..., object] | None = None,
                      score_mod: ScoreMod | Callable[..., object] | None = None, head_dim: int,
                      dtype: torch.dtype = torch.bfloat16, arch: str | None = None,
                      autotune: bool = True) -> AttentionKernel | DynamicSparseAttention:
    """Compile fused attention for a pattern (and/or a FlexAttention-style ``mask_mod``) and a score modification.

    Kernels are cached by pattern *structure* (plus head_dim, dtype, arch): calling this again with an equal
    pattern built from scratch returns the same kernel without recompiling. With ``autotune`` (the default) the
    first call on a shape runs the tile config the cost model ranks first and later calls on a GPU time a few more
    (:mod:`.tuner`); the choices are kept on disk, so a new process starts from them. Without it the first
    candidate that builds is used. A ``patterns.topk_blocks(...)`` pattern gives a
    :class:`~hal.kernels.attention.dynamic.DynamicSparseAttention`.
    """
    from .dynamic import DynamicSparseAttention

    if pattern is not None and not isinstance(pattern, (Pattern, TopKBlocks)):
        raise PatternError(f"pattern must be a hal.kernels.attention.patterns.Pattern, got {type(pattern).__name__}; "
                           "pass Python functions as mask_mod=")
    if mask_mod is not None:
        traced = from_mask_mod(mask_mod)
        pattern = traced if pattern is None else pattern & traced
    pattern = pattern if pattern is not None else full()
    if score_mod is not None and not isinstance(score_mod, ScoreMod):
        score_mod = from_score_mod(score_mod)
    if head_dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim {head_dim} is not supported; use 64, 128 or 256 (16 and 32 for small tests)")
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported; use torch.bfloat16 or torch.float16 "
                         "(accumulation is fp32 either way)")
    if arch is not None and arch not in cfg.ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(cfg.ARCHITECTURES)}")
    key = (pattern.key(), score_mod.key() if score_mod else None, head_dim, dtype, arch, autotune)
    if key not in _kernels:
        kind = DynamicSparseAttention if isinstance(pattern, TopKBlocks) else AttentionKernel
        _kernels[key] = kind(pattern, score_mod, head_dim, dtype, arch, autotune)
    return _kernels[key]
