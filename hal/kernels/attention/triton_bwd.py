"""Triton source of the backward kernels (FlashAttention-2 style, no atomics).

* ``attention_backward_dkdv``: one program per key tile of one (batch, KV head); it walks, for every query head of
  the GQA group, the query tiles the block map lists for this key tile (partial ones with the mask, then full ones)
  and accumulates dK and dV in registers.
* ``attention_backward_dq``: one program per query tile of one (batch, head); it walks the forward lists.

Probabilities are recomputed from the saved log-sum-exp: ``P = exp(score_mod(scale·QKᵀ) - lse)``;
``dS = P ∘ (dP - δ)`` with ``δ = rowsum(dO ∘ O)`` and ``dP = dO Vᵀ``, multiplied by ``d score_mod / d score`` when a
score modification is present; ``dQ = scale · dS K`` and ``dK = scale · dSᵀ Q``. Rows whose every key was masked
(``lse = -inf``) get ``P = 0`` and so zero gradients.
"""

BACKWARD_SOURCE = '''
@triton.jit
def attention_backward_delta(O, DO, LSE, DLSE, DELTA, n_rows, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
                             HAS_DLSE: tl.constexpr):
    # delta = rowsum(dO * O) - dlse  (O and dO contiguous, viewed as (rows, HEAD_DIM))
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    inside = rows < n_rows
    off = rows.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(O + off, mask=inside[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=inside[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        lse = tl.load(LSE + rows, mask=inside, other=0.0)
        dlse = tl.load(DLSE + rows, mask=inside, other=0.0)
        delta = delta - tl.where(lse == float("-inf"), 0.0, dlse)
    tl.store(DELTA + rows, delta, mask=inside)


@triton.jit
def _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqm, sdom, start_m, offs_n, offs_m0, offs_d,
               seq_q, sm_scale, b, h, @TARGS@ MASKED: tl.constexpr, HAS_SCORE: tl.constexpr, DOT_F32: tl.constexpr):
    offs_m = start_m + offs_m0
    qt_ptrs = q_base + offs_m[None, :] * sqm + offs_d[:, None]
    do_ptrs = do_base + offs_m[:, None] * sdom + offs_d[None, :]
    if MASKED:
        qT = tl.load(qt_ptrs, mask=offs_m[None, :] < seq_q, other=0.0)
        lse = tl.load(lse_base + offs_m, mask=offs_m < seq_q, other=0.0)
    else:
        qT = tl.load(qt_ptrs)
        lse = tl.load(lse_base + offs_m)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    qkT = _mm(k, qT, DOT_F32)
    q_idx = offs_m[None, :]
    kv_idx = offs_n[:, None]
    if HAS_SCORE:
        raw = qkT * sm_scale
        s2 = _score(raw, b, h, q_idx, kv_idx, @TARGS@) * 1.4426950408889634
    else:
        s2 = qkT * (sm_scale * 1.4426950408889634)
    pT = tl.exp2(s2 - lse2[None, :])
    if MASKED:
        keep = _mask(b, h, q_idx, kv_idx, @TARGS@) & (q_idx < seq_q)
        pT = tl.where(keep, pT, 0.0)
        do = tl.load(do_ptrs, mask=offs_m[:, None] < seq_q, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=offs_m < seq_q, other=0.0)
    else:
        do = tl.load(do_ptrs)
        delta = tl.load(delta_base + offs_m)
    dv = _mma(pT.to(do.dtype), do, dv, DOT_F32)
    dpT = _mm(v, tl.trans(do), DOT_F32)
    dsT = pT * (dpT - delta[None, :])
    if HAS_SCORE:
        dsT = dsT * _dscore(raw, b, h, q_idx, kv_idx, @TARGS@)
    dk = _mma(dsT.to(qT.dtype), tl.trans(qT), dk, DOT_F32)
    return dk, dv


@triton.jit
def attention_backward_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, P_CNT, P_IDX, F_CNT, F_IDX, sm_scale,
                            sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom,
                            seq_q, seq_kv, n_heads, group, q_tiles, kv_tiles, map_sb, map_sh, @TARGS@
                            HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            HAS_SCORE: tl.constexpr, DOT_F32: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    n_kv_heads = n_heads // group
    b = pid_bhk // n_kv_heads
    hk = pid_bhk % n_kv_heads
    b64 = b.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_rows = offs_n[:, None] < seq_kv
    k_off = b64 * skb + hk.to(tl.int64) * skh + offs_n[:, None] * skn + offs_d[None, :]
    v_off = b64 * svb + hk.to(tl.int64) * svh + offs_n[:, None] * svn + offs_d[None, :]
    k = tl.load(K + k_off, mask=kv_rows, other=0.0)
    v = tl.load(V + v_off, mask=kv_rows, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for g in range(group):
        h = hk * group + g
        bh = b64 * n_heads + h
        q_base = Q + b64 * sqb + h.to(tl.int64) * sqh
        do_base = DO + b64 * sdob + h.to(tl.int64) * sdoh
        lse_base = LSE + bh * seq_q
        delta_base = DELTA + bh * seq_q
        row = (b * map_sb + h * map_sh) * kv_tiles + pid_n
        lists = row.to(tl.int64) * q_tiles
        n_partial = tl.load(P_CNT + row)
        for i in range(n_partial):
            start_m = tl.load(P_IDX + lists + i) * BLOCK_M
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqm, sdom, start_m, offs_n,
                                offs_m0, offs_d, seq_q, sm_scale, b, h, @TARGS@ True, HAS_SCORE, DOT_F32)
        n_full = tl.load(F_CNT + row)
        for i in range(n_full):
            start_m = tl.load(F_IDX + lists + i) * BLOCK_M
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqm, sdom, start_m, offs_n,
                                offs_m0, offs_d, seq_q, sm_scale, b, h, @TARGS@ False, HAS_SCORE, DOT_F32)
    # DK and DV are contiguous, laid out like K and V
    tl.store(DK + k_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_rows)
    tl.store(DV + v_off, dv.to(DV.dtype.element_ty), mask=kv_rows)


@triton.jit
def _dq_tile(dq, q, do, lse2, delta, k_base, v_base, skn, svn, start_n, offs_m, offs_n0, offs_d, seq_kv, sm_scale,
             b, h, @TARGS@ MASKED: tl.constexpr, HAS_SCORE: tl.constexpr, DOT_F32: tl.constexpr):
    offs_n = start_n + offs_n0
    kt_ptrs = k_base + offs_n[None, :] * skn + offs_d[:, None]
    vt_ptrs = v_base + offs_n[None, :] * svn + offs_d[:, None]
    if MASKED:
        kT = tl.load(kt_ptrs, mask=offs_n[None, :] < seq_kv, other=0.0)
        vT = tl.load(vt_ptrs, mask=offs_n[None, :] < seq_kv, other=0.0)
    else:
        kT = tl.load(kt_ptrs)
        vT = tl.load(vt_ptrs)
    qk = _mm(q, kT, DOT_F32)
    q_idx = offs_m[:, None]
    kv_idx = offs_n[None, :]
    if HAS_SCORE:
        raw = qk * sm_scale
        s2 = _score(raw, b, h, q_idx, kv_idx, @TARGS@) * 1.4426950408889634
    else:
        s2 = qk * (sm_scale * 1.4426950408889634)
    p = tl.exp2(s2 - lse2[:, None])
    if MASKED:
        keep = _mask(b, h, q_idx, kv_idx, @TARGS@) & (kv_idx < seq_kv)
        p = tl.where(keep, p, 0.0)
    dp = _mm(do, vT, DOT_F32)
    ds = p * (dp - delta[:, None])
    if HAS_SCORE:
        ds = ds * _dscore(raw, b, h, q_idx, kv_idx, @TARGS@)
    dq = _mma(ds.to(kT.dtype), tl.trans(kT), dq, DOT_F32)
    return dq


@triton.jit
def attention_backward_dq(Q, K, V, DO, LSE, DELTA, DQ, P_CNT, P_IDX, F_CNT, F_IDX, sm_scale,
                          sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom,
                          seq_q, seq_kv, n_heads, group, q_tiles, kv_tiles, map_sb, map_sh, @TARGS@
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          HAS_SCORE: tl.constexpr, DOT_F32: tl.constexpr):
    # heaviest query tiles (last rows of causal-like patterns) first: less idle tail at the end of the grid
    pid_m = q_tiles - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hk = h // group
    b64 = b.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m[:, None] < seq_q
    q_off = b64 * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqm + offs_d[None, :]
    q = tl.load(Q + q_off, mask=rows, other=0.0)
    do = tl.load(DO + b64 * sdob + h.to(tl.int64) * sdoh + offs_m[:, None] * sdom + offs_d[None, :],
                 mask=rows, other=0.0)
    stat = pid_bh.to(tl.int64) * seq_q + offs_m
    lse = tl.load(LSE + stat, mask=offs_m < seq_q, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + stat, mask=offs_m < seq_q, other=0.0)
    k_base = K + b64 * skb + hk.to(tl.int64) * skh
    v_base = V + b64 * svb + hk.to(tl.int64) * svh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    row = (b * map_sb + h * map_sh) * q_tiles + pid_m
    lists = row.to(tl.int64) * kv_tiles
    n_partial = tl.load(P_CNT + row)
    for i in range(n_partial):
        start_n = tl.load(P_IDX + lists + i) * BLOCK_N
        dq = _dq_tile(dq, q, do, lse2, delta, k_base, v_base, skn, svn, start_n, offs_m, offs_n0, offs_d, seq_kv,
                      sm_scale, b, h, @TARGS@ True, HAS_SCORE, DOT_F32)
    n_full = tl.load(F_CNT + row)
    for i in range(n_full):
        start_n = tl.load(F_IDX + lists + i) * BLOCK_N
        dq = _dq_tile(dq, q, do, lse2, delta, k_base, v_base, skn, svn, start_n, offs_m, offs_n0, offs_d, seq_kv,
                      sm_scale, b, h, @TARGS@ False, HAS_SCORE, DOT_F32)
    # DQ is contiguous, laid out like Q
    tl.store(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=rows)
'''
