"""Checking and normalising the inputs of the scans, and choosing the backend that runs them.

Every public function calls these first, so the Triton kernels and the torch path see the same, validated inputs:
one device, one I/O dtype, contiguous memory (non-contiguous inputs are copied: documented in docs/ssm.md),
grouped B/C as 4-D tensors, and packed-sequence boundaries as per-position flags (S6) or document ids (SSD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .configs import interpreting
from .errors import ScanDtypeError, ScanInputError, ScanNonFiniteError, ScanUnsupportedError

BACKENDS = ("auto", "triton", "torch")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TORCH_DTYPES = TRITON_DTYPES + (torch.float64,)
# The Triton kernels keep a whole state row (d_state values, padded to a power of two) in registers per tile;
# 256 is the largest that fits the register budget of the tile configs in configs.py.
MAX_TRITON_D_STATE = 256
Tensor = torch.Tensor


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(device: torch.device | str, dtype: torch.dtype, backend: str = "auto") -> str:
    """The backend that runs a scan of tensors on ``device`` with I/O ``dtype``: "triton" or "torch".

    "auto" picks "triton" when Triton can run there (a CUDA device, or a CPU tensor with TRITON_INTERPRET=1) and the
    dtype is one the kernels take (float16, bfloat16, float32), else "torch". Asking for "triton" where it cannot run
    raises, naming why.
    """
    if backend not in BACKENDS:
        raise ScanInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    device = torch.device(device)
    runs_here = _triton_importable() and (device.type == "cuda" or (device.type == "cpu" and interpreting()))
    if backend == "auto":
        return "triton" if runs_here and dtype in TRITON_DTYPES else "torch"
    if not runs_here:
        raise ScanUnsupportedError(
            f"backend='triton' cannot run on {device}: it needs triton and a CUDA device, or TRITON_INTERPRET=1 set "
            "before triton is imported for CPU tensors; use backend='torch' or 'auto'")
    if dtype not in TRITON_DTYPES:
        raise ScanDtypeError(f"the Triton kernels take float16, bfloat16 or float32 inputs, got {dtype}; "
                             "convert the inputs or use backend='torch'")
    return "triton"


def _same_device(named: dict[str, torch.Tensor | None]) -> torch.device:
    devices = {name: t.device for name, t in named.items() if t is not None}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ScanInputError(f"all inputs must be on one device: {name} is on {dev}, {first_name} on {first}; "
                                 "move them with .to(device)")
    return first


def _floating(name: str, t: torch.Tensor | None) -> None:
    if t is not None and (not t.dtype.is_floating_point):
        raise ScanDtypeError(f"{name} must be a real floating tensor, got {t.dtype}")


def _shape(name: str, t: torch.Tensor | None, expected: tuple[int, ...], what: str) -> None:
    if t is not None and tuple(t.shape) != expected:
        raise ScanInputError(f"{name} must be {what} = {expected}, got {tuple(t.shape)}")


def _io_dtype(named: dict[str, torch.Tensor | None], allowed: tuple[torch.dtype, ...]) -> torch.dtype:
    dtypes = {name: t.dtype for name, t in named.items() if t is not None}
    first_name, first = next(iter(dtypes.items()))
    for name, dt in dtypes.items():
        if dt != first:
            raise ScanDtypeError(f"{', '.join(dtypes)} must share one dtype: {name} is {dt}, {first_name} is {first}; "
                                 "convert them to one of float16, bfloat16, float32")
    if first not in allowed:
        raise ScanDtypeError(f"{first_name} is {first}; the scans take {', '.join(str(d) for d in allowed)}")
    return first


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def check_finite_inputs(named: dict[str, torch.Tensor | None]) -> None:
    """Raise ScanNonFiniteError naming the first input holding a NaN or an infinity (one device sync per input)."""
    for name, t in named.items():
        if t is None or not t.dtype.is_floating_point:
            continue
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0])
            raise ScanNonFiniteError(f"{name} holds a non-finite value ({t[index].item()}) at index {index}")


def seq_idx_from_cu_seqlens(cu_seqlens: torch.Tensor, seqlen: int, batch: int) -> torch.Tensor:
    """Document index of every position, (1, seqlen) int32, from cumulative sequence lengths (packed batch of 1)."""
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
        raise ScanInputError(f"cu_seqlens must be a 1-D integer tensor, got {cu_seqlens.dtype} "
                             f"of shape {tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ScanInputError(f"cu_seqlens describes one packed row, so the batch must be 1, got {batch}; "
                             "pass seq_idx of shape (batch, seqlen) instead")
    cu = cu_seqlens.to(torch.int64)
    if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != seqlen or bool((cu[1:] < cu[:-1]).any()):
        raise ScanInputError(f"cu_seqlens must rise from 0 to the sequence length {seqlen}, got {cu.tolist()}")
    positions = torch.arange(seqlen, device=cu.device)
    return torch.searchsorted(cu[1:], positions, right=True).to(torch.int32).unsqueeze(0)


def document_ids(seq_idx: torch.Tensor | None, cu_seqlens: torch.Tensor | None, batch: int, seqlen: int,
                 device: torch.device) -> torch.Tensor | None:
    """Per-position document number (batch, seqlen) int32, starting at 0 and rising by one at each boundary.

    A boundary is where seq_idx changes from one position to the next (so equal labels that are not adjacent are
    different documents). None when neither argument is given.
    """
    if seq_idx is not None and cu_seqlens is not None:
        raise ScanInputError("pass seq_idx or cu_seqlens, not both")
    if cu_seqlens is not None:
        if cu_seqlens.device != device:
            raise ScanInputError(f"cu_seqlens is on {cu_seqlens.device}, the inputs on {device}")
        seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, seqlen, batch)
    if seq_idx is None:
        return None
    if seq_idx.device != device:
        raise ScanInputError(f"seq_idx is on {seq_idx.device}, the inputs on {device}")
    if seq_idx.dtype.is_floating_point or seq_idx.dtype == torch.bool:
        raise ScanDtypeError(f"seq_idx must be an integer tensor, got {seq_idx.dtype}")
    if tuple(seq_idx.shape) != (batch, seqlen):
        raise ScanInputError(f"seq_idx must be (batch, seqlen) = {(batch, seqlen)}, got {tuple(seq_idx.shape)}")
    starts = (seq_idx[:, 1:] != seq_idx[:, :-1]).to(torch.int32)
    return torch.cat([torch.zeros(batch, 1, dtype=torch.int32, device=device), starts.cumsum(1, dtype=torch.int32)],
                     dim=1).contiguous()


def reset_flags(doc_ids: torch.Tensor | None) -> torch.Tensor | None:
    """1 where a position starts a new document (never at position 0), (batch, seqlen) int32."""
    if doc_ids is None:
        return None
    flags = torch.zeros_like(doc_ids)
    flags[:, 1:] = (doc_ids[:, 1:] != doc_ids[:, :-1]).to(torch.int32)
    return flags


@dataclass
class S6Inputs:
    """Validated Mamba-1 inputs; B and C always 4-D (batch, groups, d_state, seqlen)."""

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    z: torch.Tensor | None
    delta_bias: torch.Tensor | None
    resets: torch.Tensor | None
    squeeze_B: bool
    squeeze_C: bool

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(batch, channels, seqlen, d_state)."""
        batch, channels, seqlen = self.u.shape
        return batch, channels, seqlen, self.A.shape[1]


def _grouped(name: str, t: torch.Tensor, batch: int, channels: int, d_state: int, seqlen: int) -> torch.Tensor:
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4 or (t.shape[0], t.shape[2], t.shape[3]) != (batch, d_state, seqlen):
        raise ScanInputError(f"{name} must be (batch, d_state, seqlen) = {(batch, d_state, seqlen)} or grouped "
                             f"(batch, groups, d_state, seqlen), got {tuple(t.shape)}")
    if t.shape[1] == 0 or channels % t.shape[1]:
        raise ScanInputError(f"{name} has {t.shape[1]} groups, which must divide the {channels} channels")
    return t


def check_s6(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
             delta_bias: Tensor | None, seq_idx: Tensor | None, cu_seqlens: Tensor | None,
             allowed: tuple[torch.dtype, ...]) -> S6Inputs:
    """Validate Mamba-1 inputs (shapes of mamba_ssm's selective_scan_fn) and return them normalised."""
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name in ("u", "delta", "A", "B", "C"):
        if not isinstance(named[name], torch.Tensor):
            raise ScanInputError(f"{name} must be a tensor, got {type(named[name]).__name__}")
    if A.is_complex():
        raise ScanDtypeError("complex A (S4D-style) is not supported; pass a real A of shape (channels, d_state)")
    for name, t in named.items():
        _floating(name, t)
    device = _same_device(named)
    if u.dim() != 3:
        raise ScanInputError(f"u must be (batch, channels, seqlen), got shape {tuple(u.shape)}")
    batch, channels, seqlen = u.shape
    if seqlen == 0 or batch == 0 or channels == 0:
        raise ScanInputError(f"u has an empty dimension {tuple(u.shape)}; every dimension needs at least one element")
    _shape("delta", delta, (batch, channels, seqlen), "(batch, channels, seqlen)")
    if A.dim() != 2 or A.shape[0] != channels or A.shape[1] == 0:
        raise ScanInputError(f"A must be (channels, d_state) with channels={channels}, got {tuple(A.shape)}")
    d_state = A.shape[1]
    B4 = _grouped("B", B, batch, channels, d_state, seqlen)
    C4 = _grouped("C", C, batch, channels, d_state, seqlen)
    _shape("D", D, (channels,), "(channels,)")
    _shape("z", z, (batch, channels, seqlen), "(batch, channels, seqlen)")
    _shape("delta_bias", delta_bias, (channels,), "(channels,)")
    _io_dtype({"u": u, "delta": delta, "B": B, "C": C, "z": z}, allowed)
    docs = document_ids(seq_idx, cu_seqlens, batch, seqlen, device)
    return S6Inputs(u.contiguous(), delta.contiguous(), A.contiguous(), B4.contiguous(), C4.contiguous(),
                    _contiguous(D), _contiguous(z), _contiguous(delta_bias), reset_flags(docs),
                    squeeze_B=B.dim() == 3, squeeze_C=C.dim() == 3)


@dataclass
class SsdInputs:
    """Validated Mamba-2 inputs."""

    x: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    z: torch.Tensor | None
    dt_bias: torch.Tensor | None
    initial_states: torch.Tensor | None
    doc_ids: torch.Tensor | None
    dt_limit: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int, int, int, int, int]:
        """(batch, seqlen, heads, head_dim, groups, d_state)."""
        batch, seqlen, heads, head_dim = self.x.shape
        return batch, seqlen, heads, head_dim, self.B.shape[2], self.B.shape[3]


def check_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, D: Tensor | None,
              z: Tensor | None, dt_bias: Tensor | None, initial_states: Tensor | None, seq_idx: Tensor | None,
              cu_seqlens: Tensor | None, dt_limit: tuple[float, float], allowed: tuple[torch.dtype, ...]) -> SsdInputs:
    """Validate Mamba-2 inputs (shapes of mamba_ssm's mamba_chunk_scan_combined) and return them normalised."""
    named = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "dt_bias": dt_bias,
             "initial_states": initial_states}
    for name in ("x", "dt", "A", "B", "C"):
        if not isinstance(named[name], torch.Tensor):
            raise ScanInputError(f"{name} must be a tensor, got {type(named[name]).__name__}")
    for name, t in named.items():
        _floating(name, t)
    device = _same_device(named)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ScanInputError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if x.dim() != 4:
        raise ScanInputError(f"x must be (batch, seqlen, heads, head_dim), got shape {tuple(x.shape)}")
    batch, seqlen, heads, head_dim = x.shape
    if 0 in x.shape:
        raise ScanInputError(f"x has an empty dimension {tuple(x.shape)}; every dimension needs at least one element")
    _shape("dt", dt, (batch, seqlen, heads), "(batch, seqlen, heads)")
    _shape("A", A, (heads,), "(heads,)")
    if B.dim() != 4 or tuple(B.shape[:2]) != (batch, seqlen) or B.shape[2] == 0 or B.shape[3] == 0:
        raise ScanInputError(f"B must be (batch, seqlen, groups, d_state) with batch={batch}, seqlen={seqlen}, "
                             f"got {tuple(B.shape)}")
    groups, d_state = B.shape[2], B.shape[3]
    if heads % groups:
        raise ScanInputError(f"B has {groups} groups, which must divide the {heads} heads")
    _shape("C", C, tuple(B.shape), "the shape of B")
    if D is not None and tuple(D.shape) not in ((heads,), (heads, head_dim)):
        raise ScanInputError(f"D must be (heads,) = ({heads},) or (heads, head_dim) = {(heads, head_dim)}, "
                             f"got {tuple(D.shape)}")
    _shape("z", z, tuple(x.shape), "the shape of x")
    _shape("dt_bias", dt_bias, (heads,), "(heads,)")
    _shape("initial_states", initial_states, (batch, heads, head_dim, d_state), "(batch, heads, head_dim, d_state)")
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise ScanInputError(f"dt_limit must be a pair (min, max) of numbers, got {dt_limit!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ScanInputError(f"dt_limit must be (min, max) with min <= max, got {dt_limit!r}")
    _io_dtype({"x": x, "B": B, "C": C, "z": z}, allowed)
    if dt.dtype not in allowed:
        raise ScanDtypeError(f"dt is {dt.dtype}; the scans take {', '.join(str(d) for d in allowed)}")
    docs = document_ids(seq_idx, cu_seqlens, batch, seqlen, device)
    return SsdInputs(x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), _contiguous(D),
                     _contiguous(z), _contiguous(dt_bias), _contiguous(initial_states), docs, (lo, hi))


def check_triton_d_state(d_state: int) -> None:
    """Refuse a d_state the Triton kernels cannot hold, naming the limit and the way out."""
    if d_state > MAX_TRITON_D_STATE:
        raise ScanUnsupportedError(
            f"d_state {d_state} exceeds the Triton kernels' limit of {MAX_TRITON_D_STATE} (a state row lives in "
            "registers); use backend='torch' or a smaller d_state")
