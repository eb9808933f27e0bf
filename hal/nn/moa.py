"""A mixture of architectures: a router sends each token to attention or state-space experts.

    moa = MixtureOfArchitectures.attention_and_ssm(d_model=256, heads=4, ssm="mamba", top_k=1)
    y, aux_loss = moa(x)                     # x (batch, seqlen, d_model) -> y of x's shape
    cache = moa.allocate_cache(batch=2, max_seqlen=64); y = moa(prompt, cache); y_t = moa.step(x_t, cache)

The experts are sequence mixers of different architectures (``CausalSelfAttention``, ``MambaBlock``,
``Mamba2Block``, or any module with their decode protocol). The router (``hal.nn.moe.TopKRouter``: softmax over a
linear map of the token, top_k choices) picks per token which experts' outputs make up that token's output:

    y_t = sum over e in top_k(t) of w_e(t) * expert_e(x)_t

Every expert reads the whole sequence: an attention expert's keys and an SSM expert's state cover every token, so
what a token is routed to decides which architecture answers for it, not what context the others see. This keeps
each expert causal and its decode exact (each steps on every token); the price is that every expert computes over
every token (no compute is saved by routing here; routing sub-sequences to experts, as Mixture-of-Depths does,
is not what this module does). The load-balancing loss is the Switch-style one of ``hal.nn.moe``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hal.errors import InvalidInput
from hal.nn.jamba import CausalSelfAttention
from hal.nn.mamba import Mamba2Block, MambaBlock, check_sequence_input, check_token_input
from hal.nn.moe import TopKRouter, load_balancing_loss

SSM_EXPERTS = {"mamba": MambaBlock, "mamba2": Mamba2Block}


@dataclass
class MoACache:
    """The decode state of a MixtureOfArchitectures: one cache per expert, and the tokens consumed."""

    experts: list
    seqlen: int = 0


class MixtureOfArchitectures(nn.Module):
    """Tokens routed among sequence-mixing experts of different architectures (see the module docstring).

    experts: modules mapping (batch, seqlen, d_model) -> the same, with ``forward(x, cache)``, ``step(x_t, cache)``
    and ``allocate_cache(batch, max_seqlen, device)``. top_k: experts per token; normalize_top_k as for
    ``TopKRouter`` (renormalised weights for top_k > 1, the raw probability for top_k == 1).
    """

    def __init__(self, d_model: int, experts: Sequence[nn.Module], top_k: int = 1, normalize_top_k: bool | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        experts = list(experts)
        if len(experts) < 2:
            raise InvalidInput(f"a mixture of architectures needs at least 2 experts, got {len(experts)}")
        for i, expert in enumerate(experts):
            missing = [m for m in ("step", "allocate_cache") if not callable(getattr(expert, m, None))]
            if missing:
                raise InvalidInput(f"expert {i} ({type(expert).__name__}) lacks {missing}: experts must follow the "
                                   "decode protocol of CausalSelfAttention / MambaBlock / Mamba2Block")
            if getattr(expert, "d_model", d_model) != d_model:
                raise InvalidInput(f"expert {i} ({type(expert).__name__}) has d_model={expert.d_model}, the mixture "
                                   f"has d_model={d_model}")
        self.d_model = d_model
        self.experts = nn.ModuleList(experts)
        self.router = TopKRouter(d_model, len(experts), top_k, normalize_top_k, device=device, dtype=dtype)

    @classmethod
    def attention_and_ssm(cls, d_model: int, heads: int, attention_experts: int = 1, ssm_experts: int = 1,
                          ssm: str = "mamba", top_k: int = 1, kv_heads: int | None = None, rotary: bool = False,
                          backend: str = "auto", attention_backend: str = "auto",
                          device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                          **ssm_kwargs) -> MixtureOfArchitectures:
        """A mixture of ``attention_experts`` attention and ``ssm_experts`` Mamba ("mamba") or Mamba-2 ("mamba2")
        experts, attention first; ``ssm_kwargs`` go to the SSM blocks (d_state, expand, head_dim, ...)."""
        if ssm not in SSM_EXPERTS:
            raise InvalidInput(f"ssm must be one of {sorted(SSM_EXPERTS)}, got {ssm!r}")
        factory = {"device": device, "dtype": dtype}
        experts: list[nn.Module] = [CausalSelfAttention(d_model, heads, kv_heads, rotary=rotary,
                                                        backend=attention_backend, **factory)
                                    for _ in range(attention_experts)]
        experts += [SSM_EXPERTS[ssm](d_model, backend=backend, **ssm_kwargs, **factory) for _ in range(ssm_experts)]
        return cls(d_model, experts, top_k=top_k, **factory)

    @property
    def top_k(self) -> int:
        return self.router.top_k

    def forward(self, x: torch.Tensor, cache: MoACache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (batch, seqlen, d_model) -> (y of x's shape, the load-balancing loss); an empty ``cache`` is filled."""
        check_sequence_input(x, self.d_model, "MixtureOfArchitectures")
        routing = self.router(x.reshape(-1, self.d_model))
        combine = routing.combine().reshape(*x.shape[:2], -1).to(x.dtype)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            y = y + combine[..., e:e + 1] * expert(x, None if cache is None else cache.experts[e])
        if cache is not None:
            cache.seqlen = x.shape[1]
        return y, load_balancing_loss(routing)

    def step(self, x: torch.Tensor, cache: MoACache) -> torch.Tensor:
        """One token per row: x (batch, d_model) -> (batch, d_model); every expert's cache advances."""
        check_token_input(x, self.d_model, "MixtureOfArchitectures")
        combine = self.router(x).combine().to(x.dtype)
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            y = y + combine[:, e:e + 1] * expert.step(x, cache.experts[e])
        cache.seqlen += 1
        return y

    def allocate_cache(self, batch: int, max_seqlen: int | None = None,
                       device: torch.device | str | None = None) -> MoACache:
        """An empty cache: each expert's own (attention experts need ``max_seqlen``)."""
        return MoACache([expert.allocate_cache(batch, max_seqlen, device) for expert in self.experts])
