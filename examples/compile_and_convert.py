"""A stock PyTorch model taken to hal devices the two ways PyTorch users work: torch.compile and module conversion.

Trains the digits classifier of ``hybrid_digits.py`` (scikit-learn's bundled 8x8 digits, about a second), then:

1. ``torch.compile(model, backend="hal")``: with only real digital devices here, hal hands each graph to Inductor;
   with ``options={"devices": [...]}`` naming an emulator it places the graph across them (``hal.explain`` shows how).
2. ``hal.nn.convert(model, "memristor:0", noise_scale=...)``: the Linear layers become crossbar layers, fine-tuned
   noise-aware in ``train()`` mode, run on the emulated crossbar in ``eval()`` mode, then aged a day (``elapse``).

    python examples/compile_and_convert.py
"""

from __future__ import annotations

import torch
from hybrid_digits import accuracy, digits, train  # the same model and data as the hybrid example, beside this file

import hal
import hal.nn

CROSSBAR = "memristor:0?seed=0"
FINE_TUNE_STEPS = 30


def fine_tune(model: torch.nn.Module, steps: int = FINE_TUNE_STEPS) -> None:
    """A few full-batch Adam steps in train() mode: hal.nn's crossbar layers inject the device's weight noise."""
    x_train, y_train, _, _ = digits()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train), y_train).backward()
        optimiser.step()
    model.eval()


def main() -> dict[str, float]:
    model, x_test, y_test = train()
    results = {"float": accuracy(model(x_test), y_test)}

    compiled = torch.compile(model, backend="hal")
    with torch.no_grad():
        results["torch.compile(backend='hal')"] = accuracy(compiled(x_test), y_test)
    options = {"devices": ["cpu:0", CROSSBAR], "policy": "energy"}
    placed = torch.compile(model, backend="hal", options=options)
    with torch.no_grad():
        results["torch.compile, cpu + memristor"] = accuracy(placed(x_test), y_test)
    print(hal.explain(model, x_test, options=options))

    for p in model.parameters():
        p.requires_grad_(True)
    analog = hal.nn.convert(model, CROSSBAR, noise_scale=1.0)
    fine_tune(analog)
    with torch.no_grad():
        analog.program_weights()
        results["hal.nn.convert, memristor"] = accuracy(analog(x_test), y_test)
        analog.elapse(86400)
        results["hal.nn.convert, memristor, a day later"] = accuracy(analog(x_test), y_test)

    for name, value in results.items():
        print(f"{name:42s} {value:.3f}")
    return results


if __name__ == "__main__":
    main()
