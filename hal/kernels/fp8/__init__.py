"""FP8 casts with the amax reduction fused in: Triton kernels and their torch reference (the same bits).

    from hal.kernels import fp8
    out = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale, clipped = fp8.quantize_into(x, out)        # out ~= x / scale, one dynamic scale; kernels where they run
    data, scale, clipped = fp8.reference.quantize(x, torch.float8_e5m2, axis=1)   # the torch reference, rowwise

``cast`` holds the kernels' launch sequences (tensorwise, rowwise, delayed, fused with SiLU·mul or RMSNorm),
``reference`` the scale and rounding math in plain torch, ``backend`` where the kernels run. Each ``x * s`` is
rounded once to FP8 from ``x``'s own dtype on every path. Imports torch only; triton is imported when a kernel runs.
hal.precision (FP8 training) and the NVIDIA driver's ``?matmul_precision=fp8`` use these.
"""

from hal.kernels.fp8 import reference
from hal.kernels.fp8.backend import KERNEL_DTYPES, interpreting, kernel_takes, triton_runs
from hal.kernels.fp8.cast import CastResult, cast_rowwise, cast_tensorwise, quantize_into
from hal.kernels.fp8.errors import Fp8CastError

__all__ = ["KERNEL_DTYPES", "CastResult", "Fp8CastError", "cast_rowwise", "cast_tensorwise", "interpreting",
           "kernel_takes", "quantize_into", "reference", "triton_runs"]
