"""One small classifier, placed across whatever devices are here, by policy.

Trains a 64-64-32-10 ReLU network on scikit-learn's bundled 8x8 digits (seeded, about a second),
then for each policy plans it with hal.runtime over the real devices here (the CPU, GPUs) and the
Loihi 2, memristor and photonic emulators, named explicitly: a plan leaves emulators out unless they
are named or allow_simulated=True is passed. It prints the plan (which stages a device claimed as one
Program), runs it on the held-out digits and reports accuracy beside the float model. When the
neuromorphic, analog and photonic devices are all present it also runs a "one layer per paradigm"
placement (pins), the hybrid this example is named for, and with Loihi 2 a placement of the two hidden
layers on it, which it claims as one Program (spikes stay on the chip between the layers).

    python examples/hybrid_digits.py                      # all policies
    python examples/hybrid_digits.py --policy energy --plot plan.png
    hal plan examples/hybrid_digits.py --policy energy    # build() below is what `hal plan` loads
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import hal
import hal.runtime

SEED = 0
EPOCHS = 150
#: The emulators planned on beside the real hardware (named: a plan takes emulators only when asked).
EMULATORS = ("loihi2:0", "memristor:0", "photonic:0")
#: One layer per paradigm, used when all three devices are available (node names are the Sequential indices).
HYBRID_PINS = {"0": "loihi2:0", "2": "memristor:0", "4": "photonic:0"}
#: Both hidden layers (linear + relu) on Loihi 2: one stage, which the device claims as one spiking Program.
SPIKING_PINS = {"0": "loihi2:0", "2": "loihi2:0"}


def digits(seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits scaled to [0, 1] (pixel / 16), split 80/20 by a seeded permutation."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def train(seed: int = SEED) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The float model, trained full-batch with Adam; returns (model, test inputs, test labels)."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = digits(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(EPOCHS):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train), y_train)
        loss.backward()
        optimiser.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x_test, y_test


def build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """What `hal plan` loads: the trained model and the test inputs to plan for."""
    model, x_test, _ = train()
    return model, (x_test,)


def devices_here(available: set[str]) -> list:
    """The real devices a plan takes by default, and the emulators of EMULATORS that are available here."""
    real, _ = hal.runtime.available_devices()
    return [*real, *(uri for uri in EMULATORS if uri in available)]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def run_placement(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, plot: str | None, **kwargs) -> dict:
    start = time.perf_counter()
    plan = hal.runtime.plan(model, (x,), **kwargs)
    planned_s = time.perf_counter() - start
    print(plan)
    hal_logits, report = plan.run(x, profile=True)
    print(report)
    reference = model(x)
    devices = sorted({plan.device_of(n) for n in plan.graph.node_names()})
    if plot:
        path = str(Path(plot).with_name(f"{Path(plot).stem}_{name}{Path(plot).suffix or '.png'}"))
        plan.save_plot(path, report)
        print(f"plot: {path}")
    return {
        "placement": name,
        "devices": ", ".join(devices),
        "accuracy": accuracy(hal_logits, y),
        "float_accuracy": accuracy(reference, y),
        "agreement": float((hal_logits.argmax(-1) == reference.argmax(-1)).float().mean()),
        "plan_s": planned_s,
        "run_s": report.total_s,
        "fallbacks": len(report.fallbacks),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=hal.runtime.POLICIES, help="plan with one policy (default: all three)")
    parser.add_argument("--plot", help="write the plan's Gantt/energy PNG here (one per placement)")
    args = parser.parse_args(argv)

    model, x_test, y_test = train()
    available = {info.uri for info in hal.devices()}
    planned = devices_here(available)
    print(f"planning on: {', '.join(sorted(str(d) for d in planned))}")
    rows = []
    for policy in [args.policy] if args.policy else list(hal.runtime.POLICIES):
        print(f"\n=== policy {policy} ===")
        rows.append(run_placement(policy, model, x_test, y_test, args.plot, policy=policy, devices=planned))
    if set(HYBRID_PINS.values()) <= available:
        print("\n=== one layer per paradigm (pins) ===")
        rows.append(run_placement("hybrid", model, x_test, y_test, args.plot, policy=args.policy or "energy", pins=HYBRID_PINS, devices=planned))
    else:
        missing = sorted(set(HYBRID_PINS.values()) - available)
        print(f"\n(one-layer-per-paradigm placement skipped: {', '.join(missing)} not available here)")
    if set(SPIKING_PINS.values()) <= available:
        print("\n=== hidden layers on Loihi 2, claimed as one Program (pins) ===")
        rows.append(run_placement("spiking", model, x_test, y_test, args.plot, policy=args.policy or "energy", pins=SPIKING_PINS, devices=planned))

    print(f"\n{'placement':10} {'accuracy':>9} {'float':>7} {'agree':>7} {'run s':>7}  devices")
    for r in rows:
        print(f"{r['placement']:10} {r['accuracy']:9.3f} {r['float_accuracy']:7.3f} {r['agreement']:7.3f} {r['run_s']:7.3f}  {r['devices']}")


if __name__ == "__main__":
    main()
