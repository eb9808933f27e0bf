"""Which GPUs run which low-precision formats natively, from their compute capability.

Facts (datasheet: NVIDIA CUDA C++ Programming Guide, "Compute Capabilities" and the architecture whitepapers):
FP8 (E4M3/E5M2) tensor cores appear with Ada (8.9) and Hopper (9.0); the block-scaled formats MXFP8 and NVFP4
(E8M0 / E4M3 block scales read by the tensor cores) with Blackwell (10.x data-centre parts, 12.x consumer parts).
"""

from __future__ import annotations

import functools

import torch

from hal.errors import UnsupportedOp

FP8_MIN_CC = (8, 9)
BLOCK_SCALED_CCS = {10: ("mxfp8", "nvfp4"), 12: ("mxfp8", "nvfp4")}
CC_SOURCE = "datasheet:NVIDIA CUDA C++ Programming Guide, Compute Capabilities (FP8: 8.9+, MX/NVFP4: 10.x, 12.x)"


def fp8_unsupported_reason(compute_capability: tuple[int, int]) -> str | None:
    """Why a GPU of this compute capability has no FP8 tensor cores (None if it has them)."""
    if tuple(compute_capability) < FP8_MIN_CC:
        major, minor = compute_capability
        return (f"FP8 matmuls need tensor cores of compute capability 8.9 (Ada) or 9.0 (Hopper) and newer; this GPU "
                f"is {major}.{minor}")
    return None


def block_formats(compute_capability: tuple[int, int]) -> tuple[str, ...]:
    """The block-scaled formats the tensor cores of this compute capability read: () before Blackwell."""
    return BLOCK_SCALED_CCS.get(int(compute_capability[0]), ())


@functools.cache
def device_capability(index: int) -> tuple[int, int]:
    """torch.cuda.get_device_capability, remembered per device index (a fact of the machine)."""
    return torch.cuda.get_device_capability(index)


def require_fp8(device: torch.device) -> None:
    """Raise UnsupportedOp naming the fix if ``device`` is a CUDA GPU without FP8 tensor cores."""
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    reason = fp8_unsupported_reason(device_capability(index))
    if reason:
        raise UnsupportedOp(f"{reason} (cuda:{index}). Use fp8_training(..., fallback='bf16') to keep such layers in "
                            "bfloat16, or run on an H100/H200/L40S/B200.")
