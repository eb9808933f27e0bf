#!/usr/bin/env bash
# The main job: set up, list what hardware is here (emulators included), then run a model chained across it.
# Plans take emulators only when asked: examples/hybrid_digits.py names the Loihi 2, memristor and photonic
# emulators beside the real devices, and shows which stages a device claims as one Program; compile_and_convert.py
# takes a stock PyTorch model to the crossbar through torch.compile(backend="hal") and hal.nn.convert.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/hal devices --all
.venv/bin/hal demo
.venv/bin/python examples/hybrid_digits.py "$@"
.venv/bin/python examples/compile_and_convert.py
