"""Mamba-2's state-space-dual scan (SSD) in Triton: one fused forward kernel, a recomputing backward, autograd.

A program owns one (batch, head) and BLOCK_P of its head_dim channels, and walks the sequence in chunks of BLOCK_Q
positions with the (BLOCK_P, d_state) state in registers (fp32). Per chunk, with Lambda the cumulative log-decay
(dt A) inside the chunk:

    y      = ((C B^T) o exp(Lambda_t - Lambda_s) [s <= t, same document] o dt_s) x      intra-chunk, tl.dot
           + exp(Lambda_t) C S_prev                                                      the entering state
    S_next = exp(Lambda_last) S_prev + (x o dt exp(Lambda_last - Lambda))^T B            the state passed on

mamba_ssm runs these as five kernels (chunk cumsum, chunk states, state passing, C B^T, chunk scan) with the
(chunks, heads, head_dim, d_state) states written to and read from memory in fp32 between them; here the state never
leaves registers, and the chunk cumsum and C B^T are recomputed per program (C B^T costs 2 Q d_state flops per
token and head, cheaper than a round trip of the states).

When (batch, heads, head_dim blocks) are too few to fill the GPU, the sequence is cut into segments (grid axis 2):
a LOCAL_PASS computes each segment's state from a zero start and its total decay, then each SEGMENTED program
composes the state entering its segment from the earlier segments' before walking its own chunks.

The backward walks the chunks in reverse with the state's adjoint in registers (segment-parallel the same way);
it first recomputes the state entering each chunk with the forward kernel (SAVE_STATES, no output, stored in the
I/O dtype). dB, dC (summed over the heads of a group), ddt (over head_dim blocks), dA and dD are fp32 atomics, so
their last bits may differ run to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .errors import ScanInputError
from .inputs import SsdInputs
from .reference import SOFTPLUS_THRESHOLD
from .reference import softplus as softplus_torch
from .triton_common import dummy, mm, next_pow2, softplus, zero_buffers


@triton.jit
def _dt_tile(dt_ptr, at, mask, bias_h, dt_min, dt_max, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """dt after bias, softplus and clamp for one chunk; 0 outside the sequence (padding then changes nothing)."""
    d = tl.load(dt_ptr + at, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        d += bias_h
    if SOFTPLUS:
        d = softplus(d)
    d = tl.minimum(tl.maximum(d, dt_min), dt_max)
    return tl.where(mask, d, 0.0)


@triton.jit
def _ssd_fwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, doc_ptr, init_ptr,
                    out_ptr, outx_ptr, final_ptr, states_ptr, seg_state_ptr, seg_decay_ptr,
                    seqlen, heads, head_dim, d_state, groups, dt_min, dt_max, seg_len, n_seg,
                    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, HAS_DOC: tl.constexpr, HAS_INIT: tl.constexpr,
                    WRITE_OUT: tl.constexpr, WRITE_OUTX: tl.constexpr, SAVE_STATES: tl.constexpr,
                    LOCAL_PASS: tl.constexpr, SEGMENTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    DOT_F32: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = pid_bh % heads
    g = h // (heads // groups)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < head_dim
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < d_state
    mask_pn = mask_p[:, None] & mask_n[None, :]
    causal = offs_q[:, None] >= offs_q[None, :]
    n_chunks = tl.cdiv(seqlen, BLOCK_Q)

    A_h = tl.load(A_ptr + h).to(tl.float32)
    bias_h = 0.0
    if HAS_BIAS:
        bias_h = tl.load(dt_bias_ptr + h).to(tl.float32)
    at_pn = ((b * heads + h) * head_dim + offs_p)[:, None] * d_state + offs_n[None, :]
    seg = tl.program_id(2)
    seg_base = (b * heads + h) * n_seg
    S = tl.zeros((BLOCK_P, BLOCK_N), tl.float32)
    if HAS_INIT and not LOCAL_PASS:
        S = tl.load(init_ptr + at_pn, mask=mask_pn, other=0.0).to(tl.float32)
    if SEGMENTED:  # the state entering this segment, composed from the earlier segments' local states
        for j in range(0, seg):
            local = tl.load(seg_state_ptr + ((seg_base + j) * head_dim + offs_p)[:, None] * d_state + offs_n[None, :],
                            mask=mask_pn, other=0.0)
            S = tl.load(seg_decay_ptr + seg_base + j) * S + local
    state_base = (b * heads + h) * n_chunks
    seg_chunks = seg_len // BLOCK_Q
    decay_through = 1.0

    for c in range(seg * seg_chunks, tl.minimum((seg + 1) * seg_chunks, n_chunks)):
        if SAVE_STATES:
            tl.store(states_ptr + ((state_base + c) * head_dim + offs_p)[:, None] * d_state + offs_n[None, :],
                     S.to(states_ptr.dtype.element_ty), mask=mask_pn)
        t = c * BLOCK_Q + offs_q
        mask_t = t < seqlen
        tok = b * seqlen + t
        dtv = _dt_tile(dt_ptr, tok * heads + h, mask_t, bias_h, dt_min, dt_max, HAS_BIAS, SOFTPLUS)
        dA = dtv * A_h
        lam = tl.cumsum(dA, 0)
        lam_last = tl.sum(dA, 0)
        at_qn = ((tok * groups + g) * d_state)[:, None] + offs_n[None, :]
        mask_qn = mask_t[:, None] & mask_n[None, :]
        Cq = tl.load(C_ptr + at_qn, mask=mask_qn, other=0.0)
        Bq = tl.load(B_ptr + at_qn, mask=mask_qn, other=0.0)
        at_qp = ((tok * heads + h) * head_dim)[:, None] + offs_p[None, :]
        mask_qp = mask_t[:, None] & mask_p[None, :]
        xq = tl.load(x_ptr + at_qp, mask=mask_qp, other=0.0)
        doc_q = tl.zeros((BLOCK_Q,), tl.int32)
        doc_prev = 0
        doc_last = 0
        if HAS_DOC:
            doc_q = tl.load(doc_ptr + tok, mask=mask_t, other=-1)
            doc_prev = tl.load(doc_ptr + b * seqlen + tl.maximum(c * BLOCK_Q - 1, 0))
            doc_last = tl.max(doc_q, 0)

        if WRITE_OUT or WRITE_OUTX:
            cb = mm(Cq, tl.trans(Bq), DOT_F32, DOT_PRECISION)
            keep = causal
            if HAS_DOC:
                keep = keep & (doc_q[:, None] == doc_q[None, :])
            w = cb * tl.exp(tl.where(keep, lam[:, None] - lam[None, :], float("-inf"))) * dtv[None, :]
            y = mm(w.to(xq.dtype), xq, DOT_F32, DOT_PRECISION)
            enter = tl.exp(lam)
            if HAS_DOC:
                enter = tl.where(doc_q == doc_prev, enter, 0.0)
            y += enter[:, None] * mm(Cq, tl.trans(S).to(Cq.dtype), DOT_F32, DOT_PRECISION)
            if HAS_D:
                if D_PER_P:
                    Dv = tl.load(D_ptr + h * head_dim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
                    y += Dv[None, :] * xq.to(tl.float32)
                else:
                    y += tl.load(D_ptr + h).to(tl.float32) * xq.to(tl.float32)
            if WRITE_OUTX:
                tl.store(outx_ptr + at_qp, y.to(outx_ptr.dtype.element_ty), mask=mask_qp)
            if HAS_Z:
                zz = tl.load(z_ptr + at_qp, mask=mask_qp, other=0.0).to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            if WRITE_OUT:
                tl.store(out_ptr + at_qp, y.to(out_ptr.dtype.element_ty), mask=mask_qp)

        v = dtv * tl.exp(lam_last - lam)
        gamma = tl.exp(lam_last)
        if HAS_DOC:
            v = tl.where(doc_q == doc_last, v, 0.0)
            gamma = tl.where(doc_last == doc_prev, gamma, 0.0)
        xv = (xq.to(tl.float32) * v[:, None]).to(xq.dtype)
        S = gamma * S + mm(tl.trans(xv), Bq, DOT_F32, DOT_PRECISION)
        decay_through = decay_through * gamma
    if LOCAL_PASS:  # this segment's contribution from a zero entering state, and its decay
        tl.store(seg_state_ptr + ((seg_base + seg) * head_dim + offs_p)[:, None] * d_state + offs_n[None, :], S,
                 mask=mask_pn)
        tl.store(seg_decay_ptr + seg_base + seg, decay_through)
    elif WRITE_OUT:
        if seg == n_seg - 1:
            tl.store(final_ptr + at_pn, S, mask=mask_pn)


@triton.jit
def _ssd_chunk_grads(xq, Bq, Cq, gy, dtv, lam, lam_last, enter, gamma, doc_q, doc_last, causal, S_prev, dS,
                     Dv, A_h, at_qp, mask_qp, at_qn, mask_qn, at_dt, mask_t, dx_ptr, dB_ptr, dC_ptr, ddt_ptr,
                     HAS_DOC: tl.constexpr, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One chunk of the SSD backward: stores dx, adds dB, dC and ddt (fp32 atomics), returns d(dt A) per position.

    dS is the adjoint of the state leaving the chunk, S_prev the state entering it, gy the gradient of y.
    """
    keep = causal
    if HAS_DOC:
        keep = keep & (doc_q[:, None] == doc_q[None, :])
    decay = tl.exp(tl.where(keep, lam[:, None] - lam[None, :], float("-inf")))  # (t, s)
    gy_io = gy.to(xq.dtype)
    cb = mm(Cq, tl.trans(Bq), DOT_F32, DOT_PRECISION)
    gx = mm(gy_io, tl.trans(xq), DOT_F32, DOT_PRECISION)  # gy_t . x_s
    decay_cb = decay * cb
    dcb = gx * decay * dtv[None, :]
    to_end = tl.exp(lam_last - lam)
    if HAS_DOC:
        to_end = tl.where(doc_q == doc_last, to_end, 0.0)
    v = dtv * to_end

    # dx: through the intra-chunk product, the state passed on, and D
    b_ds = mm(Bq, tl.trans(dS).to(Bq.dtype), DOT_F32, DOT_PRECISION)  # (s, p): B_s . dS_p
    dx = mm(tl.trans((decay_cb * dtv[None, :]).to(xq.dtype)), gy_io, DOT_F32, DOT_PRECISION)
    dx += v[:, None] * b_ds + Dv[None, :] * gy
    tl.store(dx_ptr + at_qp, dx.to(dx_ptr.dtype.element_ty), mask=mask_qp)

    # dC, dB: intra-chunk, entering state (C), state passed on (B)
    gs = mm(gy_io, S_prev.to(xq.dtype), DOT_F32, DOT_PRECISION)  # (t, n)
    dcb_io = dcb.to(Cq.dtype)
    dC = mm(dcb_io, Bq, DOT_F32, DOT_PRECISION) + enter[:, None] * gs
    x_ds = mm(xq, dS.to(xq.dtype), DOT_F32, DOT_PRECISION)  # (s, n)
    dB = mm(tl.trans(dcb_io), Cq, DOT_F32, DOT_PRECISION) + v[:, None] * x_ds
    tl.atomic_add(dC_ptr + at_qn, dC, mask=mask_qn, sem="relaxed")
    tl.atomic_add(dB_ptr + at_qn, dB, mask=mask_qn, sem="relaxed")

    # dt: directly (the dt_s factors) and through Lambda (the decays)
    k = dcb * cb
    ddt = tl.sum(gx * decay_cb, 0)
    r = to_end * tl.sum(xq.to(tl.float32) * b_ds, 1)
    ddt += r
    dlam = tl.sum(k, 1) - tl.sum(k, 0) + enter * tl.sum(Cq.to(tl.float32) * gs, 1) - dtv * r
    dlam_last = tl.sum(dtv * r, 0) + gamma * tl.sum(tl.sum(dS * S_prev, 1), 0)
    dda = tl.sum(dlam, 0) - tl.cumsum(dlam, 0) + dlam + dlam_last  # sum over t >= r, plus Lambda_last
    tl.atomic_add(ddt_ptr + at_dt, ddt + A_h * dda, mask=mask_t, sem="relaxed")
    return dda


@triton.jit
def _ssd_bwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, doc_ptr, states_ptr, outx_ptr,
                    dout_ptr, dfinal_ptr,
                    dx_ptr, dz_ptr, dB_ptr, dC_ptr, ddt_ptr, dA_ptr, dD_ptr, dinit_ptr, seg_adj_ptr, seg_decay_ptr,
                    seqlen, heads, head_dim, d_state, groups, dt_min, dt_max, seg_len, n_seg,
                    HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SOFTPLUS: tl.constexpr, HAS_DOC: tl.constexpr, HAS_DFINAL: tl.constexpr,
                    LOCAL_PASS: tl.constexpr, SEGMENTED: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    DOT_F32: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = (pid_bh // heads).to(tl.int64)
    h = pid_bh % heads
    g = h // (heads // groups)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < head_dim
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < d_state
    mask_pn = mask_p[:, None] & mask_n[None, :]
    causal = offs_q[:, None] >= offs_q[None, :]
    n_chunks = tl.cdiv(seqlen, BLOCK_Q)

    A_h = tl.load(A_ptr + h).to(tl.float32)
    bias_h = 0.0
    if HAS_BIAS:
        bias_h = tl.load(dt_bias_ptr + h).to(tl.float32)
    Dv = tl.zeros((BLOCK_P,), tl.float32)
    if HAS_D:
        if D_PER_P:
            Dv = tl.load(D_ptr + h * head_dim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        else:
            Dv = tl.zeros((BLOCK_P,), tl.float32) + tl.load(D_ptr + h).to(tl.float32)
    at_pn = ((b * heads + h) * head_dim + offs_p)[:, None] * d_state + offs_n[None, :]
    seg = tl.program_id(2)
    seg_base = (b * heads + h) * n_seg
    dS = tl.zeros((BLOCK_P, BLOCK_N), tl.float32)  # adjoint of the state leaving the current chunk
    if HAS_DFINAL and not LOCAL_PASS:
        dS = tl.load(dfinal_ptr + at_pn, mask=mask_pn, other=0.0).to(tl.float32)
    if SEGMENTED:  # the adjoint leaving this segment, composed from the later segments' local adjoints
        for jj in range(seg + 1, n_seg):
            j = n_seg + seg - jj
            local = tl.load(seg_adj_ptr + ((seg_base + j) * head_dim + offs_p)[:, None] * d_state + offs_n[None, :],
                            mask=mask_pn, other=0.0)
            dS = tl.load(seg_decay_ptr + seg_base + j) * dS + local
    state_base = (b * heads + h) * n_chunks
    seg_chunks = seg_len // BLOCK_Q
    c_first = seg * seg_chunks
    c_stop = tl.minimum(c_first + seg_chunks, n_chunks)
    dA_acc = tl.zeros((BLOCK_Q,), tl.float32)
    dD_acc = tl.zeros((BLOCK_P,), tl.float32)

    for ci in range(c_first, c_stop):
        c = c_stop - 1 - (ci - c_first)
        t = c * BLOCK_Q + offs_q
        mask_t = t < seqlen
        tok = b * seqlen + t
        dtv = _dt_tile(dt_ptr, tok * heads + h, mask_t, bias_h, dt_min, dt_max, HAS_BIAS, SOFTPLUS)
        dA = dtv * A_h
        lam = tl.cumsum(dA, 0)
        lam_last = tl.sum(dA, 0)
        at_qn = ((tok * groups + g) * d_state)[:, None] + offs_n[None, :]
        mask_qn = mask_t[:, None] & mask_n[None, :]
        Cq = tl.load(C_ptr + at_qn, mask=mask_qn, other=0.0)
        Bq = tl.load(B_ptr + at_qn, mask=mask_qn, other=0.0)
        at_qp = ((tok * heads + h) * head_dim)[:, None] + offs_p[None, :]
        mask_qp = mask_t[:, None] & mask_p[None, :]
        xq = tl.load(x_ptr + at_qp, mask=mask_qp, other=0.0)
        doc_q = tl.zeros((BLOCK_Q,), tl.int32)
        doc_prev = 0
        doc_last = 0
        if HAS_DOC:
            doc_q = tl.load(doc_ptr + tok, mask=mask_t, other=-1)
            doc_prev = tl.load(doc_ptr + b * seqlen + tl.maximum(c * BLOCK_Q - 1, 0))
            doc_last = tl.max(doc_q, 0)

        gout = tl.load(dout_ptr + at_qp, mask=mask_qp, other=0.0).to(tl.float32)
        gy = gout
        if HAS_Z:
            yx = tl.load(outx_ptr + at_qp, mask=mask_qp, other=0.0).to(tl.float32)
            zz = tl.load(z_ptr + at_qp, mask=mask_qp, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zz)
            if not LOCAL_PASS:
                tl.store(dz_ptr + at_qp, (gout * yx * sig * (1.0 + zz * (1.0 - sig))).to(dz_ptr.dtype.element_ty),
                         mask=mask_qp)
            gy = gout * zz * sig
        enter = tl.exp(lam)
        gamma = tl.exp(lam_last)
        if HAS_DOC:
            enter = tl.where(doc_q == doc_prev, enter, 0.0)
            gamma = tl.where(doc_last == doc_prev, gamma, 0.0)
        if not LOCAL_PASS:
            S_prev = tl.load(states_ptr + ((state_base + c) * head_dim + offs_p)[:, None] * d_state
                             + offs_n[None, :], mask=mask_pn, other=0.0).to(tl.float32)
            dda = _ssd_chunk_grads(xq, Bq, Cq, gy, dtv, lam, lam_last, enter, gamma, doc_q, doc_last, causal,
                                   S_prev, dS, Dv, A_h, at_qp, mask_qp, at_qn, mask_qn, tok * heads + h, mask_t,
                                   dx_ptr, dB_ptr, dC_ptr, ddt_ptr, HAS_DOC, DOT_F32, DOT_PRECISION)
            dA_acc += dtv * dda
            if HAS_D:
                dD_acc += tl.sum(gy * xq.to(tl.float32), 0)
        dS = gamma * dS + mm(tl.trans((gy * enter[:, None]).to(Cq.dtype)), Cq, DOT_F32, DOT_PRECISION)
    if LOCAL_PASS:  # this segment's adjoint contribution from a zero adjoint leaving it
        tl.store(seg_adj_ptr + ((seg_base + seg) * head_dim + offs_p)[:, None] * d_state + offs_n[None, :], dS,
                 mask=mask_pn)
    else:
        if seg == 0:
            tl.store(dinit_ptr + at_pn, dS, mask=mask_pn)
        tl.atomic_add(dA_ptr + b * heads + h, tl.sum(dA_acc, 0), sem="relaxed")
        tl.atomic_add(dD_ptr + ((b * heads + h) * head_dim + offs_p), dD_acc, mask=mask_p, sem="relaxed")


def _tile_configs(tiles, with_q: bool, pre_hook=None) -> list:
    out = []
    for tile in tiles:
        kwargs = {"BLOCK_P": tile.block_p}
        if with_q:
            kwargs["BLOCK_Q"] = tile.block_q
        out.append(triton.Config(kwargs, num_warps=tile.num_warps, num_stages=tile.num_stages, pre_hook=pre_hook))
    return out


def _prune(configs_in: list, named_args: dict, **kwargs) -> list:
    """Drop head_dim blocks wider than head_dim needs (keeping the narrowest when all are)."""
    limit = next_pow2(named_args["head_dim"], 16)
    kept = [c for c in configs_in if c.kwargs["BLOCK_P"] <= limit]
    return kept or [min(configs_in, key=lambda c: c.kwargs["BLOCK_P"])]


_KEY = ["heads", "head_dim", "d_state", "groups"]
if configs.interpreting():
    _FWD_TILES, _BWD_TILES, _BWD_Q = (configs.SSD_INTERPRETER,), (configs.SSD_INTERPRETER,), \
        configs.SSD_INTERPRETER.block_q
else:
    _FWD_TILES, _BWD_TILES, _BWD_Q = configs.SSD_FWD_GPU, configs.SSD_BWD_GPU, configs.SSD_BWD_BLOCK_Q_GPU
_PRUNE = {"early_config_prune": _prune}
_BWD_ZERO = zero_buffers("dB_ptr", "dC_ptr", "ddt_ptr", "dA_ptr", "dD_ptr")
# one autotuner per use, since each keeps its best config per key and the uses differ in work
_ssd_fwd = triton.autotune(_tile_configs(_FWD_TILES, True), key=_KEY, prune_configs_by=_PRUNE)(_ssd_fwd_kernel)
_ssd_fwd_local = triton.autotune(_tile_configs(_FWD_TILES, True), key=_KEY, prune_configs_by=_PRUNE)(_ssd_fwd_kernel)
_ssd_states = triton.autotune(_tile_configs(_BWD_TILES, False), key=_KEY, prune_configs_by=_PRUNE)(_ssd_fwd_kernel)
_ssd_bwd = triton.autotune(_tile_configs(_BWD_TILES, False, _BWD_ZERO), key=_KEY,
                           prune_configs_by=_PRUNE)(_ssd_bwd_kernel)
_ssd_bwd_local = triton.autotune(_tile_configs(_BWD_TILES, False), key=_KEY, prune_configs_by=_PRUNE)(_ssd_bwd_kernel)

SEGMENT_ALIGN = 128  # segment lengths are multiples of every BLOCK_Q in configs.py
MIN_SEGMENT = 2048  # positions: shorter segments would spend more on the extra local pass than they win
PROGRAMS_PER_SM = 2  # aim: at least this many programs per SM before splitting the sequence


def plan_segments(batch: int, heads: int, head_dim: int, seqlen: int, device: torch.device) -> int:
    """Segment length (positions, a multiple of SEGMENT_ALIGN) that splits the sequence when (batch, heads,
    head_dim blocks) alone would leave SMs idle; one segment covering the sequence when they do not.

    A split costs one extra pass over x, B and dt that computes each segment's local state (module docstring).
    """
    wanted = 1
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        programs = batch * heads * triton.cdiv(head_dim, 64)
        wanted = max(1, min(triton.cdiv(PROGRAMS_PER_SM * sms, programs), seqlen // MIN_SEGMENT))
    return triton.cdiv(triton.cdiv(seqlen, wanted), SEGMENT_ALIGN) * SEGMENT_ALIGN


def _opt(t: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    return t if t is not None else dummy(device)


def _grid(batch: int, heads: int, head_dim: int, n_seg: int):
    return lambda meta: (batch * heads, triton.cdiv(head_dim, meta["BLOCK_P"]), n_seg)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _forward_pass(kernel, x, dt, A, B, C, D, z, dt_bias, doc_ids, initial_states, out, outx, final, states,
                  seg_state, seg_decay, seg_len, n_seg, flags, dt_limit, **mode) -> None:
    """Launch one use of the forward kernel (output, local segment states, or the backward's chunk states)."""
    batch, seqlen, heads, head_dim = x.shape
    dev = x.device
    kernel[_grid(batch, heads, head_dim, n_seg)](
        x, dt, A, B, C, _opt(D, dev), _opt(z, dev), _opt(dt_bias, dev), _opt(doc_ids, dev),
        _opt(initial_states, dev), _opt(out, dev), _opt(outx, dev), _opt(final, dev), _opt(states, dev),
        _opt(seg_state, dev), _opt(seg_decay, dev),
        seqlen, heads, head_dim, B.shape[3], B.shape[2], dt_limit[0], dt_limit[1], seg_len, n_seg,
        HAS_INIT=initial_states is not None, **mode, **flags)


def _segment_buffers(x: torch.Tensor, d_state: int, n_seg: int):
    batch, _, heads, head_dim = x.shape
    if n_seg == 1:
        return None, None
    return (torch.empty(batch, heads, n_seg, head_dim, d_state, device=x.device, dtype=torch.float32),
            torch.empty(batch, heads, n_seg, device=x.device, dtype=torch.float32))


class _ChunkScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, doc_ids, dt_softplus, dt_min, dt_max, seg_len):
        batch, seqlen, heads, head_dim = x.shape
        d_state = B.shape[3]
        dev = x.device
        needs_grad = any(ctx.needs_input_grad[:9])
        out = torch.empty_like(x)
        outx = torch.empty_like(x) if (z is not None and needs_grad) else None
        final = torch.empty(batch, heads, head_dim, d_state, device=dev, dtype=torch.float32)
        flags = dict(HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
                     HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_DOC=doc_ids is not None,
                     DOT_PRECISION=_precision(x.dtype),
                     DOT_F32=x.device.type != "cuda" and x.dtype == torch.bfloat16, BLOCK_N=next_pow2(d_state, 16))
        n_seg = triton.cdiv(seqlen, seg_len)
        seg_state, seg_decay = _segment_buffers(x, d_state, n_seg)
        common = (x, dt, A, B, C, D, z, dt_bias, doc_ids, initial_states)
        if n_seg > 1:
            _forward_pass(_ssd_fwd_local, *common, None, None, None, None, seg_state, seg_decay, seg_len, n_seg,
                          flags, (dt_min, dt_max), WRITE_OUT=False, WRITE_OUTX=False, SAVE_STATES=False,
                          LOCAL_PASS=True, SEGMENTED=False)
        _forward_pass(_ssd_fwd, *common, out, outx, final, None, seg_state, seg_decay, seg_len, n_seg, flags,
                      (dt_min, dt_max), WRITE_OUT=True, WRITE_OUTX=outx is not None, SAVE_STATES=False,
                      LOCAL_PASS=False, SEGMENTED=n_seg > 1)
        ctx.flags, ctx.dt_limit, ctx.seg_len = flags, (dt_min, dt_max), seg_len
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, doc_ids, outx)
        ctx.set_materialize_grads(False)
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, dt, A, B, C, D, z, dt_bias, initial_states, doc_ids, outx = ctx.saved_tensors
        batch, seqlen, heads, head_dim = x.shape
        d_state = B.shape[3]
        dev = x.device
        flags, dt_limit, seg_len = ctx.flags, ctx.dt_limit, ctx.seg_len
        n_seg = triton.cdiv(seqlen, seg_len)
        common = (x, dt, A, B, C, D, z, dt_bias, doc_ids, initial_states)
        # the state entering every chunk (the backward's chunk length), segment-parallel like the forward
        seg_state, seg_decay = _segment_buffers(x, d_state, n_seg)
        if n_seg > 1:
            _forward_pass(_ssd_fwd_local, *common, None, None, None, None, seg_state, seg_decay, seg_len, n_seg,
                          flags, dt_limit, WRITE_OUT=False, WRITE_OUTX=False, SAVE_STATES=False, LOCAL_PASS=True,
                          SEGMENTED=False)
        # stored in the I/O dtype (as mamba_ssm does): the backward multiplies them in that dtype anyway
        states = torch.empty(batch, heads, triton.cdiv(seqlen, _BWD_Q), head_dim, d_state, device=dev,
                             dtype=x.dtype)
        _forward_pass(_ssd_states, *common, None, None, None, states, seg_state, seg_decay, seg_len, n_seg, flags,
                      dt_limit, WRITE_OUT=False, WRITE_OUTX=False, SAVE_STATES=True, LOCAL_PASS=False,
                      SEGMENTED=n_seg > 1, BLOCK_Q=_BWD_Q)
        dout = torch.zeros_like(x) if dout is None else dout.contiguous()
        dfinal = None if dfinal is None else dfinal.contiguous()
        dx = torch.empty_like(x)
        dz = torch.empty_like(z) if z is not None else None
        dB = torch.zeros(B.shape, device=dev, dtype=torch.float32)
        dC = torch.zeros(C.shape, device=dev, dtype=torch.float32)
        ddt = torch.zeros(batch, seqlen, heads, device=dev, dtype=torch.float32)
        dA = torch.zeros(batch, heads, device=dev, dtype=torch.float32)
        dD = torch.zeros(batch, heads, head_dim, device=dev, dtype=torch.float32)
        dinit = torch.empty(batch, heads, head_dim, d_state, device=dev, dtype=torch.float32)
        seg_adj = torch.empty_like(seg_state) if n_seg > 1 else None

        def backward_pass(kernel, **mode):
            kernel[_grid(batch, heads, head_dim, n_seg)](
                x, dt, A, B, C, _opt(D, dev), _opt(z, dev), _opt(dt_bias, dev), _opt(doc_ids, dev), states,
                _opt(outx, dev), dout, _opt(dfinal, dev), dx, _opt(dz, dev), dB, dC, ddt, dA, dD, dinit,
                _opt(seg_adj, dev), _opt(seg_decay, dev),
                seqlen, heads, head_dim, d_state, B.shape[2], dt_limit[0], dt_limit[1], seg_len, n_seg,
                HAS_DFINAL=dfinal is not None, BLOCK_Q=_BWD_Q, **mode, **flags)

        if n_seg > 1:
            backward_pass(_ssd_bwd_local, LOCAL_PASS=True, SEGMENTED=False)
        backward_pass(_ssd_bwd, LOCAL_PASS=False, SEGMENTED=n_seg > 1)
        ddt_raw, ddt_bias = _dt_chain(dt, dt_bias, ddt, flags["SOFTPLUS"], *dt_limit)
        dD_out = None
        if D is not None:
            dD_out = (dD.sum(0) if D.dim() == 2 else dD.sum((0, 2))).to(D.dtype)
        return (dx, ddt_raw.to(dt.dtype), dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dD_out, dz,
                ddt_bias.to(dt_bias.dtype) if dt_bias is not None else None,
                dinit.to(initial_states.dtype) if initial_states is not None else None,
                None, None, None, None, None)


def _dt_chain(dt: torch.Tensor, dt_bias: torch.Tensor | None, ddt: torch.Tensor, dt_softplus: bool,
              dt_min: float, dt_max: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradient of the raw dt (and of dt_bias) from that of the processed dt: through the clamp and the softplus."""
    pre = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    act = softplus_torch(pre) if dt_softplus else pre
    grad = torch.where((act < dt_min) | (act > dt_max), 0.0, ddt)
    if dt_softplus:
        grad = grad * torch.where(pre <= SOFTPLUS_THRESHOLD, torch.sigmoid(pre), 1.0)
    return grad, (grad.sum((0, 1)) if dt_bias is not None else None)


def chunk_scan_triton(inp: SsdInputs, dt_softplus: bool,
                      segment_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the Triton SSD kernels on validated inputs: (out, final_state (batch, heads, head_dim, d_state) fp32).

    ``segment_len`` (positions, a multiple of every BLOCK_Q in use) overrides ``plan_segments``; tests use it to
    run the segment-parallel passes at small sizes.
    """
    batch, seqlen, heads, head_dim = inp.x.shape
    seg_len = plan_segments(batch, heads, head_dim, seqlen, inp.x.device) if segment_len is None else segment_len
    block_qs = {tile.block_q for tile in _FWD_TILES} | {_BWD_Q}
    if seg_len < 1 or any(seg_len % q for q in block_qs):
        raise ScanInputError(f"segment_len must be a positive multiple of the chunk lengths {sorted(block_qs)}, "
                         f"got {seg_len}")
    lo, hi = inp.dt_limit
    return _ChunkScanFn.apply(inp.x, inp.dt, inp.A, inp.B, inp.C, inp.D, inp.z, inp.dt_bias, inp.initial_states,
                              inp.doc_ids, bool(dt_softplus), lo, hi, seg_len)
