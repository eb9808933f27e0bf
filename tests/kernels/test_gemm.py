"""Tests of hal.kernels.gemm: the torch reference against float64, the Triton kernel (CPU interpreter) against the
reference, the custom ops in traced graphs, in-place weight updates and the errors of bad calls.

The Triton kernel runs on a CPU in Triton's interpreter, which needs TRITON_INTERPRET=1 before triton is first
imported; this module sets it when it is imported first (otherwise the Triton tests skip and say so). The
interpreter's tile is (BLOCK_M, BLOCK_N, BLOCK_K) = (16, 16, 32), so the shapes below cross tiles on every axis
with ragged edges (M 17, N 40 / 17 / 9, K 70).

Tolerances, relative Frobenius error against float64 from the same rounded inputs: the output's rounding plus the
norm output's rounding to the I/O dtype (what eager does) carried through the matmul: float32 1e-5, float16 2e-3,
bfloat16 1.6e-2. Triton against the reference: the same roundings at the same places, only the float32 summation
order differs, so one unit in the last place of the I/O dtype per element (assert_close rtol = 2^-mantissa), and
for float32, which rounds nothing on the way, 2^-20 (the summation order over K = 70 terms, and the norm statistics').
"""

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()  # without one, conftest.py has switched Triton's interpreter on

from hal.kernels import gemm
from hal.kernels.gemm import configs, reference
from hal.kernels.gemm.errors import GemmDeviceError, GemmDtypeError, GemmInputError, GemmShapeError
from hal.kernels.gemm.inputs import check_norm_linear

DEVICE = "cuda" if CUDA else "cpu"
TRITON_RUNS = gemm.resolve_backend(DEVICE) == "triton"
needs_triton = pytest.mark.skipif(
    not TRITON_RUNS, reason="no CUDA GPU, and triton was imported before this module could set TRITON_INTERPRET=1 "
                            "(run: TRITON_INTERPRET=1 pytest tests/kernels/test_gemm.py)")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
ULP = {torch.float32: 2.0 ** -20, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
NORMS = (None, "layer", "rms")
ACTIVATIONS = (None, "gelu", "gelu_tanh", "silu", "relu")
K = 70
N3 = (40, 17, 9)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def close_to_reference(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Within one unit in the last place of the I/O dtype (plus a floor of one ulp of the output's scale), and for
    float16 / bfloat16 equal but for a rare rounding flip (a rounding mode other than nearest-even, or a rounding
    left out, would change about half of the elements)."""
    ulp = ULP[ref.dtype]
    scale = float(ref.double().abs().max()) if ref.numel() else 1.0
    torch.testing.assert_close(out, ref, rtol=ulp, atol=ulp * scale)
    if ref.dtype != torch.float32 and ref.numel():
        assert float((out != ref).double().mean()) <= 0.02, "more than 2% of the elements differ in their last bit"


def make(dtype=torch.float16, m=5, k=K, ns=N3, norm="layer", bias=(True, False, True), residual=True, seed=0,
         lead=(), device=DEVICE):
    """Arguments of a norm_linear call; ``bias[i]`` says whether weight i has one; ``lead`` prefixes x's rows."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).to(device)

    args = {"x": rnd(*lead, m, k, shift=0.5), "weights": [rnd(n, k, scale=k ** -0.5) for n in ns],
            "biases": [rnd(n, scale=0.5) if bias[i % len(bias)] else None for i, n in enumerate(ns)],
            "norm": norm, "norm_weight": rnd(k, scale=0.3, shift=1.0) if norm else None,
            "norm_bias": rnd(k, scale=0.2) if norm == "layer" else None, "eps": 1e-5,
            "residual": rnd(*lead, m, sum(ns)) if residual else None}
    return args


def act64(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """The activations written out in float64 from their definitions."""
    if activation == "gelu":
        return 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    if activation == "gelu_tanh":
        return 0.5 * y * (1 + torch.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))
    if activation == "silu":
        return y / (1 + torch.exp(-y))
    if activation == "relu":
        return torch.where(y > 0, y, 0.0)
    return y


def norm64(x, norm, g, beta, eps):
    x = x.double()
    if norm == "layer":
        mu = x.mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps)
        return y * (1 if g is None else g.double()) + (0 if beta is None else beta.double())
    if norm == "rms":
        return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * (1 if g is None else g.double())
    return x


def oracle(args: dict, activation: str | None) -> torch.Tensor:
    """norm_linear in float64, from the definitions (no intermediate rounding)."""
    h = norm64(args["x"], args["norm"], args["norm_weight"], args["norm_bias"], args["eps"])
    y = torch.cat([h @ w.double().T + (0 if b is None else b.double())
                   for w, b in zip(args["weights"], args["biases"])], -1)
    y = act64(y, activation)
    return y if args["residual"] is None else y + args["residual"].double()


def gated_args(dtype=torch.float16, m=5, n=40, norm="rms", b_gate=True, b_up=False, residual=True, seed=1):
    base = make(dtype, m=m, ns=(n, n), norm=norm, bias=(b_gate, b_up), residual=False, seed=seed)
    return {"x": base["x"], "w_gate": base["weights"][0], "w_up": base["weights"][1], "b_gate": base["biases"][0],
            "b_up": base["biases"][1], "norm": norm, "norm_weight": base["norm_weight"],
            "norm_bias": base["norm_bias"], "eps": 1e-5,
            "residual": make(dtype, m=m, ns=(n,), seed=seed + 1)["residual"] if residual else None}


def gated_oracle(a: dict, activation: str | None) -> torch.Tensor:
    h = norm64(a["x"], a["norm"], a["norm_weight"], a["norm_bias"], a["eps"])
    gate = h @ a["w_gate"].double().T + (0 if a["b_gate"] is None else a["b_gate"].double())
    up = h @ a["w_up"].double().T + (0 if a["b_up"] is None else a["b_up"].double())
    y = act64(gate, activation) * up
    return y if a["residual"] is None else y + a["residual"].double()


# ------------------------------------------------------------------------------------ the reference vs float64
@pytest.mark.parametrize("weights", [1, 2, 3])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("norm", NORMS)
def test_reference_matches_float64(norm, activation, residual, weights):
    for dtype in TOL:
        args = make(dtype, ns=N3[:weights], norm=norm, residual=residual)
        out = reference.norm_linear(**args, activation=activation)
        assert out.dtype == dtype and out.shape == (5, sum(N3[:weights]))
        assert rel(out, oracle(args, activation)) < TOL[dtype], (dtype, norm, activation)


@pytest.mark.parametrize("activation", [None, "silu", "gelu_tanh"])
@pytest.mark.parametrize("norm", NORMS)
def test_gated_reference_matches_float64(norm, activation):
    for dtype in TOL:
        for b_gate, b_up in ((True, True), (False, True), (False, False)):
            a = gated_args(dtype, norm=norm, b_gate=b_gate, b_up=b_up)
            out = reference.gated_linear(**a, activation=activation)
            assert out.shape == (5, 40) and rel(out, gated_oracle(a, activation)) < TOL[dtype]


@pytest.mark.parametrize("dtype", list(TOL))
def test_reference_norms_are_eager_layer_norm_and_llama_rms_norm(dtype):
    """The norm rounds where eager does: F.layer_norm (one rounding of the float32 result) and HF LlamaRMSNorm's
    forward, written out here as transformers has it."""
    args = make(dtype, m=9, norm="layer")
    call = check_norm_linear(args["x"], args["weights"], args["biases"], "layer", args["norm_weight"],
                             args["norm_bias"], 1e-5, None, None)
    eager = F.layer_norm(args["x"], (K,), args["norm_weight"], args["norm_bias"], 1e-5)
    close_to_reference(reference.normalise(call), eager)

    def llama_rms_norm(hidden_states, weight, eps):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + eps)
        return weight * hidden_states.to(input_dtype)

    call = check_norm_linear(args["x"], args["weights"], args["biases"], "rms", args["norm_weight"], None, 1e-6,
                             None, None)
    assert torch.equal(reference.normalise(call), llama_rms_norm(args["x"], args["norm_weight"], 1e-6))


def test_reference_agrees_with_the_eager_composition():
    """norm -> F.linear -> activation -> + residual in eager (which rounds after each op) lands within its own
    roundings of the fused reference (which rounds once)."""
    args = make(torch.float16, ns=(40,), norm="layer", bias=(True,))
    h = F.layer_norm(args["x"], (K,), args["norm_weight"], args["norm_bias"], 1e-5)
    eager = F.gelu(F.linear(h, args["weights"][0], args["biases"][0])) + args["residual"]
    assert rel(reference.norm_linear(**args, activation="gelu"), eager) < 2e-3


# ----------------------------------------------------------------------------------- Triton vs the reference
TRITON_CASES = [  # (dtype, m, ns, norm, activation, bias, residual)
    (torch.float16, 5, N3, "layer", "gelu", (True, False, True), True),
    (torch.bfloat16, 17, N3, "rms", "silu", (False, True, False), False),
    (torch.float32, 1, N3, None, "relu", (True,), True),
    (torch.float16, 17, (40,), "layer", "gelu_tanh", (False,), False),
    (torch.bfloat16, 1, (16, 16), None, None, (True, True), True),
    (torch.float16, 3, (1, 9), "rms", "relu", (True, False), True),
    (torch.float32, 17, (9, 40, 17), "layer", "silu", (False,), False),
]


@needs_triton
@pytest.mark.parametrize("dtype,m,ns,norm,activation,bias,residual", TRITON_CASES)
def test_triton_matches_reference(dtype, m, ns, norm, activation, bias, residual):
    args = make(dtype, m=m, ns=ns, norm=norm, bias=bias, residual=residual)
    out = gemm.norm_linear(**args, activation=activation)
    ref = reference.norm_linear(**args, activation=activation)
    assert out.shape == ref.shape and out.dtype == dtype
    close_to_reference(out, ref)
    assert rel(out, oracle(args, activation)) < TOL[dtype]


@needs_triton
@pytest.mark.parametrize("dtype", list(TOL))
def test_triton_gated_matches_reference(dtype):
    for norm, activation, b_gate, b_up, residual in (("rms", "silu", False, False, True),
                                                     ("layer", "gelu", True, True, False),
                                                     (None, None, True, False, True)):
        a = gated_args(dtype, m=17, norm=norm, b_gate=b_gate, b_up=b_up, residual=residual)
        out = gemm.gated_linear(**a, activation=activation)
        close_to_reference(out, reference.gated_linear(**a, activation=activation))


@needs_triton
def test_triton_layer_norm_has_no_cancellation():
    """Rows of mean 1000 and spread 0.01 in float32: E[x^2] - E[x]^2 gets the variance wrong by a factor of about
    1000 here, while a float32 two-pass norm (the torch reference) is off by its x - mean rounding only, 4e-3."""
    args = make(torch.float32, m=3, ns=(17,), norm="layer", residual=False)
    g = torch.Generator().manual_seed(3)
    args["x"] = (1000.0 + 0.01 * torch.randn(3, K, generator=g)).to(DEVICE)
    exact = oracle(args, None)
    assert rel(gemm.norm_linear(**args), exact) <= max(1e-2, 2 * rel(reference.norm_linear(**args), exact))


@needs_triton
def test_triton_leading_axes_empty_rows_and_nan_rows():
    args = make(torch.float16, m=4, ns=(17, 9), lead=(2,))
    out = gemm.norm_linear(**args, activation="relu")
    assert out.shape == (2, 4, 26)
    close_to_reference(out, reference.norm_linear(**args, activation="relu"))
    empty = make(torch.float16, m=0, ns=(17,), residual=False)
    assert gemm.norm_linear(**empty).shape == (0, 17)
    args["x"] = args["x"].clone()
    args["x"][1, 2, 5] = float("nan")
    out = gemm.norm_linear(**args, activation="relu")
    assert out[1, 2].isnan().all() and not out[1, :2].isnan().any() and not out[0].isnan().any()


def test_in_place_weight_update_is_seen_by_the_next_call():
    """Weights are read where they live: no copy (concatenated, folded or cached) can go stale."""
    args = make(torch.float16, ns=(17, 9), norm="rms")
    before = gemm.norm_linear(**args)
    with torch.no_grad():
        args["weights"][1].mul_(-2.0)
        args["biases"][0].add_(1.0)
        args["norm_weight"].mul_(0.5)
    after = gemm.norm_linear(**args)
    close_to_reference(after, reference.norm_linear(**args))
    assert not torch.equal(before[:, :17], after[:, :17]) and not torch.equal(before[:, 17:], after[:, 17:])
    a = gated_args(torch.float16)
    gemm.gated_linear(**a)
    with torch.no_grad():
        a["w_up"].mul_(3.0)
    close_to_reference(gemm.gated_linear(**a), reference.gated_linear(**a))


# ---------------------------------------------------------------------------------------- the custom ops
def two_ops(x, w_q, w_k, g, w_gate, w_up):
    qk = gemm.norm_linear(x, [w_q, w_k], norm="rms", norm_weight=g, eps=1e-6)
    return gemm.gated_linear(qk[..., :K], w_gate, w_up, residual=qk[..., :40])


def two_ops_inputs():
    a = make(torch.float16, ns=(K, 9), norm="rms")
    b = gated_args(torch.float16, n=40, norm=None)
    return a["x"], a["weights"][0], a["weights"][1], a["norm_weight"], b["w_gate"], b["w_up"]


def test_custom_ops_are_one_node_each_under_torch_compile():
    graphs = []

    def recorder(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    inputs = two_ops_inputs()
    compiled = torch.compile(two_ops, backend=recorder, fullgraph=True)
    close_to_reference(compiled(*inputs), two_ops(*inputs))
    (gm,) = graphs
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.hal.norm_linear.default) == 1
    assert targets.count(torch.ops.hal.gated_linear.default) == 1
    shapes = {n.target: tuple(n.meta["example_value"].shape) for n in gm.graph.nodes if n.op == "call_function"}
    assert shapes[torch.ops.hal.norm_linear.default] == (5, K + 9)
    assert shapes[torch.ops.hal.gated_linear.default] == (5, 40)


def test_custom_ops_trace_with_fake_tensors_and_fx():
    from torch.fx.experimental.proxy_tensor import make_fx

    inputs = two_ops_inputs()
    gm = make_fx(two_ops, tracing_mode="fake")(*inputs)
    ops = [n for n in gm.graph.nodes if n.op == "call_function" and "hal" in str(n.target)]
    assert [str(n.target) for n in ops] == ["hal.norm_linear.default", "hal.gated_linear.default"]
    assert tuple(ops[0].meta["val"].shape) == (5, K + 9) and tuple(ops[1].meta["val"].shape) == (5, 40)
    symbolic = torch.fx.symbolic_trace(two_ops)
    assert sum("hal.norm_linear" in str(n.target) for n in symbolic.graph.nodes) == 1
    bad = list(inputs)
    bad[2] = bad[2][:, :-1]  # w_k with K - 1 columns
    with pytest.raises(GemmShapeError, match=r"weights\[1\]"):
        make_fx(two_ops, tracing_mode="fake")(*bad)


# ------------------------------------------------------------------------------------------------ bad calls
def _swap(**changes):
    def edit(args: dict) -> dict:
        out = dict(args)
        for key, value in changes.items():
            out[key] = value(args) if callable(value) else value
        return out
    return edit


BAD_CALLS = [
    (_swap(weights=lambda a: a["weights"][0]), GemmInputError, "weights must be a list"),
    (_swap(weights=lambda a: a["weights"] * 2, biases=None), GemmShapeError, "1 to 3 weights"),
    (_swap(weights=lambda a: [a["weights"][0], a["weights"][1][:, :-1], a["weights"][2]]), GemmShapeError,
     r"weights\[1\] must be \(N, K\)"),
    (_swap(weights=lambda a: [a["weights"][0].T.contiguous().T, *a["weights"][1:]]), GemmShapeError,
     r"weights\[0\] must be contiguous along K"),
    (_swap(x=lambda a: a["x"].T.contiguous().T), GemmShapeError, "x must be contiguous along its last axis"),
    (_swap(x=lambda a: torch.zeros(2, 4, K, dtype=torch.float16, device=DEVICE)[:, :3], residual=None), GemmShapeError,
     "cannot be seen as one row axis"),
    (_swap(weights=lambda a: [a["weights"][0].float(), *a["weights"][1:]]), GemmDtypeError,
     r"weights\[0\] is torch.float32 but x is torch.float16"),
    (_swap(x=lambda a: a["x"].double()), GemmDtypeError, "float16, bfloat16 or float32"),
    (_swap(weights=lambda a: [a["weights"][0].to("meta"), *a["weights"][1:]]), GemmDeviceError,
     r"weights\[0\] is on meta"),
    (_swap(biases=lambda a: [a["biases"][0][:-1], None, None]), GemmShapeError, r"biases\[0\] must be 1-D"),
    (_swap(biases=lambda a: a["biases"][:2]), GemmShapeError, "one entry"),
    (_swap(biases=lambda a: [1.0, None, None]), GemmInputError, r"biases\[0\] must be a tensor or None"),
    (_swap(norm="batch"), GemmInputError, "norm must be one of"),
    (_swap(activation="tanh"), GemmInputError, "activation must be one of"),
    (_swap(norm=None), GemmInputError, "without a norm"),
    (_swap(norm="rms"), GemmInputError, "RMSNorm has no bias"),
    (_swap(norm_weight=lambda a: a["norm_weight"][:-1]), GemmShapeError, "norm_weight must be 1-D of K"),
    (_swap(residual=lambda a: a["residual"][:, :-1]), GemmShapeError, "residual must have the output's shape"),
    (_swap(eps=-1.0), GemmInputError, "eps must be a finite number"),
    (_swap(eps="small"), GemmInputError, "eps must be a number"),
    (_swap(x=lambda a: a["x"][:, :0], weights=lambda a: [w[:, :0] for w in a["weights"]]), GemmShapeError,
     "no features"),
]


@pytest.mark.parametrize("edit,error,match", BAD_CALLS)
def test_bad_calls_raise_named_errors(edit, error, match):
    args = edit({**make(torch.float16), "activation": None})
    for fn in (gemm.norm_linear, reference.norm_linear):
        with pytest.raises(error, match=match) as caught:
            fn(**args)
        assert isinstance(caught.value, GemmInputError) and isinstance(caught.value, ValueError)


def test_bad_gated_calls_raise_named_errors():
    a = gated_args(torch.float16)
    with pytest.raises(GemmShapeError, match="w_gate and w_up must have one shape"):
        gemm.gated_linear(**{**a, "w_up": a["w_up"][:-1]})
    with pytest.raises(GemmShapeError, match="b_up must be 1-D"):
        gemm.gated_linear(**{**a, "b_up": a["w_up"][0, :3]})
    with pytest.raises(GemmShapeError, match="residual"):
        gemm.gated_linear(**{**a, "residual": torch.zeros(5, 41, dtype=torch.float16, device=DEVICE)})


def test_without_triton_the_reference_runs(monkeypatch):
    """On a CPU without the interpreter the ops run the torch reference (and import nothing of Triton for it)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert gemm.resolve_backend("cpu") == "torch"
    assert gemm.resolve_backend("cuda") == ("triton" if gemm.api.TRITON_INSTALLED else "torch")
    args = make(torch.bfloat16, norm="rms", device="cpu")
    assert torch.equal(gemm.norm_linear(**args, activation="silu"), reference.norm_linear(**args, activation="silu"))


# ------------------------------------------------------------------------------------------------ tile choice
def test_gpu_tile_candidates(monkeypatch):
    """Each row bucket tries its own tiles (BLOCK_M = the padded row count up to 64), never none."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert [configs.m_bucket(m) for m in (1, 16, 17, 33, 64, 65, 4096)] == [16, 16, 32, 64, 64, 128, 128]
    everything = set(configs.all_tiles())
    for bucket in (16, 32, 64, 128):
        for n_max, k in ((4096, 4096), (1024, 1024), (9, 70), (1, 1)):
            tiles = configs.candidates(bucket, n_max, k)
            assert tiles and set(tiles) <= everything
            if bucket <= configs.SMALL_M_MAX:
                assert {t[0] for t in tiles} == {bucket}
            else:
                assert set(tiles) <= set(configs.LARGE_M_TILES)
    assert all(t[2] <= 64 for t in configs.candidates(16, 4096, 40))


@pytest.mark.slow
def test_kernel_compiles_for_sm90_pipelined_without_spilling():
    """Offline sm_90 build (ptxas from Triton) of the first tile of each bucket for every variant: catches code only
    the interpreter accepts, spills, and a weight stream that is not pipelined."""
    pytest.importorskip("triton")
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "hal.kernels.gemm.offline_compile", "--quick"], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0 and rows, run.stderr[-2000:]
    for row in rows:
        assert "error" not in row and row["fits_sm90"] and row["cp_async"] and row["vector_loads"], row
        assert row.get("local_bytes", 0) == 0, f"{row['variant']} spills"
