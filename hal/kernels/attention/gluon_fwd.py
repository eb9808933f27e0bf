"""Gluon sources of the Hopper forward kernels: TMA ring buffers, asynchronous wgmma, softmax/GEMM overlap.

Triton decides on its own when a tile's loads, matrix products and softmax run; on Hopper it runs the softmax of a
tile and the P·V product in sequence. These kernels are written in Gluon (Triton's lower-level dialect, which
exposes shared-memory buffers, mbarriers, the bulk tensor copy engine, asynchronous ``wgmma`` and warp
specialization) so that they schedule the work as FlashAttention-3 does (Shah et al. 2024, section 3):

* ``attention_forward_gluon`` (intra-warpgroup overlap, section 3.2): while the tensor cores compute
  ``O += P_{j-1} V_{j-1}``, the warps compute the softmax of ``S_j = Q K_j^T``, issued one step earlier. K and V
  tiles arrive through TMA into ``STAGES``-deep ring buffers; a slot is refilled once the products of every
  warpgroup that read it have completed (a ``wgmma`` wait covers only the calling warpgroup, so a CTA barrier
  precedes each refill). ``num_warps`` / 4 warpgroups split the query tile's rows.
* ``attention_forward_gluon_pingpong`` (adds inter-warpgroup "ping-pong", section 3.1): two consumer warpgroups
  take 64 query rows each and take turns issuing their products (an mbarrier per turn), so that one's softmax
  runs while the tensor cores serve the other; a one-warp loader partition issues every TMA copy, and slots are
  freed through mbarriers both consumers arrive on. The loader gives up registers to the consumers (setmaxnreg).

Both walk the block map's tile lists like the Triton kernel (partial tiles first, with the mask; then full tiles),
keep scores in base 2 and return the natural-log log-sum-exp; a row with every key masked gets zeros and
``lse = -inf``. One program computes one query tile of one (batch, head). Head dims 64 and 128 (the accumulators of
256 do not fit the register file next to S and P).

The texts are templates like :mod:`.triton_fwd`: ``@TARGS@`` becomes the pattern's tensor arguments and the
generated Gluon ``_mask`` / ``_score`` functions (and the ``_tma_load`` / ``_cta_barrier`` names, which differ
between Triton versions) are defined above them by :mod:`.codegen`.
"""

GLUON_FORWARD_SOURCE = '''
@gluon.jit
def _tile_start(P_IDX, F_IDX, lists, i, n_partial, kv_tiles, BLOCK_N: gl.constexpr):
    # first key of the i-th visited tile: partial tiles first, then full ones (indices clamped so that a
    # prefetch past the end reads a valid list entry; its copy is predicated off)
    last = kv_tiles - 1
    from_partial = gl.load(P_IDX + lists + gl.minimum(i, last))
    from_full = gl.load(F_IDX + lists + gl.minimum(gl.maximum(i - n_partial, 0), last))
    return gl.where(i < n_partial, from_partial, from_full) * BLOCK_N


@gluon.jit
def _load_tile(desc, bars, bufs, slot, row, pred):
    bar = bars.index(slot)
    mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
    _tma_load(desc, [row, 0], bar, bufs.index(slot), pred=pred)


@gluon.jit
def _online_softmax(qk, m_i, l_i, offs_m, start_n, offs_n0, seq_kv, sm_scale, b, h, masked, @TARGS@
                    HAS_SCORE: gl.constexpr):
    # returns the new running max and sum, the probabilities (fp32, score layout) and the rescale factor
    q_idx = offs_m[:, None]
    kv_idx = (start_n + offs_n0)[None, :]
    if masked or HAS_SCORE:
        if HAS_SCORE:
            s = _score(qk * sm_scale, b, h, q_idx, kv_idx, @TARGS@) * 1.4426950408889634
        else:
            s = qk * (sm_scale * 1.4426950408889634)
        if masked:
            keep = _mask(b, h, q_idx, kv_idx, @TARGS@) & (kv_idx < seq_kv)
            s = gl.where(keep, s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(s - m_use[:, None])
    else:
        # unmasked tile, no score mod: scale after the row max so scaling and shifting fuse into one FMA
        qk_scale = sm_scale * 1.4426950408889634
        m_new = gl.maximum(m_i, gl.max(qk, 1) * qk_scale)
        m_use = m_new
        p = gl.exp2(qk * qk_scale - m_use[:, None])
    alpha = gl.exp2(m_i - m_use)
    l_i = l_i * alpha + gl.sum(p, 1)
    return m_new, l_i, p, alpha


@gluon.jit
def _finish_rows(acc, l_i, m_i, offs_m, row0, O, LSE, b, h, pid_bh, sob, soh, som, seq_q):
    # normalise and store the rows [row0, row0 + rows) of O and their lse; a row that saw no key gets zeros, -inf
    o_layout: gl.constexpr = acc.type.layout
    ROWS: gl.constexpr = acc.shape[0]
    HEAD_DIM: gl.constexpr = acc.shape[1]
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    empty = l_i == 0.0
    l_safe = gl.where(empty, 1.0, l_i)
    out = acc / gl.convert_layout(l_safe, row_o)[:, None]
    lse = gl.where(empty, float("-inf"), (m_i + gl.log2(l_safe)) * 0.6931471805599453)
    offs_mo = row0 + gl.arange(0, ROWS, layout=row_o)
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    o_ptrs = (O + b.to(gl.int64) * sob + h.to(gl.int64) * soh + offs_mo[:, None] * som + offs_d[None, :])
    gl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_mo[:, None] < seq_q)
    gl.store(LSE + pid_bh.to(gl.int64) * seq_q + offs_m, lse, mask=offs_m < seq_q)


@gluon.jit
def attention_forward_gluon(desc_q, desc_k, desc_v, O, LSE, P_CNT, P_IDX, F_CNT, F_IDX, sm_scale,
                            sob, soh, som, seq_q, seq_kv, n_heads, group, q_tiles, kv_tiles, map_sb, map_sh,
                            @TARGS@ HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                            STAGES: gl.constexpr, HAS_SCORE: gl.constexpr, num_warps: gl.constexpr):
    # heaviest query tiles (last rows of causal-like patterns) first: less idle tail at the end of the grid
    pid_m = q_tiles - 1 - gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hk = h // group
    q_row0 = pid_bh * seq_q + pid_m * BLOCK_M  # rows of the (B*H*S_q, D) and (B*H_kv*S_kv, D) views
    kv_row0 = (b * (n_heads // group) + hk) * seq_kv

    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = desc_q.dtype

    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], desc_q.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], desc_k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], desc_v.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for st in gl.static_range(STAGES):
        mbarrier.init(k_bars.index(st), count=1)
        mbarrier.init(v_bars.index(st), count=1)

    mbarrier.expect(q_bar, desc_q.block_type.nbytes)
    _tma_load(desc_q, [q_row0, 0], q_bar, q_smem)
    row = (b * map_sb + h * map_sh) * q_tiles + pid_m
    lists = row.to(gl.int64) * kv_tiles
    n_partial = gl.load(P_CNT + row)
    n_total = n_partial + gl.load(F_CNT + row)
    for t in gl.static_range(STAGES):
        start = _tile_start(P_IDX, F_IDX, lists, t, n_partial, kv_tiles, BLOCK_N)
        _load_tile(desc_k, k_bars, k_smem, t, kv_row0 + start, t < n_total)
        _load_tile(desc_v, v_bars, v_smem, t, kv_row0 + start, t < n_total)

    offs_m = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=row_s)
    offs_n0 = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, row_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, row_s)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    mbarrier.wait(q_bar, 0)

    if n_total > 0:
        # tile 0: its scores and softmax (nothing to overlap with yet)
        mbarrier.wait(k_bars.index(0), 0)
        s_tok = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        qk = warpgroup_mma_wait(0, deps=(s_tok, ))
        _cta_barrier()  # both warpgroups are done with K_0: refill its slot
        start = _tile_start(P_IDX, F_IDX, lists, STAGES, n_partial, kv_tiles, BLOCK_N)
        _load_tile(desc_k, k_bars, k_smem, 0, kv_row0 + start, STAGES < n_total)
        start_n = _tile_start(P_IDX, F_IDX, lists, 0, n_partial, kv_tiles, BLOCK_N)
        m_i, l_i, p, alpha = _online_softmax(qk, m_i, l_i, offs_m, start_n, offs_n0, seq_kv, sm_scale, b, h,
                                             0 < n_partial, @TARGS@ HAS_SCORE)
        p = gl.convert_layout(p.to(dtype), p_layout)
        for i in range(1, n_total):
            slot = i % STAGES
            prev = (i - 1) % STAGES
            # S_i = Q K_i^T and O += P_{i-1} V_{i-1} both in flight; wait for S_i only
            mbarrier.wait(k_bars.index(slot), (i // STAGES) & 1)
            s_tok = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False,
                                  is_async=True)
            mbarrier.wait(v_bars.index(prev), ((i - 1) // STAGES) & 1)
            o_tok = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
            qk = warpgroup_mma_wait(1, deps=(s_tok, ))
            # softmax of tile i while the tensor cores finish P_{i-1} V_{i-1}
            start_n = _tile_start(P_IDX, F_IDX, lists, i, n_partial, kv_tiles, BLOCK_N)
            m_i, l_i, p_new, alpha = _online_softmax(qk, m_i, l_i, offs_m, start_n, offs_n0, seq_kv, sm_scale,
                                                     b, h, i < n_partial, @TARGS@ HAS_SCORE)
            acc, p = warpgroup_mma_wait(0, deps=(o_tok, p))
            # both warpgroups are done with K_i and V_{i-1} (a wgmma_wait covers only its own warpgroup):
            # refill their slots, STAGES - 1 iterations ahead of use
            _cta_barrier()
            start = _tile_start(P_IDX, F_IDX, lists, i + STAGES, n_partial, kv_tiles, BLOCK_N)
            _load_tile(desc_k, k_bars, k_smem, slot, kv_row0 + start, i + STAGES < n_total)
            start = _tile_start(P_IDX, F_IDX, lists, i - 1 + STAGES, n_partial, kv_tiles, BLOCK_N)
            _load_tile(desc_v, v_bars, v_smem, prev, kv_row0 + start, i - 1 + STAGES < n_total)
            acc = acc * gl.convert_layout(alpha, row_o)[:, None]
            p = gl.convert_layout(p_new.to(dtype), p_layout)
        last = n_total - 1
        mbarrier.wait(v_bars.index(last % STAGES), (last // STAGES) & 1)
        o_tok = warpgroup_mma(p, v_smem.index(last % STAGES), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(o_tok, ))

    _finish_rows(acc, l_i, m_i, offs_m, pid_m * BLOCK_M, O, LSE, b, h, pid_bh, sob, soh, som, seq_q)
'''

GLUON_PINGPONG_SOURCE = '''
@gluon.jit
def _pp_loader(desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_bars, v_bars, k_free, v_free,
               P_IDX, F_IDX, lists, n_partial, n_total, kv_tiles, q_row0, kv_row0):
    # one warp: both halves of the query tile, then K and V tiles into their ring slots as the consumers free them
    # (constexprs do not pass into partitions: shapes are read off the buffers)
    HALF: gl.constexpr = q_smem.shape[1]
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    for c in gl.static_range(2):
        mbarrier.expect(q_bars.index(c), desc_q.block_type.nbytes, pred=n_total > 0)
        _tma_load(desc_q, [q_row0 + c * HALF, 0], q_bars.index(c), q_smem.index(c), pred=n_total > 0)
    for i in range(n_total):
        slot = i % STAGES
        use = i // STAGES
        start = _tile_start(P_IDX, F_IDX, lists, i, n_partial, kv_tiles, BLOCK_N)
        mbarrier.wait(k_free.index(slot), (use - 1) & 1, pred=i >= STAGES)
        _load_tile(desc_k, k_bars, k_smem, slot, kv_row0 + start, True)
        mbarrier.wait(v_free.index(slot), (use - 1) & 1, pred=i >= STAGES)
        _load_tile(desc_v, v_bars, v_smem, slot, kv_row0 + start, True)


@gluon.jit
def _pp_consumer(q_smem, k_smem, v_smem, q_bar, k_bars, v_bars, k_free, v_free, my_turn, other_turn, O, LSE,
                 P_IDX, F_IDX, lists, n_partial, n_total, kv_tiles, row0, sm_scale, sob, soh, som, seq_q, seq_kv,
                 pid_bh, b, h, @TARGS@ HAS_SCORE: gl.constexpr):
    # one warpgroup, HALF query rows starting at row0; the two consumers take turns issuing their products
    # (FlashAttention-3 ping-pong) so that one's softmax runs while the tensor cores serve the other
    HALF: gl.constexpr = q_smem.shape[0]
    HEAD_DIM: gl.constexpr = q_smem.shape[1]
    STAGES: gl.constexpr = k_smem.shape[0]
    BLOCK_N: gl.constexpr = k_smem.shape[1]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = q_smem.dtype
    offs_m = row0 + gl.arange(0, HALF, layout=row_s)
    offs_n0 = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    m_i = gl.full([HALF], float("-inf"), gl.float32, row_s)
    l_i = gl.zeros([HALF], gl.float32, row_s)
    acc = gl.zeros([HALF, HEAD_DIM], gl.float32, o_layout)
    zero_s = gl.zeros([HALF, BLOCK_N], gl.float32, s_layout)
    if n_total > 0:
        mbarrier.wait(q_bar, 0)
        mbarrier.wait(k_bars.index(0), 0)
        mbarrier.wait(my_turn, 0)
        s_tok = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        mbarrier.arrive(other_turn)
        qk = warpgroup_mma_wait(0, deps=(s_tok, ))
        mbarrier.arrive(k_free.index(0))
        start_n = _tile_start(P_IDX, F_IDX, lists, 0, n_partial, kv_tiles, BLOCK_N)
        m_i, l_i, p, alpha = _online_softmax(qk, m_i, l_i, offs_m, start_n, offs_n0, seq_kv, sm_scale, b, h,
                                             0 < n_partial, @TARGS@ HAS_SCORE)
        p = gl.convert_layout(p.to(dtype), p_layout)
        for i in range(1, n_total):
            slot = i % STAGES
            prev = (i - 1) % STAGES
            mbarrier.wait(k_bars.index(slot), (i // STAGES) & 1)
            mbarrier.wait(v_bars.index(prev), ((i - 1) // STAGES) & 1)
            mbarrier.wait(my_turn, i & 1)
            s_tok = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False,
                                  is_async=True)
            o_tok = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
            mbarrier.arrive(other_turn)
            qk = warpgroup_mma_wait(1, deps=(s_tok, ))
            mbarrier.arrive(k_free.index(slot))
            start_n = _tile_start(P_IDX, F_IDX, lists, i, n_partial, kv_tiles, BLOCK_N)
            m_i, l_i, p_new, alpha = _online_softmax(qk, m_i, l_i, offs_m, start_n, offs_n0, seq_kv, sm_scale,
                                                     b, h, i < n_partial, @TARGS@ HAS_SCORE)
            acc, p = warpgroup_mma_wait(0, deps=(o_tok, p))
            mbarrier.arrive(v_free.index(prev))
            acc = acc * gl.convert_layout(alpha, row_o)[:, None]
            p = gl.convert_layout(p_new.to(dtype), p_layout)
        last = n_total - 1
        mbarrier.wait(v_bars.index(last % STAGES), (last // STAGES) & 1)
        o_tok = warpgroup_mma(p, v_smem.index(last % STAGES), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(o_tok, ))
    _finish_rows(acc, l_i, m_i, offs_m, row0, O, LSE, b, h, pid_bh, sob, soh, som, seq_q)


@gluon.jit
def attention_forward_gluon_pingpong(desc_q, desc_k, desc_v, O, LSE, P_CNT, P_IDX, F_CNT, F_IDX, sm_scale,
                                     sob, soh, som, seq_q, seq_kv, n_heads, group, q_tiles, kv_tiles, map_sb,
                                     map_sh, @TARGS@ HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr,
                                     BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HAS_SCORE: gl.constexpr,
                                     CONSUMER_REGS: gl.constexpr, LOADER_REGS: gl.constexpr):
    # BLOCK_M query rows per program as two halves, one per consumer warpgroup (this kernel's num_warps = 4 is
    # the first consumer; the second consumer and a one-warp loader are worker partitions)
    HALF: gl.constexpr = BLOCK_M // 2
    pid_m = q_tiles - 1 - gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    hk = h // group
    q_row0 = pid_bh * seq_q + pid_m * BLOCK_M
    kv_row0 = (b * (n_heads // group) + hk) * seq_kv
    dtype: gl.constexpr = desc_q.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2, HALF, HEAD_DIM], desc_q.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], desc_k.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], desc_v.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for c in gl.static_range(2):
        mbarrier.init(q_bars.index(c), count=1)
        mbarrier.init(turns.index(c), count=1)
    for st in gl.static_range(STAGES):
        mbarrier.init(k_bars.index(st), count=1)
        mbarrier.init(v_bars.index(st), count=1)
        mbarrier.init(k_free.index(st), count=2)
        mbarrier.init(v_free.index(st), count=2)
    mbarrier.arrive(turns.index(0))  # the first consumer goes first

    row = (b * map_sb + h * map_sh) * q_tiles + pid_m
    lists = row.to(gl.int64) * kv_tiles
    n_partial = gl.load(P_CNT + row)
    n_total = n_partial + gl.load(F_CNT + row)
    common = (O, LSE, P_IDX, F_IDX, lists, n_partial, n_total, kv_tiles)
    tail = (sm_scale, sob, soh, som, seq_q, seq_kv, pid_bh, b, h, @TARGS@ HAS_SCORE)
    gl.warp_specialize([
        (_pp_consumer, (q_smem.index(0), k_smem, v_smem, q_bars.index(0), k_bars, v_bars, k_free, v_free,
                        turns.index(0), turns.index(1)) + common + (pid_m * BLOCK_M, ) + tail),
        (_pp_consumer, (q_smem.index(1), k_smem, v_smem, q_bars.index(1), k_bars, v_bars, k_free, v_free,
                        turns.index(1), turns.index(0)) + common + (pid_m * BLOCK_M + HALF, ) + tail),
        (_pp_loader, (desc_q, desc_k, desc_v, q_smem, k_smem, v_smem, q_bars, k_bars, v_bars, k_free, v_free,
                      P_IDX, F_IDX, lists, n_partial, n_total, kv_tiles, q_row0, kv_row0)),
    ], [4, 1], [CONSUMER_REGS, LOADER_REGS])
'''
