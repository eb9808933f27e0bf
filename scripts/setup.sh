#!/usr/bin/env bash
# Set up hal on a fresh machine: a Python venv (.venv) with torch (CPU build where there is no NVIDIA GPU),
# hal and its extras, and the Loihi 2 vendor runtime (lava-nc, Python 3.10) in its own venv (.venv-lava).
# Idempotent: a second run only checks. Override the interpreter with PYTHON=python3.12.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch with CUDA"
    "${PIP[@]}" "torch>=2.4"
  else
    echo "setup: no NVIDIA GPU: installing the CPU build of torch"
    "${PIP[@]}" "torch==2.13.0" || "${PIP[@]}" torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${PIP[@]}" -e ".[dev]"

# Loihi 2's vendor runtime lives in its own Python 3.10 environment (lava-nc supports 3.10 only).
if [ -x scripts/setup_lava.sh ] || [ -f scripts/setup_lava.sh ]; then
  bash scripts/setup_lava.sh || echo "setup: lava-nc environment not created (the loihi2 driver still runs on its engine; see hal doctor)"
fi
echo "setup: done (.venv ready; activate with: source .venv/bin/activate)"
