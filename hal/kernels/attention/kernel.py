"""The compiled attention kernel: launches the generated Triton kernels, autotunes tiles, wires up autograd."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from . import configs as cfg
from .blockmap import BlockMap, BlockMapCache, TileLists
from .codegen import gluon_module_source, load_module, module_source
from .expr import PatternError
from .patterns import Pattern, ScoreMod, from_mask_mod, from_score_mod, full, shift_slots

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)


class AttentionKernel:
    """Fused attention for one pattern / score modification, head dimension and dtype.

    Call it as ``kernel(q, k, v, scale=None, return_lse=False)`` with ``q`` of shape ``(B, H, S_q, D)`` and ``k``,
    ``v`` of shape ``(B, H_kv, S_kv, D)`` where ``H_kv`` divides ``H`` (GQA / MQA). Autograd works through it.
    Block maps and autotuned tile choices are cached per input shape.
    """

    def __init__(self, pattern: Pattern, score_mod: ScoreMod | None, head_dim: int, dtype: torch.dtype,
                 arch: str | None, autotune: bool = True) -> None:
        self.pattern = pattern
        self.score_mod = score_mod
        self.head_dim = head_dim
        self.dtype = dtype
        self.arch = arch
        self.autotune = autotune
        self.tuning_log: list[dict] = []
        score_expr = None
        if score_mod is not None:
            score_expr = shift_slots(score_mod.score, len(pattern.tensors))
        n_tensors = len(pattern.tensors) + (len(score_mod.tensors) if score_mod else 0)
        self.source = module_source(pattern.mask, score_expr, n_tensors)
        self.gluon_source = gluon_module_source(pattern.mask, score_expr, n_tensors)
        self.block_maps = BlockMapCache()
        self._modules: dict[tuple[bool, bool], object] = {}
        self._tuned: dict[tuple, tuple[cfg.TileConfig, cfg.TileConfig, cfg.TileConfig]] = {}

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
        self._check(q, k, v)
        scale = self.head_dim ** -0.5 if scale is None else float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be positive and finite, got {scale}")
        out, lse = _AttentionFunction.apply(q, k, v, self, scale)
        return (out, lse) if return_lse else out

    def configs_for(self, q: torch.Tensor, k: torch.Tensor) -> tuple[cfg.TileConfig, cfg.TileConfig, cfg.TileConfig]:
        """The (forward, dK/dV, dQ) tile configs used for these shapes (autotuned on first use on a GPU)."""
        key = (tuple(q.shape), tuple(k.shape), str(q.device))
        if key not in self._tuned:
            self._tuned[key] = self._autotune(q, k)
        return self._tuned[key]

    def block_map(self, q: torch.Tensor, k: torch.Tensor, block_m: int, block_n: int) -> BlockMap:
        batch, heads, seq_q, _ = q.shape
        return self.block_maps.get(self.pattern, batch, heads, seq_q, k.shape[2], block_m, block_n, q.device)

    # ------------------------------------------------------------------------------------------------ checks
    def _check(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
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
    def _arch(self, device: torch.device) -> cfg.ArchConfigs:
        name = self.arch or cfg.detect_arch(device)
        if name not in cfg.ARCHITECTURES:
            raise ValueError(f"unknown arch {name!r}; choose one of {sorted(cfg.ARCHITECTURES)}")
        return cfg.ARCHITECTURES[name]

    def _autotune(self, q: torch.Tensor, k: torch.Tensor):
        arch = self._arch(q.device)
        fwd, dkdv, dq = (arch.forward[self.head_dim], arch.backward_dkdv[self.head_dim],
                         arch.backward_dq[self.head_dim])
        if q.device.type != "cuda" or (len(fwd) == len(dkdv) == len(dq) == 1):
            return fwd[0], dkdv[0], dq[0]
        import triton.testing

        gen = torch.Generator(device=q.device).manual_seed(0)
        qs = torch.randn(q.shape, generator=gen, device=q.device, dtype=q.dtype)
        ks = torch.randn(k.shape, generator=gen, device=q.device, dtype=q.dtype)
        vs = torch.randn(k.shape, generator=gen, device=q.device, dtype=q.dtype)
        scale = self.head_dim ** -0.5

        def best(candidates, run, kernel):
            if not self.autotune:
                # the first candidate that builds: some exceed shared memory once a score mod adds live tensors
                errors = {}
                for c in candidates:
                    try:
                        run(c)
                        return c
                    except Exception as e:  # noqa: BLE001  (compile/resource errors come in many Triton types)
                        errors[str(tuple(c.__dict__.values()))] = repr(e)[:200]
                raise RuntimeError(f"no {kernel} tile config compiled for {tuple(q.shape)}: {errors}")
            if len(candidates) == 1:
                return candidates[0]
            times, errors = [], {}
            for c in candidates:
                try:
                    times.append(triton.testing.do_bench(lambda c=c: run(c), warmup=5, rep=25, return_mode="median"))
                except Exception as e:  # noqa: BLE001  (a candidate this compiler/GPU cannot build is skipped, logged)
                    times.append(float("inf"))
                    errors[str(tuple(c.__dict__.values()))] = repr(e)[:200]
            self.tuning_log.append({"kernel": kernel, "q_shape": list(q.shape), "k_shape": list(k.shape),
                                    "ms": {str(tuple(c.__dict__.values())): t for c, t in zip(candidates, times)},
                                    "errors": errors})
            if min(times) == float("inf"):
                raise RuntimeError(f"no {kernel} tile config compiled for {tuple(q.shape)}: {errors}")
            return candidates[min(range(len(times)), key=times.__getitem__)]

        f = best(fwd, lambda c: self.forward(qs, ks, vs, scale, c), "forward")
        out, lse = self.forward(qs, ks, vs, scale, f)
        do = torch.randn(q.shape, generator=gen, device=q.device, dtype=q.dtype)
        delta = self.delta(out, do, lse, None)
        b1 = best(dkdv, lambda c: self.backward_dkdv(qs, ks, vs, do, lse, delta, scale, c), "dkdv")
        b2 = best(dq, lambda c: self.backward_dq(qs, ks, vs, do, lse, delta, scale, c), "dq")
        return f, b1, b2

    # ------------------------------------------------------------------------------------------------ launches
    def _tensor_args(self, device: torch.device) -> list:
        tensors = list(self.pattern.tensors_on(device))
        if self.score_mod is not None:
            tensors += list(self.score_mod.tensors_on(device))
        args: list = []
        for t in tensors:
            args += [t, t.numel()]
        return args

    def _map_args(self, bm: BlockMap, lists: TileLists) -> list:
        map_b, map_h = bm.states.shape[0], bm.states.shape[1]
        q_tiles, kv_tiles = bm.states.shape[2], bm.states.shape[3]
        return [lists.partial_count, lists.partial_index, lists.full_count, lists.full_index], \
            [q_tiles, kv_tiles, map_h if map_b > 1 else 0, 1 if map_h > 1 else 0]

    def forward(self, q, k, v, scale: float, config: cfg.TileConfig | None = None):
        """Raw forward launch (no autograd): returns ``(out, lse)``; lse is float32 ``(B, H, S_q)``."""
        config = config or self.configs_for(q, k)[0]
        batch, heads, seq_q, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty((batch, heads, seq_q), device=q.device, dtype=torch.float32)
        bm = self.block_map(q, k, config.block_m, config.block_n)
        lists, map_scalars = self._map_args(bm, bm.by_query)
        grid = (bm.states.shape[2], batch * heads)
        if config.gluon:
            self._forward_gluon(q, k, v, out, lse, lists, map_scalars, grid, scale, config)
            return out, lse
        desc_k, desc_v = k, v
        if config.use_tma:
            from triton.tools.tensor_descriptor import TensorDescriptor
            rows = k.shape[0] * k.shape[1] * k.shape[2]
            desc_k = TensorDescriptor(k, [rows, self.head_dim], [self.head_dim, 1], [config.block_n, self.head_dim])
            desc_v = TensorDescriptor(v, [rows, self.head_dim], [self.head_dim, 1], [config.block_n, self.head_dim])
        self.module.attention_forward[grid](
            q, k, v, desc_k, desc_v, out, lse, *lists, scale,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            seq_q, k.shape[2], heads, heads // k.shape[1], *map_scalars, *self._tensor_args(q.device),
            HEAD_DIM=self.head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            HAS_SCORE=self.score_mod is not None, DOT_F32=self._dot_f32(q), USE_TMA=config.use_tma,
            WARP_SPECIALIZE=config.warp_specialize, SINGLE_LOOP=config.single_loop, num_warps=config.num_warps, num_stages=config.num_stages)
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
        self.module.attention_backward_delta[(_cdiv(rows, block),)](
            out, d_out, lse, d_lse if d_lse is not None else lse, delta, rows, HEAD_DIM=self.head_dim,
            BLOCK=block, HAS_DLSE=d_lse is not None, num_warps=4)
        return delta

    def _bwd_common(self, q, k, v, do):
        return [q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
                q.shape[2], k.shape[2], q.shape[1], q.shape[1] // k.shape[1]]

    def backward_dkdv(self, q, k, v, do, lse, delta, scale: float, config: cfg.TileConfig | None = None):
        config = config or self.configs_for(q, k)[1]
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        bm = self.block_map(q, k, config.block_m, config.block_n)
        lists, map_scalars = self._map_args(bm, bm.by_key)
        grid = (bm.states.shape[3], k.shape[0] * k.shape[1])
        self.module.attention_backward_dkdv[grid](
            q, k, v, do, lse, delta, dk, dv, *lists, scale, *self._bwd_common(q, k, v, do), *map_scalars,
            *self._tensor_args(q.device), HEAD_DIM=self.head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            HAS_SCORE=self.score_mod is not None, DOT_F32=self._dot_f32(q), num_warps=config.num_warps, num_stages=config.num_stages)
        return dk, dv

    def backward_dq(self, q, k, v, do, lse, delta, scale: float, config: cfg.TileConfig | None = None):
        config = config or self.configs_for(q, k)[2]
        dq = torch.empty_like(q)
        bm = self.block_map(q, k, config.block_m, config.block_n)
        lists, map_scalars = self._map_args(bm, bm.by_query)
        grid = (bm.states.shape[2], q.shape[0] * q.shape[1])
        self.module.attention_backward_dq[grid](
            q, k, v, do, lse, delta, dq, *lists, scale, *self._bwd_common(q, k, v, do), *map_scalars,
            *self._tensor_args(q.device), HEAD_DIM=self.head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
            HAS_SCORE=self.score_mod is not None, DOT_F32=self._dot_f32(q), num_warps=config.num_warps, num_stages=config.num_stages)
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


_kernels: dict[tuple, AttentionKernel] = {}


def compile_attention(pattern: Pattern | None = None, *, mask_mod: Callable[..., object] | None = None,
                      score_mod: ScoreMod | Callable[..., object] | None = None, head_dim: int,
                      dtype: torch.dtype = torch.bfloat16, arch: str | None = None,
                      autotune: bool = True) -> AttentionKernel:
    """Compile fused attention for a pattern (and/or a FlexAttention-style ``mask_mod``) and a score modification.

    Kernels are cached by pattern *structure* (plus head_dim, dtype, arch): calling this again with an equal
    pattern built from scratch returns the same kernel without recompiling. With ``autotune`` (the default) the
    architecture's candidate tile configs are timed on first use of each input shape on a GPU and the fastest kept;
    without it the first candidate is used.
    """
    if pattern is not None and not isinstance(pattern, Pattern):
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
        _kernels[key] = AttentionKernel(pattern, score_mod, head_dim, dtype, arch, autotune)
    return _kernels[key]
