"""Mamba's selective scan (S6), as a pure torch reference.

For each batch b, channel d and state n:  h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,
y_t = sum_n C_t * h_t + D * u_t  (Gu & Dao, "Mamba", 2023, Algorithm 2, zero-order-hold A and Euler B).

This is the op vocabulary's plain reference (what ``selective_scan`` OpSpecs run on the torch path). The fast
kernels, with autograd, the z gate, delta softplus, grouped B/C, packed sequences and decode steps, and Mamba-2's
SSD, are in ``hal.kernels.ssm`` (docs/ssm.md).
"""

from __future__ import annotations

import torch


def selective_scan_reference(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """u, delta: (B, D, L); A: (D, N); B, C: (B, N, L); D: (D,). Returns y: (B, D, L).

    Sequential over L (the recurrence), vectorised over batch, channels and states. The decay
    exp(delta * A) and input terms are computed for all steps at once, then scanned.
    """
    decay = torch.exp(delta.unsqueeze(2) * A.unsqueeze(0).unsqueeze(-1))  # (B, D, N, L)
    drive = delta.unsqueeze(2) * B.unsqueeze(1) * u.unsqueeze(2)  # (B, D, N, L)
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype, device=u.device)
    ys = []
    for t in range(u.shape[-1]):
        state = decay[..., t] * state + drive[..., t]
        ys.append(torch.einsum("bdn,bn->bd", state, C[..., t]))
    y = torch.stack(ys, dim=-1) if ys else torch.zeros_like(u)
    return y + D.view(1, -1, 1) * u
