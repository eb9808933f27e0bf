"""Ahead-of-time preparation: compile and finish tuning a pattern's kernels for the shapes a program will use.

    from hal.kernels.attention import patterns, warmup
    warmup(patterns.causal(), [(1, 16, 16384, 128)])       # in a setup step, a build, a container image
    # later, in any process: compile_attention(patterns.causal(), head_dim=128)(q, k, v) starts tuned

Every shape is run (forward, and backward unless ``backward=False``) until the lazy refinement of :mod:`.tuner`
has timed all its candidates; the choices and compiled kernels land in hal's cache dir, where a new process finds
them. Inputs are random: tile timings do not depend on values (for ``topk_blocks`` the selection, and with it the
tiles visited, does; random keys select about as many full tiles as real ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .kernel import AttentionKernel, compile_attention
from .patterns import Pattern, ScoreMod, TopKBlocks
from .tuner import REFINE_CANDIDATES

Shape = tuple[int, int, int, int]


def warmup(pattern: Pattern | TopKBlocks | None, shapes: Sequence[Shape | tuple[Shape, Shape]], *,
           mask_mod: Callable[..., object] | None = None, score_mod: ScoreMod | Callable[..., object] | None = None,
           dtype: torch.dtype = torch.bfloat16, arch: str | None = None, device: torch.device | str | None = None,
           backward: bool = True):
    """Compile ``pattern``'s kernels and finish their tile choices for ``shapes``; returns the compiled kernel.

    A shape is ``q``'s ``(B, H, S, D)`` (k and v the same) or a pair ``(q shape, k shape)`` for GQA or unequal
    lengths; every shape must have the same head dim ``D``.
    """
    pairs = [_pair(s) for s in shapes]
    if not pairs:
        raise ValueError("warmup needs at least one shape, e.g. [(1, 16, 4096, 128)]")
    head_dims = {q[3] for q, _ in pairs} | {k[3] for _, k in pairs}
    if len(head_dims) != 1:
        raise ValueError(f"every warmup shape must have the same head dim (the kernel's); got {sorted(head_dims)}")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    kernel = compile_attention(pattern, mask_mod=mask_mod, score_mod=score_mod, head_dim=head_dims.pop(), dtype=dtype,
                               arch=arch)
    tuned: AttentionKernel = kernel if isinstance(kernel, AttentionKernel) else kernel.attention
    generator = torch.Generator(device=device).manual_seed(0)
    for q_shape, k_shape in pairs:
        q = torch.randn(q_shape, generator=generator, device=device).to(dtype).requires_grad_(backward)
        k = torch.randn(k_shape, generator=generator, device=device).to(dtype).requires_grad_(backward)
        v = torch.randn(k_shape, generator=generator, device=device).to(dtype).requires_grad_(backward)
        d_out = torch.randn(q_shape, generator=generator, device=device).to(dtype)
        # the first call ranks, each later one times at most one candidate per kernel
        for _ in range(REFINE_CANDIDATES + 1):
            out = kernel(q, k, v)
            if backward:
                out.backward(d_out)
            tuning = tuned.tuning_for(q, k)
            pending = [name for name, choice in tuning.choices.items()
                       if choice.pending and (backward or name == "forward")]
            if not pending:
                break
    return kernel


def _pair(shape) -> tuple[Shape, Shape]:
    if len(shape) == 2 and all(isinstance(s, (tuple, list, torch.Size)) for s in shape):
        q_shape, k_shape = (tuple(int(x) for x in s) for s in shape)
    else:
        q_shape = k_shape = tuple(int(x) for x in shape)
    if len(q_shape) != 4 or len(k_shape) != 4:
        raise ValueError(f"a warmup shape is (B, H, S, D) or ((B, H, S, D), (B, H_kv, S_kv, D)), got {shape!r}")
    return q_shape, k_shape
