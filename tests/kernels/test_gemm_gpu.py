"""GPU tests of hal.kernels.gemm (pytest -m gpu on a CUDA machine): the compiled Triton kernel at the shapes of
benchmarks/fused_linear.py against the torch reference and float64, inside CUDA graph capture and replay (with an
in-place weight update between replays), and under torch.compile(mode="reduce-overhead").

Tolerances: against float64 from the same rounded inputs, relative Frobenius error float32 1e-5, float16 2e-3,
bfloat16 1.6e-2 (the I/O roundings); against the reference (float32 cuBLAS matmul, tf32 off, torch's float32 norm),
two units in the last place of the I/O dtype per element with at most 5% of the elements differing at all: only
the float32 summation order and the last bit of rsqrt differ between the two.
"""

import math

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]

from hal.kernels import gemm
from hal.kernels.gemm import reference

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
ULP = {torch.float32: 2.0 ** -20, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
# (name, rows, K, N of each weight, norm, activation, bias, residual): the linears of the benchmark's models
SHAPES = [
    ("mlp_b8_w1024", 8, 1024, (1024,), "layer", "gelu", True, False),
    ("mlp_b1_w4096", 1, 4096, (4096,), "layer", "gelu", True, False),
    ("llama_qkv_b1", 1, 2048, (2048, 512, 512), "rms", None, False, False),
    ("llama_qkv_b16", 16, 2048, (2048, 512, 512), "rms", None, False, False),
    ("llama_o_b16", 16, 2048, (2048,), None, None, False, True),
    ("llama_down_b1", 1, 8192, (2048,), None, None, False, True),
    ("large_m_300", 300, 1024, (1024, 256), "layer", "gelu_tanh", True, True),
]


@pytest.fixture(autouse=True)
def no_tf32():
    """The reference's float32 matmul must be a float32 product (torch's default); refuse to run otherwise."""
    if torch.backends.cuda.matmul.allow_tf32:
        pytest.skip("torch.backends.cuda.matmul.allow_tf32 is on: the float32 reference would be tf32")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def close_to_reference(out: torch.Tensor, ref: torch.Tensor) -> None:
    ulp = 2 * ULP[ref.dtype]
    torch.testing.assert_close(out, ref, rtol=ulp, atol=ulp * float(ref.double().abs().max()))
    if ref.dtype != torch.float32:
        assert float((out != ref).double().mean()) <= 0.05


def rnd(g: torch.Generator, *shape, dtype, scale=1.0, shift=0.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g, device="cuda") * scale + shift).to(dtype)


def make(rows, k, ns, norm, bias, residual, dtype, seed=0) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return {"x": rnd(g, rows, k, dtype=dtype, shift=0.3),
            "weights": [rnd(g, n, k, dtype=dtype, scale=k ** -0.5) for n in ns],
            "biases": [rnd(g, n, dtype=dtype, scale=0.3) if bias else None for n in ns],
            "norm": norm, "norm_weight": rnd(g, k, dtype=dtype, scale=0.2, shift=1.0) if norm else None,
            "norm_bias": rnd(g, k, dtype=dtype, scale=0.1) if norm == "layer" else None, "eps": 1e-5,
            "residual": rnd(g, rows, sum(ns), dtype=dtype) if residual else None}


def oracle(a: dict, activation) -> torch.Tensor:
    x = a["x"].double()
    if a["norm"] == "layer":
        mu = x.mean(-1, keepdim=True)
        x = (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + a["eps"]) * a["norm_weight"].double() \
            + a["norm_bias"].double()
    elif a["norm"] == "rms":
        x = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + a["eps"]) * a["norm_weight"].double()
    y = torch.cat([x @ w.double().T + (0 if b is None else b.double()) for w, b in zip(a["weights"], a["biases"])], -1)
    if activation == "gelu":
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    elif activation == "gelu_tanh":
        y = 0.5 * y * (1 + torch.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))
    return y if a["residual"] is None else y + a["residual"].double()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,rows,k,ns,norm,activation,bias,residual", SHAPES, ids=[s[0] for s in SHAPES])
def test_benchmark_shapes_match_reference(name, rows, k, ns, norm, activation, bias, residual, dtype):
    a = make(rows, k, ns, norm, bias, residual, dtype)
    assert gemm.resolve_backend(a["x"].device) == "triton"
    out = gemm.norm_linear(**a, activation=activation)
    close_to_reference(out, reference.norm_linear(**a, activation=activation))
    assert rel(out, oracle(a, activation)) < TOL[dtype]


@pytest.mark.parametrize("rows", [1, 16, 64])
def test_gated_decode_shapes_match_reference(rows):
    a = make(rows, 2048, (8192, 8192), "rms", False, False, torch.bfloat16, seed=rows)
    args = dict(x=a["x"], w_gate=a["weights"][0], w_up=a["weights"][1], norm="rms", norm_weight=a["norm_weight"],
                eps=1e-5, activation="silu")
    out = gemm.gated_linear(**args)
    close_to_reference(out, reference.gated_linear(**args))
    x = a["x"].double()
    h = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5) * a["norm_weight"].double()
    gate, up = h @ a["weights"][0].double().T, h @ a["weights"][1].double().T
    assert rel(out, F.silu(gate) * up) < TOL[torch.bfloat16]


def test_float32_is_a_float32_product():
    a = make(8, 1024, (1024, 64), "layer", True, True, torch.float32)
    out = gemm.norm_linear(**a, activation="gelu")
    assert rel(out, oracle(a, "gelu")) < TOL[torch.float32]


def decode_layer(x, p):
    """The linears of a Llama decoder layer with hal's fused ops (attention left out: q stands in for its output)."""
    qkv = gemm.norm_linear(x, [p["wq"], p["wk"], p["wv"]], norm="rms", norm_weight=p["g1"], eps=1e-5)
    q = qkv[..., :p["wq"].shape[0]]
    x = gemm.norm_linear(q, [p["wo"]], residual=x)
    h = gemm.gated_linear(x, p["wg"], p["wu"], norm="rms", norm_weight=p["g2"], eps=1e-5, activation="silu")
    return gemm.norm_linear(h, [p["wd"]], residual=x), qkv


def decode_layer_reference(x, p):
    qkv = reference.norm_linear(x, [p["wq"], p["wk"], p["wv"]], norm="rms", norm_weight=p["g1"], eps=1e-5)
    x = reference.norm_linear(qkv[..., :p["wq"].shape[0]], [p["wo"]], residual=x)
    h = reference.gated_linear(x, p["wg"], p["wu"], norm="rms", norm_weight=p["g2"], eps=1e-5, activation="silu")
    return reference.norm_linear(h, [p["wd"]], residual=x), qkv


def decode_params(dtype, seed=0, hidden=2048, kv=512, inter=8192) -> dict:
    g = torch.Generator(device="cuda").manual_seed(seed)
    shapes = {"wq": (hidden, hidden), "wk": (kv, hidden), "wv": (kv, hidden), "wo": (hidden, hidden),
              "wg": (inter, hidden), "wu": (inter, hidden), "wd": (hidden, inter)}
    p = {name: rnd(g, *shape, dtype=dtype, scale=shape[1] ** -0.5) for name, shape in shapes.items()}
    p.update(g1=rnd(g, hidden, dtype=dtype, scale=0.1, shift=1.0), g2=rnd(g, hidden, dtype=dtype, scale=0.1, shift=1.0))
    return p


def test_cuda_graph_replay_sees_new_inputs_and_in_place_weight_updates():
    dtype = torch.bfloat16
    p = decode_params(dtype)
    g = torch.Generator(device="cuda").manual_seed(5)
    static_x = rnd(g, 16, 2048, dtype=dtype)
    decode_layer(static_x, p)  # the autotuner times its configs outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_qkv = decode_layer(static_x, p)
    for step in range(3):
        static_x.copy_(rnd(g, 16, 2048, dtype=dtype))
        if step == 2:
            with torch.no_grad():
                p["wq"].mul_(0.5)
                p["wd"].mul_(-1.0)
                p["g2"].add_(0.25)
        graph.replay()
        ref_out, ref_qkv = decode_layer_reference(static_x, p)
        close_to_reference(static_qkv, ref_qkv)
        assert rel(static_out, ref_out) < TOL[dtype]


def test_under_torch_compile_reduce_overhead():
    dtype = torch.float16
    p = decode_params(dtype, seed=1, hidden=1024, kv=256, inter=2048)
    compiled = torch.compile(decode_layer, mode="reduce-overhead", fullgraph=True)
    g = torch.Generator(device="cuda").manual_seed(6)
    for _ in range(4):
        x = rnd(g, 8, 1024, dtype=dtype)
        out, qkv = compiled(x, p)
        eager_out, eager_qkv = decode_layer(x, p)
        assert torch.equal(out, eager_out) and torch.equal(qkv, eager_qkv)
