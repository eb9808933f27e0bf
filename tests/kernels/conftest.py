"""Set-up of the kernel tests: without a CUDA GPU the Triton kernels run in Triton's interpreter, which must be
switched on before triton is first imported; this conftest does it when it runs first (otherwise the kernel tests
skip and say so). On a CUDA GPU the kernels run natively."""

import os
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")
