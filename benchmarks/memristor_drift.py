"""Drift study: a digits MLP programmed onto the PCM crossbar, accuracy from programming to one year later.

scikit-learn's bundled digits (8x8 images, 10 classes) train a 64-128-10 ReLU MLP in torch. The trained
network is converted (``hal.nn.convert(model, "memristor:0")``) and programmed onto ``memristor:0`` with every
non-ideality on; its test accuracy is read right after programming (t0) and after 1 s, 1 h, 1 day and 1 year of
drift (the converted model's ``elapse`` verb), with and without global drift compensation, for the plainly trained
network and for one fine-tuned with hardware-aware noise injection. Each point is the mean over several programming
draws (device seeds). Where the device refuses to let that much time pass (a program read so late that the
configuration's expected error leaves no tolerance below 0.5: uncompensated drift after about an hour), the point
records the refusal and its message instead of an accuracy.

If the ``.venv-aihwkit`` environment exists, the same weights run through aihwkit 1.1.0's
``PCMLikeNoiseModel`` (same times, with and without ``GlobalDriftCompensation``), and both models' device
statistics (programming noise, drift exponents, conductance after 1 h) are sampled on the same targets. Without it,
``--aihwkit-from FILE`` carries the aihwkit side of an earlier result file over, marked with that file's date (the
weights are the same: training is seeded and does not depend on the crossbar model).

    python -m benchmarks.memristor_drift      # writes results/memristor_drift.json, .png and .md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
AIHWKIT_PYTHON = ROOT / ".venv-aihwkit" / "bin" / "python"
TIMES = {"t0": 0.0, "1 s": 1.0, "1 h": 3600.0, "1 day": 86400.0, "1 year": 365.25 * 86400.0}
STAT_TARGETS_US = (2.5, 6.25, 12.5, 25.0)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


# ---------------------------------------------------------------------------- aihwkit side (its own environment)


def aihwkit_worker(data_path: str, out_path: str, seeds: int) -> None:
    """Run inside .venv-aihwkit: accuracy over time for each weight set, and the PCM statistics on fixed targets."""
    import aihwkit
    from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
    from aihwkit.nn import AnalogLinear, AnalogSequential
    from aihwkit.simulator.configs import InferenceRPUConfig

    data = np.load(data_path)
    x, y = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    results: dict = {"aihwkit": aihwkit.__version__, "torch": torch.__version__, "accuracy": {}}
    for weights in ("plain", "hwa"):
        for compensate in (True, False):
            config = InferenceRPUConfig()
            config.noise_model = PCMLikeNoiseModel(g_max=25.0)
            config.drift_compensation = GlobalDriftCompensation() if compensate else None
            config.mapping.max_input_size = 256
            config.mapping.max_output_size = 256
            config.mapping.weight_scaling_columnwise = True  # per-column scale, as ours
            model = AnalogSequential(AnalogLinear(64, 128, rpu_config=config), nn.ReLU(), AnalogLinear(128, 10, rpu_config=config))
            model[0].set_weights(torch.from_numpy(data[f"{weights}_w0"]), torch.from_numpy(data[f"{weights}_b0"]))
            model[2].set_weights(torch.from_numpy(data[f"{weights}_w1"]), torch.from_numpy(data[f"{weights}_b1"]))
            model.eval()
            per_time = {label: [] for label in TIMES}
            for seed in range(seeds):
                torch.manual_seed(seed)
                model.program_analog_weights()
                for label, t in TIMES.items():
                    model.drift_analog_weights(t)
                    per_time[label].append(accuracy(model, x, y))
            results["accuracy"][f"{weights}, {'compensated' if compensate else 'uncompensated'}"] = per_time
    noise = PCMLikeNoiseModel(g_max=25.0)
    torch.manual_seed(0)
    stats = {}
    for g in STAT_TARGETS_US:
        target = torch.full((50000,), g)
        programmed = noise.apply_programming_noise_to_conductance(target)
        nu = noise.generate_drift_coefficients(target)
        later = noise.apply_drift_noise_to_conductance(programmed, nu, 3600.0)
        stats[str(g)] = {"programmed_std_us": float(programmed.std()), "nu_mean": float(nu.mean()), "nu_std": float(nu.std()), "g_1h_mean_us": float(later.mean()), "g_1h_std_us": float(later.std())}
    results["statistics"] = stats
    Path(out_path).write_text(json.dumps(results))


def run_aihwkit(arrays: dict, seeds: int) -> dict:
    if not AIHWKIT_PYTHON.exists():
        return {"available": False, "reason": f"no {AIHWKIT_PYTHON.relative_to(ROOT)} environment"}
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data.npz", Path(tmp) / "out.json"
        np.savez(data, **arrays)
        command = [str(AIHWKIT_PYTHON), str(Path(__file__).resolve()), "--aihwkit-worker", str(data), str(out), "--seeds", str(seeds)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else str(done.returncode)
            return {"available": False, "reason": f"aihwkit worker failed: {tail}"}
        return {"available": True, **json.loads(out.read_text())}


# ---------------------------------------------------------------------------- our side


def our_statistics(seed: int) -> dict:
    """Our PCM model sampled on the same targets (single programming shot, as aihwkit's model is). With seed 0 the
    draws come from the same torch random stream as the aihwkit worker's (``torch.manual_seed(0)``, same order), so
    equal numbers mean equal formulas; other seeds show the agreement of independent samples."""
    from hal.drivers.memristor import pcm
    from hal.drivers.memristor.config import PcmStatistics

    model = PcmStatistics()
    generator = torch.Generator().manual_seed(seed)
    stats = {}
    for g in STAT_TARGETS_US:
        target = torch.full((50000,), g)
        programmed = pcm.program_attempt(target, pcm.programming_sigma_us(target, 25.0, model), generator)
        nu = pcm.drift_exponents(target, 25.0, model, generator)
        later = pcm.conductance_at(programmed, nu, 3600.0, 25.0, model, generator)
        stats[str(g)] = {"programmed_std_us": float(programmed.std()), "nu_mean": float(nu.mean()), "nu_std": float(nu.std()), "g_1h_mean_us": float(later.mean()), "g_1h_std_us": float(later.std())}
    return stats


def train(x: torch.Tensor, y: torch.Tensor, model: nn.Module, steps: int, lr: float, seed: int) -> nn.Module:
    """Full-batch Adam on cross-entropy (train() mode: analog layers inject their noise)."""
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.eval()
    return model


def evaluate_on_crossbar(model: nn.Module, uri: str, x: torch.Tensor, y: torch.Tensor, seeds: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Program ``model`` onto ``uri`` once per seed and read its accuracy at every time point; returns the accuracies
    and, for time points the device refused to reach, its message."""
    import hal.nn
    from hal.errors import InvalidInput

    analog = hal.nn.convert(model, uri)
    analog.eval()
    per_time: dict[str, list[float]] = {label: [] for label in TIMES}
    refused: dict[str, str] = {}
    for seed in range(seeds):
        analog.manual_seed(seed)
        for _, layer in analog.device_layers():
            layer.reprogram()
        now = 0.0
        for label, t in TIMES.items():
            try:
                analog.elapse(t - now)
            except InvalidInput as exc:
                refused.update({later: str(exc) for later in list(TIMES)[list(TIMES).index(label) :]})
                break
            now = t
            per_time[label].append(accuracy(analog, x, y))
    return {label: v for label, v in per_time.items() if label not in refused}, refused


def plot(summary: dict, digital: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    positions = np.arange(len(TIMES))
    for name, per_time in summary.items():
        style = "--" if "uncompensated" in name else "-"
        marker = "s" if name.startswith("aihwkit") else "o"
        reached = [k for k, label in enumerate(TIMES) if label in per_time]
        refused = f" (refused after {list(TIMES)[reached[-1]]})" if len(reached) < len(TIMES) else ""
        ax.plot(positions[reached], [per_time[list(TIMES)[k]] * 100 for k in reached], style, marker=marker, label=name + refused)
    ax.axhline(digital * 100, color="black", linewidth=0.8, label="digital (float32)")
    ax.set_xticks(positions, list(TIMES))
    ax.set_xlabel("read time after t0 (t0 = 20 s after programming)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("sklearn digits MLP on the emulated PCM crossbar")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(summary: dict, digital: float) -> str:
    lines = ["| variant | " + " | ".join(TIMES) + " |", "|---|" + "---|" * len(TIMES)]
    lines.append("| digital (float32) | " + " | ".join(f"{digital * 100:.1f}" for _ in TIMES) + " |")
    for name, per_time in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{per_time[label] * 100:.1f}" if label in per_time else "refused" for label in TIMES) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="programming draws per point")
    parser.add_argument("--steps", type=int, default=400, help="training steps (full batch)")
    parser.add_argument("--hwa-steps", type=int, default=400, help="hardware-aware fine-tuning steps")
    parser.add_argument("--noise-scale", type=float, default=1.0, help="training noise in units of the PCM model's std")
    parser.add_argument("--noise-age", type=float, default=86400.0, help="seconds after t0 whose noise (read noise, drift spread) training injects")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--aihwkit-worker", nargs=2, metavar=("DATA", "OUT"))
    parser.add_argument("--aihwkit-from", type=Path, help="without .venv-aihwkit: carry the aihwkit side of this earlier result file over (marked with its date)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.aihwkit_worker:
        aihwkit_worker(*args.aihwkit_worker, args.seeds)
        return
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import hal.nn
    from benchmarks.common import RESULTS, environment, write_result

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(digits.data / 16.0, digits.target, test_size=0.3, random_state=0, stratify=digits.target)
    x_train, x_test = torch.tensor(x_train, dtype=torch.float32), torch.tensor(x_test, dtype=torch.float32)
    y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)

    torch.manual_seed(0)  # the initial weights
    plain = train(x_train, y_train, mlp(), args.steps, 1e-2, seed=0)
    digital = accuracy(plain, x_test, y_test)
    hwa = hal.nn.convert(plain, "memristor:0", noise_scale=args.noise_scale, noise_age_s=args.noise_age).module
    hwa = train(x_train, y_train, hwa, args.hwa_steps, 3e-3, seed=1)
    hwa_digital = accuracy(nn.Sequential(*[_digital_twin(m) for m in hwa]), x_test, y_test)

    raw, refusals = {}, {}
    for weights_name, model in (("plain", plain), ("hwa", hwa)):
        for compensate in (True, False):
            uri = f"memristor:0?seed=0&drift_compensation={int(compensate)}"
            name = f"ours: {weights_name}, {'compensated' if compensate else 'uncompensated'}"
            raw[name], refused = evaluate_on_crossbar(_digital_copy(model), uri, x_test, y_test, args.seeds)
            if refused:
                refusals[name] = refused

    arrays = {"x_test": x_test.numpy(), "y_test": y_test.numpy()}
    for weights_name, model in (("plain", plain), ("hwa", hwa)):
        layers = [m for m in model if isinstance(m, nn.Linear)]
        for i, layer in enumerate(layers):
            arrays[f"{weights_name}_w{i}"] = layer.weight.detach().numpy()
            arrays[f"{weights_name}_b{i}"] = layer.bias.detach().numpy()
    aihwkit = run_aihwkit(arrays, args.seeds)
    if not aihwkit["available"] and args.aihwkit_from:
        aihwkit = carried_aihwkit(args.aihwkit_from, aihwkit["reason"])
    if aihwkit["available"]:
        for name, per_time in aihwkit["accuracy"].items():
            raw[f"aihwkit: {name}"] = per_time

    summary_acc = {name: {label: float(np.mean(v)) for label, v in per_time.items()} for name, per_time in raw.items()}
    spread = {name: {label: float(np.std(v)) for label, v in per_time.items()} for name, per_time in raw.items()}
    summary = {
        "accuracy_by_time": summary_acc,
        "accuracy_std_by_time": spread,
        "refused_by_time": refusals,
        "digital_accuracy": digital,
        "hwa_digital_accuracy": hwa_digital,
        "times_s": TIMES,
        "seeds": args.seeds,
        "aihwkit_compared": aihwkit["available"],
    }
    statistics = {"ours_same_random_stream": our_statistics(0), "ours_independent_draw": our_statistics(1)}
    if aihwkit["available"]:
        statistics["aihwkit"] = aihwkit["statistics"]
    else:
        summary["aihwkit_unavailable_reason"] = aihwkit["reason"]
    if aihwkit["available"]:
        summary["aihwkit_measured_utc"] = aihwkit.get("measured_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if "carried_from" in aihwkit:
        summary["aihwkit_source"] = aihwkit["carried_from"]
    document = {
        "environment": environment("cpu") | ({"aihwkit": aihwkit["aihwkit"], "aihwkit_torch": aihwkit["torch"]} if aihwkit["available"] else {}),
        "parameters": vars(args) | {"aihwkit_from": args.aihwkit_from.name if args.aihwkit_from else None, "model": "MLP 64-128-10 ReLU", "data": "sklearn digits, 30% test split (random_state 0)", "device": "memristor:0 defaults (every non-ideality on)"},
        "raw_accuracy": raw,
        "statistics_on_same_targets": statistics,
        "summary": summary,
    }
    path = write_result("memristor_drift", document)
    plot(summary_acc, digital, RESULTS / "memristor_drift.png")
    table = markdown(summary_acc, digital)
    (RESULTS / "memristor_drift.md").write_text(table)
    print(table)
    print(f"wrote {path}")


def carried_aihwkit(path: Path, reason: str) -> dict:
    """The aihwkit side of an earlier result file, marked with where and when it was measured."""
    earlier = json.loads(path.read_text())
    env = earlier["environment"]
    accuracy = {name.removeprefix("aihwkit: "): per_time for name, per_time in earlier["raw_accuracy"].items() if name.startswith("aihwkit: ")}
    if not accuracy:
        return {"available": False, "reason": f"{reason}; {path} holds no aihwkit rows to carry over"}
    measured = earlier["summary"].get("aihwkit_measured_utc", env["date_utc"])  # a carried-over side keeps its first date
    return {
        "available": True,
        "aihwkit": env["aihwkit"],
        "torch": env["aihwkit_torch"],
        "accuracy": accuracy,
        "statistics": earlier["statistics_on_same_targets"]["aihwkit"],
        "measured_utc": measured,
        "carried_from": f"not measured in this run ({reason}): carried over from {path.name}, measured {measured} with the same seeded training and weights",
    }


def _digital_twin(module: nn.Module) -> nn.Module:
    """The plain torch layer with the same weights (to read a noise-trained network's digital accuracy)."""
    if isinstance(module, nn.Linear):
        twin = nn.Linear(module.in_features, module.out_features)
        twin.load_state_dict(module.state_dict())
        return twin
    return module


def _digital_copy(model: nn.Module) -> nn.Sequential:
    return nn.Sequential(*[_digital_twin(m) for m in model])


if __name__ == "__main__":
    main()
