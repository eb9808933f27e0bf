"""Attention patterns (which keys a query may see) and score modifications, as composable expression objects.

A :class:`Pattern` is a boolean expression of ``(b, h, q_idx, kv_idx)``; ``&`` and ``|`` combine patterns.
A :class:`ScoreMod` is a float expression of ``(score, b, h, q_idx, kv_idx)``; ``>>`` chains them (left first).
Both are structural: two objects built the same way have the same :meth:`key`, so compiled kernels and block maps
are cached by what the pattern *is*, not by which Python object it is.

Index conventions follow FlexAttention: ``q_idx`` and ``kv_idx`` are absolute positions, ``causal`` is
``q_idx >= kv_idx``.

:func:`topk_blocks` is the one pattern that depends on the inputs' content (which key blocks each query block
attends to is chosen per call); it combines with static patterns by ``&`` only and compiles to
:class:`~hal.kernels.attention.dynamic.DynamicSparseAttention`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch

from .expr import Expr, PatternError, TraceContext, binary, const, d_dscore, load, trace, unary, uses, var, where

B, H, Q, KV, SCORE = var("b"), var("h"), var("q_idx"), var("kv_idx"), var("score")


def _fingerprint(t: torch.Tensor) -> tuple:
    data = t.detach().contiguous().cpu()
    digest = hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()
    return (tuple(data.shape), str(data.dtype), digest)


def shift_slots(e: Expr, offset: int) -> Expr:
    if offset == 0:
        return e
    if e.op == "load":
        return load(e.args[0] + offset, shift_slots(e.args[1], offset), e.kind)
    if e.op in ("var", "const"):
        return e
    args = tuple(shift_slots(a, offset) for a in e.args)
    if e.op == "where":
        return where(*args)
    if len(args) == 2:
        return binary(e.op, *args)
    return unary(e.op, *args)


class _Tensors:
    """The tensors an expression reads, with a content fingerprint and per-device copies."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tuple(t.detach().contiguous().cpu() for t in tensors)
        self.fingerprints = tuple(_fingerprint(t) for t in self.tensors)
        self._on_device: dict[str, tuple[torch.Tensor, ...]] = {}

    def on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = tuple(t.to(device) for t in self.tensors)
        return self._on_device[key]


class Pattern:
    """Which (query, key) pairs may attend: ``mask`` is true where attention is allowed."""

    def __init__(self, mask: Expr, tensors: Sequence[torch.Tensor] = (), name: str = "") -> None:
        if mask.kind != "b":
            raise PatternError(f"a mask must be boolean (a comparison), got a {'float' if mask.kind == 'f' else 'integer'} "
                               "expression; compare it, e.g. `... >= 0`")
        if uses(mask, "score"):
            raise PatternError("a mask cannot depend on the score; use a score_mod that returns -inf instead")
        self.mask = mask
        self._tensors = _Tensors(tensors)
        self.name = name or "custom"
        # read on every kernel call (block map cache key): computed once, the tree is immutable
        self._uses_b = uses(mask, "b")
        self._uses_h = uses(mask, "h")

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self._tensors.tensors

    def tensors_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        return self._tensors.on(device)

    def key(self) -> tuple:
        """Structure plus tensor contents: equal keys give equal block maps."""
        return (self.mask.key(), self._tensors.fingerprints)

    def _combine(self, other: Pattern, op: str, sym: str) -> Pattern:
        if isinstance(other, TopKBlocks):
            if op == "and":
                return other & self
            raise PatternError(f"{self.name} {sym} {other.name}: a top-k block selection combines with static "
                               "patterns by & only (it narrows them); build the union as a static pattern first")
        if not isinstance(other, Pattern):
            raise PatternError(f"patterns combine with other patterns only, not {type(other).__name__}")
        shifted = shift_slots(other.mask, len(self.tensors))
        return Pattern(binary(op, self.mask, shifted), self.tensors + other.tensors, f"({self.name} {sym} {other.name})")

    def __and__(self, other: Pattern) -> Pattern:
        return self._combine(other, "and", "&")

    def __or__(self, other: Pattern) -> Pattern:
        return self._combine(other, "or", "|")

    def __invert__(self) -> Pattern:
        return Pattern(unary("not", self.mask), self.tensors, f"~{self.name}")

    def depends_on_batch(self) -> bool:
        return self._uses_b

    def depends_on_head(self) -> bool:
        return self._uses_h

    def __repr__(self) -> str:
        return f"Pattern({self.name})"


class TopKBlocks:
    """Dynamic block sparsity: each query block attends to the ``k`` key blocks its content scores highest against.

    The sequence is cut into blocks of ``block`` positions. For query block ``i`` and key block ``j`` the score is
    ``mean(q over block i) · mean(k over block j)`` (per head; with GQA the KV head of the group), the block-level
    selection of MoBA (Lu et al. 2025, arXiv:2502.13189) and NSA's selected branch (Yuan et al. 2025,
    arXiv:2502.11089). Only blocks the static ``base`` pattern reaches (any pair of the two blocks allowed) are
    eligible; a query block always keeps its own block ``j = i`` when eligible (it counts towards ``k``), then the
    highest scores, ties to the lower index. Within the chosen blocks ``base`` masks as usual: with ``causal()`` the
    own block is causal inside. Fewer than ``k`` eligible blocks: all of them.

    The selection is not differentiable: gradients flow through the attention over the chosen blocks only.
    """

    def __init__(self, k: int, block: int, base: Pattern | None = None) -> None:
        _positive("k", k)
        _positive("block", block)
        if block < 16 or block & (block - 1):
            raise PatternError(f"topk_blocks block must be a power of two of at least 16 (the kernels' tiles divide "
                               f"it), got {block}")
        if base is not None and not isinstance(base, Pattern):
            raise PatternError(f"topk_blocks combines with static patterns only, not {type(base).__name__}")
        self.k = k
        self.block = block
        self.base = base

    @property
    def static(self) -> Pattern:
        """The static pattern that masks inside the chosen blocks (dense when none was combined)."""
        return self.base if self.base is not None else full()

    @property
    def name(self) -> str:
        own = f"topk_blocks(k={self.k}, block={self.block})"
        return own if self.base is None else f"({own} & {self.base.name})"

    def key(self) -> tuple:
        return ("topk_blocks", self.k, self.block, self.base.key() if self.base is not None else None)

    def __and__(self, other: Pattern) -> TopKBlocks:
        if isinstance(other, TopKBlocks):
            raise PatternError("two top-k block selections cannot be combined; use one with the larger k")
        if not isinstance(other, Pattern):
            raise PatternError(f"patterns combine with other patterns only, not {type(other).__name__}")
        return TopKBlocks(self.k, self.block, other if self.base is None else self.base & other)

    __rand__ = __and__

    def __or__(self, other: object) -> TopKBlocks:
        raise PatternError(f"{self.name} | ...: a top-k block selection combines with static patterns by & only")

    __ror__ = __or__

    def __invert__(self) -> TopKBlocks:
        raise PatternError(f"~{self.name}: a top-k block selection cannot be inverted")

    def __repr__(self) -> str:
        return f"TopKBlocks({self.name})"


class ScoreMod:
    """A change to the scaled score before softmax: ``score`` is ``scale * q·k``."""

    def __init__(self, score: Expr, tensors: Sequence[torch.Tensor] = (), name: str = "") -> None:
        if score.kind == "b":
            raise PatternError("a score_mod must return a number, not a boolean; use a mask for masking")
        self.score = score
        self._tensors = _Tensors(tensors)
        self.name = name or "custom"
        self.derivative = d_dscore(score)

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self._tensors.tensors

    def tensors_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        return self._tensors.on(device)

    def key(self) -> tuple:
        return (self.score.key(), self._tensors.fingerprints)

    def __rshift__(self, other: ScoreMod) -> ScoreMod:
        """``a >> b`` applies ``a`` first, then ``b`` to its result."""
        if not isinstance(other, ScoreMod):
            raise PatternError(f"score mods chain with other score mods only, not {type(other).__name__}")
        inner = self.score
        outer = _substitute_score(shift_slots(other.score, len(self.tensors)), inner)
        return ScoreMod(outer, self.tensors + other.tensors, f"({self.name} >> {other.name})")

    def __repr__(self) -> str:
        return f"ScoreMod({self.name})"


def _substitute_score(e: Expr, replacement: Expr) -> Expr:
    if e.op == "var":
        return replacement if e.args[0] == "score" else e
    if e.op == "const":
        return e
    if e.op == "load":
        return load(e.args[0], _substitute_score(e.args[1], replacement), e.kind)
    args = tuple(_substitute_score(a, replacement) for a in e.args)
    if e.op == "where":
        return where(*args)
    if len(args) == 2:
        return binary(e.op, *args)
    return unary(e.op, *args)


# ------------------------------------------------------------------------------------------------------ masks

def full() -> Pattern:
    """Every query sees every key (dense attention)."""
    return Pattern(const(True), name="full")


def causal() -> Pattern:
    """A query sees itself and earlier keys: ``q_idx >= kv_idx``."""
    return Pattern(Q >= KV, name="causal")


def sliding_window(window: int, *, causal: bool = False) -> Pattern:
    """Keys closer than ``window`` positions: ``|q_idx - kv_idx| < window``; with ``causal=True`` only earlier ones.

    ``sliding_window(w) & causal()`` equals ``sliding_window(w, causal=True)``: each query sees ``w`` keys.
    """
    _positive("window", window)
    if causal:
        d = Q - KV
        return Pattern((d >= 0) & (d < window), name=f"causal_window({window})")
    return Pattern(abs(Q - KV) < window, name=f"sliding_window({window})")


def dilated(dilation: int) -> Pattern:
    """Every ``dilation``-th key counted from the query: ``(q_idx - kv_idx) % dilation == 0``."""
    _positive("dilation", dilation)
    return Pattern((Q - KV) % dilation == 0, name=f"dilated({dilation})")


def global_tokens(num_global: int) -> Pattern:
    """The first ``num_global`` tokens see and are seen by every token (Longformer/BigBird global attention)."""
    _positive("num_global", num_global)
    return Pattern((Q < num_global) | (KV < num_global), name=f"global({num_global})")


def global_local(num_global: int, window: int) -> Pattern:
    """Longformer-style: a symmetric local window plus ``num_global`` global tokens."""
    return sliding_window(window) | global_tokens(num_global)


def prefix_lm(prefix_length: int) -> Pattern:
    """Bidirectional over the first ``prefix_length`` tokens, causal after: ``kv_idx < prefix | q_idx >= kv_idx``."""
    _positive("prefix_length", prefix_length)
    return Pattern((KV < prefix_length) | (Q >= KV), name=f"prefix_lm({prefix_length})")


def document(lengths: Sequence[int]) -> Pattern:
    """Jagged packing: documents of the given lengths laid end to end; tokens see only their own document.

    The packed sequence length must equal ``sum(lengths)``. Combine with ``causal()`` for causal documents.
    """
    lengths = [int(n) for n in lengths]
    if not lengths or any(n <= 0 for n in lengths):
        raise PatternError(f"document lengths must be positive integers, got {lengths}")
    doc_ids = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))
    return Pattern(load(0, Q, "i") == load(0, KV, "i"), (doc_ids,), name=f"document({len(lengths)} docs)")


def block_sparse(layout: torch.Tensor, block_size: int) -> Pattern:
    """A block layout: ``layout[..., q_idx // block_size, kv_idx // block_size]`` nonzero means attend.

    ``layout`` is ``(Q blocks, KV blocks)`` for all heads or ``(heads, Q blocks, KV blocks)`` per head (BigBird
    random + window + global layouts are such tensors).
    """
    _positive("block_size", block_size)
    if layout.dim() not in (2, 3):
        raise PatternError(f"a block-sparse layout is (q_blocks, kv_blocks) or (heads, q_blocks, kv_blocks), "
                           f"got shape {tuple(layout.shape)}")
    nq, nk = layout.shape[-2], layout.shape[-1]
    idx = (Q // block_size) * nk + KV // block_size
    if layout.dim() == 3:
        idx = H * (nq * nk) + idx
    return Pattern(load(0, idx, "b"), (layout != 0,), name=f"block_sparse({nq}x{nk}, {block_size})")


def topk_blocks(k: int = 16, block: int = 64) -> TopKBlocks:
    """Each query block attends to ``k`` key blocks of ``block`` positions chosen from pooled q/k (see TopKBlocks).

    ``topk_blocks(16, 64) & causal()``: causal MoBA-style attention, at most 16 x 64 = 1024 keys per query.
    """
    return TopKBlocks(k, block)


def from_mask_mod(mask_mod: Callable[..., object]) -> Pattern:
    """A FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx) -> bool`` traced into a pattern.

    Supported inside: arithmetic, comparisons, ``& | ~``, ``torch.where``, ``abs/minimum/maximum/clamp`` and
    indexing captured tensors with integer expressions; anything else raises :class:`PatternError` naming it.
    """
    ctx = TraceContext()
    mask = trace(mask_mod, ("b", "h", "q_idx", "kv_idx"), ctx)
    if mask.kind != "b":
        mask = binary("ne", mask, 0)
    return Pattern(mask, ctx.tensors, name=getattr(mask_mod, "__name__", "mask_mod"))


# -------------------------------------------------------------------------------------------------- score mods

def alibi(num_heads: int) -> ScoreMod:
    """ALiBi (Press et al., ICLR 2022): ``score + m_h * (kv_idx - q_idx)``, ``m_h = 2^(-8 (h+1) / num_heads)``."""
    _positive("num_heads", num_heads)
    slope = unary("exp2", (H + 1) * (-8.0 / num_heads))
    return ScoreMod(SCORE + slope * (KV - Q), name=f"alibi({num_heads})")


def relative_bias(table: torch.Tensor, max_distance: int) -> ScoreMod:
    """A learned relative-position bias: ``score + table[h, clamp(kv_idx - q_idx, -D, D) + D]``, ``D = max_distance``.

    ``table`` is ``(heads, 2 * max_distance + 1)``; distances beyond ``max_distance`` share the end buckets (T5
    style). The table is an input, not a trained parameter here: no gradient flows into it.
    """
    _positive("max_distance", max_distance)
    if table.dim() != 2 or table.shape[1] != 2 * max_distance + 1:
        raise PatternError(f"relative_bias table must be (heads, {2 * max_distance + 1}) for max_distance="
                           f"{max_distance}, got {tuple(table.shape)}")
    dist = binary("minimum", binary("maximum", KV - Q, -max_distance), max_distance) + max_distance
    return ScoreMod(SCORE + load(0, H * table.shape[1] + dist, "f"), (table.float(),),
                    name=f"relative_bias({max_distance})")


def softcap(cap: float) -> ScoreMod:
    """tanh soft-capping (Gemma 2): ``cap * tanh(score / cap)``."""
    if not (cap > 0 and math.isfinite(cap)):
        raise PatternError(f"softcap needs a positive finite cap, got {cap}")
    return ScoreMod(unary("tanh", SCORE / float(cap)) * float(cap), name=f"softcap({cap})")


def temperature(t: float) -> ScoreMod:
    """Softmax temperature: ``score / t``."""
    if not (t > 0 and math.isfinite(t)):
        raise PatternError(f"temperature must be positive and finite, got {t}")
    return ScoreMod(SCORE / float(t), name=f"temperature({t})")


def from_score_mod(score_mod: Callable[..., object]) -> ScoreMod:
    """A FlexAttention-style ``score_mod(score, b, h, q_idx, kv_idx) -> score`` traced into a score mod."""
    ctx = TraceContext()
    score = trace(score_mod, ("score", "b", "h", "q_idx", "kv_idx"), ctx)
    if score.kind != "f":
        score = binary("mul", score, 1.0)
    return ScoreMod(score, ctx.tensors, name=getattr(score_mod, "__name__", "score_mod"))


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PatternError(f"{name} must be a positive integer, got {value!r}")
