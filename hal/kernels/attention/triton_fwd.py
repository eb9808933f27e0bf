"""Triton source of the forward kernel (FlashAttention-2 online softmax over the block map's tile lists).

The text is a template: ``@TARGS@`` becomes the pattern's tensor arguments (``T0, T0_numel, ...``) and the
generated ``_mask`` / ``_score`` functions are defined above it by :mod:`.codegen`. One program computes one query
tile of one (batch, head): it loads Q once, walks the partial key tiles (mask evaluated) and then the full key
tiles (no mask work), keeping the running max ``m``, the running sum ``l`` and the fp32 accumulator in registers.
Scores are kept in base 2 (``exp2``), the returned log-sum-exp in natural log. A row whose every key is masked
keeps ``l = 0`` and gets zeros and ``lse = -inf``.
"""

FORWARD_SOURCE = '''
@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, desc_k, desc_v, kv_row0, skn, svn, start_n, offs_m, offs_n0, offs_d,
              seq_kv, sm_scale, b, h, @TARGS@ MASKED: tl.constexpr, HAS_SCORE: tl.constexpr, DOT_F32: tl.constexpr,
              USE_TMA: tl.constexpr):
    offs_n = start_n + offs_n0
    if USE_TMA:
        # rows past this head's sequence belong to the next head (or are zero-filled): they only occur in partial
        # tiles, where the bounds mask below removes them
        k = desc_k.load([kv_row0 + start_n, 0]).T
    elif MASKED:
        k = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None], mask=offs_n[None, :] < seq_kv, other=0.0)
    else:
        k = tl.load(k_base + offs_n[None, :] * skn + offs_d[:, None])
    qk = _mm(q, k, DOT_F32)
    q_idx = offs_m[:, None]
    kv_idx = offs_n[None, :]
    if MASKED or HAS_SCORE:
        if HAS_SCORE:
            s = _score(qk * sm_scale, b, h, q_idx, kv_idx, @TARGS@) * 1.4426950408889634
        else:
            s = qk * (sm_scale * 1.4426950408889634)
        if MASKED:
            keep = _mask(b, h, q_idx, kv_idx, @TARGS@) & (kv_idx < seq_kv)
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
    else:
        # unmasked tile, no score mod: scale after the row max so scaling and shifting fuse into one FMA
        qk_scale = sm_scale * 1.4426950408889634
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = m_new
        p = tl.exp2(qk * qk_scale - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if USE_TMA:
        v = desc_v.load([kv_row0 + start_n, 0])
    elif MASKED:
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :], mask=offs_n[:, None] < seq_kv, other=0.0)
    else:
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :])
    acc = _mma(p.to(v.dtype), v, acc, DOT_F32)
    return acc, l_i, m_new


@triton.jit
def attention_forward(Q, K, V, DESC_K, DESC_V, O, LSE, P_CNT, P_IDX, F_CNT, F_IDX, sm_scale,
                      sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
                      seq_q, seq_kv, n_heads, group, q_tiles, kv_tiles, map_sb, map_sh, @TARGS@
                      HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      HAS_SCORE: tl.constexpr, DOT_F32: tl.constexpr, USE_TMA: tl.constexpr,
                      WARP_SPECIALIZE: tl.constexpr, SINGLE_LOOP: tl.constexpr):
    # heaviest query tiles (last rows of causal-like patterns) first: less idle tail at the end of the grid
    pid_m = q_tiles - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hk = h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b.to(tl.int64)
    q_ptrs = Q + b64 * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < seq_q, other=0.0)
    k_base = K + b64 * skb + hk.to(tl.int64) * skh
    v_base = V + b64 * svb + hk.to(tl.int64) * svh
    kv_row0 = (b * (n_heads // group) + hk) * seq_kv  # first row of this head in the (B*H_kv*S_kv, D) view
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    row = (b * map_sb + h * map_sh) * q_tiles + pid_m
    lists = row.to(tl.int64) * kv_tiles
    n_partial = tl.load(P_CNT + row)
    n_full = tl.load(F_CNT + row)
    if SINGLE_LOOP:
        # one software pipeline over every visited tile, masking all of them: for short rows of tiles (sliding
        # windows, documents) one pipeline fill/drain instead of two can outweigh the mask work on full tiles
        for i in range(n_partial + n_full):
            from_partial = tl.load(P_IDX + lists + tl.minimum(i, kv_tiles - 1))
            from_full = tl.load(F_IDX + lists + tl.maximum(i - n_partial, 0))
            start_n = tl.where(i < n_partial, from_partial, from_full) * BLOCK_N
            acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, DESC_K, DESC_V, kv_row0, skn, svn, start_n,
                                      offs_m, offs_n0, offs_d, seq_kv, sm_scale, b, h, @TARGS@ True, HAS_SCORE,
                                      DOT_F32, USE_TMA)
    else:
        for i in range(n_partial):
            start_n = tl.load(P_IDX + lists + i) * BLOCK_N
            acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, DESC_K, DESC_V, kv_row0, skn, svn, start_n,
                                      offs_m, offs_n0, offs_d, seq_kv, sm_scale, b, h, @TARGS@ True, HAS_SCORE,
                                      DOT_F32, USE_TMA)
        for i in tl.range(0, n_full, warp_specialize=WARP_SPECIALIZE):
            start_n = tl.load(F_IDX + lists + i) * BLOCK_N
            acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, DESC_K, DESC_V, kv_row0, skn, svn, start_n,
                                      offs_m, offs_n0, offs_d, seq_kv, sm_scale, b, h, @TARGS@ False, HAS_SCORE,
                                      DOT_F32, USE_TMA)
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    o_ptrs = O + b64 * sob + h.to(tl.int64) * soh + offs_m[:, None] * som + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < seq_q)
    tl.store(LSE + pid_bh.to(tl.int64) * seq_q + offs_m, lse, mask=offs_m < seq_q)
'''
