"""Each fusion pass on and off under torch.compile, on the models where it fires (issue 16, "Fusion passes").

Models (random weights, eval mode, inference under ``torch.no_grad``; sizes of a ``--smoke`` run in brackets):

* ``mlp16``: 16 x (Linear(1024, 1024) -> GELU -> LayerNorm(1024)), batch 8, float16 (the issue's launch-bound MLP)
  [2 layers of width 32, batch 4, float32];
* ``gpt2_block``: a GPT-2-small block (width 768, 12 heads, pre-LayerNorm, fused QKV, causal SDPA, tanh-GELU MLP of
  3072), batch 1 x 32 tokens, float16 [width 64, 4 heads, 8 tokens]; written with ``nn.Linear`` (transformers' GPT-2
  uses ``Conv1D`` = ``addmm`` with [K, N] weights, which the passes do not match);
* ``llama_layer``: a Llama decoder layer (width 2048, 32 heads, 8 KV heads, SwiGLU MLP of 8192, RMSNorm, rotary)
  at batch 1, one token (the projections, norms and MLP of a decode step; no KV cache), float16: transformers'
  ``LlamaDecoderLayer`` from a ``LlamaConfig`` when transformers is installed, else the hand-written equivalent
  below [width 64, 4 heads, 2 KV heads, MLP 128, float32].

Variants per model: ``unfused`` (the same backend with no pass: plain Inductor), each pass that fires on the model
alone, and ``all``. Each is ``torch.compile(model, backend=...)`` where the backend runs the passes
(``hal.drivers.nvidia.passes.apply_passes``) and then Inductor (``torch._inductor.compile_fx.compile_fx``), in two
Inductor modes: ``default`` and ``reduce-overhead`` (CUDA graphs). A variant that compiles into anything but one
graph, or whose passes fire differently from the rewrites ``expected`` lists, fails the run.

Timing (GPU only): ``triton.testing.do_bench`` median (CUDA events, warm-up 25 ms, 100 ms of repetitions), the
variants of a model interleaved over ``--rounds`` rounds, median over rounds. Correctness, in the same run: each
variant's output against the model in float64 (eager), next to eager's own error in the model's dtype; a variant
passes when its error is at most ``ERROR_FACTOR`` x eager's (or ``ERROR_FLOOR``, whichever is larger).

    python -m benchmarks.fusion                 # on a CUDA GPU: writes benchmarks/results/fusion.json
    python -m benchmarks.fusion --smoke         # CPU, tiny models, default mode, no timing: checks that it runs

``summary.gain_by_pass[pass][model][mode]`` = unfused time / time with that pass alone; ``summary.gain_all_passes``
the same with every pass.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, environment, write_result  # noqa: E402
from benchmarks.cuda_graphs import RMSNorm, rotate_half  # noqa: E402
from hal.drivers.nvidia.passes import ORDER, FusionReport, apply_passes  # noqa: E402

#: Layers of the MLP: the issue's 16, or 2 in a smoke run.
MLP_LAYERS = {False: 16, True: 2}


def expected(name: str, smoke: bool) -> dict[str, dict[str, int]]:
    """The variants measured on a model (each pass that fires on it alone, and all of them) and the rewrites each
    pass makes in that variant: the run fails if a pass fires otherwise. Alone, a pass also takes what an earlier
    pass would have taken: on the Llama layer the epilogue fuses the gate's SiLU and horizontal pairs gate with up."""
    if name == "mlp16":  # every GELU; every LayerNorm but the last (the model's output) into the next linear
        n = MLP_LAYERS[smoke]
        return {"epilogue": {"epilogue": n}, "norm": {"norm": n - 1}, "all": {"epilogue": n, "norm": n - 1}}
    if name == "gpt2_block":  # GELU into c_fc and the two residual adds; ln_1 into c_attn, ln_2 into c_fc
        return {"epilogue": {"epilogue": 3}, "norm": {"norm": 2}, "all": {"epilogue": 3, "norm": 2}}
    if name == "llama_layer":  # gate/up; q/k/v; o_proj and down_proj + residual; both RMSNorms
        return {
            "gated": {"gated": 1},
            "horizontal": {"horizontal": 2},
            "epilogue": {"epilogue": 3},
            "norm": {"norm": 2},
            "all": {"gated": 1, "horizontal": 1, "epilogue": 2, "norm": 2},
        }
    raise LookupError(f"no model {name!r}; the models are {', '.join(MODELS)}")


MODELS = ("mlp16", "gpt2_block", "llama_layer")
#: A variant's error against float64 may be this many times eager's own (engineering choice: the kernels round
#: once where eager rounds after every op, so they should not be less accurate; 2x leaves room for reordered sums).
ERROR_FACTOR = 2.0
#: ... or this relative error, whichever is larger (float32 smoke runs, where eager's error is ~1e-7).
ERROR_FLOOR = 1e-4
MODES = ("default", "reduce-overhead")


# --------------------------------------------------------------------------- models


def mlp16(width: int, layers: int) -> nn.Module:
    """``layers`` x (Linear -> GELU -> LayerNorm)."""
    return nn.Sequential(*(m for _ in range(layers) for m in (nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))))


class Gpt2Block(nn.Module):
    """A GPT-2 block as GPT-2 computes it: pre-LayerNorm, one QKV projection, causal attention, tanh-GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.c_fc, self.mlp_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.c_attn(self.ln_1(x)).split(c, dim=2))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(a.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class LlamaLayer(nn.Module):
    """A Llama decoder layer as transformers computes it (rotary, GQA through repeated K/V heads, SwiGLU)."""

    def __init__(self, width: int, heads: int, kv_heads: int, ffn: int, theta: float = 500000.0):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(width), RMSNorm(width)
        self.q_proj = nn.Linear(width, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, width, bias=False)
        self.gate_proj, self.up_proj = nn.Linear(width, ffn, bias=False), nn.Linear(width, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, width, bias=False)
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim), persistent=False)

    def _heads(self, y: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = y.shape
        return y.view(b, t, heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype)[:, None], emb.sin().to(x.dtype)[:, None]
        residual = x
        h = self.input_layernorm(x)
        q, k, v = self._heads(self.q_proj(h), self.heads), self._heads(self.k_proj(h), self.kv_heads), self._heads(self.v_proj(h), self.kv_heads)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        repeat = self.heads // self.kv_heads
        b, _, t, d = k.shape
        k, v = (z[:, :, None].expand(b, self.kv_heads, repeat, t, d).reshape(b, self.heads, t, d) for z in (k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        x = residual + self.o_proj(a.transpose(1, 2).reshape(b, t, -1))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class HfLlamaLayer(nn.Module):
    """transformers' LlamaDecoderLayer with its rotary embedding, called as LlamaModel calls it (no cache)."""

    def __init__(self, transformers: Any, width: int, heads: int, kv_heads: int, ffn: int):
        super().__init__()
        from transformers.models.llama import modeling_llama

        config = transformers.LlamaConfig(
            hidden_size=width, intermediate_size=ffn, num_attention_heads=heads, num_key_value_heads=kv_heads, num_hidden_layers=1,
            attn_implementation="sdpa",
        )
        self.layer = modeling_llama.LlamaDecoderLayer(config, layer_idx=0)
        self.rotary = modeling_llama.LlamaRotaryEmbedding(config)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out = self.layer(x, position_embeddings=self.rotary(x, position_ids), position_ids=position_ids, use_cache=False)
        return out[0] if isinstance(out, tuple) else out


def llama_layer(width: int, heads: int, kv_heads: int, ffn: int) -> tuple[nn.Module, str]:
    try:
        import transformers
    except ImportError:
        return LlamaLayer(width, heads, kv_heads, ffn), "hand-written Llama decoder layer (transformers is not installed)"
    return HfLlamaLayer(transformers, width, heads, kv_heads, ffn), f"transformers {transformers.__version__} LlamaDecoderLayer"


def build(name: str, smoke: bool, device: str) -> tuple[nn.Module, tuple[torch.Tensor, ...], str]:
    """(model, inputs, what it is) on ``device`` in the model's dtype, seeded."""
    torch.manual_seed(0)
    dtype = torch.float32 if smoke else torch.float16
    if name == "mlp16":
        width, layers, batch = (32, MLP_LAYERS[smoke], 4) if smoke else (1024, MLP_LAYERS[smoke], 8)
        model, inputs, what = mlp16(width, layers), (torch.randn(batch, width),), f"{layers} x Linear-GELU-LayerNorm, width {width}, batch {batch}"
    elif name == "gpt2_block":
        width, heads, tokens = (64, 4, 8) if smoke else (768, 12, 32)
        model, inputs, what = Gpt2Block(width, heads), (torch.randn(1, tokens, width),), f"GPT-2 block width {width}, {heads} heads, 1 x {tokens} tokens"
    elif name == "llama_layer":
        width, heads, kv_heads, ffn = (64, 4, 2, 128) if smoke else (2048, 32, 8, 8192)
        model, what = llama_layer(width, heads, kv_heads, ffn)
        inputs = (torch.randn(1, 1, width), torch.tensor([[7]]))
        what += f", width {width}, {heads} heads ({kv_heads} KV), MLP {ffn}, batch 1, one token"
    else:
        raise LookupError(f"no model {name!r}; the models are {', '.join(MODELS)}")
    model = model.to(device=device, dtype=dtype).eval()
    inputs = tuple(t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in inputs)
    return model, inputs, what


# --------------------------------------------------------------------------- compiling and measuring


class FusingBackend:
    """A torch.compile backend: the ``enabled`` passes, then Inductor in ``mode``; keeps each graph's report."""

    def __init__(self, enabled: Sequence[str], mode: str):
        self.enabled, self.mode = tuple(enabled), mode
        self.reports: list[FusionReport] = []

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        from torch._inductor import list_mode_options
        from torch._inductor.compile_fx import compile_fx

        self.reports.append(apply_passes(gm, example_inputs, enabled=self.enabled))
        return compile_fx(gm, example_inputs, config_patches=list_mode_options(self.mode) if self.mode != "default" else None)


def variants(name: str, smoke: bool) -> dict[str, tuple[str, ...]]:
    """The passes each variant of a model runs: none, each pass that fires on it alone, all."""
    return {"unfused": (), **{v: ORDER if v == "all" else (v,) for v in expected(name, smoke)}}


def check_fired(name: str, smoke: bool, variant: str, backend: FusingBackend) -> dict[str, int]:
    """The rewrites the variant made; raises if it compiled into several graphs or fired otherwise than expected."""
    if len(backend.reports) != 1:
        raise RuntimeError(f"{name}/{variant}: torch.compile made {len(backend.reports)} graphs, expected one")
    fired = backend.reports[0].fired
    want = {p: expected(name, smoke).get(variant, {}).get(p, 0) for p in backend.enabled}
    if fired != want:
        raise RuntimeError(f"{name}/{variant}: passes fired {fired}, expected {want}:\n{backend.reports[0]}")
    return fired


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


def time_ms(fn: Callable[[], Any]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def run_model(name: str, smoke: bool, device: str, modes: Sequence[str], rounds: int) -> dict[str, Any]:
    model, inputs, what = build(name, smoke, device)
    reference = copy.deepcopy(model).double()(*(t.double() if t.is_floating_point() else t for t in inputs))
    eager_error = relative_error(model(*inputs), reference)
    bound = max(ERROR_FACTOR * eager_error, ERROR_FLOOR)
    result: dict[str, Any] = {"model": what, "eager_error_vs_float64": eager_error, "error_bound": bound, "modes": {}}
    for mode in modes:
        compiled, rows = {}, {}
        for variant, enabled in variants(name, smoke).items():
            backend = FusingBackend(enabled, mode)
            fn = torch.compile(copy.deepcopy(model), backend=backend, fullgraph=True)
            out = fn(*inputs).clone()  # a CUDA-graph replay overwrites its output: keep this one
            error = relative_error(out, reference)
            rows[variant] = {"passes": list(enabled), "fired": check_fired(name, smoke, variant, backend), "error_vs_float64": error, "correct": error <= bound}
            compiled[variant] = fn
            print(f"{name} [{mode}] {variant}: fired {rows[variant]['fired']}, error {error:.2e} (bound {bound:.2e})", flush=True)
        if device == "cuda":
            samples: dict[str, list[float]] = {v: [] for v in compiled}
            for _ in range(rounds):
                for variant, fn in compiled.items():
                    samples[variant].append(time_ms(lambda fn=fn: fn(*inputs)))
            for variant, row in rows.items():
                row["ms_rounds"] = samples[variant]
                row["ms"] = statistics.median(samples[variant])
                row["gain_vs_unfused"] = statistics.median(u / s for u, s in zip(samples["unfused"], samples[variant]))
                print(f"{name} [{mode}] {variant}: {row['ms']:.4f} ms, gain {row['gain_vs_unfused']:.3f}x", flush=True)
        result["modes"][mode] = rows
    return result


def summarise(models: dict[str, Any], smoke: bool, timed: bool) -> dict[str, Any]:
    """Each pass's gain on each model where it fires (unfused time / time with it alone), and all passes'."""
    summary: dict[str, Any] = {"all_correct": all(row["correct"] for m in models.values() for rows in m["modes"].values() for row in rows.values())}
    if not timed:
        summary["gain_by_pass"] = "not measured: a smoke run times nothing"
        return summary
    summary["gain_by_pass"] = {
        p: {name: {mode: rows[p]["gain_vs_unfused"] for mode, rows in m["modes"].items()} for name, m in models.items() if p in expected(name, smoke)}
        for p in ORDER
    }
    summary["gain_all_passes"] = {name: {mode: rows["all"]["gain_vs_unfused"] for mode, rows in m["modes"].items()} for name, m in models.items()}
    summary["how"] = "median over rounds of (unfused ms / variant ms) in the same round; ms = triton.testing.do_bench median"
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny float32 models, default mode only, no timing")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--modes", default=None, help=f"comma-separated Inductor modes, of {', '.join(MODES)} (default: both on a GPU, default in a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (each times every variant once)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default results/fusion.json; a smoke run writes to the temp dir)")
    parser.add_argument("--merge", action="store_true", help="keep the other models of the existing result file (a run split by --models)")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("a timed run needs a CUDA GPU; use --smoke on a CPU")
    modes = args.modes.split(",") if args.modes else (["default"] if args.smoke else list(MODES))
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; the modes are {', '.join(MODES)}")
    names = [n for n in args.models.split(",") if n]
    out = args.out or (Path(tempfile.gettempdir()) / "fusion_smoke.json" if args.smoke else RESULTS / "fusion.json")
    models = json.loads(out.read_text())["models"] if args.merge and out.exists() else {}
    # every variant compiles the same forward code object again (one model copy each): allow that many entries
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=4096):
        models.update({name: run_model(name, args.smoke, device, modes, args.rounds) for name in names})
    env = environment(f"{device}:0")
    if device == "cuda":
        import triton

        env["triton"] = triton.__version__
    document = {"environment": env, "smoke": args.smoke, "expected_rewrites": {name: expected(name, args.smoke) for name in models}, "error_factor": ERROR_FACTOR, "error_floor": ERROR_FLOOR, "models": models, "summary": summarise(models, args.smoke, device == "cuda")}
    if out == RESULTS / "fusion.json":
        write_result("fusion", document)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"summary: {document['summary']}\nwrote {out}")
    return 0 if document["summary"]["all_correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
