"""Triton kernels that cast to FP8 with the amax reduction fused in, optionally after the op that precedes the cast.

One kernel, specialised by two compile-time switches:

- ``OP``: what is cast. ``IDENTITY`` (the tensor itself), ``SILU_MUL`` (silu(gate) * up, the SwiGLU product feeding a
  down projection) or ``RMSNORM`` (x * rsqrt(mean(x^2) + eps) * weight, feeding the projections after a norm). The op
  is computed in float32 and never written out in high precision: the kernel reads its inputs and writes FP8.
- ``MODE``: ``AMAX`` (the tensorwise amax, atomically combined across programs), ``CAST`` (cast with one scale
  computed in-kernel from an amax in memory: the second pass of tensorwise dynamic scaling, or the only pass of
  delayed scaling, which also reduces the amax of what it casts for the history), ``ROWWISE`` (per slice: amax,
  scale and cast in one program, so rowwise scaling reads its input from memory once and again from cache).

The tensor is seen as (n_o, n_r): ``r`` is the reduced axis (the scale is shared along it), ``o`` the kept one;
strides make any 2-D layout and either axis work, and the FP8 output can be written row-major, column-major or both
in the same pass (the layouts ``torch._scaled_mm`` wants for the forward and the two backward products), or into a
view of a larger, zero-padded buffer.

Each program owns BLOCK_O slices and walks the reduced axis BLOCK_R at a time. The scale math is the same as
``hal.kernels.fp8.reference`` (float64 division, power-of-two rounding by clearing mantissa bits, IEEE reciprocal),
and so is the rounding: each ``x * s`` is rounded once to FP8, as the float32 product rounded to odd (its exact error
from an FMA) and then to nearest even, so the kernels and the torch path agree bit for bit.

Under ``TRITON_INTERPRET=1`` the final rounding to FP8 is done in software (``SOFT_CAST``): Triton 3.9's interpreter
casts wrongly when rounding carries into the next binade (126 -> 64 instead of 128 in E4M3) and turns NaN into 384.
On a GPU the hardware conversion (round to nearest even) runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hal.kernels.fp8.backend import interpreting

IDENTITY, SILU_MUL, RMSNORM = 0, 1, 2
MODE_AMAX, MODE_CAST, MODE_ROWWISE = 0, 1, 2
#: 1.5 * 2^23: adding and subtracting it rounds a float32 of magnitude < 2^22 to an integer, half to even.
ROUND_MAGIC = 12582912.0


@triton.jit
def _encode_fp8(y, MANT: tl.constexpr, BIAS: tl.constexpr, SUB_INV: tl.constexpr):
    """uint8 codes of y (float32, already saturated; NaN for non-finite) rounded to nearest even in the format.

    SUB_INV is 1 / the smallest subnormal, 2^(BIAS - 1 + MANT)."""
    sign = (y.to(tl.int32, bitcast=True) >> 31) & 1
    mag = tl.abs(y)
    e = ((mag.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.maximum(e, 1 - BIAS)  # subnormals share the quantum of the smallest normal binade
    q_exp = e - MANT
    inv_quantum = ((127 - q_exp) << 23).to(tl.float32, bitcast=True)
    quantum = ((127 + q_exp) << 23).to(tl.float32, bitcast=True)
    r = ((mag * inv_quantum + ROUND_MAGIC) - ROUND_MAGIC) * quantum  # exact value of the format
    r_bits = r.to(tl.int32, bitcast=True)
    r_exp = ((r_bits >> 23) & 0xFF) - 127
    normal = ((r_exp + BIAS) << MANT) | ((r_bits & 0x7FFFFF) >> (23 - MANT))
    is_normal = r_exp >= 1 - BIAS
    subnormal = (tl.where(is_normal | (r != r), 0.0, r) * SUB_INV).to(tl.int32)  # in range: < 2^MANT
    code = tl.where(is_normal, normal, subnormal) | (sign << 7)
    code = tl.where(y != y, 0x7F, code)
    return code.to(tl.uint8)


@triton.jit
def _scale_from_amax(a, FMAX: tl.constexpr, FLOOR: tl.constexpr, POW2: tl.constexpr):
    """fmt.max / max(amax, floor) in float64, rounded to float32; the power of two below it when POW2."""
    a64 = a.to(tl.float64)
    a64 = tl.where(a64 < FLOOR, FLOOR, a64)
    s = (FMAX / a64).to(tl.float32)
    if POW2:
        s = (s.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    return s


@triton.jit
def _op_tile(x_ptr, x2_ptr, nw_ptr, rstd, offs_r, offs_o, mask, n_r, sx_o, sx_r, s2_o, s2_r, OP: tl.constexpr):
    """The value to cast at tile (r, o), in float32: x, silu(x) * x2, or x * rstd[o] * weight[r]."""
    x = tl.load(x_ptr + offs_o[None, :] * sx_o + offs_r[:, None] * sx_r, mask=mask, other=0.0).to(tl.float32)
    if OP == 1:
        up = tl.load(x2_ptr + offs_o[None, :] * s2_o + offs_r[:, None] * s2_r, mask=mask, other=0.0).to(tl.float32)
        x = x * tl.sigmoid(x) * up
    if OP == 2:
        w = tl.load(nw_ptr + offs_r, mask=offs_r < n_r, other=0.0).to(tl.float32)
        x = x * rstd[None, :] * w[:, None]
    return x


@triton.jit
def _store_fp8(y, out_ptr, offs_r, offs_o, mask, s_o, s_r, SOFT_CAST: tl.constexpr, MANT: tl.constexpr,
               BIAS: tl.constexpr, SUB_INV: tl.constexpr):
    ptrs = out_ptr + offs_o[None, :] * s_o + offs_r[:, None] * s_r
    if SOFT_CAST:
        tl.store(ptrs, _encode_fp8(y, MANT, BIAS, SUB_INV), mask=mask)
    else:
        tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _magnitude(y):
    """|y| for the amax, with NaN counted as inf: GPU max instructions drop NaN, and a slice holding one must
    dequantise to NaN (an infinite amax gives scale 0 and dequantisation scale inf) as on the torch path."""
    return tl.where(y != y, float("inf"), tl.abs(y))


@triton.jit
def _round_to_odd(hi, lo):
    """The float32 neighbour of the exact hi + lo with an odd last bit when lo is not 0, else hi (zero, inf and NaN
    kept): rounded on to FP8 to nearest even, this is one rounding of the exact value."""
    bits = hi.to(tl.int32, bitcast=True)
    inexact = (lo != 0.0) & (tl.abs(hi) < float("inf")) & (hi != 0.0) & ((bits & 1) == 0)
    away_from_zero = (lo > 0.0) == (hi > 0.0)
    bits = tl.where(inexact, tl.where(away_from_zero, bits + 1, bits - 1), bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _saturate(y, poisoned, FMAX: tl.constexpr):
    """NaN where the input or its scale was not finite, beyond +-FMAX -> +-FMAX (a float32 overflow of a finite
    input too), NaN kept (comparisons with NaN are false)."""
    y = tl.where(poisoned, float("nan"), y)
    return tl.where(y > FMAX, FMAX, tl.where(y < -FMAX, -FMAX, y))


@triton.jit
def quantize_kernel(
    x_ptr, x2_ptr, nw_ptr, out_row_ptr, out_col_ptr, amax_ptr, amax_out_ptr, scale_out_ptr, clip_ptr, rstd_ptr,
    n_o, n_r, sx_o, sx_r, s2_o, s2_r, sr_o, sr_r, sc_o, sc_r, eps,
    OP: tl.constexpr, MODE: tl.constexpr, POW2: tl.constexpr, WRITE_ROW: tl.constexpr, WRITE_COL: tl.constexpr,
    AMAX_OUT: tl.constexpr, RSTD_OUT: tl.constexpr, SOFT_CAST: tl.constexpr,
    FMAX: tl.constexpr, FLOOR: tl.constexpr, MANT: tl.constexpr, BIAS: tl.constexpr, SUB_INV: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_O: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_o = pid * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_o = offs_o < n_o
    rstd = tl.zeros([BLOCK_O], dtype=tl.float32)
    if OP == 2:
        sumsq = tl.zeros([BLOCK_O], dtype=tl.float32)
        for start in range(0, n_r, BLOCK_R):
            offs_r = start + tl.arange(0, BLOCK_R)
            m = (offs_r[:, None] < n_r) & mask_o[None, :]
            x = tl.load(x_ptr + offs_o[None, :] * sx_o + offs_r[:, None] * sx_r, mask=m, other=0.0).to(tl.float32)
            sumsq += tl.sum(x * x, axis=0)
        rstd = 1.0 / tl.sqrt_rn(sumsq / n_r + eps)
        if RSTD_OUT:
            tl.store(rstd_ptr + offs_o, rstd, mask=mask_o)

    if MODE == 0:  # tensorwise amax
        running = tl.zeros([BLOCK_O], dtype=tl.float32)
        for start in range(0, n_r, BLOCK_R):
            offs_r = start + tl.arange(0, BLOCK_R)
            m = (offs_r[:, None] < n_r) & mask_o[None, :]
            y = _op_tile(x_ptr, x2_ptr, nw_ptr, rstd, offs_r, offs_o, m, n_r, sx_o, sx_r, s2_o, s2_r, OP)
            running = tl.maximum(running, tl.max(tl.where(m, _magnitude(y), 0.0), axis=0))
        tl.atomic_max(amax_ptr, tl.max(running, axis=0))
    else:
        if MODE == 1:  # one scale for the tensor, from the amax in memory
            s = _scale_from_amax(tl.load(amax_ptr), FMAX, FLOOR, POW2)
            if pid == 0:
                tl.store(scale_out_ptr, tl.math.div_rn(1.0, s))
            scale = tl.zeros([BLOCK_O], dtype=tl.float32) + s
        else:  # rowwise: this program's slices' amax, then their scales
            running = tl.zeros([BLOCK_O], dtype=tl.float32)
            for start in range(0, n_r, BLOCK_R):
                offs_r = start + tl.arange(0, BLOCK_R)
                m = (offs_r[:, None] < n_r) & mask_o[None, :]
                y = _op_tile(x_ptr, x2_ptr, nw_ptr, rstd, offs_r, offs_o, m, n_r, sx_o, sx_r, s2_o, s2_r, OP)
                running = tl.maximum(running, tl.max(tl.where(m, _magnitude(y), 0.0), axis=0))
            scale = _scale_from_amax(running, FMAX, FLOOR, POW2)
            tl.store(scale_out_ptr + offs_o, tl.math.div_rn(1.0, scale), mask=mask_o)
        scale_bad = (scale != scale) | (tl.abs(scale) == float("inf"))  # a NaN amax's power-of-two scale is inf
        clipped = tl.zeros([BLOCK_O], dtype=tl.int32)
        seen = tl.zeros([BLOCK_O], dtype=tl.float32)
        for start in range(0, n_r, BLOCK_R):
            offs_r = start + tl.arange(0, BLOCK_R)
            m = (offs_r[:, None] < n_r) & mask_o[None, :]
            y = _op_tile(x_ptr, x2_ptr, nw_ptr, rstd, offs_r, offs_o, m, n_r, sx_o, sx_r, s2_o, s2_r, OP)
            if AMAX_OUT:
                seen = tl.maximum(seen, tl.max(tl.where(m, _magnitude(y), 0.0), axis=0))
            poisoned = (tl.abs(y) == float("inf")) | scale_bad[None, :]
            hi = y * scale[None, :]
            lo = tl.fma(y, scale[None, :], -hi)  # the exact error of the float32 product
            over = (tl.abs(hi) > FMAX) & (tl.abs(y) != float("inf")) & m
            clipped += tl.sum(over.to(tl.int32), axis=0)
            y = _saturate(_round_to_odd(hi, lo), poisoned, FMAX)
            if WRITE_ROW:
                _store_fp8(y, out_row_ptr, offs_r, offs_o, m, sr_o, sr_r, SOFT_CAST, MANT, BIAS, SUB_INV)
            if WRITE_COL:
                _store_fp8(y, out_col_ptr, offs_r, offs_o, m, sc_o, sc_r, SOFT_CAST, MANT, BIAS, SUB_INV)
        tl.atomic_add(clip_ptr, tl.sum(clipped, axis=0))
        if AMAX_OUT:
            tl.atomic_max(amax_out_ptr, tl.max(seen, axis=0))


def blocks(n_o: int, n_r: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_O): about 4096 elements a tile on a GPU; small under the interpreter, so tests cross tiles."""
    if interpreting():
        return 16, 8
    block_r = min(256, triton.next_power_of_2(max(n_r, 16)))
    block_o = max(1, min(4096 // block_r, triton.next_power_of_2(max(n_o, 1))))
    return block_r, block_o


def launch(x: torch.Tensor, *, op: int, mode: int, fmt_max: float, amax_floor: float, mantissa_bits: int,
           bias: int, power_of_2: bool, reduce_dim: int, out_row: torch.Tensor | None, out_col: torch.Tensor | None,
           amax_in: torch.Tensor | None, amax_out: torch.Tensor | None, scale_out: torch.Tensor,
           clipped: torch.Tensor, x2: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
           rstd_out: torch.Tensor | None = None, eps: float = 0.0) -> None:
    """Run quantize_kernel over the 2-D ``x``, reducing along ``reduce_dim`` (0 or 1); see the module docstring.

    The callers (hal.kernels.fp8.cast) allocate the outputs; this function only maps tensors to pointers and strides.
    """
    n_r, n_o = x.shape[reduce_dim], x.shape[1 - reduce_dim]

    def strides(t: torch.Tensor | None) -> tuple[int, int]:
        if t is None:
            return 0, 0
        return t.stride(1 - reduce_dim), t.stride(reduce_dim)

    soft = interpreting()

    def pointer(t: torch.Tensor | None) -> torch.Tensor:
        if t is None:
            return scale_out  # never read or written: its WRITE_* / AMAX_OUT / RSTD_OUT flag is off
        return t.view(torch.uint8) if soft and t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else t

    block_r, block_o = blocks(n_o, n_r)
    grid = (triton.cdiv(n_o, block_o),)
    quantize_kernel[grid](
        x, pointer(x2), pointer(norm_weight), pointer(out_row), pointer(out_col), pointer(amax_in),
        pointer(amax_out), scale_out, clipped, pointer(rstd_out),
        n_o, n_r, *strides(x), *strides(x2), *strides(out_row), *strides(out_col), eps,
        OP=op, MODE=mode, POW2=power_of_2, WRITE_ROW=out_row is not None, WRITE_COL=out_col is not None,
        AMAX_OUT=amax_out is not None, RSTD_OUT=rstd_out is not None, SOFT_CAST=soft,
        FMAX=fmt_max, FLOOR=amax_floor, MANT=mantissa_bits, BIAS=bias,
        SUB_INV=2.0 ** (bias - 1 + mantissa_bits), BLOCK_R=block_r, BLOCK_O=block_o,
        num_warps=4,
    )
