"""Helpers the hal.precision tests share."""

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
KERNEL_RUNS = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if CUDA else "cpu"

needs_kernel = pytest.mark.skipif(
    not KERNEL_RUNS, reason="no CUDA GPU, and triton was imported before TRITON_INTERPRET=1 could be set "
                            "(run: TRITON_INTERPRET=1 pytest tests/precision)")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius difference of a from b, in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def same_codes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two FP8 tensors hold the same values (NaN codes compared as NaN, whatever their sign bit)."""
    nan_a, nan_b = torch.isnan(a.float()), torch.isnan(b.float())
    return torch.equal(nan_a, nan_b) and torch.equal(a.view(torch.uint8)[~nan_a], b.view(torch.uint8)[~nan_b])
