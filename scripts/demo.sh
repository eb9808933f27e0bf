#!/usr/bin/env bash
# The main job: set up, list what hardware is here (emulators included), then run a model chained across it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/hal devices --all
.venv/bin/hal demo
if [ -f examples/hybrid_digits.py ]; then
  .venv/bin/python examples/hybrid_digits.py "$@"
fi
