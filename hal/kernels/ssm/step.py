"""Decode steps: one token against a cached state, for both scans, and the causal conv1d step of a Mamba block.

``step`` continues exactly where a full-sequence scan stopped: feed it the state from
``selective_scan(..., return_last_state=True)`` or ``chunk_scan(..., return_final_state=True)`` and the next
token, and it returns that token's output and the new state, which equal what the full scan over the longer
sequence gives. It is a handful of elementwise torch ops and reductions in the state's dtype (float32 or float64),
so it runs on every device; it does not modify its inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ScanDtypeError, ScanInputError
from .reference import softplus

STATE_DTYPES = (torch.float32, torch.float64)


def _check_shape(name: str, t: torch.Tensor | None, expected: tuple[tuple[int, ...], ...], what: str) -> None:
    if t is not None and tuple(t.shape) not in expected:
        raise ScanInputError(f"{name} must be {what}, got {tuple(t.shape)}")


def _check_devices(named: dict[str, torch.Tensor | None]) -> None:
    devices = {n: t.device for n, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ScanInputError(f"all inputs must be on one device, got {devices}")


def _groups_to_units(t: torch.Tensor, units: int, name: str) -> torch.Tensor:
    """(batch, d_state) or (batch, groups, d_state) -> (batch, units, d_state), unit u in group u // (units/groups)."""
    if t.dim() == 2:
        t = t.unsqueeze(1)
    if t.dim() != 3 or t.shape[1] == 0 or units % t.shape[1]:
        raise ScanInputError(f"{name} must be (batch, d_state) or (batch, groups, d_state) with groups dividing "
                             f"{units}, got {tuple(t.shape)}")
    return t.repeat_interleave(units // t.shape[1], dim=1)


def step(x: torch.Tensor, state: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
         D: torch.Tensor | None = None, z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
         dt_softplus: bool = False, dt_limit: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step. Returns (y, new_state); the form follows the state's rank.

    S6 (Mamba-1), state (batch, channels, d_state): x, dt, z (batch, channels); A (channels, d_state); B, C
    (batch, d_state) or (batch, groups, d_state); D, dt_bias (channels,). dt_limit is not part of S6 and must be None.

    SSD (Mamba-2), state (batch, heads, head_dim, d_state): x, z (batch, heads, head_dim); dt (batch, heads);
    A, dt_bias (heads,); B, C (batch, groups, d_state); D (heads,) or (heads, head_dim); dt_limit as in
    ``chunk_scan`` (default (0, inf): the clamp always applies).

    y is in x's dtype; the state must be float32 or float64 and keeps its dtype.
    """
    tensors = {"x": x, "state": state, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias}
    for name, t in tensors.items():
        if t is not None and not (isinstance(t, torch.Tensor) and t.dtype.is_floating_point):
            raise ScanDtypeError(f"{name} must be a real floating tensor")
    _check_devices(tensors)
    if state.dtype not in STATE_DTYPES:
        raise ScanDtypeError(f"state must be float32 or float64 (the scans return it so), got {state.dtype}")
    if state.dim() == 3:
        if dt_limit is not None:
            raise ScanInputError("dt_limit belongs to the SSD (Mamba-2) form; S6 has none, pass dt_limit=None")
        return _s6_step(x, state, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if state.dim() == 4:
        return _ssd_step(x, state, dt, A, B, C, D, z, dt_bias, dt_softplus,
                         (0.0, float("inf")) if dt_limit is None else dt_limit)
    raise ScanInputError(f"state must be (batch, channels, d_state) for S6 or (batch, heads, head_dim, d_state) "
                         f"for SSD, got {tuple(state.shape)}")


def _s6_step(x, state, dt, A, B, C, D, z, dt_bias, dt_softplus):
    batch, channels, d_state = state.shape
    _check_shape("x", x, ((batch, channels),), f"(batch, channels) = {(batch, channels)}")
    _check_shape("dt", dt, ((batch, channels),), f"(batch, channels) = {(batch, channels)}")
    _check_shape("A", A, ((channels, d_state),), f"(channels, d_state) = {(channels, d_state)}")
    _check_shape("D", D, ((channels,),), f"(channels,) = ({channels},)")
    _check_shape("z", z, ((batch, channels),), f"(batch, channels) = {(batch, channels)}")
    _check_shape("dt_bias", dt_bias, ((channels,),), f"(channels,) = ({channels},)")
    cdt = state.dtype
    Bu = _groups_to_units(B, channels, "B").to(cdt)
    Cu = _groups_to_units(C, channels, "C").to(cdt)
    if Bu.shape != state.shape or Cu.shape != state.shape:
        raise ScanInputError(f"B and C must have d_state={d_state} and batch={batch}, got {tuple(B.shape)}, "
                             f"{tuple(C.shape)}")
    xs, d = x.to(cdt), dt.to(cdt)
    if dt_bias is not None:
        d = d + dt_bias.to(cdt)
    if dt_softplus:
        d = softplus(d)
    new_state = torch.exp(d[..., None] * A.to(cdt)) * state + (d * xs)[..., None] * Bu
    y = (new_state * Cu).sum(-1)
    if D is not None:
        y = y + D.to(cdt) * xs
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype), new_state


def _ssd_step(x, state, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit):
    batch, heads, head_dim, d_state = state.shape
    _check_shape("x", x, ((batch, heads, head_dim),), f"(batch, heads, head_dim) = {(batch, heads, head_dim)}")
    _check_shape("dt", dt, ((batch, heads),), f"(batch, heads) = {(batch, heads)}")
    _check_shape("A", A, ((heads,),), f"(heads,) = ({heads},)")
    _check_shape("D", D, ((heads,), (heads, head_dim)), f"(heads,) or (heads, head_dim) = {(heads, head_dim)}")
    _check_shape("z", z, ((batch, heads, head_dim),), f"(batch, heads, head_dim) = {(batch, heads, head_dim)}")
    _check_shape("dt_bias", dt_bias, ((heads,),), f"(heads,) = ({heads},)")
    if B.dim() != 3 or C.shape != B.shape:
        raise ScanInputError(f"B and C must both be (batch, groups, d_state), got {tuple(B.shape)}, {tuple(C.shape)}")
    cdt = state.dtype
    Bh = _groups_to_units(B, heads, "B").to(cdt)
    Ch = _groups_to_units(C, heads, "C").to(cdt)
    if Bh.shape != (batch, heads, d_state):
        raise ScanInputError(f"B and C must be (batch, groups, d_state) with batch={batch}, d_state={d_state}, "
                             f"got {tuple(B.shape)}")
    lo, hi = (float(v) for v in dt_limit)
    if lo > hi:
        raise ScanInputError(f"dt_limit must be (min, max) with min <= max, got {dt_limit!r}")
    xs, d = x.to(cdt), dt.to(cdt)
    if dt_bias is not None:
        d = d + dt_bias.to(cdt)
    if dt_softplus:
        d = softplus(d)
    d = d.clamp(lo, hi)
    decay = torch.exp(d * A.to(cdt))[..., None, None]
    new_state = decay * state + (d[..., None] * xs)[..., None] * Bh[:, :, None, :]
    y = (new_state * Ch[:, :, None, :]).sum(-1)
    if D is not None:
        Dc = D.to(cdt)
        y = y + (Dc[:, None] if Dc.dim() == 1 else Dc) * xs
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype), new_state


def causal_conv1d_step(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None = None, activation: str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a depthwise causal conv1d (a Mamba block's short convolution). Returns (y, new_conv_state).

    x: (batch, channels); conv_state: (batch, channels, width), the last ``width`` inputs oldest first (zeros
    before the sequence starts), the new one ending with x; weight: (channels, width) or nn.Conv1d's
    (channels, 1, width); bias: (channels,); activation: None or "silu". y equals position t of
    ``F.conv1d(x_seq, weight, bias, padding=width - 1, groups=channels)[..., :seqlen]``.
    """
    if activation not in (None, "silu"):
        raise ScanInputError(f"activation must be None or 'silu', got {activation!r}")
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight[:, 0]
    if conv_state.dim() != 3 or x.shape != conv_state.shape[:2] or weight.shape != (conv_state.shape[1],
                                                                                    conv_state.shape[2]):
        raise ScanInputError(f"x must be (batch, channels), conv_state (batch, channels, width) and weight "
                             f"(channels, width); got {tuple(x.shape)}, {tuple(conv_state.shape)}, "
                             f"{tuple(weight.shape)}")
    _check_shape("bias", bias, ((conv_state.shape[1],),), f"(channels,) = ({conv_state.shape[1]},)")
    _check_devices({"x": x, "conv_state": conv_state, "weight": weight, "bias": bias})
    new_state = torch.cat([conv_state[:, :, 1:], x.to(conv_state.dtype)[:, :, None]], dim=-1)
    y = (new_state * weight.to(conv_state.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(y.dtype)
    if activation == "silu":
        y = F.silu(y)
    return y.to(x.dtype), new_state
