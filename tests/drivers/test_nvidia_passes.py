"""Fusion passes (hal.drivers.nvidia.passes) on the CPU: each pass on the graph Dynamo hands a backend, the
rewritten graph equal to the original (the kernels' torch reference computes it here), and the near-misses that
must not fire, each with the reason it gives."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from hal.drivers.nvidia.passes import ORDER, apply_passes, fuse_epilogue, fuse_horizontal, fuse_norm
from hal.errors import InvalidInput
from hal.kernels import gemm

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


def capture(model, *inputs, grad: bool = False, dynamic: bool = False):
    """The one FX graph (and example inputs) Dynamo hands a backend for ``model(*inputs)``."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    torch._dynamo.reset()
    with contextlib.nullcontext() if grad else torch.no_grad():
        torch.compile(model, backend=record, fullgraph=True, dynamic=dynamic)(*inputs)
    assert len(graphs) == 1
    return graphs[0]


def fused(model, *inputs, enabled=ORDER, max_rows: int = 64, **capture_kw):
    """(graph after the passes, report, outputs before, outputs after)."""
    gm, example = capture(model, *inputs, **capture_kw)
    with torch.no_grad():
        before = gm(*example)
        report = apply_passes(gm, example, enabled, max_rows=max_rows)
        after = gm(*example)
    return gm, report, before, after


def calls(gm: fx.GraphModule) -> Counter:
    """How often each function or method is called in the graph, by name."""
    return Counter(getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes if n.op in ("call_function", "call_method"))


def assert_same(before, after, **tol):
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, **({"rtol": 1e-5, "atol": 1e-5} | tol))


def skipped(report, name: str) -> str:
    return "\n".join(report[name].skipped)


class RMSNorm(nn.Module):
    """Hugging Face's LlamaRMSNorm as it is written there (``dim`` other than -1 only for the near-miss)."""

    def __init__(self, width: int, eps: float = 1e-6, weight: bool = True, dim: int = -1):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(width) + 0.5) if weight else None
        self.variance_epsilon, self.dim = eps, dim

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(self.dim, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return hidden_states.to(input_dtype) if self.weight is None else self.weight * hidden_states.to(input_dtype)


class Llama(nn.Module):
    """A small Llama decoder layer (RMSNorm, Q/K/V, GQA attention, residuals, SwiGLU)."""

    def __init__(self, d: int = 32, heads: int = 4, kv: int = 2, ffn: int = 48):
        super().__init__()
        self.heads, self.kv, self.hd = heads, kv, d // heads
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d, bias=False), nn.Linear(d, kv * self.hd, bias=False), nn.Linear(d, kv * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate, self.up, self.down = nn.Linear(d, ffn, bias=False), nn.Linear(d, ffn, bias=False), nn.Linear(ffn, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        h = self.n1(x)
        q = self.q(h).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k(h).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v(h).view(b, t, self.kv, self.hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Fn(nn.Module):
    """A module whose forward is ``fn(self, x)``: parameters registered on it, the body written in the test."""

    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for name, p in params.items():
            setattr(self, name, nn.Parameter(p))

    def forward(self, *x):
        return self.fn(self, *x)


def randn(*shape):
    return torch.randn(*shape) / shape[-1] ** 0.5


# --------------------------------------------------------------------------- each pass fires where it is exact


def test_norm_moves_layer_norm_into_the_linear_it_feeds():
    model = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 24))
    gm, report, before, after = fused(model, torch.randn(3, 16), enabled=("norm",))
    assert report.fired == {"norm": 1}
    assert calls(gm) == Counter({"norm_linear": 1})
    assert_same(before, after)


def test_norm_moves_the_written_rms_norm_into_every_linear_reading_it():
    model = Fn(lambda m, x: (F.linear(m.norm(x), m.a), F.linear(m.norm(x), m.b)), a=randn(8, 16), b=randn(4, 16))
    model.norm = RMSNorm(16)
    gm, report, before, after = fused(model, torch.randn(2, 3, 16), enabled=("norm",))
    assert report["norm"].fired == 2  # norm(x) is traced twice: two norms, each into its linear
    assert calls(gm) == Counter({"norm_linear": 2}), gm.code
    assert_same(before, after)
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert all(n.kwargs["norm"] == "rms" and n.kwargs["eps"] == 1e-6 for n in nodes)


@pytest.mark.parametrize("with_weight", [True, False])
def test_norm_takes_the_rms_norm_with_or_without_its_weight(with_weight):
    model = nn.Sequential(RMSNorm(16, weight=with_weight), nn.Linear(16, 8, bias=False))
    gm, report, before, after = fused(model, torch.randn(4, 16), enabled=("norm",))
    assert report.fired == {"norm": 1}
    (node,) = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert (node.kwargs["norm_weight"] is not None) == with_weight
    assert_same(before, after)


def test_norm_takes_torch_rms_norm_with_its_default_eps():
    model = nn.Sequential(nn.RMSNorm(16), nn.Linear(16, 8))  # eps=None: torch uses finfo(dtype).eps
    gm, report, before, after = fused(model, torch.randn(4, 16), enabled=("norm",))
    assert report.fired == {"norm": 1}
    (node,) = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert node.kwargs["eps"] == torch.finfo(torch.float32).eps
    assert_same(before, after)


ACTIVATIONS = [
    ("gelu", nn.GELU()),
    ("gelu_tanh", nn.GELU(approximate="tanh")),
    ("silu", nn.SiLU()),
    ("relu", nn.ReLU()),
    ("relu", lambda y: torch.relu(y)),
    ("relu", lambda y: y.relu()),
]


@pytest.mark.parametrize("kind,act", ACTIVATIONS)
def test_epilogue_folds_the_activation(kind, act):
    model = Fn(lambda m, x: act(F.linear(x, m.w, m.b)), w=randn(24, 16), b=torch.randn(24))
    gm, report, before, after = fused(model, torch.randn(5, 16), enabled=("epilogue",))
    assert report.fired == {"epilogue": 1}
    (node,) = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    assert node.target is gemm.norm_linear and node.kwargs["activation"] == kind
    assert_same(before, after)


@pytest.mark.parametrize("residual_first", [True, False])
def test_epilogue_folds_activation_then_residual_into_one_call(residual_first):
    def body(m, x, r):
        y = F.gelu(F.linear(x, m.w))
        return r + y if residual_first else y + r

    model = Fn(body, w=randn(16, 16))
    gm, report, before, after = fused(model, torch.randn(2, 3, 16), torch.randn(2, 3, 16), enabled=("epilogue",))
    assert report["epilogue"].fired == 2  # the GELU, then the add into the same call
    (node,) = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert node.kwargs["activation"] == "gelu" and node.kwargs["residual"].op == "placeholder"
    assert_same(before, after)


def test_horizontal_runs_qkv_as_one_call_read_through_slices():
    def body(m, x):
        b, t, _ = x.shape
        q = F.linear(x, m.q).view(b, t, 2, 8).transpose(1, 2)
        k = F.linear(x, m.k, m.bk).view(b, t, 1, 8).transpose(1, 2)
        v = F.linear(x, m.v).view(b, t, 1, 8).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True).sum(1)

    model = Fn(body, q=randn(16, 16), k=randn(8, 16), bk=torch.randn(8), v=randn(8, 16))
    gm, report, before, after = fused(model, torch.randn(2, 3, 16), enabled=("horizontal",))
    assert report.fired == {"horizontal": 1}
    (node,) = [n for n in gm.graph.nodes if n.target is gemm.norm_linear]
    assert len(node.args[1]) == 3 and node.args[2][0] is None and node.args[2][1] is not None
    assert [u.args[1][1] for u in node.users] == [slice(0, 16), slice(16, 24), slice(24, 32)]
    assert_same(before, after)


def test_horizontal_takes_at_most_three_linears_per_call():
    model = Fn(lambda m, x: F.linear(x, m.a) * F.linear(x, m.b) + F.linear(x, m.c) - F.linear(x, m.d), a=randn(8, 16), b=randn(8, 16), c=randn(8, 16), d=randn(8, 16))
    gm, report, before, after = fused(model, torch.randn(4, 16), enabled=("horizontal",))
    assert report.fired == {"horizontal": 1}
    assert calls(gm)["norm_linear"] == 1 and calls(gm)["linear"] == 1
    assert_same(before, after)


@pytest.mark.parametrize("kind,act", [("silu", F.silu), ("gelu", F.gelu), ("gelu_tanh", lambda y: F.gelu(y, approximate="tanh"))])
def test_gated_turns_swiglu_and_geglu_into_gated_linear(kind, act):
    model = Fn(lambda m, x: F.linear(F.linear(x, m.up) * act(F.linear(x, m.gate, m.bg)), m.down), gate=randn(32, 16), bg=torch.randn(32), up=randn(32, 16), down=randn(16, 32))
    gm, report, before, after = fused(model, torch.randn(3, 16), enabled=("gated",))
    assert report.fired == {"gated": 1}
    (node,) = [n for n in gm.graph.nodes if n.target is gemm.gated_linear]
    assert node.kwargs["activation"] == kind and node.args[3] is not None and node.args[4] is None
    assert_same(before, after)


def test_all_passes_on_a_llama_layer_leave_four_kernel_calls():
    model = Llama().eval()
    gm, report, before, after = fused(model, torch.randn(1, 3, 32))
    assert report.fired == {"gated": 1, "horizontal": 1, "epilogue": 2, "norm": 2}
    assert calls(gm)["norm_linear"] == 3 and calls(gm)["gated_linear"] == 1
    assert not {"linear", "rsqrt", "silu", "add"} & set(calls(gm))
    assert_same(before, after)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_half_precision_is_as_close_to_float64_as_eager(dtype):
    model = Llama().eval()
    x = torch.randn(1, 2, 32)
    with torch.no_grad():
        exact = model.double()(x.double())
    model = model.to(dtype)
    _, report, (before,), (after,) = fused(model, x.to(dtype))
    assert report.fired["gated"] == 1

    def error(y):
        return float((y.double() - exact).norm() / exact.norm())

    assert error(after) <= 2 * error(before) + 1e-4


def test_all_passes_on_the_benchmark_mlp_and_gpt2_block():
    from benchmarks.fusion import build, expected

    for name in ("mlp16", "gpt2_block"):
        model, inputs, _ = build(name, True, "cpu")
        gm, report, before, after = fused(model, *inputs)
        assert {k: v for k, v in report.fired.items() if v} == expected(name, True)["all"]
        assert_same(before, after)


# --------------------------------------------------------------------------- near-misses that must not fire


def test_pre_activation_read_elsewhere_is_not_folded():
    model = Fn(_pre_activation_twice, w=randn(8, 16))
    _, report, before, after = fused(model, torch.randn(4, 16), enabled=("epilogue",))
    assert report.fired == {"epilogue": 0}
    assert "also read by" in skipped(report, "epilogue")
    assert_same(before, after)


def _pre_activation_twice(m, x):
    y = F.linear(x, m.w)
    return F.gelu(y), y * 2


def test_gate_pre_activation_read_elsewhere_is_not_gated():
    def body(m, x):
        g = F.linear(x, m.gate)
        return F.silu(g) * F.linear(x, m.up) + g

    _, report, _, _ = fused(Fn(body, gate=randn(8, 16), up=randn(8, 16)), torch.randn(4, 16), enabled=("gated",))
    assert report.fired == {"gated": 0}
    assert "also read by" in skipped(report, "gated")


@pytest.mark.parametrize("enabled", [("norm",), ORDER])
def test_normalised_tensor_also_read_by_a_non_linear_keeps_its_norm(enabled):
    def body(m, x):
        h = F.layer_norm(x, (16,), m.g, m.b)
        return F.linear(h, m.w) + h

    model = Fn(body, g=torch.rand(16) + 0.5, b=torch.randn(16), w=randn(16, 16))
    gm, report, before, after = fused(model, torch.randn(4, 16), enabled=enabled)
    assert report["norm"].fired == 0
    assert "also read by" in skipped(report, "norm")
    assert calls(gm)["layer_norm"] == 1
    assert_same(before, after)


def test_linears_sharing_an_input_under_autocast_are_not_fused():
    model = Fn(lambda m, x: (F.linear(x, m.a), F.linear(x, m.b)), a=randn(8, 16), b=randn(8, 16))
    with torch.autocast("cpu", torch.bfloat16):
        gm, example = capture(model, torch.randn(4, 16))
    report = apply_passes(gm, example)
    assert report["horizontal"].fired == 0 and report["epilogue"].fired == 0
    assert "autocast" in skipped(report, "horizontal")


def test_a_transposed_weight_is_not_fused():
    model = Fn(lambda m, x: (F.gelu(F.linear(x, m.w.t())), F.linear(x, m.w.t()) * F.linear(x, m.v)), w=randn(16, 8), v=randn(8, 16))
    gm, example = capture(model, torch.randn(4, 16))
    report = apply_passes(gm, example, ("horizontal", "epilogue"))
    assert report.fired == {"horizontal": 0, "epilogue": 0}
    assert "computed in the graph" in skipped(report, "epilogue") and "computed in the graph" in skipped(report, "horizontal")


def test_a_non_contiguous_weight_parameter_is_not_fused():
    model = Fn(lambda m, x: F.gelu(F.linear(x, m.w)), w=randn(16, 8).t())  # a parameter that is a transposed view
    _, report, _, _ = fused(model, torch.randn(4, 16), enabled=("epilogue",))
    assert report.fired == {"epilogue": 0}
    assert "not contiguous" in skipped(report, "epilogue")


def test_rows_above_max_rows_stay_on_cublas():
    model = Llama().eval()
    x = torch.randn(5, 13, 32)  # 65 rows
    _, report, _, _ = fused(model, x)
    assert sum(report.fired.values()) == 0
    assert "65 rows > max_rows=64" in skipped(report, "gated")
    _, report, before, after = fused(model, x, max_rows=65)
    assert report.fired == {"gated": 1, "horizontal": 1, "epilogue": 2, "norm": 2}
    assert_same(before, after)


def test_dynamic_rows_never_fire():
    model = nn.Sequential(nn.Linear(16, 16), nn.GELU())
    gm, example = capture(model, torch.randn(4, 16), dynamic=True)
    report = fuse_epilogue(gm, example)
    assert report.fired == 0 and "dynamic" in "\n".join(report.skipped)


def test_a_norm_over_another_dim_than_the_last_stays():
    layer_over_two = Fn(lambda m, x: F.linear(F.layer_norm(x, (3, 16)), m.w), w=randn(8, 16))
    rms_over_rows = nn.Sequential(RMSNorm(16, dim=1), nn.Linear(16, 8))
    for model in (layer_over_two, rms_over_rows):
        _, report, _, _ = fused(model, torch.randn(2, 3, 16), enabled=("norm",))
        assert report.fired == {"norm": 0}
        assert "not the last dim alone" in skipped(report, "norm")


def test_a_graph_that_records_gradients_is_left_alone():
    model = nn.Sequential(nn.Linear(16, 16), nn.GELU())
    gm, example = capture(model, torch.randn(4, 16), grad=True)
    report = fuse_epilogue(gm, example)
    assert report.fired == 0 and "gradients" in "\n".join(report.skipped)


def test_a_broadcast_or_promoting_residual_is_not_folded():
    broadcast = Fn(lambda m, x, r: F.linear(x, m.w) + r, w=randn(16, 16))
    for r in (torch.randn(16), torch.randn(4, 16, dtype=torch.float64)):
        _, report, _, _ = fused(broadcast, torch.randn(4, 16), r, enabled=("epilogue",))
        assert report.fired == {"epilogue": 0}
        assert ("broadcast" if r.dim() == 1 else "the add promotes") in skipped(report, "epilogue")


def test_horizontal_groups_the_others_when_one_linear_cannot_take_a_slice():
    model = Fn(lambda m, x: (F.linear(x, m.a), torch.cat([F.linear(x, m.b), F.linear(x, m.c)], -1) * 2), a=randn(8, 16), b=randn(8, 16), c=randn(4, 16))
    gm, report, before, after = fused(model, torch.randn(2, 16), enabled=("horizontal",))
    assert report.fired == {"horizontal": 1} and "graph's output" in skipped(report, "horizontal")
    (node,) = [n for n in gm.graph.nodes if n.target is gemm.norm_linear]
    assert [w.name for w in node.args[1]] == ["l_self_parameters_b_", "l_self_parameters_c_"]
    assert_same(before, after)


def test_horizontal_slices_never_reach_the_graph_output_or_an_impossible_view():
    to_output = Fn(lambda m, x: (F.linear(x, m.a), F.linear(x, m.b) * 2), a=randn(8, 16), b=randn(8, 16))
    flattened = Fn(lambda m, x: F.linear(x, m.a).view(-1) + F.linear(x, m.b).view(-1), a=randn(8, 16), b=randn(8, 16))
    for model, why in ((to_output, "graph's output"), (flattened, "cannot take that view")):
        gm, report, before, after = fused(model, torch.randn(2, 3, 16), enabled=("horizontal",))
        assert report.fired == {"horizontal": 0}
        assert why in skipped(report, "horizontal")
        assert calls(gm)["linear"] == 2
        assert_same(before, after)


# --------------------------------------------------------------------------- the API


def test_apply_passes_runs_in_order_and_checks_its_arguments():
    gm, example = capture(nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.GELU()), torch.randn(2, 16))
    report = apply_passes(gm, example, ("norm", "epilogue"))
    assert [r.name for r in report.results] == ["epilogue", "norm"]
    assert report.fired == {"epilogue": 1, "norm": 1} and "norm_linear(layer, gelu)" in str(report)
    for bad in ("norm", ("norms",), [1]):
        with pytest.raises(InvalidInput, match="gated, horizontal, epilogue, norm"):
            apply_passes(gm, example, bad)
    for bad in (0, 2.5, True):
        with pytest.raises(InvalidInput, match="max_rows"):
            fuse_norm(gm, example, max_rows=bad)


def test_a_graph_without_values_gets_them_from_the_example_inputs():
    def f(x, w, b):
        return F.relu(F.linear(x, w, b))

    gm = fx.symbolic_trace(f)
    example = [torch.randn(3, 16), randn(8, 16), torch.randn(8)]
    want = gm(*example)
    assert fuse_epilogue(gm, example).fired == 1
    torch.testing.assert_close(gm(*example), want)


def test_horizontal_moves_late_attributes_before_the_call():
    class Qk(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(16, 8), nn.Linear(16, 8)

        def forward(self, x):
            return torch.cat([self.q(x), self.k(x)], -1) * 2

    gm = fx.symbolic_trace(Qk(), concrete_args=None)
    gm = fx.GraphModule(gm, _functional(gm))  # nn.Linear calls as F.linear on get_attr weights, placed at first use
    example = [torch.randn(3, 16)]
    want = gm(*example)
    assert fuse_horizontal(gm, example).fired == 1
    torch.testing.assert_close(gm(*example), want)


def _functional(gm: fx.GraphModule) -> fx.Graph:
    """``gm``'s graph with every ``call_module`` of an nn.Linear as ``F.linear`` on get_attr nodes just before it."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            w, b = graph.get_attr(f"{n.target}.weight"), graph.get_attr(f"{n.target}.bias")
            env[n] = graph.call_function(F.linear, (env[n.args[0]], w, b))
        else:
            env[n] = graph.node_copy(n, lambda a: env[a])
    return graph


def test_a_backend_that_fuses_gives_the_models_outputs():
    model = Llama().eval()
    x = torch.randn(1, 4, 32)
    reports = []

    def backend(gm, example_inputs):
        reports.append(apply_passes(gm, example_inputs))
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x), rtol=1e-5, atol=1e-5)
    assert reports[0].fired["norm"] == 2


@pytest.mark.slow
def test_the_benchmark_smoke_run_compiles_every_variant_with_inductor(tmp_path):
    out = tmp_path / "fusion.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.fusion", "--smoke", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '"all_correct": true' in out.read_text()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_fused_llama_layer_under_inductor_on_a_gpu_matches_eager(mode):
    """On CUDA the fused calls run the Triton kernels inside Inductor's graph (and its CUDA graphs)."""
    from benchmarks.fusion import FusingBackend

    model = Llama(d=256, heads=8, kv=2, ffn=512).eval().cuda()
    x = torch.randn(1, 4, 256, device="cuda")
    with torch.no_grad():
        exact = model.double()(x.double())
        model = model.half()
        eager = model(x.half())
        backend = FusingBackend(ORDER, mode)
        torch._dynamo.reset()
        got = torch.compile(model, backend=backend, fullgraph=True)(x.half()).clone()
    assert backend.reports[0].fired == {"gated": 1, "horizontal": 1, "epilogue": 2, "norm": 2}

    def error(y):
        return float((y.double() - exact).norm() / exact.norm())

    assert error(got) <= 2 * error(eager) + 1e-4
