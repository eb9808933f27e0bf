"""FP8 training: hal's recipes against bf16 and torchao, from one MLP to a 125M-parameter model trained from scratch.

Parts (``--parts``, all by default):

- ``mlp``: the two-layer MLP (Linear, SiLU, Linear; no bias) under torch.compile at d 4096 / ffn 14336 / 16k tokens
  and d 8192 / ffn 28672 / 8k tokens, bf16 weights and activations: bf16, torchao ``convert_to_float8_training``
  tensorwise and rowwise (imported here; a missing torchao is recorded, not fatal), hal tensorwise and rowwise.
  Forward + backward ms with ``triton.testing.do_bench`` (median), and each output's relative difference from bf16.
- ``block``: one Llama-style block (RMSNorm, rotary attention through SDPA, RMSNorm, SwiGLU) at 8k tokens, d 4096,
  32 heads, ffn 14336, bf16, compiled: bf16 vs hal FP8 tensorwise (Linear swap) vs hal FP8 with the fused
  RMSNorm/SwiGLU casts (``precision.rmsnorm_linear`` / ``precision.swiglu_down``).
- ``train``: the ~125M-parameter byte-level Llama (d 768, 12 layers, 12 heads, SwiGLU ffn 3328, vocab 256) training
  step (fwd + bwd + AdamW, fp32 master weights under bf16 autocast), bf16 vs FP8, compiled.
- ``convergence``: the same model trained from scratch in bf16 and in FP8 for the same steps on the byte stream of the
  Python standard library's own sources (``sysconfig.get_paths()["stdlib"]``, files in sorted order, the last 5% of
  files held out), loss curves side by side, final validation loss gap; then the bf16 model pruned to 2:4 and
  fine-tuned, against the dense model trained for the same extra steps.

    python benchmarks/fp8_training.py                       # GPU: writes benchmarks/results/fp8_training.json
    python benchmarks/fp8_training.py --quick               # GPU, about 6 min on an H200 (see below)
    python benchmarks/fp8_training.py --smoke --out smoke.json    # CPU: a few steps of a tiny model, no compile

GPU wall time on one H200, estimated from the work (not measured yet; each part's own time is written to
``part_wall_s``): compiling dominates (one Inductor compile of forward + backward per variant, ~10-20 s for the MLP
and the block, ~30-60 s for the 12-layer model), the timed loops take seconds. ``mlp`` 10 compiles, ~2.5 min;
``block`` 4, ~1.5 min; ``train`` 3, ~2.5 min; ``convergence`` 4 compiles and 1,500 steps of 16k tokens (~40 ms each),
~4 min: about 10 min in all. ``--quick`` (about 6 min) trains 200 steps (fine-tune 50) instead of 600 (150), drops
the ``train`` part (the step times of the convergence runs stand in for it) and the unfused block variant; the result
file says so under ``quick``. The result is rewritten after every part, so a run stopped by a time limit keeps the
parts it finished.

Summary: ``speedup_vs_torchao_tensorwise`` (the worse of the two MLPs, hal tensorwise vs torchao tensorwise; target
1.05), ``block_speedup_vs_bf16`` (the best hal variant, named; target 1.3), ``val_loss_gap_pct`` (FP8 vs bf16).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import sysconfig
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, environment  # noqa: E402
from hal import precision, sparsity  # noqa: E402

TARGETS = {"speedup_vs_torchao_tensorwise": 1.05, "block_speedup_vs_bf16": 1.3}
MLP_SHAPES = [(4096, 14336, 16384), (8192, 28672, 8192)]
SMOKE_MLP_SHAPES = [(64, 128, 256)]


# --------------------------------------------------------------------------------------------------- timing


def time_ms(fn: Callable[[], object], device: str) -> float:
    """Median ms per call: triton.testing.do_bench on a GPU, else the median of 5 wall-clock calls after a warm-up."""
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def maybe_compile(model: nn.Module, compile_models: bool) -> nn.Module:
    """torch.compile'd after a dynamo reset, so variants compiled one after another never share a frame's
    recompile budget (past it, dynamo would run a later variant eagerly)."""
    if not compile_models:
        return model
    torch._dynamo.reset()
    return torch.compile(model)


# --------------------------------------------------------------------------------------------------- MLP


def torchao_convert(model: nn.Module, recipe: str) -> nn.Module:
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    return convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe))


def mlp_variants() -> dict[str, Callable[[nn.Module], nn.Module]]:
    return {
        "bf16": lambda m: m,
        "torchao_tensorwise": lambda m: torchao_convert(m, "tensorwise"),
        "torchao_rowwise": lambda m: torchao_convert(m, "rowwise"),
        "hal_tensorwise": lambda m: precision.fp8_training(m, "tensorwise"),
        "hal_rowwise": lambda m: precision.fp8_training(m, "rowwise"),
    }


def bench_mlp(device: str, shapes, compile_models: bool) -> list[dict]:
    rows = []
    dtype = torch.bfloat16
    for d, ffn, tokens in shapes:
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(d, ffn, bias=False), nn.SiLU(), nn.Linear(ffn, d, bias=False))
        base = base.to(device=device, dtype=dtype)
        x = torch.randn(tokens, d, device=device, dtype=dtype, requires_grad=True)
        gy = torch.randn(tokens, d, device=device, dtype=dtype)
        reference = None
        for name, convert in mlp_variants().items():
            row = {"d": d, "ffn": ffn, "tokens": tokens, "variant": name}
            try:
                model = maybe_compile(convert(copy.deepcopy(base)), compile_models)

                def step(model=model):
                    y = model(x)
                    y.backward(gy)
                    return y

                out = model(x).detach()  # with grad on, as timed: no second compilation for no_grad
                reference = out if name == "bf16" else reference
                row["rel_diff_vs_bf16"] = rel(out, reference) if reference is not None else None
                row["fwd_bwd_ms"] = time_ms(step, device)
                flops = 3 * 2 * 2 * tokens * d * ffn  # two matmuls, forward + two backward products each
                row["tflops"] = flops / row["fwd_bwd_ms"] / 1e9
            except Exception as exc:  # noqa: BLE001 - a missing torchao or a failing variant is recorded, not fatal
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            x.grad = None
    return rows


# --------------------------------------------------------------------------------------------------- Llama


@dataclass(frozen=True)
class LlamaConfig:
    dim: int = 768
    layers: int = 12
    heads: int = 12
    ffn: int = 3328
    vocab: int = 256
    max_seq: int = 1024
    eps: float = 1e-5


CONFIG_125M = LlamaConfig()
CONFIG_SMOKE = LlamaConfig(dim=64, layers=2, heads=4, ffn=128, max_seq=64)


def rotary(seq: int, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(seq, device=device).float(), inv)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class Block(nn.Module):
    """Pre-norm Llama block; with ``fused`` and FP8 projections, the norms and the SwiGLU product are fused into
    the FP8 casts of the projections after them."""

    def __init__(self, cfg: LlamaConfig, fused: bool = False):
        super().__init__()
        self.cfg, self.fused = cfg, fused
        self.norm1, self.norm2 = RMSNorm(cfg.dim, cfg.eps), RMSNorm(cfg.dim, cfg.eps)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.gate_up = nn.Linear(cfg.dim, 2 * cfg.ffn, bias=False)
        self.down = nn.Linear(cfg.ffn, cfg.dim, bias=False)

    def _fusing(self) -> bool:
        return self.fused and isinstance(self.qkv, precision.Fp8Linear) and not self.qkv.recipe.delayed

    def forward(self, x, cos, sin):
        b, s, d = x.shape
        h = self.cfg.heads
        if self._fusing():
            qkv = precision.rmsnorm_linear(x, self.norm1.weight, self.norm1.eps, self.qkv)
        else:
            qkv = self.qkv(self.norm1(x))
        q, k, v = qkv.view(b, s, 3, h, d // h).unbind(2)
        q, k = apply_rotary(q, cos[:s, None], sin[:s, None]), apply_rotary(k, cos[:s, None], sin[:s, None])
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.out(attn.transpose(1, 2).reshape(b, s, d))
        if self._fusing():
            gate, up = precision.rmsnorm_linear(x, self.norm2.weight, self.norm2.eps, self.gate_up).chunk(2, dim=-1)
            return x + precision.swiglu_down(gate, up, self.down)
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig, fused: bool = False):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, fused) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        cos, sin = rotary(cfg.max_seq, cfg.dim // cfg.heads, "cpu")
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens, targets=None):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        logits = self.head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------- data


def stdlib_bytes(max_files: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(train, validation) uint8 streams of the standard library's .py files in sorted order; the last 5% of files
    (at least one) are the validation split."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    if max_files:
        files = files[:max_files]
    n_val = max(1, len(files) // 20)
    chunks = [p.read_bytes() for p in files]
    train = b"".join(chunks[:-n_val])
    val = b"".join(chunks[-n_val:])
    meta = {"root": "sysconfig.get_paths()['stdlib']", "files": len(files), "validation_files": n_val,
            "train_bytes": len(train), "validation_bytes": len(val), "first_validation_file":
            str(files[-n_val].relative_to(root))}
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8).long()  # noqa: E731
    return as_tensor(train), as_tensor(val), meta


def batch(stream: torch.Tensor, batch_size: int, seq: int, generator: torch.Generator, device: str):
    starts = torch.randint(0, stream.numel() - seq - 1, (batch_size,), generator=generator)
    window = torch.stack([stream[s: s + seq + 1] for s in starts.tolist()])
    return window[:, :-1].to(device), window[:, 1:].to(device)


# --------------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    seq: int
    lr: float = 1e-3
    warmup: int = 50
    eval_every: int = 50
    eval_batches: int = 16
    seed: int = 0


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def autocast(device: str):
    return torch.autocast(device, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(model: nn.Module, val: torch.Tensor, cfg: TrainConfig, device: str) -> float:
    model.eval()
    g = torch.Generator().manual_seed(12345)  # the same validation windows for every run
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = batch(val, cfg.batch_size, cfg.seq, g, device)
        with autocast(device):
            losses.append(float(model(x, y)))
    model.train()
    return statistics.fmean(losses)


def train(model: nn.Module, train_stream: torch.Tensor, val: torch.Tensor, cfg: TrainConfig, device: str,
          compile_models: bool, label: str, start_step: int = 0) -> dict:
    """AdamW on fp32 master weights under bf16 autocast; returns the loss curves, step times, skipped steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=device == "cuda")
    guard = precision.GradGuard(opt, dict(model.named_parameters()))
    step_fn = maybe_compile(model, compile_models)
    g = torch.Generator().manual_seed(cfg.seed + start_step)
    curve, val_curve, times = [], [], []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = batch(train_stream, cfg.batch_size, cfg.seq, g, device)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast(device):
            loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        guard.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
        curve.append(float(loss.detach()))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            val_curve.append([start_step + step + 1, evaluate(model, val, cfg, device)])
            print(f"{label} step {start_step + step + 1}: train {curve[-1]:.4f} val {val_curve[-1][1]:.4f}", flush=True)
    steady = times[len(times) // 2:] or times
    return {"label": label, "train_loss": curve, "val_loss": val_curve, "final_val_loss": val_curve[-1][1],
            "step_ms_median_second_half": statistics.median(steady), "skipped_steps": [asdict(s) for s in guard.skipped]}


def convergence(device: str, model_cfg: LlamaConfig, train_cfg: TrainConfig, compile_models: bool,
                max_files: int | None, finetune_steps: int) -> dict:
    train_stream, val, meta = stdlib_bytes(max_files)
    torch.manual_seed(train_cfg.seed)
    init = Llama(model_cfg).to(device)
    runs = {}
    models = {}
    for label in ("bf16", "fp8_tensorwise"):
        model = copy.deepcopy(init)
        if label.startswith("fp8"):
            precision.fp8_training(model, "tensorwise", skip=["head"])
        runs[label] = train(model, train_stream, val, train_cfg, device, compile_models, label)
        models[label] = model
    gap = (runs["fp8_tensorwise"]["final_val_loss"] / runs["bf16"]["final_val_loss"] - 1) * 100
    pruned = pruning_study(models["bf16"], train_stream, val, train_cfg, device, compile_models, finetune_steps)
    return {"data": meta, "model": asdict(model_cfg), "parameters": parameter_count(init), "train": asdict(train_cfg),
            "runs": runs, "val_loss_gap_pct": gap, "pruning": pruned}


def pruning_study(dense: nn.Module, train_stream, val, train_cfg: TrainConfig, device: str, compile_models: bool,
                  finetune_steps: int) -> dict:
    """Prune a trained dense model's block Linears to 2:4 and fine-tune it; train the dense one for the same steps."""
    cfg = TrainConfig(steps=finetune_steps, batch_size=train_cfg.batch_size, seq=train_cfg.seq, lr=train_cfg.lr / 3,
                      warmup=max(1, finetune_steps // 10), eval_every=finetune_steps, eval_batches=train_cfg.eval_batches,
                      seed=train_cfg.seed + 1)
    pruned = copy.deepcopy(dense)
    report = sparsity.prune_2_4(pruned, skip=["head"])
    before = evaluate(pruned, val, cfg, device)
    dense_run = train(copy.deepcopy(dense), train_stream, val, cfg, device, compile_models, "dense+ft",
                      train_cfg.steps)
    pruned_run = train(pruned, train_stream, val, cfg, device, compile_models, "2:4+ft", train_cfg.steps)
    still_2_4 = all(sparsity.is_2_4(m.weight) for m in pruned.modules() if sparsity.mask_of(m) is not None)
    gap = (pruned_run["final_val_loss"] / dense_run["final_val_loss"] - 1) * 100
    return {"pruned_layers": len(report.pruned), "val_loss_after_pruning": before, "dense": dense_run,
            "pruned": pruned_run, "masks_kept": still_2_4, "pruned_val_loss_gap_pct": gap}


# --------------------------------------------------------------------------------------------------- block / step


BLOCK_VARIANTS = ("bf16", "hal_fp8_tensorwise", "hal_fp8_tensorwise_fused", "hal_fp8_rowwise_fused")
QUICK_BLOCK_VARIANTS = ("bf16", "hal_fp8_tensorwise_fused", "hal_fp8_rowwise_fused")


def bench_block(device: str, cfg: LlamaConfig, tokens: int, compile_models: bool,
                variants=BLOCK_VARIANTS) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    base = Block(cfg).to(device=device, dtype=torch.bfloat16)
    cos, sin = rotary(tokens, cfg.dim // cfg.heads, device)
    x = torch.randn(1, tokens, cfg.dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn_like(x)
    reference = None
    for name in variants:
        row = {"variant": name, "tokens": tokens, "dim": cfg.dim, "ffn": cfg.ffn, "heads": cfg.heads}
        try:
            block = copy.deepcopy(base)
            if name != "bf16":
                precision.fp8_training(block, "rowwise" if "rowwise" in name else "tensorwise")
                block.fused = name.endswith("fused")
            model = maybe_compile(block, compile_models)

            def step(model=model):
                y = model(x, cos, sin)
                y.backward(gy)

            out = model(x, cos, sin).detach()
            reference = out if name == "bf16" else reference
            row["rel_diff_vs_bf16"] = rel(out, reference)
            row["fwd_bwd_ms"] = time_ms(step, device)
        except Exception as exc:  # noqa: BLE001 - recorded per variant
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
        x.grad = None
    return rows


def bench_train_step(device: str, cfg: LlamaConfig, batch_size: int, seq: int, compile_models: bool) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    init = Llama(cfg).to(device)
    tokens = torch.randint(0, cfg.vocab, (batch_size, seq + 1), device=device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    for name in ("bf16", "fp8_tensorwise", "fp8_rowwise"):
        row = {"variant": name, "parameters": parameter_count(init), "tokens_per_step": batch_size * seq}
        try:
            model = copy.deepcopy(init)
            if name != "bf16":
                precision.fp8_training(model, name.removeprefix("fp8_"), skip=["head"])
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
            fn = maybe_compile(model, compile_models)

            def step(fn=fn, opt=opt):
                with autocast(device):
                    loss = fn(x, y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            row["step_ms"] = time_ms(step, device)
            row["tokens_per_s"] = batch_size * seq / row["step_ms"] * 1e3
        except Exception as exc:  # noqa: BLE001 - recorded per variant
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------------------------------- summary


def summarize(doc: dict) -> dict:
    summary: dict = {"targets": TARGETS}
    mlp = doc.get("mlp")
    if mlp:
        ratios = {}
        for shape in {(r["d"], r["ffn"], r["tokens"]) for r in mlp}:
            rows = {r["variant"]: r for r in mlp if (r["d"], r["ffn"], r["tokens"]) == shape}
            ao, hal = rows.get("torchao_tensorwise", {}), rows.get("hal_tensorwise", {})
            if "fwd_bwd_ms" in ao and "fwd_bwd_ms" in hal:
                ratios["x".join(map(str, shape))] = ao["fwd_bwd_ms"] / hal["fwd_bwd_ms"]
        summary["mlp_speedup_vs_torchao_tensorwise"] = ratios
        summary["speedup_vs_torchao_tensorwise"] = min(ratios.values()) if ratios else None
    block = doc.get("block")
    if block:
        rows = {r["variant"]: r for r in block if "fwd_bwd_ms" in r}
        fp8 = {k: v for k, v in rows.items() if k != "bf16"}
        if "bf16" in rows and fp8:
            best = min(fp8, key=lambda k: fp8[k]["fwd_bwd_ms"])
            summary["block_speedup_vs_bf16"] = rows["bf16"]["fwd_bwd_ms"] / fp8[best]["fwd_bwd_ms"]
            summary["block_variant"] = best
    step = doc.get("train_step")
    conv = doc.get("convergence")
    if step:
        rows = {r["variant"]: r for r in step if "step_ms" in r}
        if "bf16" in rows:
            summary["train_step_speedup_vs_bf16"] = {k: rows["bf16"]["step_ms"] / v["step_ms"]
                                                     for k, v in rows.items() if k != "bf16"}
    elif conv:  # the convergence runs' step times (second half, with the gradient check and clipping)
        runs = conv["runs"]
        summary["train_step_speedup_vs_bf16"] = {
            k: runs["bf16"]["step_ms_median_second_half"] / v["step_ms_median_second_half"]
            for k, v in runs.items() if k != "bf16"}
        summary["train_step_from"] = "convergence runs (step_ms_median_second_half)"
    if conv:
        summary["val_loss_gap_pct"] = conv["val_loss_gap_pct"]
        summary["pruned_val_loss_gap_pct"] = conv["pruning"]["pruned_val_loss_gap_pct"]
    if doc.get("smoke"):
        summary["targets_met"] = "not evaluated: a smoke run times tiny shapes on a CPU"
    else:
        summary["targets_met"] = {k: summary.get(k) is not None and summary[k] >= v for k, v in TARGETS.items()}
    return summary


def torchao_version() -> str:
    """torchao's version, or why it is missing (recorded: the torchao variants then record their own error)."""
    try:
        import torchao
    except Exception as exc:  # noqa: BLE001 - a missing or broken torchao is recorded, not fatal
        return f"missing: {type(exc).__name__}: {exc}"
    return torchao.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU-sized: tiny shapes, a few steps, no compile")
    parser.add_argument("--quick", action="store_true",
                        help="GPU in about 6 min: 200 convergence steps, no train part, no unfused block variant")
    parser.add_argument("--parts", default=None, help="comma-separated (default mlp,block,train,convergence; "
                                                      "with --quick mlp,block,convergence)")
    parser.add_argument("--steps", type=int, default=None, help="convergence steps (default 600; quick 200; smoke 6)")
    parser.add_argument("--finetune-steps", type=int, default=None, help="2:4 fine-tune steps (default steps / 4)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    compile_models = not (args.no_compile or args.smoke)
    parts = set((args.parts or ("mlp,block,convergence" if args.quick else "mlp,block,train,convergence")).split(","))
    out = args.out or (Path(tempfile.gettempdir()) / "fp8_training_smoke.json" if args.smoke
                       else RESULTS / "fp8_training.json")
    doc: dict = {"environment": environment(device), "smoke": args.smoke, "compiled": compile_models,
                 "part_wall_s": {}}
    doc["environment"]["torchao"] = torchao_version()
    if device == "cuda":
        doc["environment"]["compute_capability"] = list(torch.cuda.get_device_capability())
    steps = args.steps or (6 if args.smoke else 200 if args.quick else 600)
    if args.quick:
        doc["quick"] = {"convergence_steps": steps, "full_run_steps": 600, "parts": sorted(parts),
                        "block_variants": list(QUICK_BLOCK_VARIANTS),
                        "note": "fewer convergence steps than the full run; train-step times from the convergence runs"}
    model_cfg = CONFIG_SMOKE if args.smoke else CONFIG_125M

    def run_part(name: str, key: str, fn: Callable[[], object]) -> None:
        start = time.perf_counter()
        doc[key] = fn()
        doc["part_wall_s"][name] = time.perf_counter() - start
        write(doc, out)  # after every part: a run stopped by a time limit keeps what it finished

    if "mlp" in parts:
        run_part("mlp", "mlp", lambda: bench_mlp(device, SMOKE_MLP_SHAPES if args.smoke else MLP_SHAPES,
                                                 compile_models))
    if "block" in parts:
        block_cfg = CONFIG_SMOKE if args.smoke else LlamaConfig(dim=4096, heads=32, ffn=14336, max_seq=8192)
        variants = QUICK_BLOCK_VARIANTS if args.quick else BLOCK_VARIANTS
        run_part("block", "block", lambda: bench_block(device, block_cfg, 64 if args.smoke else 8192, compile_models,
                                                       variants))
    if "train" in parts:
        run_part("train", "train_step", lambda: bench_train_step(device, model_cfg, 2 if args.smoke else 16,
                                                                 64 if args.smoke else 1024, compile_models))
    if "convergence" in parts:
        train_cfg = TrainConfig(steps=steps, batch_size=2 if args.smoke else 16, seq=64 if args.smoke else 1024,
                                warmup=2 if args.smoke else min(50, steps // 4), eval_every=3 if args.smoke else 100,
                                eval_batches=2 if args.smoke else 16)
        run_part("convergence", "convergence",
                 lambda: convergence(device, model_cfg, train_cfg, compile_models, 40 if args.smoke else None,
                                     args.finetune_steps or max(2, steps // 4)))
    write(doc, out)
    print(json.dumps(doc["summary"], indent=2))
    print(f"wrote {out}")
    return 0


def write(doc: dict, out: Path) -> None:
    """The result with its summary recomputed from the parts done so far."""
    doc["summary"] = summarize(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
