"""Tests of hal.kernels.ssm: both scans on both backends against float64 sequential references.

On a CPU the Triton kernels run in Triton's interpreter at small sizes; that needs TRITON_INTERPRET=1 before triton
is first imported, which this module sets when it is imported first (otherwise the Triton tests skip and say so).
Tolerances are relative (Frobenius) errors against the float64 reference computed from the same (rounded) inputs:
float32 1e-5, float16 5e-3, bfloat16 3e-2 (the I/O rounding, 2^-8, plus bf16 operands of the SSD's tensor-core
products, as on a GPU).
"""

import os
import sys

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()  # without one, conftest.py has switched Triton's interpreter on

from hal.kernels import ssm
from hal.kernels.selective_scan import selective_scan_reference
from hal.kernels.ssm.inputs import document_ids, reset_flags
from hal.kernels.ssm.reference import chunk_scan_ref, selective_scan_ref

DEVICE = "cuda" if CUDA else "cpu"
TRITON_RUNS = CUDA or os.environ.get("TRITON_INTERPRET") == "1"
needs_triton = pytest.mark.skipif(
    not TRITON_RUNS, reason="no CUDA GPU, and triton was imported before this module could set TRITON_INTERPRET=1 "
                            "(run: TRITON_INTERPRET=1 pytest tests/kernels/test_ssm.py)")
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def s6_inputs(*, batch=2, channels=6, seqlen=37, d_state=5, groups_b=2, groups_c=1, dtype=torch.float32, seed=0,
              full=True):
    """A dict of Mamba-1 inputs; with ``full`` also D, z and delta_bias."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)

    def param(t):  # parameters stay float32 under low-precision I/O, as in a model
        return t.to(torch.float64 if dtype == torch.float64 else torch.float32).to(DEVICE)

    def bc(groups):  # groups 0: the ungrouped (batch, d_state, seqlen) form
        return rnd(batch, d_state, seqlen) if groups == 0 else rnd(batch, groups, d_state, seqlen)

    inputs = {"u": rnd(batch, channels, seqlen), "delta": rnd(batch, channels, seqlen, scale=0.5),
              "A": param(-torch.rand(channels, d_state, generator=g) - 0.1), "B": bc(groups_b), "C": bc(groups_c)}
    if full:
        inputs.update(D=param(torch.randn(channels, generator=g)), z=rnd(batch, channels, seqlen),
                      delta_bias=param(torch.randn(channels, generator=g) * 0.5))
    return inputs


def ssd_inputs(*, batch=2, seqlen=37, heads=4, head_dim=20, groups=2, d_state=5, dtype=torch.float32, seed=0,
               full=True, d_per_dim=True):
    """A dict of Mamba-2 inputs; with ``full`` also D, z, dt_bias and initial_states."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)

    def param(t):
        return t.to(torch.float64 if dtype == torch.float64 else torch.float32).to(DEVICE)

    inputs = {"x": rnd(batch, seqlen, heads, head_dim), "dt": rnd(batch, seqlen, heads, scale=0.5),
              "A": param(-torch.rand(heads, generator=g) - 0.1), "B": rnd(batch, seqlen, groups, d_state),
              "C": rnd(batch, seqlen, groups, d_state)}
    if full:
        inputs.update(D=param(torch.randn(*((heads, head_dim) if d_per_dim else (heads,)), generator=g)),
                      z=rnd(batch, seqlen, heads, head_dim), dt_bias=param(torch.randn(heads, generator=g) * 0.5),
                      initial_states=param(torch.randn(batch, heads, head_dim, d_state, generator=g)))
    return inputs


def leaves(inputs: dict, dtype=None) -> dict:
    """Fresh leaf tensors that require grad (float64 copies when dtype is given)."""
    return {k: (v.detach().to(dtype) if dtype else v.detach().clone()).requires_grad_() for k, v in inputs.items()}


SEQ_IDX_S6 = [0] * 10 + [1] * 20 + [2] * 7
SEQ_IDX_SSD = [0] * 10 + [1] * 5 + [2] * 22 + [3] * 13


def s6_reference(inputs: dict, softplus: bool, seq_idx: torch.Tensor | None):
    B, C = (t if t.dim() == 4 else t.unsqueeze(1) for t in (inputs["B"], inputs["C"]))
    resets = None
    if seq_idx is not None:
        resets = reset_flags(document_ids(seq_idx, None, *seq_idx.shape, seq_idx.device))
    return selective_scan_ref(inputs["u"], inputs["delta"], inputs["A"], B, C, inputs.get("D"), inputs.get("z"),
                              inputs.get("delta_bias"), softplus, resets)


def ssd_reference(inputs: dict, softplus: bool, seq_idx: torch.Tensor | None, dt_limit=(0.0, float("inf"))):
    docs = None if seq_idx is None else document_ids(seq_idx, None, *seq_idx.shape, seq_idx.device)
    return chunk_scan_ref(inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"], inputs.get("D"),
                          inputs.get("z"), inputs.get("dt_bias"), inputs.get("initial_states"), docs, softplus, dt_limit)


def check_s6(backend: str, dtype: torch.dtype, *, full: bool, softplus: bool, packed: bool, **shape):
    """Forward, last state and every gradient of selective_scan vs the float64 reference."""
    inputs = s6_inputs(dtype=dtype, full=full, **shape)
    batch, _, seqlen = inputs["u"].shape
    seq_idx = torch.tensor(SEQ_IDX_S6[:seqlen], device=DEVICE).repeat(batch, 1) if packed else None
    ours = leaves(inputs)
    out, last = ssm.selective_scan(**ours, delta_softplus=softplus, return_last_state=True, seq_idx=seq_idx,
                                   backend=backend)
    ref_in = leaves(inputs, torch.float64)
    ref, ref_last = s6_reference(ref_in, softplus, seq_idx)
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == inputs["u"].shape
    assert rel(out, ref) < tol and rel(last, ref_last) < tol
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(out.shape, generator=g).to(DEVICE)
    dlast = torch.randn(last.shape, generator=g).to(DEVICE)
    grads = torch.autograd.grad((out.float() * dout).sum() + (last * dlast).sum(), list(ours.values()))
    ref_grads = torch.autograd.grad((ref * dout.double()).sum() + (ref_last * dlast.double()).sum(),
                                    list(ref_in.values()))
    for name, gr, rg in zip(ours, grads, ref_grads):
        assert gr.dtype == ours[name].dtype and gr.shape == ours[name].shape
        assert rel(gr, rg) < tol, f"d{name}: {rel(gr, rg)}"


def check_ssd(backend: str, dtype: torch.dtype, *, full: bool, softplus: bool, packed: bool, chunk_size=16,
              dt_limit=(0.0, float("inf")), segment_len=None, **shape):
    """Forward, final state and every gradient of chunk_scan vs the float64 reference.

    ``segment_len`` runs the Triton kernels with the sequence split into segments of that many positions (the
    segment-parallel passes a GPU uses when batch x heads is small), through the internal entry point.
    """
    inputs = ssd_inputs(dtype=dtype, full=full, **shape)
    batch, seqlen = inputs["x"].shape[:2]
    seq_idx = torch.tensor(SEQ_IDX_SSD[:seqlen], device=DEVICE).repeat(batch, 1) if packed else None
    ours = leaves(inputs)
    if segment_len is None:
        out, final = ssm.chunk_scan(**ours, chunk_size=chunk_size, dt_softplus=softplus, dt_limit=dt_limit,
                                    return_final_state=True, seq_idx=seq_idx, backend=backend)
    else:
        from hal.kernels.ssm import inputs as checks
        from hal.kernels.ssm.ssd import chunk_scan_triton

        inp = checks.check_ssd(*(ours.get(k) for k in ("x", "dt", "A", "B", "C")), chunk_size,
                               *(ours.get(k) for k in ("D", "z", "dt_bias", "initial_states")), seq_idx, None,
                               dt_limit, checks.TRITON_DTYPES)
        out, final = chunk_scan_triton(inp, softplus, segment_len=segment_len)
    ref_in = leaves(inputs, torch.float64)
    ref, ref_final = ssd_reference(ref_in, softplus, seq_idx, dt_limit)
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == inputs["x"].shape
    assert rel(out, ref) < tol and rel(final, ref_final) < tol
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(out.shape, generator=g).to(DEVICE)
    dfinal = torch.randn(final.shape, generator=g).to(DEVICE)
    grads = torch.autograd.grad((out.float() * dout).sum() + (final * dfinal).sum(), list(ours.values()))
    ref_grads = torch.autograd.grad((ref * dout.double()).sum() + (ref_final * dfinal.double()).sum(),
                                    list(ref_in.values()))
    for name, gr, rg in zip(ours, grads, ref_grads):
        assert gr.dtype == ours[name].dtype and gr.shape == ours[name].shape
        assert rel(gr, rg) < tol, f"d{name}: {rel(gr, rg)}"


# ---------------------------------------------------------------------------------------------------- references
def test_reference_matches_the_legacy_selective_scan_reference():
    inputs = s6_inputs(dtype=torch.float64, groups_b=0, groups_c=0)
    legacy = selective_scan_reference(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"])
    ours, _ = selective_scan_ref(inputs["u"], inputs["delta"], inputs["A"], inputs["B"].unsqueeze(1),
                                 inputs["C"].unsqueeze(1), inputs["D"])
    assert rel(ours, legacy) < 1e-12


def test_ssd_reference_is_the_s6_recurrence_per_head():
    """Two independently written references agree: a head of SSD is S6 over head_dim channels sharing dt and A."""
    inp = ssd_inputs(dtype=torch.float64, groups=1, heads=2, head_dim=3, full=False)
    out, final = ssd_reference(inp, softplus=False, seq_idx=None, dt_limit=(-float("inf"), float("inf")))
    for h in range(2):
        u = inp["x"][:, :, h].transpose(1, 2)
        delta = inp["dt"][:, :, h, None].expand(-1, -1, 3).transpose(1, 2)
        A = inp["A"][h].expand(3, inp["B"].shape[-1])
        B, C = (inp[k][:, :, 0].transpose(1, 2).unsqueeze(1) for k in "BC")
        y, last = selective_scan_ref(u, delta, A, B, C)
        assert rel(y.transpose(1, 2), out[:, :, h]) < 1e-12 and rel(last, final[:, h]) < 1e-12


# ---------------------------------------------------------------------------------------------------- torch path
def test_s6_torch_path_matches_reference_float64():
    check_s6("torch", torch.float64, full=True, softplus=True, packed=True)


@pytest.mark.parametrize("chunk_size", [4, 8])
def test_ssd_torch_chunked_form_matches_sequential(chunk_size):
    check_ssd("torch", torch.float64, full=True, softplus=True, packed=True, chunk_size=chunk_size,
              dt_limit=(0.05, 3.0))


def test_torch_paths_pass_gradcheck():
    s6 = leaves(s6_inputs(dtype=torch.float64, batch=1, channels=2, seqlen=5, d_state=2, groups_b=1))
    assert torch.autograd.gradcheck(lambda *t: ssm.selective_scan(*t[:5], D=t[5], z=t[6], delta_bias=t[7],
                                                                  delta_softplus=True, backend="torch"),
                                    tuple(s6.values()))
    sd = leaves(ssd_inputs(dtype=torch.float64, batch=1, seqlen=5, heads=2, head_dim=2, groups=1, d_state=2))
    assert torch.autograd.gradcheck(lambda *t: ssm.chunk_scan(*t[:5], chunk_size=2, D=t[5], z=t[6], dt_bias=t[7],
                                                              initial_states=t[8], dt_softplus=True,
                                                              backend="torch"), tuple(sd.values()))


# ---------------------------------------------------------------------------------------------------- Triton S6
@needs_triton
@pytest.mark.parametrize("dtype,full,softplus,packed,shape", [
    (torch.float32, True, True, True, {}),
    (torch.bfloat16, False, False, False, {"d_state": 16, "groups_b": 0, "groups_c": 0}),
    (torch.float16, True, False, True, {"channels": 8, "groups_b": 4, "groups_c": 2, "seqlen": 20}),
])
def test_s6_triton_matches_reference(dtype, full, softplus, packed, shape):
    check_s6("triton", dtype, full=full, softplus=softplus, packed=packed, **shape)


@needs_triton
def test_s6_triton_largest_d_state_forward():
    inputs = s6_inputs(batch=1, channels=2, seqlen=12, d_state=256, groups_b=1, groups_c=1)
    out, last = ssm.selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend="triton")
    ref, ref_last = s6_reference({k: v.double() for k, v in inputs.items()}, True, None)
    assert rel(out, ref) < 1e-5 and rel(last, ref_last) < 1e-5


# ---------------------------------------------------------------------------------------------------- Triton SSD
@needs_triton
@pytest.mark.parametrize("dtype,full,softplus,packed,shape", [
    (torch.float32, True, True, True, {}),
    (torch.bfloat16, False, False, False, {"d_state": 16, "groups": 1, "head_dim": 16}),
    (torch.float16, True, False, True, {"heads": 2, "groups": 2, "seqlen": 20}),
])
def test_ssd_triton_matches_reference(dtype, full, softplus, packed, shape):
    check_ssd("triton", dtype, full=full, softplus=softplus, packed=packed, dt_limit=(0.05, 3.0), **shape)


@needs_triton
@pytest.mark.parametrize("segment_len", [16, 32])
def test_ssd_triton_segment_parallel_passes_match_reference(segment_len):
    check_ssd("triton", torch.float32, full=True, softplus=True, packed=True, dt_limit=(0.05, 3.0),
              segment_len=segment_len, seqlen=50)


@needs_triton
def test_ssd_triton_per_head_D_and_no_gate():
    inputs = ssd_inputs(d_per_dim=False)
    inputs.pop("z")
    out, final = ssm.chunk_scan(**inputs, dt_softplus=True, return_final_state=True, backend="triton")
    ref, ref_final = ssd_reference({k: v.double() for k, v in inputs.items()}, True, None)
    assert rel(out, ref) < 1e-5 and rel(final, ref_final) < 1e-5


# ---------------------------------------------------------------------------------------------------- packing
@needs_triton
def test_packed_sequences_equal_separate_runs():
    lengths = [9, 17, 6]
    cu = torch.tensor([0, 9, 26, 32], device=DEVICE)
    s6 = s6_inputs(batch=1, seqlen=32)
    packed = ssm.selective_scan(**s6, delta_softplus=True, cu_seqlens=cu, backend="triton")
    sd = ssd_inputs(batch=1, seqlen=32)
    sd.pop("initial_states")
    packed_ssd = ssm.chunk_scan(**sd, dt_softplus=True, cu_seqlens=cu, backend="triton")
    start = 0
    for n in lengths:
        piece = {k: (v[..., start:start + n] if v.dim() >= 3 else v) for k, v in s6.items()}
        alone = ssm.selective_scan(**piece, delta_softplus=True, backend="triton")
        assert rel(packed[..., start:start + n], alone) < 1e-6
        piece = {k: (v[:, start:start + n] if k in "x dt B C z".split() else v) for k, v in sd.items()}
        alone = ssm.chunk_scan(**piece, dt_softplus=True, backend="triton")
        assert rel(packed_ssd[:, start:start + n], alone) < 1e-6
        start += n


# ---------------------------------------------------------------------------------------------------- decode
def test_s6_decode_steps_reproduce_the_full_sequence():
    inputs = s6_inputs(seqlen=20, groups_b=2, groups_c=0)
    backend = "triton" if TRITON_RUNS else "torch"
    full_out = ssm.selective_scan(**inputs, delta_softplus=True, backend=backend)
    prefix = 13
    first = {k: (v[..., :prefix] if v.dim() >= 3 else v) for k, v in inputs.items()}
    _, state = ssm.selective_scan(**first, delta_softplus=True, return_last_state=True, backend=backend)
    for t in range(prefix, 20):
        y, state = ssm.step(inputs["u"][..., t], state, inputs["delta"][..., t], inputs["A"], inputs["B"][..., t],
                            inputs["C"][..., t], D=inputs["D"], z=inputs["z"][..., t], dt_bias=inputs["delta_bias"],
                            dt_softplus=True)
        assert rel(y, full_out[..., t]) < 1e-5


def test_ssd_decode_steps_reproduce_the_full_sequence():
    inputs = ssd_inputs(seqlen=20)
    backend = "triton" if TRITON_RUNS else "torch"
    limit = (0.05, 3.0)
    full_out = ssm.chunk_scan(**inputs, dt_softplus=True, dt_limit=limit, backend=backend)
    prefix = 13
    first = {k: (v[:, :prefix] if k in "x dt B C z".split() else v) for k, v in inputs.items()}
    _, state = ssm.chunk_scan(**first, dt_softplus=True, dt_limit=limit, return_final_state=True, backend=backend)
    for t in range(prefix, 20):
        y, state = ssm.step(inputs["x"][:, t], state, inputs["dt"][:, t], inputs["A"], inputs["B"][:, t],
                            inputs["C"][:, t], D=inputs["D"], z=inputs["z"][:, t], dt_bias=inputs["dt_bias"],
                            dt_softplus=True, dt_limit=limit)
        assert rel(y, full_out[:, t]) < 1e-5


def test_causal_conv1d_step_reproduces_conv1d():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 9, generator=g)
    weight = torch.randn(3, 1, 4, generator=g)
    bias = torch.randn(3, generator=g)
    full = F.silu(F.conv1d(x, weight, bias, padding=3, groups=3)[..., :9])
    state = torch.zeros(2, 3, 4)
    for t in range(9):
        y, state = ssm.causal_conv1d_step(x[..., t], state, weight, bias, activation="silu")
        assert torch.allclose(y, full[..., t], atol=1e-6)


# ---------------------------------------------------------------------------------------------------- bad input
def test_shape_mismatches_are_named():
    inputs = s6_inputs(full=False)
    with pytest.raises(ssm.ScanInputError, match="delta must be"):
        ssm.selective_scan(**{**inputs, "delta": inputs["delta"][..., :-1]}, backend="torch")
    with pytest.raises(ValueError, match="groups, which must divide"):
        ssm.selective_scan(**{**inputs, "B": inputs["B"].repeat(1, 2, 1, 1)[:, :4]}, backend="torch")
    sd = ssd_inputs(full=False)
    with pytest.raises(ssm.ScanInputError, match="must divide the 4 heads"):
        ssm.chunk_scan(**{**sd, "B": sd["B"].repeat(1, 1, 2, 1)[:, :, :3], "C": sd["C"].repeat(1, 1, 2, 1)[:, :, :3]},
                       backend="torch")
    with pytest.raises(ssm.ScanInputError, match="chunk_size"):
        ssm.chunk_scan(**sd, chunk_size=0, backend="torch")
    with pytest.raises(ssm.ScanInputError, match="dt_limit"):
        ssm.chunk_scan(**sd, dt_limit=(2.0, 1.0), backend="torch")
    with pytest.raises(ssm.ScanInputError, match="state must be"):
        ssm.step(sd["x"][:, 0], torch.zeros(2), sd["dt"][:, 0], sd["A"], sd["B"][:, 0], sd["C"][:, 0])


def test_dtype_mismatches_are_named():
    inputs = s6_inputs(full=False)
    with pytest.raises(ssm.ScanDtypeError, match="share one dtype"):
        ssm.selective_scan(**{**inputs, "u": inputs["u"].double()}, backend="torch")
    with pytest.raises(TypeError, match="integer"):
        ssm.selective_scan(**inputs, seq_idx=torch.zeros(2, 37), backend="torch")
    with pytest.raises(ssm.ScanDtypeError, match="complex"):
        ssm.selective_scan(**{**inputs, "A": inputs["A"].to(torch.complex64)}, backend="torch")


@needs_triton
def test_triton_refuses_float64_and_oversized_d_state():
    with pytest.raises(ssm.ScanDtypeError, match="backend='torch'"):
        ssm.selective_scan(**s6_inputs(dtype=torch.float64, full=False), backend="triton")
    with pytest.raises(ssm.ScanUnsupportedError, match="d_state 300 exceeds"):
        ssm.selective_scan(**s6_inputs(d_state=300, full=False), backend="triton")
    with pytest.raises(ssm.ScanUnsupportedError, match="d_state 300 exceeds"):
        ssm.chunk_scan(**ssd_inputs(d_state=300, full=False), backend="triton")
    assert ssm.resolve_backend("cpu", torch.float64) == "torch"


def test_mixed_devices_are_refused():
    inputs = s6_inputs(full=False)
    with pytest.raises(ssm.ScanInputError, match="one device"):
        ssm.selective_scan(**{**inputs, "A": inputs["A"].to("meta")}, backend="torch")
    sd = ssd_inputs(full=False)
    with pytest.raises(ssm.ScanInputError, match="one device"):
        ssm.chunk_scan(**{**sd, "dt": sd["dt"].to("meta")}, backend="torch")


def test_cu_seqlens_must_describe_the_sequence():
    inputs = s6_inputs(batch=1, full=False)
    with pytest.raises(ssm.ScanInputError, match="rise from 0"):
        ssm.selective_scan(**inputs, cu_seqlens=torch.tensor([0, 10, 30]), backend="torch")
    with pytest.raises(ssm.ScanInputError, match="not both"):
        ssm.selective_scan(**inputs, cu_seqlens=torch.tensor([0, 37]), seq_idx=torch.zeros(1, 37, dtype=torch.long),
                           backend="torch")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_non_contiguous_inputs_are_copied_and_give_the_same_result(backend):
    inputs = s6_inputs(full=False, seqlen=16)
    strided = {**inputs, "u": inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)}
    assert not strided["u"].is_contiguous()
    assert torch.equal(ssm.selective_scan(**strided, backend=backend), ssm.selective_scan(**inputs, backend=backend))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_nan_in_delta_propagates_forward_or_raises_when_checked(backend):
    inputs = s6_inputs(full=False, seqlen=16)
    inputs["delta"][1, 2, 5] = float("nan")
    with pytest.raises(ssm.ScanNonFiniteError, match=r"delta holds a non-finite value \(nan\) at index \(1, 2, 5\)"):
        ssm.selective_scan(**inputs, check_finite=True, backend=backend)
    out = ssm.selective_scan(**inputs, backend=backend)
    bad = torch.isnan(out)
    assert bad[1, 2, 5:].all()  # the state of channel 2 in row 1 carries it onwards
    assert bad.sum() == bad[1, 2, 5:].numel()  # nothing before it, no other channel, no other row


def test_resolve_backend_says_which_path_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert ssm.resolve_backend("cpu", torch.float32) == "torch"
    with pytest.raises(ssm.ScanUnsupportedError, match="cannot run on cpu"):
        ssm.resolve_backend("cpu", torch.float32, "triton")
    with pytest.raises(ssm.ScanInputError, match="backend must be one of"):
        ssm.resolve_backend("cpu", torch.float32, "cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ssm.resolve_backend("cpu", torch.float32) == "triton"


# ---------------------------------------------------------------------------------------------------- GPU tuning
def test_gpu_autotune_pruning_keeps_valid_configs():
    """The GPU config lists (not run here) prune to candidates that fit the shapes."""
    triton = pytest.importorskip("triton")
    from hal.kernels.ssm import configs, s6, ssd

    s6_all = [triton.Config({"BLOCK_D": bd}, num_warps=w) for bd, w in
              sorted({p for tile in configs.S6_GPU.values() for p in tile.candidates})]
    for n in configs.S6_GPU:
        kept = s6._prune(s6_all, {"block_channels": 2048}, BLOCK_N=n)
        assert {(c.kwargs["BLOCK_D"], c.num_warps) for c in kept} == set(configs.S6_GPU[n].candidates)
    assert all(c.kwargs["BLOCK_D"] <= 1 for c in s6._prune(s6_all, {"block_channels": 1}, BLOCK_N=16))
    ssd_all = ssd._tile_configs(configs.SSD_FWD_GPU, True)
    assert all(c.kwargs["BLOCK_P"] <= 32 for c in ssd._prune(ssd_all, {"head_dim": 24}))
    assert len(ssd._prune(ssd_all, {"head_dim": 8})) >= 1


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_without_spilling():
    """Offline sm_90 build of one config per kernel (ptxas from Triton): catches code only the interpreter accepts."""
    pytest.importorskip("triton")
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "hal.kernels.ssm.offline_compile", "--quick"], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0 and rows, run.stderr[-2000:]
    for row in rows:
        assert "error" not in row and row["fits_sm90"], row
        assert row.get("local_bytes", 0) == 0, f"{row['kernel']} spills"
