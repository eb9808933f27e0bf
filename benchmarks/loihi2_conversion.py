"""ANN -> SNN conversion on scikit-learn's digits: a small MLP and a small CNN, trained here (seeded), converted
with ``hal.nn.convert(model, "loihi2:0", calibration=...)``, and evaluated on the held-out set at several step counts.

Writes benchmarks/results/loihi2_conversion.json (summary.ann_minus_snn_pts: the larger of the two models' ANN
minus SNN accuracy, in percentage points, at the stated steps ``summary.at_steps``: the fewest steps of the sweep
at which both models are within 2 points) and loihi2_accuracy_vs_steps.png.

    python benchmarks/loihi2_conversion.py [--steps 32 64 128 256 512] [--max-rate 0.25]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import hal.nn
from benchmarks.common import RESULTS, environment, write_result


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's bundled 8x8 digits scaled to [0, 1], split 1400 train / 397 test with a seeded permutation."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = perm[:1400], perm[1400:]
    return x[train], y[train], x[test], y[test]


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(64, 10),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:
    """Adam, batch 64, cross-entropy, seeded."""
    torch.manual_seed(seed)
    for layer in model:
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) * 100.0


def study(name: str, model: nn.Module, shape: tuple[int, ...], data, steps_list: list[int], max_rate: float, epochs: int) -> dict:
    xtr, ytr, xte, yte = data
    xtr, xte = xtr.reshape(-1, *shape), xte.reshape(-1, *shape)
    started = time.perf_counter()
    train(model, xtr, ytr, epochs)
    with torch.no_grad():
        ann = accuracy(model(xte), yte)
    snn = hal.nn.convert(model, "loihi2:0", calibration=xtr[:500], steps=max(steps_list), max_rate=max_rate)
    curve = []
    for steps in steps_list:
        t0 = time.perf_counter()
        out = snn(xte, steps=steps)
        run = snn.module.last_run
        curve.append({
            "steps": steps, "snn_accuracy_pct": accuracy(out, yte), "seconds": time.perf_counter() - t0,
            "synaptic_ops_per_sample": run.synaptic_ops / len(xte), "spikes_per_sample": run.spike_total / len(xte),
        })
        print(f"{name}: T={steps:4d} SNN {curve[-1]['snn_accuracy_pct']:.2f}% (ANN {ann:.2f}%)", flush=True)
    report = snn.module.report
    return {
        "ann_accuracy_pct": ann, "curve": curve, "train_plus_eval_s": time.perf_counter() - started,
        "conversion": {"input_scale": report.input_scale, "layer_scales": report.layer_scales, "vth": report.vth,
                       "weight_exp": report.weight_exp, "weight_rel_error": report.weight_rel_error, "clipped_weights": report.clipped_weights},
        "layers": [type(m).__name__ for m in model],
    }


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, r), color in zip(results.items(), ("tab:blue", "tab:orange")):
        steps = [p["steps"] for p in r["curve"]]
        ax.plot(steps, [p["snn_accuracy_pct"] for p in r["curve"]], "o-", color=color, label=f"{name} SNN (Loihi 2 engine)")
        ax.axhline(r["ann_accuracy_pct"], color=color, linestyle="--", label=f"{name} ANN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time steps")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("sklearn digits: converted SNN accuracy vs steps")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--max-rate", type=float, default=0.25)
    args = parser.parse_args()
    data = digits_split()
    results = {
        "mlp": study("mlp", mlp(), (64,), data, args.steps, args.max_rate, epochs=60),
        "cnn": study("cnn", cnn(), (1, 8, 8), data, args.steps, args.max_rate, epochs=30),
    }
    def gaps_at(steps: int) -> dict[str, float]:
        return {name: r["ann_accuracy_pct"] - next(p["snn_accuracy_pct"] for p in r["curve"] if p["steps"] == steps) for name, r in results.items()}

    # the stated number of steps: the fewest in the sweep at which every model is within 2 points of its ANN
    stated = next((t for t in sorted(args.steps) if max(gaps_at(t).values()) <= 2.0), max(args.steps))
    gaps = gaps_at(stated)
    png = RESULTS / "loihi2_accuracy_vs_steps.png"
    plot(results, png)
    write_result("loihi2_conversion", {
        "environment": environment("loihi2:0 engine on cpu"),
        "config": {"data": "sklearn digits, 1400 train / 397 test, seed 0", "calibration": "500 training images, 99.9th percentile",
                   "max_rate": args.max_rate, "steps": args.steps},
        "results": results,
        "summary": {
            "ann_minus_snn_pts": max(gaps.values()), "per_model_pts": gaps, "at_steps": stated,
            "within_2_pts": max(gaps.values()) <= 2.0, "per_model_pts_at_max_steps": gaps_at(max(args.steps)), "plot": png.name,
        },
    })
    print({"gaps_pts": gaps, "at_steps": stated})


if __name__ == "__main__":
    main()
