"""The fused linear in Triton: norm in the prologue, 1 to 3 weights side by side or a gated pair, epilogue fused.

One program computes a (BLOCK_M, BLOCK_N) tile of the output:

* Which weight. The N axis of the grid runs over the weights side by side, each split into its own BLOCK_N blocks,
  so a block never straddles two weights; a program selects its weight's pointer, stride, bias and output column
  offset (``tl.where`` on scalars: no branch). The gated form runs over one weight's N and keeps two accumulators,
  gate and up, fed by the same x tile.
* Prologue (norm set): the mean and 1/std of the program's BLOCK_M rows over all K, in float32. LayerNorm combines
  per-tile moments by Chan's pairwise formula (each tile's mean and squared deviations two-pass in registers), so
  there is no E[x^2] - E[x]^2 cancellation; RMSNorm sums squares. Then, in the main K loop, each x tile is
  normalised in registers and rounded to x.dtype, as eager rounds the norm's output, before ``tl.dot`` with the W
  tile. No normalised copy of x, and no folded copy of any weight, is ever written.
* Epilogue, in float32: bias, activation, gate product, residual add; one rounding, one store. Every load and store
  is masked on the M, N and K edges; rows are padded to BLOCK_M >= 16 for ``tl.dot``.

Weights are read where they live (pointers of the caller's tensors), so an in-place update is seen by the next call
and by the next replay of a CUDA graph that captured this kernel. The autotuner picks a tile per (row bucket, N of
each weight, K, gated, norm, dtypes) on the first call with such a key: run one call before capturing a CUDA graph
(a capture cannot time configs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
import triton.testing

from . import configs
from .inputs import FusedLinear

NORM_CODES = {None: 0, "layer": 1, "rms": 2}
ACTIVATION_CODES = {None: 0, "gelu": 1, "gelu_tanh": 2, "silu": 3, "relu": 4}


def _autotune_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in configs.all_tiles()]


def _prune(candidates: list[triton.Config], nargs: dict, **kwargs) -> list[triton.Config]:
    """The configs of this call's row bucket and sizes (configs.candidates), in the autotuner's order."""
    args = {**nargs, **kwargs}
    wanted = set(configs.candidates(args["M_BUCKET"], max(args["N0"], args["N1"], args["N2"]), args["K"]))
    return [c for c in candidates
            if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) in wanted]


def _tune_timer(kernel_call, quantiles):
    """The autotuner's timing: triton.testing.do_bench (L2 flushed before each run, so the weight stream is cold as
    in a model), with a short budget per config (configs.TUNE_*_MS)."""
    return triton.testing.do_bench(kernel_call, warmup=configs.TUNE_WARMUP_MS, rep=configs.TUNE_REP_MS,
                                   quantiles=quantiles)


@triton.jit
def _pick(in1, in2, v0, v1, v2, SPLIT_W: tl.constexpr):
    """v0, v1 or v2: the value belonging to the weight of the program's columns (in2 wins over in1)."""
    if SPLIT_W == 1:
        return v0
    elif SPLIT_W == 2:
        return tl.where(in1, v1, v0)
    else:
        return tl.where(in2, v2, tl.where(in1, v1, v0))


@triton.jit
def _activate(y, ACT: tl.constexpr):
    """The epilogue's activation on a float32 tile: none, gelu (erf), gelu (tanh), silu or relu."""
    if ACT == 1:
        y = 0.5 * y * (1.0 + tl.erf(y * 0.7071067811865476))
    elif ACT == 2:
        # 0.5 y (1 + tanh(u)) = y * sigmoid(2u): torch's tanh form, without the 1 + tanh cancellation for u << 0
        y = y * tl.sigmoid(1.5957691216057308 * (y + 0.044715 * y * y * y))
    elif ACT == 3:
        y = y * tl.sigmoid(y)
    elif ACT == 4:
        y = tl.where(y < 0.0, 0.0, y)  # NaN stays NaN, as in torch.relu
    return y


@triton.jit
def _dot(a, b, acc, IEEE_F32: tl.constexpr):
    """acc + a @ b. IEEE_F32: operands upcast to float32 and multiplied without tf32: the float32 path, and the
    interpreter, whose bf16 / fp16 dot is not a tensor-core product (the operands are already rounded to their
    I/O dtype, so the float32 product of them is what a GPU's tensor cores compute)."""
    if IEEE_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _rounded(y, dtype: tl.constexpr, SOFT_BF16: tl.constexpr):
    """The float32 tile y rounded to dtype, to nearest even. SOFT_BF16 (set under the interpreter only, whose
    float32 -> bfloat16 conversion truncates, seen with triton 3.9): the rounding is done on the bits first."""
    if SOFT_BF16:
        bits = y.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        y = tl.where(y != y, y, bits.to(tl.float32, bitcast=True))
    return y.to(dtype)


@triton.jit
def _row_stats(x_rows, mask_m, K, eps, NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """(mean, rstd) of each of the BLOCK_M rows over all K, float32; RMSNorm's mean is 0."""
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum of squared deviations (LayerNorm) or of squares (RMSNorm)
    seen = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        if NORM == 1:
            n_tile = tl.sum(mask_k.to(tl.float32), axis=0)
            mean_tile = tl.sum(x, axis=1) / n_tile
            dev = tl.where(mask_k[None, :], x - mean_tile[:, None], 0.0)
            total = seen + n_tile
            delta = mean_tile - mean
            mean = mean + delta * (n_tile / total)
            m2 = m2 + tl.sum(dev * dev, axis=1) + delta * delta * (seen * (n_tile / total))
            seen = total
        else:
            m2 = m2 + tl.sum(x * x, axis=1)
    return mean, 1.0 / tl.sqrt_rn(m2 / K + eps)


@triton.jit
def _normalise(a, mean, rstd, g_ptr, beta_ptr, offs_k, mask_k, s_g, s_beta, NORM: tl.constexpr,
               HAS_G: tl.constexpr, HAS_BETA: tl.constexpr, SOFT_BF16: tl.constexpr):
    """The x tile after the norm, rounded to x.dtype where eager rounds it; 0 beyond K."""
    y = a.to(tl.float32)
    if NORM == 1:  # F.layer_norm: (x - mean) * rstd * weight + bias in float32, one rounding
        y = (y - mean[:, None]) * rstd[:, None]
        if HAS_G:
            y = y * tl.load(g_ptr + offs_k * s_g, mask=mask_k, other=0.0).to(tl.float32)[None, :]
        if HAS_BETA:
            y = y + tl.load(beta_ptr + offs_k * s_beta, mask=mask_k, other=0.0).to(tl.float32)[None, :]
        y = _rounded(y, a.dtype, SOFT_BF16)
    else:  # LlamaRMSNorm: (x * rstd) rounded to x.dtype, then times the weight, rounded again
        y = _rounded(y * rstd[:, None], a.dtype, SOFT_BF16)
        if HAS_G:
            g = tl.load(g_ptr + offs_k * s_g, mask=mask_k, other=0.0).to(tl.float32)
            y = _rounded(y.to(tl.float32) * g[None, :], a.dtype, SOFT_BF16)
    return tl.where(mask_k[None, :], y, 0.0)


@triton.autotune(configs=_autotune_configs(), key=["M_BUCKET", "N0", "N1", "N2", "K", "GATED", "NORM"],
                 prune_configs_by={"early_config_prune": _prune}, do_bench=_tune_timer)
@triton.jit(do_not_specialize=["M"])  # one build for M = 1 and the other rows of a bucket: half the compiles
def fused_linear_kernel(
    x_ptr, w0_ptr, w1_ptr, w2_ptr, b0_ptr, b1_ptr, b2_ptr, g_ptr, beta_ptr, res_ptr, out_ptr,
    M, K, N0, N1, N2, s_xm, s_w0, s_w1, s_w2, s_b0, s_b1, s_b2, s_g, s_beta, s_rm, s_om, eps,
    M_BUCKET,  # the autotuner's row bucket (configs.m_bucket); the kernel does not read it
    SPLIT_W: tl.constexpr, GATED: tl.constexpr, NORM: tl.constexpr, HAS_G: tl.constexpr, HAS_BETA: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_B0: tl.constexpr, HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr,
    HAS_RES: tl.constexpr, IEEE_F32: tl.constexpr, SOFT_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    m_blocks = tl.cdiv(M, BLOCK_M)
    pid_m = pid % m_blocks  # row blocks vary fastest: programs running together share a weight tile
    blk = pid // m_blocks

    # the weight of this program's columns: blocks [0, nb0) are weight 0, [nb0, nb0 + nb1) weight 1, then weight 2
    nb0 = tl.cdiv(N0, BLOCK_N)
    nb1 = tl.cdiv(N1, BLOCK_N)
    in1 = blk >= nb0
    in2 = blk >= nb0 + nb1
    w_ptr = _pick(in1, in2, w0_ptr, w1_ptr, w2_ptr, SPLIT_W)
    s_w = _pick(in1, in2, s_w0, s_w1, s_w2, SPLIT_W)
    n_size = _pick(in1, in2, N0, N1, N2, SPLIT_W)
    first_blk = _pick(in1, in2, 0, nb0, nb0 + nb1, SPLIT_W)
    col = _pick(in1, in2, 0, N0, N0 + N1, SPLIT_W)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    rows = offs_m.to(tl.int64)
    offs_n = (blk - first_blk) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_size
    x_rows = x_ptr + rows[:, None] * s_xm
    w_cols = w_ptr + offs_n.to(tl.int64)[None, :] * s_w
    up_cols = w1_ptr + offs_n.to(tl.int64)[None, :] * s_w1

    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    rstd = tl.zeros([BLOCK_M], dtype=tl.float32)
    if NORM != 0:
        mean, rstd = _row_stats(x_rows, mask_m, K, eps, NORM, BLOCK_M, BLOCK_K)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        if NORM != 0:
            a = _normalise(a, mean, rstd, g_ptr, beta_ptr, offs_k, mask_k, s_g, s_beta, NORM, HAS_G, HAS_BETA,
                           SOFT_BF16)
        w_mask = mask_k[:, None] & mask_n[None, :]
        acc = _dot(a, tl.load(w_cols + offs_k[:, None], mask=w_mask, other=0.0), acc, IEEE_F32)
        if GATED:
            acc_up = _dot(a, tl.load(up_cols + offs_k[:, None], mask=w_mask, other=0.0), acc_up, IEEE_F32)

    if HAS_BIAS:
        has_b = _pick(in1, in2, HAS_B0, HAS_B1, HAS_B2, SPLIT_W)  # gated: SPLIT_W 1, so the gate's flag
        b_ptr = _pick(in1, in2, b0_ptr, b1_ptr, b2_ptr, SPLIT_W)
        s_b = _pick(in1, in2, s_b0, s_b1, s_b2, SPLIT_W)
        acc += tl.load(b_ptr + offs_n * s_b, mask=mask_n & has_b, other=0.0).to(tl.float32)[None, :]
        if GATED:
            if HAS_B1:
                acc_up += tl.load(b1_ptr + offs_n * s_b1, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y = _activate(acc, ACT)
    if GATED:
        y = y * acc_up
    out_cols = col + offs_n
    out_mask = mask_m[:, None] & mask_n[None, :]
    if HAS_RES:
        y += tl.load(res_ptr + rows[:, None] * s_rm + out_cols[None, :], mask=out_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * s_om + out_cols[None, :], _rounded(y, out_ptr.dtype.element_ty, SOFT_BF16),
             mask=out_mask)


def run(call: FusedLinear) -> torch.Tensor:
    """Launch the kernel for a validated call; returns the new output tensor of shape call.out_shape.

    Allocates only the output; absent optional inputs are passed as pointers the kernel never reads (their HAS_*
    flag is off): an unused bias slot points at its weight, an unused weight slot at weight 0, the rest at x.
    """
    x = call.x2d
    m, k = x.shape
    out = torch.empty((m, call.n_out), dtype=x.dtype, device=x.device)
    if m == 0:
        return out.view(call.out_shape)
    count = len(call.weights)
    weights = list(call.weights) + [call.weights[0]] * (3 - count)
    biases = list(call.biases) + [None] * (3 - count)
    bias_ptrs = [w if b is None else b for w, b in zip(weights, biases)]
    n = [w.shape[0] for w in call.weights] + [0] * (3 - count)
    split = 1 if call.gated else count
    g = x if call.norm_weight is None else call.norm_weight
    beta = x if call.norm_bias is None else call.norm_bias
    res = x if call.residual2d is None else call.residual2d

    def grid(meta: dict) -> tuple[int]:
        n_blocks = sum(triton.cdiv(n_i, meta["BLOCK_N"]) for n_i in n[:split])
        return (triton.cdiv(m, meta["BLOCK_M"]) * n_blocks,)

    fused_linear_kernel[grid](
        x, *weights, *bias_ptrs, g, beta, res, out,
        m, k, *n, x.stride(0), *(w.stride(0) for w in weights), *(b.stride(0) for b in bias_ptrs),
        g.stride(0), beta.stride(0), res.stride(0), out.stride(0), float(call.eps),
        M_BUCKET=configs.m_bucket(m), SPLIT_W=split, GATED=call.gated, NORM=NORM_CODES[call.norm],
        HAS_G=call.norm_weight is not None, HAS_BETA=call.norm_bias is not None,
        HAS_BIAS=any(b is not None for b in biases), HAS_B0=biases[0] is not None, HAS_B1=biases[1] is not None, HAS_B2=biases[2] is not None,
        ACT=ACTIVATION_CODES[call.activation], HAS_RES=call.residual2d is not None,
        IEEE_F32=configs.interpreting() or x.dtype == torch.float32,
        SOFT_BF16=configs.interpreting() and x.dtype == torch.bfloat16,
    )
    return out.view(call.out_shape)
