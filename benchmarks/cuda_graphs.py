"""Launch-bound inference side by side: eager, a hand-captured CUDA graph, torch.compile (default and
``mode="reduce-overhead"``) and ``torch.compile(backend="hal")``, per model, in one process on one GPU.

Models (fp16, ``eval()``, random weights, ``torch.no_grad()``):

- ``mlp16``: 16 x (Linear(1024, 1024), GELU, LayerNorm(1024)) at batch 8;
- ``mlp32``: 32 x (Linear(4096, 4096), GELU, LayerNorm(4096)) at batch 1;
- ``llama_decode_b1`` / ``llama_decode_b16``: one decode step of a Llama-3.2-1B-shaped decoder (d 2048, 16 layers,
  32 heads, 8 KV heads, SwiGLU ffn 8192, vocabulary 128256, tied embeddings) at batch 1 / 16 with a static KV cache of
  512 positions (written in place at the step's position, attention over the cache with a position mask: fixed
  shapes, as a served decoder runs), RMSNorm written as Hugging Face writes it;
- ``gpt2_b1`` / ``gpt2_b32``: GPT-2-small (transformers' ``GPT2Model``, SDPA attention) on 128 tokens at batch 1 / 32;
- ``resnet50_b1``: timm's ResNet-50 at batch 1, 224 x 224.

Each variant is called until warm (compiles, graph captures and hal's graph decision happen there), checked against
the model run in float64 (relative Frobenius error of the output, at most twice eager's own), then timed with ``triton.testing.do_bench`` (median ms of calls
back to back). ``host_us_per_call`` is the host's work per call (calls issued back to back before any synchronisation).
``extra_memory_bytes`` is the GPU memory allocated while a variant warms up and still held after (static buffers,
graph pools, compiled workspaces), measured from just before its own warm-up. hal's own account of every graph it compiled (rewrites fired,
graphed or not and why) is stored beside its time.

    python -m benchmarks.cuda_graphs                         # GPU: writes benchmarks/results/cuda_graphs.json
    python -m benchmarks.cuda_graphs --models mlp16,mlp32 --merge
    python -m benchmarks.cuda_graphs --smoke                 # CPU: tiny shapes, eager / compile / hal, no timing claims

Summary (issue 16): ``min_speedup_vs_reduce_overhead`` = min over the MLPs and decode steps of
reduce-overhead ms / hal ms (target 1.1), ``never_slower_than_eager`` = hal ms <= eager ms on every model.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.common import RESULTS, environment, write_result

TARGET_SPEEDUP_VS_REDUCE_OVERHEAD = 1.1
TARGET_MODELS = ("mlp16", "mlp32", "llama_decode_b1", "llama_decode_b16")
MODELS = (*TARGET_MODELS, "gpt2_b1", "gpt2_b32", "resnet50_b1")
#: A variant is correct when its relative Frobenius error vs the float64 model is at most ERROR_FACTOR times eager's
#: own (fp16 rounding differs with kernel order and fusion; deep LayerNorm stacks amplify it), or ERROR_FLOOR.
ERROR_FACTOR = 2.0
ERROR_FLOOR = 1e-4
WARM_CALLS = 6
#: Calls issued to time the host's work per call: few enough that a graphed variant's handful of launches per call
#: never fills CUDA's launch queue; an eager variant's dozens of kernels per call can, and then it reads the GPU's pace.
HOST_CALLS = 50


# --------------------------------------------------------------------------- models


class MLP(nn.Module):
    """``layers`` x (Linear, GELU, LayerNorm): the launch-bound stack of issue 16."""

    def __init__(self, width: int, layers: int):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width)) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class RMSNorm(nn.Module):
    """RMSNorm as Hugging Face's Llama writes it (float32 statistics, cast back, then the weight)."""

    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.eps)
        return self.weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class DecoderLayer(nn.Module):
    """One Llama decoder layer for a one-token step with a static KV cache written in place at ``pos``."""

    def __init__(self, width: int, heads: int, kv_heads: int, ffn: int, batch: int, context: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.input_norm, self.post_norm = RMSNorm(width), RMSNorm(width)
        self.q_proj = nn.Linear(width, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)
        self.gate_proj = nn.Linear(width, ffn, bias=False)
        self.up_proj = nn.Linear(width, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, width, bias=False)
        self.register_buffer("k_cache", torch.zeros(batch, kv_heads, context, self.head_dim))
        self.register_buffer("v_cache", torch.zeros(batch, kv_heads, context, self.head_dim))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.input_norm(x)
        q = self.q_proj(h).view(b, 1, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        self.k_cache.index_copy_(2, pos, k)
        self.v_cache.index_copy_(2, pos, v)
        a = torch.nn.functional.scaled_dot_product_attention(q, self.k_cache, self.v_cache, attn_mask=mask, enable_gqa=True)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, 1, -1))
        h = self.post_norm(x)
        return x + self.down_proj(torch.nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


class LlamaDecodeStep(nn.Module):
    """A Llama-style decoder's step: token ids [B, 1] and the position (a 1-element int64 tensor) to logits [B, 1, V]."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, kv_heads: int, ffn: int, batch: int, context: int, theta: float = 500000.0):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList([DecoderLayer(width, heads, kv_heads, ffn, batch, context) for _ in range(layers)])
        self.norm = RMSNorm(width)
        head_dim = width // heads
        inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(context, dtype=torch.float64), inv)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos().float())
        self.register_buffer("sin", angles.sin().float())
        self.register_buffer("positions", torch.arange(context))

    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        cos = self.cos.index_select(0, pos).to(x.dtype)[None, None]
        sin = self.sin.index_select(0, pos).to(x.dtype)[None, None]
        mask = (self.positions <= pos)[None, None, None, :]
        for layer in self.layers:
            x = layer(x, pos, cos, sin, mask)
        return self.norm(x) @ self.embed.weight.T


class Hidden(nn.Module):
    """A transformers model's last hidden state as a plain tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids, use_cache=False).last_hidden_state


def build(name: str, smoke: bool) -> tuple[nn.Module, tuple, str]:
    """(model, inputs, what it is) for a model name; raises LookupError for a library that is missing."""
    if name in ("mlp16", "mlp32"):
        width, layers, batch = {"mlp16": (1024, 16, 8), "mlp32": (4096, 32, 1)}[name]
        if smoke:
            width, layers = 32, 2
        return MLP(width, layers), (torch.randn(batch, width),), f"{layers} x (Linear({width}, {width}), GELU, LayerNorm) at batch {batch}"
    if name.startswith("llama_decode_b"):
        batch = int(name.removeprefix("llama_decode_b"))
        shape = dict(vocab=128256, width=2048, layers=16, heads=32, kv_heads=8, ffn=8192, context=512)
        if smoke:
            shape = dict(vocab=64, width=32, layers=2, heads=4, kv_heads=2, ffn=64, context=16)
        model = LlamaDecodeStep(batch=batch, **shape)
        for layer in model.layers:  # a filled cache: the step attends to real keys, not zeros
            layer.k_cache.normal_()
            layer.v_cache.normal_()
        pos = torch.tensor([shape["context"] - 1])
        return model, (torch.randint(0, shape["vocab"], (batch, 1)), pos), f"Llama-3.2-1B-shaped decode step ({shape}), batch {batch}"
    if name.startswith("gpt2_b"):
        try:
            import transformers
        except ImportError:
            raise LookupError("transformers is not installed") from None
        batch = int(name.removeprefix("gpt2_b"))
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256) if smoke else transformers.GPT2Config()
        config._attn_implementation = "sdpa"
        return Hidden(transformers.GPT2Model(config)), (torch.randint(0, config.vocab_size, (batch, 128)),), f"transformers {transformers.__version__} GPT2Model, 128 tokens, batch {batch}"
    if name == "resnet50_b1":
        try:
            import timm
        except ImportError:
            raise LookupError("timm is not installed") from None
        return timm.create_model("resnet50", pretrained=False), (torch.randn(1, 3, 224, 224),), f"timm {timm.__version__} resnet50, batch 1"
    raise LookupError(f"no model {name!r}; models: {', '.join(MODELS)}")


# --------------------------------------------------------------------------- variants


def hand_graph(model: nn.Module, inputs: tuple) -> Callable[[], Any]:
    """The eager model captured once as a CUDA graph by hand (static inputs: the ones given), replayed as it is."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = model(*inputs)

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


class HalRecorder:
    """``backend="hal"`` with its default options, keeping what it made of each graph for the result file."""

    def __init__(self):
        from hal.runtime import dynamo

        self.dynamo = dynamo
        self.compiled: list[Any] = []

    def __call__(self, gm, example_inputs, **kwargs):
        result = self.dynamo.compile_graph(gm, example_inputs, **kwargs)
        self.compiled.append(result)
        return result.fn

    def accounts(self) -> list[str]:
        return [c.describe() for c in self.compiled]


def variants(model: nn.Module, inputs: tuple, gpu: bool) -> dict[str, tuple[Callable[[], Any], Any]]:
    """Name -> (call, what to record after warm-up) for each way of running ``model``."""
    torch._dynamo.reset()
    out: dict[str, tuple[Callable[[], Any], Any]] = {"eager": (lambda: model(*inputs), None)}
    if gpu:
        out["graph"] = (None, None)  # captured lazily, after eager's warm-up (see measure)
    compiled = torch.compile(model)
    out["compile"] = (lambda: compiled(*inputs), None)
    if gpu:
        ro = torch.compile(model, mode="reduce-overhead")
        out["reduce_overhead"] = (lambda: ro(*inputs), None)
    recorder = HalRecorder()
    hal_model = torch.compile(model, backend=recorder)
    out["hal"] = (lambda: hal_model(*inputs), recorder)
    return out


def host_us_per_call(call: Callable[[], Any], calls: int = HOST_CALLS) -> float:
    """Host microseconds per call: the time to issue ``calls`` calls back to back from an idle GPU, before any
    synchronisation (CUDA's launch queue absorbs them, so this is the Python and launch work a call costs the host,
    Dynamo's guards included; the GPU time is ``ms``)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))


def measure(name: str, smoke: bool) -> dict[str, Any]:
    gpu = torch.cuda.is_available() and not smoke
    device = "cuda" if gpu else "cpu"
    torch.manual_seed(0)
    model, inputs, what = build(name, smoke)
    dtype = torch.float16 if gpu else torch.float32
    model = model.to(device=device, dtype=dtype).eval()
    inputs = tuple(t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device) for t in inputs)
    row: dict[str, Any] = {"what": what, "dtype": str(dtype), "input_shapes": [list(t.shape) for t in inputs], "variants": {}}
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(*[t.double() if t.is_floating_point() else t for t in inputs])
        reference = model(*inputs).float()
        eager_error = relative_error(reference, exact)
        row["eager_relative_error_vs_float64"] = eager_error
        if gpu:
            torch.cuda.synchronize()
        for variant, (call, record) in variants(model, inputs, gpu).items():
            entry: dict[str, Any] = {}
            try:
                if gpu:
                    torch.cuda.synchronize()
                base_bytes = torch.cuda.memory_allocated() if gpu else 0
                started = time.perf_counter()
                if variant == "graph":
                    call = hand_graph(model, inputs)
                for _ in range(WARM_CALLS):
                    result = call()
                if gpu:
                    torch.cuda.synchronize()
                entry["warm_up_s"] = time.perf_counter() - started
                entry["relative_error_vs_eager"] = relative_error(result.float(), reference)
                entry["relative_error_vs_float64"] = relative_error(result.float(), exact)
                entry["correct"] = entry["relative_error_vs_float64"] <= max(ERROR_FACTOR * eager_error, ERROR_FLOOR)
                if gpu:
                    import triton.testing

                    entry["extra_memory_bytes"] = torch.cuda.memory_allocated() - base_bytes
                    entry["ms"] = triton.testing.do_bench(call, warmup=25, rep=200, return_mode="median")
                    entry["host_us_per_call"] = host_us_per_call(call)
                if isinstance(record, HalRecorder):
                    entry["hal_graphs"] = record.accounts()
            except Exception as exc:  # noqa: BLE001 - a variant that fails is recorded, the others still run
                entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                entry["traceback"] = traceback.format_exc()[-4000:]
            row["variants"][variant] = entry
            shown = f"{entry['ms']:.4f} ms" if "ms" in entry else entry.get("error", "ok")
            print(f"{name} {variant}: {shown}" + (f" err {entry['relative_error_vs_eager']:.1e}" if "relative_error_vs_eager" in entry else ""), flush=True)
            del call
            if gpu:
                torch.cuda.synchronize()
    ms = {k: v.get("ms") for k, v in row["variants"].items()}
    if ms.get("hal") and ms.get("eager"):
        row["hal_speedup_vs_eager"] = ms["eager"] / ms["hal"]
    if ms.get("hal") and ms.get("reduce_overhead"):
        row["hal_speedup_vs_reduce_overhead"] = ms["reduce_overhead"] / ms["hal"]
    return row


def graph_memory_mib(hal_entry: dict[str, Any]) -> float:
    """The memory hal's CUDA graphs hold for one model, MiB: the sum over its graphed graphs of what each one's
    decision measured (allocator reserved growth during capture + input buffers), read from hal's own account."""
    return sum(float(x) for text in hal_entry.get("hal_graphs", []) for x in re.findall(r"graphed: [^()]*?, ([0-9.]+) MiB", text))


def summarise(models: dict[str, Any]) -> dict[str, Any]:
    speedups = {m: r["hal_speedup_vs_reduce_overhead"] for m, r in models.items() if m in TARGET_MODELS and "hal_speedup_vs_reduce_overhead" in r}
    vs_eager = {m: r["hal_speedup_vs_eager"] for m, r in models.items() if "hal_speedup_vs_eager" in r}
    correct = {m: all(v.get("correct", False) for v in r["variants"].values() if "error" not in v) for m, r in models.items() if "variants" in r}
    summary: dict[str, Any] = {
        "min_speedup_vs_reduce_overhead": min(speedups.values()) if speedups else None,
        "speedup_vs_reduce_overhead": speedups,
        "never_slower_than_eager": all(s >= 1.0 for s in vs_eager.values()) if vs_eager else None,
        "speedup_vs_eager": vs_eager,
        "hal_graph_memory_mib": {m: graph_memory_mib(r["variants"]["hal"]) for m, r in models.items() if "hal" in r.get("variants", {})},
        "all_correct": all(correct.values()),
        "not_measured": [m for m in TARGET_MODELS if m not in speedups],
        "targets": {"min_speedup_vs_reduce_overhead": TARGET_SPEEDUP_VS_REDUCE_OVERHEAD, "never_slower_than_eager": True, "source": "issue 16"},
    }
    summary["met"] = bool(speedups) and not summary["not_measured"] and summary["min_speedup_vs_reduce_overhead"] >= TARGET_SPEEDUP_VS_REDUCE_OVERHEAD and bool(summary["never_slower_than_eager"])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--merge", action="store_true", help="add to the models of the existing result file")
    parser.add_argument("--smoke", action="store_true", help="CPU-sized shapes; writes nothing unless --out is given")
    parser.add_argument("--out", default=None, help="result name (default cuda_graphs; smoke runs need one)")
    args = parser.parse_args()
    name = args.out or ("" if args.smoke else "cuda_graphs")
    path = RESULTS / f"{name}.json"
    models: dict[str, Any] = json.loads(path.read_text())["models"] if name and args.merge and path.exists() else {}
    for model in [m for m in args.models.split(",") if m]:
        try:
            models[model] = measure(model, args.smoke)
        except LookupError as exc:
            models[model] = {"skipped": str(exc)}
            print(f"{model}: skipped ({exc})", flush=True)
    document = {"environment": environment("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"), "models": models, "summary": summarise(models)}
    print(json.dumps(document["summary"], indent=1, default=str))
    if name:
        print(f"wrote {write_result(name, document)}")


if __name__ == "__main__":
    main()
