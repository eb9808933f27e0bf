"""The two full-sequence scans users call: Mamba-1's selective scan (S6) and Mamba-2's chunked scan (SSD).

Both validate their inputs, pick a backend (``resolve_backend``: Triton kernels on a CUDA device or under
TRITON_INTERPRET=1, else the chunked torch path) and differentiate through autograd on either backend.
The Triton modules are imported only when they run, so this module imports with torch alone.
"""

from __future__ import annotations

import torch

from .inputs import (
    TORCH_DTYPES,
    TRITON_DTYPES,
    check_finite_inputs,
    check_s6,
    check_ssd,
    check_triton_d_state,
    resolve_backend,
)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, seq_idx: torch.Tensor | None = None,
                   cu_seqlens: torch.Tensor | None = None, backend: str = "auto",
                   check_finite: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1's selective scan (S6), with mamba_ssm's ``selective_scan_fn`` shapes.

    u, delta, z: (batch, channels, seqlen); A: (channels, d_state); B, C: (batch, d_state, seqlen) or grouped
    (batch, groups, d_state, seqlen); D, delta_bias: (channels,). Per channel and state:
    ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = C_t . h_t + D u_t``, ``out = y * silu(z)``, with
    ``delta = softplus(delta + delta_bias)`` when asked (linear above 20, as mamba_ssm).

    Packed sequences: ``seq_idx`` (batch, seqlen) labels each position's document (the state restarts where the
    label changes), or ``cu_seqlens`` (documents' cumulative lengths, batch 1). ``return_last_state`` also returns
    the state after the last position, (batch, channels, d_state) in float32 (float64 for float64 inputs), and it
    is differentiable. ``backend``: "auto", "triton" or "torch" (see ``resolve_backend``). Non-finite inputs
    propagate (every later output of the channel's row may be NaN, across document boundaries too) unless
    ``check_finite`` is set, which raises ScanNonFiniteError at the cost of a device sync per input.
    """
    backend = resolve_backend(u.device if isinstance(u, torch.Tensor) else "cpu",
                              u.dtype if isinstance(u, torch.Tensor) else torch.float32, backend)
    allowed = TORCH_DTYPES if backend == "torch" else TRITON_DTYPES
    inp = check_s6(u, delta, A, B, C, D, z, delta_bias, seq_idx, cu_seqlens, allowed)
    if check_finite:
        check_finite_inputs({"u": inp.u, "delta": inp.delta, "A": inp.A, "B": inp.B, "C": inp.C, "D": inp.D,
                             "z": inp.z, "delta_bias": inp.delta_bias})
    if backend == "torch":
        from .torch_scan import selective_scan_torch

        out, last = selective_scan_torch(inp, delta_softplus)
    else:
        check_triton_d_state(inp.shape[3])
        from .s6 import selective_scan_triton

        out, last = selective_scan_triton(inp, delta_softplus)
    return (out, last) if return_last_state else out


def chunk_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               chunk_size: int = 256, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
               dt_bias: torch.Tensor | None = None, initial_states: torch.Tensor | None = None,
               seq_idx: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
               dt_softplus: bool = False, dt_limit: tuple[float, float] = (0.0, float("inf")),
               return_final_state: bool = False, backend: str = "auto",
               check_finite: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2's state-space-dual scan (SSD), with mamba_ssm's ``mamba_chunk_scan_combined`` shapes.

    x, z: (batch, seqlen, heads, head_dim); dt: (batch, seqlen, heads); A: (heads,); B, C: (batch, seqlen, groups,
    d_state), heads % groups == 0; D: (heads,) or (heads, head_dim); dt_bias: (heads,); initial_states:
    (batch, heads, head_dim, d_state). Per head: ``S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T``,
    ``y_t = S_t C_t + D x_t``, ``out = y * silu(z)``, with ``dt = clamp(softplus(dt + dt_bias), *dt_limit)``
    (bias and softplus optional; the clamp always applies, so a negative dt becomes 0 under the default limits,
    as in mamba_ssm).

    ``chunk_size`` is the chunk length of the torch path's dual form; the Triton kernels use their own chunk
    length (a tile size from configs.py), which changes only rounding. Packed sequences: ``seq_idx`` or
    ``cu_seqlens`` as for ``selective_scan``; the initial state belongs to the first document. The final state
    (``return_final_state``) is float32 (float64 for float64 inputs) and differentiable, as is ``initial_states``.
    ``backend`` and ``check_finite`` as for ``selective_scan``.
    """
    backend = resolve_backend(x.device if isinstance(x, torch.Tensor) else "cpu",
                              x.dtype if isinstance(x, torch.Tensor) else torch.float32, backend)
    allowed = TORCH_DTYPES if backend == "torch" else TRITON_DTYPES
    inp = check_ssd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_limit,
                    allowed)
    if check_finite:
        check_finite_inputs({"x": inp.x, "dt": inp.dt, "A": inp.A, "B": inp.B, "C": inp.C, "D": inp.D, "z": inp.z,
                             "dt_bias": inp.dt_bias, "initial_states": inp.initial_states})
    if backend == "torch":
        from .torch_scan import chunk_scan_torch

        out, final = chunk_scan_torch(inp, chunk_size, dt_softplus)
    else:
        check_triton_d_state(inp.shape[5])
        from .ssd import chunk_scan_triton

        out, final = chunk_scan_triton(inp, dt_softplus)
    return (out, final) if return_final_state else out
