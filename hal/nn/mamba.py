"""Mamba (Gu & Dao 2023) and Mamba-2 (Dao & Gu 2024) blocks over ``hal.kernels.ssm``, with decode caches.

    block = MambaBlock(d_model=256)                  # or Mamba2Block(d_model=256, head_dim=64)
    y = block(x)                                     # x (batch, seqlen, d_model) -> (batch, seqlen, d_model)
    cache = block.allocate_cache(batch=2)
    y = block(prompt, cache)                         # prefill: fills the conv and SSM states
    y_t = block.step(x_t, cache)                     # one token (batch, d_model), the states updated in place

A block is the sequence mixer alone (mamba_ssm's ``Mamba``/``Mamba2``), without the pre-norm and residual that a
stack puts around it (``hal.nn.jamba``). The structure and the initialisations follow the papers and mamba_ssm's
``mamba_simple.py`` / ``mamba2.py``; docs/models.md lists them with their sources. The scans run on whatever
``hal.kernels.ssm`` picks for the tensors' device (Triton on a GPU, the chunked torch path elsewhere; ``backend``
forces one). Decode keeps the states on the parameters' device in float32 (float64 for a float64 block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hal.errors import DTypeError, InvalidInput, ShapeError
from hal.kernels import ssm


@dataclass
class MambaCache:
    """The decode state of one Mamba or Mamba-2 block, on the block's device.

    conv_state: (batch, conv_channels, d_conv), the last d_conv inputs of the short convolution, oldest first
    (zeros before the sequence starts). ssm_state: (batch, d_inner, d_state) for Mamba, (batch, heads, head_dim,
    d_state) for Mamba-2, float32 (float64 for a float64 block). seqlen: tokens consumed so far.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor
    seqlen: int = 0


def inverse_softplus_dt_bias(size: int, dt_min: float, dt_max: float, dt_init_floor: float,
                             device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A dt bias whose softplus is log-uniform in [dt_min, dt_max] (floored at dt_init_floor), per unit.

    Gu & Dao 2023 (section 3.6 and mamba_ssm's dt init): dt = exp(U(log dt_min, log dt_max)); the bias is
    softplus^-1(dt) = dt + log(1 - exp(-dt)), so that the initial step sizes span the chosen time scales.
    """
    if not 0 < dt_min <= dt_max:
        raise InvalidInput(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
    u = torch.rand(size, device=device, dtype=torch.float32 if dtype is None else dtype)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def _wide(t: torch.Tensor) -> torch.Tensor:
    """t in float32, or float64 if it is float64: A, D, dt biases and norms are computed at least in float32
    (a 16-bit A_log would make exp lose the decay's precision, as mamba_ssm notes)."""
    return t if t.dtype == torch.float64 else t.float()


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: RMSNorm(y * silu(z)) * weight, normalised over groups of ``group_size`` channels.

    The gate is applied before the norm (mamba_ssm's ``norm_before_gate=False``, the Mamba-2 default), and with
    B/C groups > 1 each group is normalised on its own (mamba_ssm's ``group_size = d_ssm // ngroups``).
    """

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if group_size < 1 or dim % group_size:
            raise InvalidInput(f"group_size must divide dim={dim}, got {group_size}")
        self.dim, self.group_size, self.eps = dim, group_size, eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        g = _wide(y * F.silu(z))
        g = g.unflatten(-1, (self.dim // self.group_size, self.group_size))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (g.flatten(-2) * _wide(self.weight)).to(y.dtype)


def _state_dtype(param: torch.Tensor) -> torch.dtype:
    """The decode states' dtype: float64 for a float64 block, else float32 (what the scans return)."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def check_sequence_input(x: torch.Tensor, d_model: int, owner: str) -> None:
    """Raise ShapeError/DTypeError unless x is a real floating (batch, seqlen, d_model) tensor with seqlen >= 1."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise DTypeError(f"{owner} takes a real floating tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 3 or x.shape[-1] != d_model or x.shape[1] == 0 or x.shape[0] == 0:
        raise ShapeError(f"{owner} takes (batch, seqlen, d_model={d_model}) with batch, seqlen >= 1, "
                         f"got {tuple(x.shape)}")


def check_token_input(x: torch.Tensor, d_model: int, owner: str) -> None:
    """Raise ShapeError/DTypeError unless x is a real floating (batch, d_model) tensor: one token per row."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise DTypeError(f"{owner}.step takes a real floating tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 2 or x.shape[-1] != d_model:
        raise ShapeError(f"{owner}.step takes one token per row, (batch, d_model={d_model}), got {tuple(x.shape)}; "
                         "for a whole sequence call the block itself")


def _check_prefill_cache(cache: MambaCache, batch: int, owner: str) -> None:
    if cache.seqlen != 0:
        raise InvalidInput(f"{owner}(x, cache) prefills an empty cache, but this one already holds {cache.seqlen} "
                           "tokens; feed further tokens with step(), or allocate_cache() a fresh one")
    if cache.conv_state.shape[0] != batch:
        raise ShapeError(f"the cache holds batch {cache.conv_state.shape[0]}, x has batch {batch}; "
                         f"allocate_cache({batch})")


def _check_step_cache(cache: MambaCache, conv_shape: tuple[int, ...], ssm_shape: tuple[int, ...], owner: str) -> None:
    if tuple(cache.conv_state.shape) != conv_shape or tuple(cache.ssm_state.shape) != ssm_shape:
        raise ShapeError(f"{owner}.step needs a cache with conv_state {conv_shape} and ssm_state {ssm_shape}, got "
                         f"{tuple(cache.conv_state.shape)} and {tuple(cache.ssm_state.shape)}; "
                         f"use this block's allocate_cache({conv_shape[0]})")


class MambaBlock(nn.Module):
    """The Mamba (S6) mixer of Gu & Dao 2023: a selective state space over an expanded, gated channel stream.

    in_proj -> (x, z); x -> causal depthwise conv1d (width d_conv) -> SiLU; x_proj(x) -> (dt, B, C) with dt of
    rank dt_rank; dt_proj(dt) + bias -> softplus -> delta; y = S6 scan(x, delta, A = -exp(A_log), B, C) + D x;
    y * silu(z) -> out_proj. Inits: A_log = log(1..d_state) per channel (S4D-real), D = 1, dt bias so that
    softplus(bias) is log-uniform in [dt_min, dt_max], dt_proj weight uniform in +-dt_rank^-0.5 * dt_scale.

    ``inner_norms`` adds RMSNorm over dt, B and C before they are used, as Jamba does for stability at scale
    (Lieber et al. 2024, section 6.4); off by default (the original block).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, inner_norms: bool = False, norm_eps: float = 1e-6,
                 backend: str = "auto", device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if not isinstance(value, int) or value < 1:
                raise InvalidInput(f"MambaBlock: {name} must be a positive integer, got {value!r}")
        if dt_rank != "auto" and not (isinstance(dt_rank, int) and dt_rank >= 1):
            raise InvalidInput(f"MambaBlock: dt_rank must be 'auto' or a positive integer, got {dt_rank!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.backend = backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.inner_norms = inner_norms
        if inner_norms:
            self.dt_norm = nn.RMSNorm(self.dt_rank, eps=norm_eps, **factory)
            self.B_norm = nn.RMSNorm(d_state, eps=norm_eps, **factory)
            self.C_norm = nn.RMSNorm(d_state, eps=norm_eps, **factory)
        with torch.no_grad():
            std = self.dt_rank ** -0.5 * dt_scale
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(inverse_softplus_dt_bias(self.d_inner, dt_min, dt_max, dt_init_floor, device))
        # S4D-real: A_n = -(n + 1) for every channel; kept in float32 as log(-A)
        a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _dt_b_c(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x_proj of the conv output (..., d_inner) -> the low-rank dt (..., d_inner) before its bias, B and C."""
        dt, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.inner_norms:
            dt, B, C = self.dt_norm(dt), self.B_norm(B), self.C_norm(C)
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(self, x: torch.Tensor, cache: MambaCache | None = None) -> torch.Tensor:
        """x (batch, seqlen, d_model) -> (batch, seqlen, d_model); with an empty ``cache``, also fill it (prefill)."""
        check_sequence_input(x, self.d_model, "MambaBlock")
        batch, seqlen, _ = x.shape
        if cache is not None:
            _check_prefill_cache(cache, batch, "MambaBlock")
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = u.transpose(1, 2)                                                  # (batch, d_inner, seqlen)
        if cache is not None:
            # the last d_conv inputs, zero-padded on the left when the prompt is shorter
            cache.conv_state.copy_(F.pad(u, (self.d_conv - seqlen, 0)))
        u = F.silu(self.conv1d(u)[..., :seqlen])
        dt, B, C = self._dt_b_c(u.transpose(1, 2))
        # one I/O dtype for the scan, also under autocast, where the inner norms may return float32
        dt, B, C, z = (t.to(u.dtype) for t in (dt, B, C, z))
        A = -torch.exp(_wide(self.A_log))
        y, last = ssm.selective_scan(u, dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
                                     D=_wide(self.D), z=z.transpose(1, 2), delta_bias=_wide(self.dt_proj.bias),
                                     delta_softplus=True, return_last_state=True, backend=self.backend)
        if cache is not None:
            cache.ssm_state.copy_(last)
            cache.seqlen = seqlen
        return self.out_proj(y.transpose(1, 2))

    def allocate_cache(self, batch: int, max_seqlen: int | None = None,
                       device: torch.device | str | None = None) -> MambaCache:
        """An empty decode cache for ``batch`` rows, on ``device`` (default: the block's).

        The state has a fixed size whatever the length; ``max_seqlen`` is accepted so every mixer (attention too)
        allocates through one call, and is not used.
        """
        device = self.out_proj.weight.device if device is None else device
        sd = _state_dtype(self.out_proj.weight)
        return MambaCache(torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=sd),
                          torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=sd))

    def step(self, x: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """One token per row: x (batch, d_model) -> (batch, d_model); the cache's states advance in place."""
        check_token_input(x, self.d_model, "MambaBlock")
        batch = x.shape[0]
        _check_step_cache(cache, (batch, self.d_inner, self.d_conv), (batch, self.d_inner, self.d_state), "MambaBlock")
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u, conv_state = ssm.causal_conv1d_step(u, cache.conv_state, self.conv1d.weight, self.conv1d.bias,
                                               activation="silu")
        dt, B, C = self._dt_b_c(u)
        A = -torch.exp(_wide(self.A_log))
        y, ssm_state = ssm.step(u, cache.ssm_state, dt, A, B, C, D=self.D, z=z, dt_bias=self.dt_proj.bias,
                                dt_softplus=True)
        cache.conv_state.copy_(conv_state)
        cache.ssm_state.copy_(ssm_state)
        cache.seqlen += 1
        return self.out_proj(y)


class Mamba2Block(nn.Module):
    """The Mamba-2 (SSD) mixer of Dao & Gu 2024: multi-head scalar-decay state space with grouped B/C.

    in_proj -> (z, xBC, dt); xBC -> causal depthwise conv1d -> SiLU -> (x, B, C) with B, C of ``groups`` groups of
    d_state; y = SSD scan(x as heads of head_dim, dt + dt_bias -> softplus -> clamp(dt_limit), A = -exp(A_log), B,
    C) + D x; gated RMSNorm(y, z); out_proj. Inits: A = -U(A_init_range) per head, D = 1 per head, dt bias so that
    softplus(bias) is log-uniform in [dt_min, dt_max]; ``conv_init`` (if set) draws conv weights from U(+-conv_init).
    """

    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: int = 2, head_dim: int = 64,
                 groups: int = 1, A_init_range: tuple[float, float] = (1.0, 16.0), dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_limit: tuple[float, float] = (0.0, float("inf")),
                 chunk_size: int = 256, conv_init: float | None = None, conv_bias: bool = True, bias: bool = False,
                 norm_eps: float = 1e-5, backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                            ("head_dim", head_dim), ("groups", groups), ("chunk_size", chunk_size)):
            if not isinstance(value, int) or value < 1:
                raise InvalidInput(f"Mamba2Block: {name} must be a positive integer, got {value!r}")
        self.d_inner = expand * d_model
        if self.d_inner % head_dim:
            raise InvalidInput(f"Mamba2Block: head_dim={head_dim} must divide d_inner = expand * d_model = "
                               f"{self.d_inner}; pick a head_dim that divides it")
        self.heads = self.d_inner // head_dim
        if self.heads % groups:
            raise InvalidInput(f"Mamba2Block: groups={groups} must divide the {self.heads} heads")
        lo, hi = A_init_range
        if not 0 < lo <= hi:
            raise InvalidInput(f"Mamba2Block: A_init_range must satisfy 0 < min <= max, got {A_init_range}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.head_dim, self.groups = d_model, d_state, d_conv, head_dim, groups
        self.dt_limit, self.chunk_size, self.backend = (float(dt_limit[0]), float(dt_limit[1])), chunk_size, backend
        self.conv_channels = self.d_inner + 2 * groups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_channels + self.heads, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.conv_channels, self.conv_channels, d_conv, groups=self.conv_channels,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.dt_bias = nn.Parameter(inverse_softplus_dt_bias(self.heads, dt_min, dt_max, dt_init_floor, device))
        a = torch.empty(self.heads, dtype=torch.float32, device=device).uniform_(lo, hi)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.heads, device=device))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // groups, eps=norm_eps, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _split_xbc(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., conv_channels) -> x (..., heads, head_dim), B and C (..., groups, d_state)."""
        gn = self.groups * self.d_state
        x, B, C = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        return (x.unflatten(-1, (self.heads, self.head_dim)), B.unflatten(-1, (self.groups, self.d_state)),
                C.unflatten(-1, (self.groups, self.d_state)))

    def forward(self, x: torch.Tensor, cache: MambaCache | None = None) -> torch.Tensor:
        """x (batch, seqlen, d_model) -> (batch, seqlen, d_model); with an empty ``cache``, also fill it (prefill)."""
        check_sequence_input(x, self.d_model, "Mamba2Block")
        batch, seqlen, _ = x.shape
        if cache is not None:
            _check_prefill_cache(cache, batch, "Mamba2Block")
        z, xbc, dt = torch.split(self.in_proj(x), [self.d_inner, self.conv_channels, self.heads], dim=-1)
        xbc = xbc.transpose(1, 2)                                              # (batch, conv_channels, seqlen)
        if cache is not None:
            cache.conv_state.copy_(F.pad(xbc, (self.d_conv - seqlen, 0)))
        xbc = F.silu(self.conv1d(xbc)[..., :seqlen]).transpose(1, 2)
        xs, B, C = self._split_xbc(xbc)
        A = -torch.exp(_wide(self.A_log))
        y, final = ssm.chunk_scan(xs, dt, A, B, C, chunk_size=self.chunk_size, D=_wide(self.D),
                                  dt_bias=_wide(self.dt_bias), dt_softplus=True, dt_limit=self.dt_limit,
                                  return_final_state=True, backend=self.backend)
        if cache is not None:
            cache.ssm_state.copy_(final)
            cache.seqlen = seqlen
        return self.out_proj(self.norm(y.flatten(-2), z))

    def allocate_cache(self, batch: int, max_seqlen: int | None = None,
                       device: torch.device | str | None = None) -> MambaCache:
        """An empty decode cache for ``batch`` rows, on ``device`` (default: the block's).

        The state has a fixed size whatever the length; ``max_seqlen`` is accepted so every mixer (attention too)
        allocates through one call, and is not used.
        """
        device = self.out_proj.weight.device if device is None else device
        sd = _state_dtype(self.out_proj.weight)
        return MambaCache(torch.zeros(batch, self.conv_channels, self.d_conv, device=device, dtype=sd),
                          torch.zeros(batch, self.heads, self.head_dim, self.d_state, device=device, dtype=sd))

    def step(self, x: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """One token per row: x (batch, d_model) -> (batch, d_model); the cache's states advance in place."""
        check_token_input(x, self.d_model, "Mamba2Block")
        batch = x.shape[0]
        _check_step_cache(cache, (batch, self.conv_channels, self.d_conv),
                          (batch, self.heads, self.head_dim, self.d_state), "Mamba2Block")
        z, xbc, dt = torch.split(self.in_proj(x), [self.d_inner, self.conv_channels, self.heads], dim=-1)
        xbc, conv_state = ssm.causal_conv1d_step(xbc, cache.conv_state, self.conv1d.weight, self.conv1d.bias,
                                                 activation="silu")
        xs, B, C = self._split_xbc(xbc)
        A = -torch.exp(_wide(self.A_log))
        y, ssm_state = ssm.step(xs, cache.ssm_state, dt, A, B, C, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                                dt_limit=self.dt_limit)
        cache.conv_state.copy_(conv_state)
        cache.ssm_state.copy_(ssm_state)
        cache.seqlen += 1
        return self.out_proj(self.norm(y.flatten(-2), z))
