"""Mamba-1's selective scan (S6) in Triton: a fused forward and a recomputing backward, wired into autograd.

A program owns BLOCK_D channels of one batch row (all in one group of B/C) and all their d_state states, and walks
the sequence in chunks of BLOCK_T positions, the state kept in registers (fp32) between chunks:

* forward, per chunk: load delta, u (BLOCK_D, BLOCK_T) and B, C (d_state, BLOCK_T); discretise in registers
  (a = exp(delta A), b = delta B u, a (BLOCK_D, d_state, BLOCK_T) tile); run the parallel scan of
  h_t = a_t h_{t-1} + b_t across the chunk (tl.associative_scan), fold the carried state in, reduce y over the
  states, apply D and the z gate, store y. Nothing of size (batch, channels, d_state, seqlen) reaches memory; with
  autograd on, the state at each chunk start is saved ((batch, channels, seqlen / BLOCK_T, d_state) fp32).
* backward, chunks in reverse: re-run the chunk's forward scan from its saved start state, then a reverse scan for
  the adjoint lambda_t = C_t gy_t + a_{t+1} lambda_{t+1} (carried across chunks), and form every gradient from
  (h, lambda) in registers. dB and dC sum over the channels of a group, across programs: fp32 atomics.

Packed sequences: a reset flag per position zeroes a_t there, so no state crosses a document boundary.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import configs
from .inputs import S6Inputs
from .triton_common import dummy, next_pow2, softplus, softplus_grad, zero_buffers

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * log2(e)): one multiply folded into A


@triton.jit
def _affine_combine(a_l, b_l, a_r, b_r):
    """Compose h -> a_l h + b_l, then h -> a_r h + b_r."""
    return a_l * a_r, a_r * b_l + b_r


@triton.jit
def _adjoint_combine(x_r, p_r, a_r, x_l, p_l, a_l):
    """Reverse-scan step of lambda_t = x_t + a_{t+1} lambda_{t+1}, written over segments.

    A segment [s, e) is (X, P, a_s): lambda_s = X + P * (a_e lambda_e), and a_s, the decay into its first position,
    is what the segment before it needs. A reverse scan calls this with the later segment first.
    """
    pa = p_l * a_r
    return x_l + pa * x_r, pa * p_r, a_l


@triton.jit
def _delta(delta_ptr, bias, offs, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(pre-activation, delta) for a tile; delta is 0 outside the mask (padding then leaves the state unchanged)."""
    raw = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias[:, None]
    dl = raw
    if SOFTPLUS:
        dl = softplus(raw)
    return raw, tl.where(mask, dl, 0.0)


def _prune(configs_in: list, named_args: dict, **kwargs) -> list:
    """Keep the autotune configs listed for this d_state bucket and no wider than the channel block."""
    wanted = set(configs.S6_GPU[kwargs["BLOCK_N"]].candidates)
    limit = next_pow2(named_args["block_channels"])
    kept = [c for c in configs_in if (c.kwargs["BLOCK_D"], c.num_warps) in wanted and c.kwargs["BLOCK_D"] <= limit]
    return kept or [min(configs_in, key=lambda c: c.kwargs["BLOCK_D"])]


def _autotune_configs(pre_hook=None) -> list:
    if configs.interpreting():
        bd, warps = configs.S6_INTERPRETER.candidates[0]
        return [triton.Config({"BLOCK_D": bd}, num_warps=warps, pre_hook=pre_hook)]
    pairs = sorted({pair for tile in configs.S6_GPU.values() for pair in tile.candidates})
    return [triton.Config({"BLOCK_D": bd}, num_warps=warps, num_stages=2, pre_hook=pre_hook) for bd, warps in pairs]


_KEY = ["channels", "block_channels", "d_state"]


@triton.autotune(configs=_autotune_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _s6_fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, reset_ptr,
                   out_ptr, states_ptr, last_ptr,
                   channels, seqlen, d_state, n_chunks, block_channels, groups_b, groups_c,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   HAS_RESET: tl.constexpr, SAVE_STATES: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_blk = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    local = pid_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = local < block_channels
    offs_d = (pid_g * block_channels + local).to(tl.int64)
    first = pid_g * block_channels
    group_b = first // (channels // groups_b)
    group_c = first // (channels // groups_c)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < d_state
    offs_t = tl.arange(0, BLOCK_T)
    mask_dn = mask_d[:, None] & mask_n[None, :]

    A2 = tl.load(A_ptr + offs_d[:, None] * d_state + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32) * LOG2E
    Dv = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    row = (pid_b * channels + offs_d) * seqlen
    b_row = ((pid_b * groups_b + group_b) * d_state + offs_n) * seqlen
    c_row = ((pid_b * groups_c + group_c) * d_state + offs_n) * seqlen
    state_row = (pid_b * channels + offs_d) * n_chunks * d_state

    h = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    for c in range(n_chunks):
        if SAVE_STATES:
            tl.store(states_ptr + state_row[:, None] + c * d_state + offs_n[None, :], h, mask=mask_dn)
        t = c * BLOCK_T + offs_t
        mask_t = t < seqlen
        mask_dt = mask_d[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        at_dt = row[:, None] + t[None, :]
        _, dl = _delta(delta_ptr, bias, at_dt, mask_dt, HAS_BIAS, SOFTPLUS)
        uu = tl.load(u_ptr + at_dt, mask=mask_dt, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + b_row[:, None] + t[None, :], mask=mask_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + c_row[:, None] + t[None, :], mask=mask_nt, other=0.0).to(tl.float32)
        a = tl.exp2(dl[:, None, :] * A2[:, :, None])
        if HAS_RESET:
            r = tl.load(reset_ptr + pid_b * seqlen + t, mask=mask_t, other=0)
            a = tl.where(r[None, None, :] != 0, 0.0, a)
        bx = (dl * uu)[:, None, :] * Bt[None, :, :]
        a_cum, hs = tl.associative_scan((a, bx), 2, _affine_combine)
        hs = a_cum * h[:, :, None] + hs
        y = tl.sum(hs * Ct[None, :, :], axis=1)
        h = tl.sum(tl.where(offs_t[None, None, :] == BLOCK_T - 1, hs, 0.0), axis=2)
        if HAS_D:
            y += Dv[:, None] * uu
        if HAS_Z:
            zz = tl.load(z_ptr + at_dt, mask=mask_dt, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + at_dt, y.to(out_ptr.dtype.element_ty), mask=mask_dt)
    tl.store(last_ptr + ((pid_b * channels + offs_d) * d_state)[:, None] + offs_n[None, :], h, mask=mask_dn)


@triton.autotune(configs=_autotune_configs(zero_buffers("dB_ptr", "dC_ptr")), key=_KEY,
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _s6_bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, reset_ptr, states_ptr,
                   dout_ptr, dlast_ptr,
                   du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
                   channels, seqlen, d_state, n_chunks, block_channels, groups_b, groups_c,
                   HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   HAS_RESET: tl.constexpr, HAS_DLAST: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_blk = tl.program_id(0)
    pid_g = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    local = pid_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = local < block_channels
    offs_d = (pid_g * block_channels + local).to(tl.int64)
    first = pid_g * block_channels
    group_b = first // (channels // groups_b)
    group_c = first // (channels // groups_c)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < d_state
    offs_t = tl.arange(0, BLOCK_T)
    mask_dn = mask_d[:, None] & mask_n[None, :]

    A = tl.load(A_ptr + offs_d[:, None] * d_state + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    A2 = A * LOG2E
    Dv = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    row = (pid_b * channels + offs_d) * seqlen
    b_row = ((pid_b * groups_b + group_b) * d_state + offs_n) * seqlen
    c_row = ((pid_b * groups_c + group_c) * d_state + offs_n) * seqlen
    state_row = (pid_b * channels + offs_d) * n_chunks * d_state
    at_dn = ((pid_b * channels + offs_d) * d_state)[:, None] + offs_n[None, :]

    nu = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)  # a_e lambda_e at the first position e of the later chunk
    if HAS_DLAST:
        nu = tl.load(dlast_ptr + at_dn, mask=mask_dn, other=0.0).to(tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), tl.float32)
    ones = tl.full((BLOCK_D, BLOCK_N, BLOCK_T), 1.0, tl.float32)
    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        h0 = tl.load(states_ptr + state_row[:, None] + c * d_state + offs_n[None, :], mask=mask_dn, other=0.0)
        t = c * BLOCK_T + offs_t
        mask_t = t < seqlen
        mask_dt = mask_d[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        at_dt = row[:, None] + t[None, :]
        raw, dl = _delta(delta_ptr, bias, at_dt, mask_dt, HAS_BIAS, SOFTPLUS)
        uu = tl.load(u_ptr + at_dt, mask=mask_dt, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + b_row[:, None] + t[None, :], mask=mask_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + c_row[:, None] + t[None, :], mask=mask_nt, other=0.0).to(tl.float32)
        a = tl.exp2(dl[:, None, :] * A2[:, :, None])
        if HAS_RESET:
            r = tl.load(reset_ptr + pid_b * seqlen + t, mask=mask_t, other=0)
            a = tl.where(r[None, None, :] != 0, 0.0, a)
        bx = (dl * uu)[:, None, :] * Bt[None, :, :]
        a_cum, hs = tl.associative_scan((a, bx), 2, _affine_combine)
        hs = a_cum * h0[:, :, None] + hs

        g = tl.load(dout_ptr + at_dt, mask=mask_dt, other=0.0).to(tl.float32)
        gy = g
        if HAS_Z:
            y = tl.sum(hs * Ct[None, :, :], axis=1) + Dv[:, None] * uu
            zz = tl.load(z_ptr + at_dt, mask=mask_dt, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zz)
            tl.store(dz_ptr + at_dt, (g * y * sig * (1.0 + zz * (1.0 - sig))).to(dz_ptr.dtype.element_ty),
                     mask=mask_dt)
            gy = g * zz * sig
        if HAS_D:
            dD_acc += tl.sum(gy * uu, axis=1)

        x_adj = gy[:, None, :] * Ct[None, :, :]
        x_s, p_s, _ = tl.associative_scan((x_adj, ones, a), 2, _adjoint_combine, reverse=True)
        lam = x_s + p_s * nu[:, :, None]
        nu = tl.sum(tl.where(offs_t[None, None, :] == 0, a * lam, 0.0), axis=2)
        q = lam * (hs - bx)  # lambda_t a_t h_{t-1}
        dA_acc += tl.sum(q * dl[:, None, :], axis=2)
        lam_b = tl.sum(lam * Bt[None, :, :], axis=1)
        ddl = tl.sum(q * A[:, :, None], axis=1) + uu * lam_b
        du = dl * lam_b + gy * Dv[:, None]
        # sums over a group's channels across programs; relaxed: the kernel's end orders them
        tl.atomic_add(dB_ptr + b_row[:, None] + t[None, :], tl.sum(lam * (dl * uu)[:, None, :], axis=0),
                      mask=mask_nt, sem="relaxed")
        tl.atomic_add(dC_ptr + c_row[:, None] + t[None, :], tl.sum(hs * gy[:, None, :], axis=0), mask=mask_nt,
                      sem="relaxed")
        if SOFTPLUS:
            ddl = ddl * softplus_grad(raw)
        ddl = tl.where(mask_dt, ddl, 0.0)
        dbias_acc += tl.sum(ddl, axis=1)
        tl.store(du_ptr + at_dt, du.to(du_ptr.dtype.element_ty), mask=mask_dt)
        tl.store(ddelta_ptr + at_dt, ddl.to(ddelta_ptr.dtype.element_ty), mask=mask_dt)
    tl.store(dA_ptr + at_dn, dA_acc, mask=mask_dn)
    tl.store(dD_ptr + pid_b * channels + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_b * channels + offs_d, dbias_acc, mask=mask_d)


def _layout(channels: int, groups_b: int, groups_c: int) -> tuple[int, int]:
    """(channels per program group, program groups): each program's channels share one B group and one C group."""
    block_channels = math.gcd(channels // groups_b, channels // groups_c)
    return block_channels, channels // block_channels


def _grid(block_channels: int, program_groups: int, batch: int):
    return lambda meta: (triton.cdiv(block_channels, meta["BLOCK_D"]), program_groups, batch)


def _opt(t: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    return t if t is not None else dummy(device)


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, resets, delta_softplus):
        batch, channels, seqlen = u.shape
        d_state = A.shape[1]
        block_n = next_pow2(d_state)
        block_t = configs.s6_tile(block_n).block_t
        n_chunks = triton.cdiv(seqlen, block_t)
        block_channels, program_groups = _layout(channels, B.shape[1], C.shape[1])
        save_states = any(ctx.needs_input_grad[:8])
        out = torch.empty_like(u)
        last = torch.empty(batch, channels, d_state, device=u.device, dtype=torch.float32)
        states = (torch.empty(batch, channels, n_chunks, d_state, device=u.device, dtype=torch.float32)
                  if save_states else dummy(u.device))
        dev = u.device
        _s6_fwd_kernel[_grid(block_channels, program_groups, batch)](
            u, delta, A, B, C, _opt(D, dev), _opt(z, dev), _opt(delta_bias, dev), _opt(resets, dev),
            out, states, last,
            channels, seqlen, d_state, n_chunks, block_channels, B.shape[1], C.shape[1],
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            HAS_RESET=resets is not None, SAVE_STATES=save_states, BLOCK_N=block_n, BLOCK_T=block_t)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, resets, states)
        ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, resets, states = ctx.saved_tensors
        batch, channels, seqlen = u.shape
        d_state = A.shape[1]
        block_n = next_pow2(d_state)
        block_t = configs.s6_tile(block_n).block_t
        n_chunks = triton.cdiv(seqlen, block_t)
        block_channels, program_groups = _layout(channels, B.shape[1], C.shape[1])
        dev = u.device
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dB = torch.zeros(B.shape, device=dev, dtype=torch.float32)
        dC = torch.zeros(C.shape, device=dev, dtype=torch.float32)
        dA = torch.empty(batch, channels, d_state, device=dev, dtype=torch.float32)
        dD = torch.empty(batch, channels, device=dev, dtype=torch.float32)
        dbias = torch.empty(batch, channels, device=dev, dtype=torch.float32)
        _s6_bwd_kernel[_grid(block_channels, program_groups, batch)](
            u, delta, A, B, C, _opt(D, dev), _opt(z, dev), _opt(delta_bias, dev), _opt(resets, dev), states,
            dout, _opt(None if dlast is None else dlast.contiguous(), dev),
            du, ddelta, _opt(dz, dev), dB, dC, dA, dD, dbias,
            channels, seqlen, d_state, n_chunks, block_channels, B.shape[1], C.shape[1],
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.delta_softplus, HAS_RESET=resets is not None, HAS_DLAST=dlast is not None,
            BLOCK_N=block_n, BLOCK_T=block_t)
        return (du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                dD.sum(0).to(D.dtype) if D is not None else None, dz,
                dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None, None, None)


def selective_scan_triton(inp: S6Inputs, delta_softplus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the Triton S6 kernels on validated inputs: (out, last_state (batch, channels, d_state) fp32)."""
    return _SelectiveScanFn.apply(inp.u, inp.delta, inp.A, inp.B, inp.C, inp.D, inp.z, inp.delta_bias, inp.resets,
                                  bool(delta_softplus))
