"""Where the Triton FP8 cast kernels run, decided without importing triton.

They run on CUDA tensors, and on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, which must be set
before triton is first imported), for float16 / bfloat16 / float32 input; never inside a torch.compile graph, whose
casts inductor fuses into its own kernels from the torch reference.
"""

from __future__ import annotations

import importlib.util

import torch

from hal.kernels import interpreting

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)



def triton_runs(device: torch.device) -> bool:
    """Whether the kernels can run on ``device``: triton importable, and a CUDA device or the CPU interpreter."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def kernel_takes(x: torch.Tensor) -> bool:
    """Whether the kernels can cast ``x`` here and now: a device they run on, a dtype they read, not compiling."""
    return x.dtype in KERNEL_DTYPES and triton_runs(x.device) and not torch.compiler.is_compiling()
