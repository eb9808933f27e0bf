"""Selective-scan kernels: Mamba-1 (S6) and Mamba-2 (SSD), forward, backward and decode, in Triton and torch.

    from hal.kernels import ssm
    y = ssm.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=b, delta_softplus=True)       # Mamba-1
    y, final = ssm.chunk_scan(x, dt, A, B, C, chunk_size=256, D=D, return_final_state=True)      # Mamba-2
    y_t, state = ssm.step(x_t, state, dt_t, A, B_t, C_t, D=D)                                     # decode

Shapes follow mamba_ssm. The Triton kernels run on a CUDA GPU (or under TRITON_INTERPRET=1); elsewhere a chunked
torch path runs; ``resolve_backend`` says which. ``reference`` holds the float64 sequential ground truth.
See docs/ssm.md.
"""

from . import reference
from .api import chunk_scan, selective_scan
from .errors import ScanDtypeError, ScanInputError, ScanNonFiniteError, ScanUnsupportedError
from .inputs import MAX_TRITON_D_STATE, resolve_backend
from .step import causal_conv1d_step, step

__all__ = ["MAX_TRITON_D_STATE", "ScanDtypeError", "ScanInputError", "ScanNonFiniteError", "ScanUnsupportedError",
           "causal_conv1d_step", "chunk_scan", "reference", "resolve_backend", "selective_scan", "step"]
