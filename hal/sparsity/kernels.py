"""Semi-structured (2:4) sparse Linear layers on NVIDIA GPUs, through torch's own kernels.

``torch.sparse.to_sparse_semi_structured`` compresses a 2:4 weight into values plus metadata; ``F.linear`` with such a
weight runs CUTLASS's sparse GEMM or cuSPARSELt's (``torch._cslt_sparse_mm``), chosen here by the subclass
(``SparseSemiStructuredTensorCUTLASS`` / ``...CUSPARSELT``), never by torch's process-wide flag. They need a CUDA GPU
of compute capability 8.0 or newer (sparse tensor cores: Ampere and later; torch's CUTLASS kernel only on 8.x, it
refused an H200 (9.0) when measured) and float16/bfloat16 weights; shape limits are torch's and are reported as its
own error text. On the CPU there is no
sparse kernel: the masked dense weight runs, and callers say so.

The compressed layer is for inference: its weight does not train (fine-tune with the masked dense layer).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hal.errors import UnsupportedOp
from hal.sparsity.pattern import is_2_4

BACKENDS = ("cusparselt", "cutlass")
DTYPES = (torch.float16, torch.bfloat16)
#: Sparse tensor cores appear with Ampere (datasheet: NVIDIA A100 Tensor Core GPU Architecture whitepaper, 2020).
MIN_CC = (8, 0)


def unavailable_reason(device: torch.device, dtype: torch.dtype, backend: str = "cutlass") -> str | None:
    """Why a 2:4 kernel of ``backend`` cannot run for ``dtype`` weights on ``device`` (None if it can)."""
    if backend not in BACKENDS:
        return f"unknown 2:4 backend {backend!r}; choose one of {BACKENDS}"
    if device.type != "cuda":
        return (f"no 2:4 sparse kernel on {device.type}: torch's semi-structured kernels (CUTLASS, cuSPARSELt) run on "
                "CUDA GPUs of compute capability 8.0+; the masked dense weight runs instead")
    index = device.index if device.index is not None else torch.cuda.current_device()
    cc = torch.cuda.get_device_capability(index)
    if cc < MIN_CC:
        return f"2:4 sparse tensor cores need compute capability 8.0+ (Ampere); cuda:{index} is {cc[0]}.{cc[1]}"
    if dtype not in DTYPES:
        return f"hal runs the 2:4 kernels on float16/bfloat16 weights, not {dtype}; cast the layer"
    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        return "this torch build has no cuSPARSELt"
    if backend == "cutlass" and cc[0] != 8:
        return (f"torch's CUTLASS 2:4 kernel runs on compute capability 8.x only (measured: it refuses 9.0); "
                f"cuda:{index} is {cc[0]}.{cc[1]}: use cuSPARSELt")
    return None


class SemiStructuredLinear(nn.Module):
    """A Linear whose 2:4 weight is held compressed and multiplied by a sparse tensor-core kernel (inference)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, backend: str):
        super().__init__()
        reason = unavailable_reason(weight.device, weight.dtype, backend)
        if reason:
            raise UnsupportedOp(reason)
        dense = weight.detach()
        if not is_2_4(dense):
            raise UnsupportedOp("the weight is not 2:4 (run sparsity.prune_2_4 first)")
        kind = (torch.sparse.SparseSemiStructuredTensorCUSPARSELT if backend == "cusparselt"
                else torch.sparse.SparseSemiStructuredTensorCUTLASS)
        try:
            compressed = kind.from_dense(dense.contiguous())
        except (RuntimeError, ValueError) as exc:
            raise UnsupportedOp(f"{backend} cannot compress a {tuple(dense.shape)} {dense.dtype} weight: {exc}") from exc
        self.weight = nn.Parameter(compressed, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.backend = backend
        self.in_features, self.out_features = dense.shape[1], dense.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.reshape(-1, self.in_features), self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, backend={self.backend}"


def semi_structured_linear(layer: nn.Linear, weight: torch.Tensor, backend: str) -> nn.Module:
    """The default sparse-layer factory of sparsity.accelerate: SemiStructuredLinear of the layer's 2:4 weight."""
    return SemiStructuredLinear(weight, layer.bias, backend)
