"""Float64 sequential references of both scans: the ground truth every kernel is tested against.

They walk the sequence one position at a time, exactly as the recurrences are written, in float64, and are
differentiable through torch autograd (so their gradients are the reference gradients). They are for checking at
small sizes, never for speed. Inputs are validated by the caller (hal.kernels.ssm.inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SOFTPLUS_THRESHOLD = 20.0  # softplus(x) = x above this, as mamba_ssm's kernels do (and torch's F.softplus default)


def _f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(torch.float64)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)), linear above SOFTPLUS_THRESHOLD."""
    return F.softplus(x, beta=1.0, threshold=SOFTPLUS_THRESHOLD)


Tensor = torch.Tensor


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       resets: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mamba-1 (S6), sequentially in float64. Returns (out (batch, channels, seqlen), last_state (b, ch, d_state)).

    u, delta, z: (batch, channels, seqlen); A: (channels, d_state); B, C: (batch, groups, d_state, seqlen) with
    channel d in group d // (channels / groups); D, delta_bias: (channels,); resets: (batch, seqlen), nonzero where a
    new document starts (the state is zeroed before that position).

        delta_t = softplus(delta_t + delta_bias)          (each optional)
        h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t
        y_t = C_t . h_t + D u_t;   out_t = y_t * silu(z_t)
    """
    u, delta, A, B, C, D, z, delta_bias = (_f64(t) for t in (u, delta, A, B, C, D, z, delta_bias))
    batch, channels, seqlen = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = softplus(delta)
    B = B.repeat_interleave(channels // B.shape[1], dim=1)  # (batch, channels, d_state, seqlen)
    C = C.repeat_interleave(channels // C.shape[1], dim=1)
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(seqlen):
        if resets is not None:
            h = torch.where(resets[:, t, None, None] != 0, 0.0, h)
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, :, :, t] * u[:, :, t, None]
        ys.append((h * C[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def chunk_scan_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, dt_bias: Tensor | None = None, initial_states: Tensor | None = None,
                   doc_ids: Tensor | None = None, dt_softplus: bool = False,
                   dt_limit: tuple[float, float] = (0.0, float("inf"))) -> tuple[Tensor, Tensor]:
    """Mamba-2 (SSD), sequentially in float64. Returns (out (batch, seqlen, heads, head_dim), final_state).

    x, z: (batch, seqlen, heads, head_dim); dt: (batch, seqlen, heads); A: (heads,); B, C: (batch, seqlen, groups,
    d_state) with head h in group h // (heads / groups); D: (heads,) or (heads, head_dim); initial_states and the
    final state: (batch, heads, head_dim, d_state); doc_ids: (batch, seqlen) document numbers (the state is zeroed
    where the number changes; the initial state belongs to the first document).

        dt_t = clamp(softplus(dt_t + dt_bias), dt_limit)  (bias and softplus optional; the clamp always applies)
        S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T        (head_dim x d_state per head)
        y_t = S_t C_t + D x_t;   out_t = y_t * silu(z_t)
    """
    x, dt, A, B, C, D, z, dt_bias, initial_states = (
        _f64(t) for t in (x, dt, A, B, C, D, z, dt_bias, initial_states))
    batch, seqlen, heads, head_dim = x.shape
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = softplus(dt)
    dt = dt.clamp(dt_limit[0], dt_limit[1])
    B = B.repeat_interleave(heads // B.shape[2], dim=2)  # (batch, seqlen, heads, d_state)
    C = C.repeat_interleave(heads // C.shape[2], dim=2)
    state = initial_states if initial_states is not None else x.new_zeros(batch, heads, head_dim, B.shape[-1])
    ys = []
    for t in range(seqlen):
        if doc_ids is not None and t > 0:
            state = torch.where((doc_ids[:, t] != doc_ids[:, t - 1])[:, None, None, None], 0.0, state)
        d = dt[:, t, :, None, None]
        state = torch.exp(d * A[:, None, None]) * state + d * x[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append((state * C[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + (D[:, None] if D.dim() == 1 else D) * x
    if z is not None:
        y = y * F.silu(z)
    return y, state
