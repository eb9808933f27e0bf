"""Blackwell's block-scaled formats, MXFP8 and NVFP4: quantise, dequantise, and a reference block-scaled matmul.

- MXFP8 (OCP Microscaling Formats (MX) Specification v1.0, 2023): blocks of 32 consecutive elements along the last
  axis share one E8M0 scale (a power of two, 2^-127 .. 2^127; code 255 is NaN); elements are E4M3. The spec's
  scale is 2^(floor(log2(amax)) - 8) (8: the exponent of E4M3's largest power of two), so a block's largest values
  can exceed 448 and saturate (``mode="floor"``); ``mode="rceil"`` takes 2^ceil(log2(amax / 448)) instead (the
  choice of NVIDIA's cuBLAS / Transformer Engine), which never saturates and spends up to one bit of range.
- NVFP4 (NVIDIA Blackwell architecture technical brief, 2024; Transformer Engine's NVFP4 recipe): blocks of 16
  share an E4M3 scale, and the tensor has one float32 scale ``amax / (6 * 448)`` so that every block scale fits
  E4M3's range; elements are E2M1 (0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives, no inf/NaN).

The data here is kept unpacked (one E2M1 code per uint8; ``pack_e2m1`` gives torch's float4_e2m1fn_x2 layout).
``block_scaled_matmul`` dequantises and multiplies in float32: the reference a native kernel must match. Which
formats a GPU's tensor cores read comes from its compute capability (``select_block_format``); no Blackwell GPU
was available when this was written, so no native block-scaled kernel is called: on every device the reference runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hal.errors import InvalidInput, ShapeError, UnsupportedOp
from hal.precision.formats import E2M1, E4M3, FloatFormat
from hal.precision.hardware import CC_SOURCE, block_formats

BLOCK_SIZE = {"mxfp8": 32, "nvfp4": 16}
#: E8M0 holds 2^-127 .. 2^127 with code = exponent + 127 (OCP MX v1.0).
E8M0_BIAS, E8M0_MIN_EXP, E8M0_MAX_EXP = 127, -127, 127
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
MX_MODES = ("floor", "rceil")


@dataclass(frozen=True)
class BlockScaledTensor:
    """Elements, per-block scales, and (NVFP4) the per-tensor scale of a tensor blocked along its last axis.

    ``elements``: E4M3 (MXFP8, torch.float8_e4m3fn) or E2M1 codes (NVFP4, uint8: bit 3 sign, bits 0-2 magnitude).
    ``block_scales``: E8M0 codes (MXFP8, uint8) or E4M3 values (NVFP4, torch.float8_e4m3fn), shape (..., K / block).
    ``tensor_scale``: NVFP4's float32 scale (0-d); 1 for MXFP8.
    """

    format: str
    elements: torch.Tensor
    block_scales: torch.Tensor
    tensor_scale: torch.Tensor

    @property
    def block_size(self) -> int:
        return BLOCK_SIZE[self.format]

    def scales(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The effective scale of every block, in ``dtype`` (NaN where a block held NaN)."""
        if self.format == "mxfp8":
            exp = self.block_scales.to(torch.int32) - E8M0_BIAS
            s = torch.exp2(exp.to(dtype))
            return torch.where(self.block_scales == 255, torch.full_like(s, float("nan")), s)
        return self.block_scales.to(dtype) * self.tensor_scale.to(dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        values = self.elements.to(dtype) if self.format == "mxfp8" else decode_e2m1(self.elements, dtype)
        blocks = values.unflatten(-1, (-1, self.block_size))
        return (blocks * self.scales(dtype).unsqueeze(-1)).flatten(-2)


def _blocks(x: torch.Tensor, size: int, name: str) -> torch.Tensor:
    if x.dim() < 1 or x.shape[-1] % size:
        raise ShapeError(f"{name} blocks the last axis in groups of {size}; got shape {tuple(x.shape)}. Pad the "
                         f"last axis to a multiple of {size} (zeros leave products unchanged)")
    if not x.dtype.is_floating_point:
        raise InvalidInput(f"{name} quantises floating tensors, got {x.dtype}")
    return x.float().unflatten(-1, (-1, size))


def quantize_mxfp8(x: torch.Tensor, mode: str = "floor") -> BlockScaledTensor:
    """MXFP8: E8M0 scale per 32 elements along the last axis, E4M3 elements (saturating); a block holding inf or
    NaN gets the NaN scale code, so it dequantises to NaN."""
    if mode not in MX_MODES:
        raise InvalidInput(f"mode must be one of {MX_MODES}, got {mode!r}")
    blocks = _blocks(x, BLOCK_SIZE["mxfp8"], "MXFP8")
    amax = blocks.abs().amax(dim=-1)
    if mode == "floor":
        _, e = torch.frexp(amax)  # amax = m * 2^e, m in [0.5, 1): floor(log2(amax)) = e - 1
        exp = e - 1 - E4M3.max_exponent
    else:
        m, e = torch.frexp(amax.double() / E4M3.max_value)  # exact test for a power of two (see docs/precision.md)
        exp = torch.where(m == 0.5, e - 1, e)
    exp = torch.where(amax == 0, torch.full_like(exp, E8M0_MIN_EXP), exp).clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)
    scaled = blocks / torch.exp2(exp.float()).unsqueeze(-1)
    elements = scaled.clamp(-E4M3.max_value, E4M3.max_value).to(E4M3.dtype).flatten(-2)
    codes = torch.where(torch.isfinite(amax), exp + E8M0_BIAS, torch.full_like(exp, 255)).to(torch.uint8)
    return BlockScaledTensor("mxfp8", elements, codes, torch.ones((), device=x.device))


def encode_e2m1(v: torch.Tensor) -> torch.Tensor:
    """E2M1 codes (uint8) of ``v`` rounded to nearest, ties to the even code, saturated at +-6; NaN -> 0."""
    grid = torch.tensor(E2M1_VALUES, device=v.device, dtype=torch.float32)
    a = torch.nan_to_num(v.float().abs(), nan=0.0).clamp(max=E2M1.max_value)
    hi = torch.bucketize(a, grid).clamp(max=len(E2M1_VALUES) - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = a - grid[lo], grid[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = torch.where(pick_hi, hi, lo)
    return (code | torch.where(v < 0, 8, 0)).to(torch.uint8)


def decode_e2m1(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values of E2M1 codes."""
    grid = torch.tensor(E2M1_VALUES, device=codes.device, dtype=dtype)
    mag = grid[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -mag, mag)


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """Two E2M1 codes per byte, the first of each pair in the low nibble (torch.float4_e2m1fn_x2's layout)."""
    if codes.shape[-1] % 2:
        raise ShapeError(f"packing pairs codes along the last axis; got odd length {codes.shape[-1]}")
    packed = (codes[..., 0::2] & 0xF) | ((codes[..., 1::2] & 0xF) << 4)
    return packed.view(torch.float4_e2m1fn_x2) if hasattr(torch, "float4_e2m1fn_x2") else packed


def quantize_nvfp4(x: torch.Tensor) -> BlockScaledTensor:
    """NVFP4: float32 tensor scale amax / (6 * 448), E4M3 scale per 16 elements, E2M1 elements."""
    blocks = _blocks(x, BLOCK_SIZE["nvfp4"], "NVFP4")
    amax_t = blocks.abs().amax()
    tensor_scale = amax_t / (E2M1.max_value * E4M3.max_value)
    tensor_scale = torch.where(tensor_scale == 0, torch.ones_like(tensor_scale), tensor_scale)
    block_amax = blocks.abs().amax(dim=-1)
    block_scales = (block_amax / E2M1.max_value / tensor_scale).clamp(max=E4M3.max_value).to(E4M3.dtype)
    effective = (block_scales.float() * tensor_scale).unsqueeze(-1)
    scaled = torch.where(effective > 0, blocks / torch.where(effective > 0, effective, 1.0), 0.0)
    return BlockScaledTensor("nvfp4", encode_e2m1(scaled).flatten(-2), block_scales, tensor_scale)


def quantize_block_scaled(x: torch.Tensor, format: str) -> BlockScaledTensor:
    """``x`` in "mxfp8" or "nvfp4"."""
    if format == "mxfp8":
        return quantize_mxfp8(x)
    if format == "nvfp4":
        return quantize_nvfp4(x)
    raise InvalidInput(f"unknown block-scaled format {format!r}; choose 'mxfp8' or 'nvfp4'")


def element_format(format: str) -> FloatFormat:
    """The element format of a block-scaled format (E4M3 for MXFP8, E2M1 for NVFP4)."""
    return E4M3 if format == "mxfp8" else E2M1


def select_block_format(compute_capability: tuple[int, int], prefer: str = "mxfp8") -> str:
    """The block-scaled format to use on a GPU of ``compute_capability``: ``prefer`` if its tensor cores read it.

    Raises UnsupportedOp before Blackwell (``CC_SOURCE`` says where the table comes from).
    """
    available = block_formats(compute_capability)
    if prefer not in BLOCK_SIZE:
        raise InvalidInput(f"unknown block-scaled format {prefer!r}; choose 'mxfp8' or 'nvfp4'")
    if prefer not in available:
        major, minor = compute_capability
        raise UnsupportedOp(f"{prefer} needs tensor cores of compute capability 10.x or 12.x (Blackwell); this GPU is "
                            f"{major}.{minor} ({CC_SOURCE}). Use the FP8 recipes (precision.fp8_training), or "
                            "block_scaled_matmul, which emulates the format anywhere")
    return prefer


def block_scaled_matmul(a: BlockScaledTensor, b: BlockScaledTensor, out_dtype: torch.dtype = torch.float32
                        ) -> torch.Tensor:
    """a (M, K) @ b (N, K).T for operands blocked along K: dequantise, multiply in float32 (float64 if asked)."""
    if a.format != b.format or a.elements.dim() != 2 or b.elements.dim() != 2:
        raise ShapeError(f"block_scaled_matmul takes two 2-D operands of one format, got {a.format} "
                         f"{tuple(a.elements.shape)} and {b.format} {tuple(b.elements.shape)}")
    if a.elements.shape[1] != b.elements.shape[1]:
        raise ShapeError(f"both operands are blocked along K; got K = {a.elements.shape[1]} and {b.elements.shape[1]}")
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    return (a.dequantize(work) @ b.dequantize(work).t()).to(out_dtype)
