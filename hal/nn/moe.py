"""Top-k routed mixture of experts: the router both MoE MLPs and the mixture of architectures use, and the MoE MLP.

    moe = MoE(d_model=512, d_ffn=1024, experts=8, top_k=2)
    y, aux_loss = moe(x)                       # x (..., d_model); add coefficient * aux_loss to the training loss

Routing (``TopKRouter``): logits = W x (no bias), probabilities = softmax in float32 (float64 for a float64
router), each token goes to its
``top_k`` most probable experts. The combine weights are those probabilities renormalised over the chosen k
(Mixtral, Jamba) when top_k > 1, and the raw probability for top_k == 1 (Switch Transformer, Fedus et al. 2022),
where renormalising would give the router no gradient from the main loss; ``normalize_top_k`` overrides.

Capacity: none. Every token is computed by all of its k experts, however unevenly the router spreads them
("dropless"); no token is dropped or truncated, so the output never depends on batch composition. An uneven router
costs time (one expert does more work), not correctness; the load-balancing loss is what keeps it even.

Load-balancing loss (Switch Transformer, eq. 4, generalised to k choices): E * sum_e f_e P_e, with f_e the fraction
of the T*k token-to-expert assignments that went to expert e and P_e the mean router probability of e over the
tokens. It is 1 when routing and probabilities are uniform and grows as they concentrate; its gradient reaches the
router through P_e (f_e counts assignments).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hal.errors import InvalidInput, ShapeError


@dataclass
class Routing:
    """One routing decision for T tokens among E experts.

    weights, indices: (T, k) combine weights and the chosen experts, best first; probs: (T, E) router
    probabilities in float32, float64 for a float64 router (the load-balancing loss reads them).
    """

    weights: torch.Tensor
    indices: torch.Tensor
    probs: torch.Tensor

    @property
    def experts(self) -> int:
        return self.probs.shape[-1]

    def combine(self) -> torch.Tensor:
        """(T, E) dense combine weights: weights[t, j] at column indices[t, j], zeros elsewhere."""
        dense = torch.zeros_like(self.probs, dtype=self.weights.dtype)
        return dense.scatter_add(1, self.indices, self.weights)


def load_balancing_loss(routing: Routing) -> torch.Tensor:
    """Switch-style auxiliary loss E * sum_e f_e P_e (1 at perfect balance); see the module docstring."""
    tokens, k = routing.indices.shape
    counts = torch.zeros(routing.experts, device=routing.probs.device, dtype=routing.probs.dtype)
    counts.scatter_add_(0, routing.indices.reshape(-1), torch.ones(tokens * k, device=counts.device, dtype=counts.dtype))
    fraction = counts / (tokens * k)
    return routing.experts * (fraction * routing.probs.mean(0)).sum()


class TopKRouter(nn.Module):
    """A linear router to ``top_k`` of ``experts`` experts per token (see the module docstring for the weights)."""

    def __init__(self, d_model: int, experts: int, top_k: int, normalize_top_k: bool | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if not isinstance(experts, int) or experts < 1:
            raise InvalidInput(f"experts must be a positive integer, got {experts!r}")
        if not isinstance(top_k, int) or not 1 <= top_k <= experts:
            raise InvalidInput(f"top_k must be an integer in [1, experts={experts}], got {top_k!r}: a token cannot "
                               "go to more experts than exist")
        self.d_model, self.experts, self.top_k = d_model, experts, top_k
        self.normalize_top_k = top_k > 1 if normalize_top_k is None else normalize_top_k
        self.proj = nn.Linear(d_model, experts, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> Routing:
        """x (T, d_model) -> the Routing of its T tokens."""
        if x.dim() != 2 or x.shape[-1] != self.d_model:
            raise ShapeError(f"the router takes (tokens, d_model={self.d_model}), got {tuple(x.shape)}")
        logits = self.proj(x)
        probs = F.softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
        weights, indices = probs.topk(self.top_k, dim=-1)
        if self.normalize_top_k:
            weights = weights / weights.sum(-1, keepdim=True)
        return Routing(weights, indices, probs)


class SwiGLU(nn.Module):
    """The gated MLP of Llama/Mixtral/Jamba (Shazeer 2020): down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, d_model: int, d_ffn: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_ffn", d_ffn)):
            if not isinstance(value, int) or value < 1:
                raise InvalidInput(f"SwiGLU: {name} must be a positive integer, got {value!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_ffn = d_model, d_ffn
        self.gate = nn.Linear(d_model, d_ffn, bias=False, **factory)
        self.up = nn.Linear(d_model, d_ffn, bias=False, **factory)
        self.down = nn.Linear(d_ffn, d_model, bias=False, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    """A top-k routed mixture of SwiGLU experts (dropless; see the module docstring). Returns (y, aux_loss)."""

    def __init__(self, d_model: int, d_ffn: int, experts: int, top_k: int = 2, normalize_top_k: bool | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.d_model = d_model
        self.router = TopKRouter(d_model, experts, top_k, normalize_top_k, device=device, dtype=dtype)
        self.experts = nn.ModuleList(SwiGLU(d_model, d_ffn, device=device, dtype=dtype) for _ in range(experts))

    @property
    def top_k(self) -> int:
        return self.router.top_k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., d_model) -> (y of x's shape, the load-balancing loss of this call's routing, a scalar)."""
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ShapeError(f"MoE takes (..., d_model={self.d_model}), got {tuple(x.shape)}")
        tokens = x.reshape(-1, self.d_model)
        routing = self.router(tokens)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slots = torch.where(routing.indices == e)
            if rows.numel() == 0:
                continue
            gate = routing.weights[rows, slots].to(tokens.dtype)[:, None]
            out = out.index_add(0, rows, expert(tokens[rows]) * gate)
        return out.reshape(x.shape), load_balancing_loss(routing)
