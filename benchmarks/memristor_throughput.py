"""Memristor emulator throughput: our PCM crossbar vs aihwkit's AnalogLinear vs an ideal torch Linear, one run.

A 512x512 layer, batch 1024, every non-ideality on (programming noise with write-verify, drift and 1/f noise 1 h
after programming, global drift compensation, output noise, IR drop, stuck devices, 8-bit DAC/ADC), tiles of
256x256. aihwkit runs in its own environment (``.venv-aihwkit``: aihwkit 1.1.0 needs torch 2.10) as a subprocess
on the same weights and inputs, configured as closely as it allows: ``InferenceRPUConfig`` with
``PCMLikeNoiseModel(g_max=25)``, ``GlobalDriftCompensation``, IR drop on, 256x256 tiles, per-column weight scaling,
its default 7-bit DAC / 9-bit ADC, 1 h of drift (plus two cheaper aihwkit setups for reference). Both sides time the forward pass (median of repeats, same thread count) and report the
relative error against the float64 product, so speed is compared at measured fidelity. Each process also times a
torch Linear, a yardstick for how busy the machine was.

    python -m benchmarks.memristor_throughput                    # CPU, writes results/memristor_throughput.json
    python -m benchmarks.memristor_throughput --device cuda      # GPU, writes results/memristor_throughput_cuda.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
AIHWKIT_PYTHON = ROOT / ".venv-aihwkit" / "bin" / "python"
DRIFT_S = 3600.0
#: aihwkit configurations: (name, forward.ir_drop, tile size, per-column weight scaling). The first is the closest
#: to ours (same non-idealities, 256x256 tiles, per-column scale); the last is aihwkit's usual PCM inference setup.
VARIANTS = (
    ("ir_drop_on", 1.0, 256, True),
    ("ir_drop_off", 0.0, 256, True),
    ("defaults_512_tile_no_ir_drop", 0.0, 512, False),
)
#: Earlier measurement (research note, same machine kind, 2 threads): aihwkit AnalogLinear 512x512 PCM, batch 1024.
CITED_AIHWKIT_MS = 29.0


def time_ms(fn, repeats: int, sync=None) -> list[float]:
    """Wall time of ``fn()`` in milliseconds, ``repeats`` times after one warm-up call."""
    fn()
    if sync:
        sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def best(sample_lists) -> float:
    """Fastest time over all rounds: on a shared machine the minimum is the least disturbed measurement (every
    side gets the same treatment; medians are reported beside it)."""
    return min(min(samples) for samples in sample_lists)


def typical(sample_lists) -> float:
    """Median over all rounds' samples: what a busy machine gives most of the time."""
    return statistics.median(x for samples in sample_lists for x in samples)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().cpu().double(), ref.detach().cpu().double()
    return float((out - ref).norm() / ref.norm())


# ---------------------------------------------------------------------------- aihwkit side (its own environment)


def aihwkit_worker(data_path: str, out_path: str, repeats: int, threads: int) -> None:
    """Run inside .venv-aihwkit: program the same weight, drift 1 h, time the forward pass, with IR drop on (the
    same non-idealities as ours) and off (aihwkit's usual PCM inference configuration)."""
    torch.set_num_threads(threads)
    import aihwkit
    from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.configs import InferenceRPUConfig

    data = np.load(data_path)
    weight, bias, x = (torch.from_numpy(data[k]) for k in ("weight", "bias", "x"))
    ref = x.double() @ weight.double().T + bias.double()
    ideal = torch.nn.Linear(weight.shape[1], weight.shape[0])
    variants = {}
    with torch.no_grad():
        ideal.weight.copy_(weight)
        ideal.bias.copy_(bias)
        linear_ms = time_ms(lambda: ideal(x), repeats)
        for name, ir_drop, tile, columnwise in VARIANTS:
            config = InferenceRPUConfig()
            config.noise_model = PCMLikeNoiseModel(g_max=25.0)
            config.drift_compensation = GlobalDriftCompensation()
            config.forward.ir_drop = ir_drop
            config.mapping.max_input_size = tile
            config.mapping.max_output_size = tile
            config.mapping.weight_scaling_columnwise = columnwise
            layer = AnalogLinear(weight.shape[1], weight.shape[0], bias=True, rpu_config=config)
            layer.set_weights(weight, bias)
            layer.eval()
            layer.program_analog_weights()
            layer.drift_analog_weights(DRIFT_S)
            out = layer(x)
            variants[name] = {"forward_ms": time_ms(lambda layer=layer: layer(x), repeats), "relative_error": relative_error(out, ref)}
    Path(out_path).write_text(json.dumps({
        "aihwkit": aihwkit.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "torch_linear_ms": linear_ms,
        "variants": variants,
        "config": "InferenceRPUConfig + PCMLikeNoiseModel(g_max=25) + GlobalDriftCompensation, default IO (7-bit DAC, 9-bit ADC, out_noise 0.06), drift 1 h; variants: " + repr(VARIANTS),
    }))


def run_aihwkit(weight, bias, x, repeats: int, threads: int) -> dict:
    """The aihwkit side through a subprocess, or why it could not run."""
    if not AIHWKIT_PYTHON.exists():
        return {"available": False, "reason": f"no {AIHWKIT_PYTHON.relative_to(ROOT)} environment (pip install torch==2.10.0 aihwkit==1.1.0 there)"}
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data.npz", Path(tmp) / "out.json"
        np.savez(data, weight=weight.numpy(), bias=bias.numpy(), x=x.numpy())
        command = [str(AIHWKIT_PYTHON), str(Path(__file__).resolve()), "--aihwkit-worker", str(data), str(out), "--repeats", str(repeats), "--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            return {"available": False, "reason": f"aihwkit worker failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"}
        return {"available": True, **json.loads(out.read_text())}


# ---------------------------------------------------------------------------- our side


def run_ours(weight, bias, x, device: str, repeats: int) -> dict:
    import hal
    from hal.device import OpSpec, TensorSpec

    uri = f"memristor:0?compute={device}&t={DRIFT_S:g}&seed=0&tiles=64"
    analog = hal.device(uri)
    sync = analog.synchronize if device == "cuda" else None
    op = OpSpec("linear", [TensorSpec((None, weight.shape[1]))], {"weight": weight, "bias": bias})
    start = time.perf_counter()
    program = analog.prepare(op, {"weight": weight, "bias": bias})
    program_s = time.perf_counter() - start
    xd = x.to(analog.torch_device)
    out = program(xd)
    ms = time_ms(lambda: program(xd), repeats, sync)
    ideal = torch.nn.Linear(weight.shape[1], weight.shape[0]).to(analog.torch_device)
    with torch.no_grad():
        ideal.weight.copy_(weight)
        ideal.bias.copy_(bias)
        linear_ms = time_ms(lambda: ideal(xd), repeats, sync)
    ref = x.double() @ weight.double().T + bias.double()
    per_call = program.stats.as_dict()
    calls = max(per_call["calls"], 1)
    return {
        "uri": uri,
        "forward_ms": ms,
        "torch_linear_ms": linear_ms,
        "relative_error": relative_error(out, ref),
        "declared_tolerance": analog.capabilities.ops["linear"].tolerance["float32"],
        "programming_wall_s": program_s,
        "programming": program.programming.as_dict(),
        "emulated_per_forward": {k: v / calls for k, v in per_call.items() if k.endswith(("_j", "_s"))},
        "cost_estimate": {"latency_s": program.cost.latency_s, "energy_j": program.cost.energy_j, "error": program.cost.error},
        "nonidealities": {k: v for k, v in vars(analog.config.effects).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="ours and aihwkit are measured alternately this many times")
    parser.add_argument("--aihwkit-worker", nargs=2, metavar=("DATA", "OUT"))
    args = parser.parse_args()
    if args.aihwkit_worker:
        aihwkit_worker(*args.aihwkit_worker, args.repeats, args.threads)
        return
    from benchmarks.common import environment, write_result

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    n = args.size
    weight = torch.randn(n, n, generator=generator) / n**0.5
    bias = torch.randn(n, generator=generator) * 0.1
    x = torch.randn(args.batch, n, generator=generator)
    rounds = {"ours": [], "aihwkit": []}
    for _ in range(args.rounds):
        rounds["ours"].append(run_ours(weight, bias, x, args.device, args.repeats))
        rounds["aihwkit"].append(run_aihwkit(weight, bias, x, args.repeats, args.threads))
    ours_ms = best(r["forward_ms"] for r in rounds["ours"])
    ours_linear_ms = best(r["torch_linear_ms"] for r in rounds["ours"])
    ran = [r for r in rounds["aihwkit"] if r["available"]]
    summary = {
        "shape": f"linear {n}x{n}, batch {args.batch}",
        "device": args.device,
        "ours_ms": ours_ms,
        "ours_relative_error": rounds["ours"][0]["relative_error"],
        "torch_linear_ms": ours_linear_ms,
        "slowdown_vs_torch_linear": ours_ms / ours_linear_ms,
        "ours_median_ms": typical(r["forward_ms"] for r in rounds["ours"]),
        "target": ">= 3x aihwkit throughput at matched fidelity",
    }
    if ran:
        aihwkit_linear_ms = best(r["torch_linear_ms"] for r in ran)
        for variant, *_ in VARIANTS:
            ms = best(r["variants"][variant]["forward_ms"] for r in ran)
            summary[f"aihwkit_{variant}_ms"] = ms
            summary[f"aihwkit_{variant}_relative_error"] = ran[0]["variants"][variant]["relative_error"]
            summary[f"speedup_vs_aihwkit_{variant}"] = ms / ours_ms
            median_ms = typical(r["variants"][variant]["forward_ms"] for r in ran)
            summary[f"aihwkit_{variant}_median_ms"] = median_ms
            summary[f"speedup_vs_aihwkit_{variant}_medians"] = median_ms / summary["ours_median_ms"]
            summary[f"speedup_vs_aihwkit_{variant}_normalised_by_torch_linear"] = (ms / aihwkit_linear_ms) / (ours_ms / ours_linear_ms)
        summary["aihwkit_torch_linear_ms"] = aihwkit_linear_ms
        summary["aihwkit_source"] = "measured in this run (subprocess, .venv-aihwkit, aihwkit 1.1.0 on torch 2.10)"
        summary["speedup_vs_aihwkit"] = summary["speedup_vs_aihwkit_ir_drop_on"]
        summary["speedup_vs_aihwkit_note"] = "headline = the closest aihwkit configuration (same non-idealities incl. IR drop, 256x256 tiles, per-column weight scale); the other ratios compare with cheaper aihwkit setups that simulate less"
    else:
        summary.update({
            "aihwkit_ms": CITED_AIHWKIT_MS,
            "aihwkit_source": "cited: research note, earlier run on this machine kind (2 threads); NOT measured in this run",
            "aihwkit_unavailable_reason": rounds["aihwkit"][0]["reason"],
            "speedup_vs_cited_aihwkit": CITED_AIHWKIT_MS / ours_ms,
            "speedup_vs_aihwkit": None,
            "speedup_vs_aihwkit_note": f"aihwkit did not run here: the ratio to its cited CPU figure is not a side-by-side measurement{' (and compares a GPU with a CPU)' if args.device != 'cpu' else ''}",
        })
    summary["target_met"] = None if summary["speedup_vs_aihwkit"] is None else summary["speedup_vs_aihwkit"] >= 3.0
    document = {"environment": environment(args.device), "parameters": vars(args) | {"drift_s": DRIFT_S}, "rounds": rounds, "summary": summary}
    name = "memristor_throughput" if args.device == "cpu" else f"memristor_throughput_{args.device}"
    path = write_result(name, document)
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
