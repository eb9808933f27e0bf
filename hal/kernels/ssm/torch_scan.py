"""The pure-torch path of both scans: the same chunked algorithms as the Triton kernels, vectorised with torch ops.

It runs wherever torch runs (CPU users, float64), differentiates through torch autograd, and computes in float32
(float64 for float64 inputs). Memory per call stays bounded by the chunk: S6 walks the sequence in chunks of
``S6_CHUNK`` positions with a (batch, channels, d_state, chunk) working set; SSD holds (batch, chunks, heads,
chunk, chunk) decay matrices, i.e. heads x seqlen x chunk_size values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .inputs import S6Inputs, SsdInputs
from .reference import softplus

S6_CHUNK = 64  # positions per step of the S6 loop: a log2(64) = 6-step parallel scan inside, a carry across


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def affine_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inclusive scan of h_t = a_t h_{t-1} + b_t along the last axis (h_{-1} = 0), in log2(T) doubling steps."""
    step, length = 1, a.shape[-1]
    while step < length:
        b = torch.cat([b[..., :step], b[..., step:] + a[..., step:] * b[..., :-step]], dim=-1)
        if 2 * step < length:
            a = torch.cat([a[..., :step], a[..., step:] * a[..., :-step]], dim=-1)
        step *= 2
    return b


def selective_scan_torch(inp: S6Inputs, delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 (S6): (out (batch, channels, seqlen) in the input dtype, last_state (batch, channels, d_state))."""
    batch, channels, seqlen, d_state = inp.shape
    cdt = _compute_dtype(inp.u.dtype)
    u, delta, A = inp.u.to(cdt), inp.delta.to(cdt), inp.A.to(cdt)
    if inp.delta_bias is not None:
        delta = delta + inp.delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = softplus(delta)
    per_b, per_c = channels // inp.B.shape[1], channels // inp.C.shape[1]
    h = u.new_zeros(batch, channels, d_state)
    outs = []
    for start in range(0, seqlen, S6_CHUNK):
        stop = min(start + S6_CHUNK, seqlen)
        dl = delta[:, :, start:stop]
        a = torch.exp(dl[:, :, None, :] * A[None, :, :, None])  # (batch, channels, d_state, T)
        if inp.resets is not None:
            a = torch.where(inp.resets[:, None, None, start:stop] != 0, 0.0, a)
        Bc = inp.B[..., start:stop].to(cdt).repeat_interleave(per_b, dim=1)
        b = (dl * u[:, :, start:stop])[:, :, None, :] * Bc
        b = torch.cat([b[..., :1] + a[..., :1] * h[..., None], b[..., 1:]], dim=-1)  # carry enters the first step
        hs = affine_scan(a, b)
        Cc = inp.C[..., start:stop].to(cdt).repeat_interleave(per_c, dim=1)
        outs.append((hs * Cc).sum(2))
        h = hs[..., -1]
    y = torch.cat(outs, dim=-1)
    if inp.D is not None:
        y = y + inp.D.to(cdt)[:, None] * u
    if inp.z is not None:
        y = y * F.silu(inp.z.to(cdt))
    return y.to(inp.u.dtype), h


def processed_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool,
                 dt_limit: tuple[float, float]) -> torch.Tensor:
    """dt after the optional bias and softplus and the clamp to dt_limit (which always applies, as in mamba_ssm)."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = softplus(dt)
    return dt.clamp(dt_limit[0], dt_limit[1])


def _chunked(t: torch.Tensor, chunks: int, chunk: int, pad_value: torch.Tensor | float = 0.0) -> torch.Tensor:
    """(batch, seqlen, ...) -> (batch, chunks, chunk, ...), padding the tail."""
    pad = chunks * chunk - t.shape[1]
    if pad:
        if isinstance(pad_value, torch.Tensor):
            tail = pad_value.expand(t.shape[0], pad, *t.shape[2:])
        else:
            tail = t.new_full((t.shape[0], pad, *t.shape[2:]), pad_value)
        t = torch.cat([t, tail], dim=1)
    return t.reshape(t.shape[0], chunks, chunk, *t.shape[2:])


def chunk_scan_torch(inp: SsdInputs, chunk_size: int, dt_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 (SSD) in its chunked dual form: (out (batch, seqlen, heads, head_dim), final_state (b, h, p, n))."""
    batch, seqlen, heads, head_dim, groups, d_state = inp.shape
    per_group = heads // groups
    cdt = _compute_dtype(inp.x.dtype)
    q = min(chunk_size, seqlen)
    chunks = math.ceil(seqlen / q)
    dt = processed_dt(inp.dt.to(cdt), inp.dt_bias, dt_softplus, inp.dt_limit)
    x = _chunked(inp.x.to(cdt), chunks, q).view(batch, chunks, q, groups, per_group, head_dim)
    dt = _chunked(dt, chunks, q).view(batch, chunks, q, groups, per_group).permute(0, 1, 3, 4, 2)  # (b,c,g,k,q)
    Bc, Cc = (_chunked(t.to(cdt), chunks, q) for t in (inp.B, inp.C))  # (b, c, q, g, n)
    lam = (dt * inp.A.to(cdt).view(groups, per_group, 1)).cumsum(-1)  # (b, c, g, k, q): cumulative log-decay
    lam_last = lam[..., -1]
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    mask = causal
    if inp.doc_ids is not None:
        docs = _chunked(inp.doc_ids, chunks, q, inp.doc_ids[:, -1:])  # (b, c, q); the tail continues the last doc
        doc_last = docs[..., -1]
        doc_in = torch.cat([torch.zeros_like(doc_last[:, :1]), doc_last[:, :-1]], dim=1)  # doc of the entering state
        mask = causal & (docs[..., :, None] == docs[..., None, :])[:, :, None, None]
    decay = torch.exp(torch.where(mask, lam[..., :, None] - lam[..., None, :], float("-inf")))  # (b,c,g,k,t,s)
    cb = torch.einsum("bctgn,bcsgn->bcgts", Cc, Bc)[:, :, :, None]
    y = torch.einsum("bcgkts,bcgks,bcsgkp->bctgkp", cb * decay, dt, x)
    v = dt * torch.exp(lam_last[..., None] - lam)  # weight of each position in the chunk's end state
    gamma = torch.exp(lam_last)  # decay of the entering state through the chunk
    enter = torch.exp(lam)  # decay of the entering state up to each position
    if inp.doc_ids is not None:
        v = torch.where((docs == doc_last[..., None])[:, :, None, None], v, 0.0)
        gamma = torch.where((doc_last == doc_in)[:, :, None, None], gamma, 0.0)
        enter = torch.where((docs == doc_in[..., None])[:, :, None, None], enter, 0.0)
    local = torch.einsum("bcgks,bcsgkp,bcsgn->bcgkpn", v, x, Bc)
    state = inp.initial_states.to(cdt) if inp.initial_states is not None else x.new_zeros(
        batch, heads, head_dim, d_state)
    state = state.view(batch, groups, per_group, head_dim, d_state)
    entering = []
    for c in range(chunks):
        entering.append(state)
        state = gamma[:, c, :, :, None, None] * state + local[:, c]
    y = y + torch.einsum("bctgn,bcgkpn,bcgkt->bctgkp", Cc, torch.stack(entering, dim=1), enter)
    y = y.reshape(batch, chunks * q, heads, head_dim)[:, :seqlen]
    if inp.D is not None:
        D = inp.D.to(cdt)
        y = y + (D[:, None] if D.dim() == 1 else D) * inp.x.to(cdt)
    if inp.z is not None:
        y = y * F.silu(inp.z.to(cdt))
    return y.to(inp.x.dtype), state.reshape(batch, heads, head_dim, d_state)
