#!/usr/bin/env bash
# Create .venv-lava: a Python 3.10 environment with lava-nc 0.10.0, the Loihi 2 vendor runtime that hal's
# loihi2 driver runs in a worker process (?backend=lava) and checks its engine against (pytest -m lava).
# lava-nc 0.10 imports only on Python 3.10. Interpreter search: $HAL_LAVA_PYTHON, python3.10 on PATH, pyenv's
# versions/3.10*; each candidate is verified by running it. Without one this script says why and exits 0, so
# the main setup continues (the loihi2 driver then runs on its bit-accurate engine alone).
# Idempotent: an existing .venv-lava that imports lava is left as it is.
set -uo pipefail
cd "$(dirname "$0")/.."
ENV_DIR="${HAL_LAVA_ENV:-.venv-lava}"
LAVA_VERSION="0.10.0"

if [ -x "$ENV_DIR/bin/python" ] && "$ENV_DIR/bin/python" -c "import lava.magma.core.run_configs" 2>/dev/null; then
  echo "setup_lava: $ENV_DIR already has lava-nc"
  exit 0
fi

is_py310() {
  [ -n "$1" ] && [ -x "$1" ] || command -v "$1" >/dev/null 2>&1 || return 1
  "$1" -c "import sys; assert sys.version_info[:2] == (3, 10)" >/dev/null 2>&1
}

PY=""
candidates=()
[ -n "${HAL_LAVA_PYTHON:-}" ] && candidates+=("$HAL_LAVA_PYTHON")
command -v python3.10 >/dev/null 2>&1 && candidates+=("$(command -v python3.10)")
PYENV_ROOT_DIR="${PYENV_ROOT:-}"
if [ -z "$PYENV_ROOT_DIR" ] && command -v pyenv >/dev/null 2>&1; then PYENV_ROOT_DIR="$(pyenv root 2>/dev/null)"; fi
[ -z "$PYENV_ROOT_DIR" ] && PYENV_ROOT_DIR="$HOME/.pyenv"
for bin in "$PYENV_ROOT_DIR"/versions/3.10*/bin/python3.10; do
  [ -x "$bin" ] && candidates+=("$bin")
done
for candidate in "${candidates[@]}"; do
  # python3.10 on PATH may be a pyenv shim that fails unless 3.10 is selected: running it is the test
  if is_py310 "$candidate"; then PY="$candidate"; break; fi
done

if [ -z "$PY" ]; then
  echo "setup_lava: no working Python 3.10 interpreter found (tried: ${candidates[*]:-none})."
  echo "setup_lava: install one (e.g. 'pyenv install 3.10.13') and rerun, or set HAL_LAVA_PYTHON. Skipping lava-nc."
  exit 0
fi

echo "setup_lava: creating $ENV_DIR with $PY"
if ! "$PY" -m venv "$ENV_DIR"; then
  echo "setup_lava: '$PY -m venv' failed (is the venv module installed?); skipping lava-nc."
  exit 0
fi
if ! "$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check "lava-nc==$LAVA_VERSION"; then
  echo "setup_lava: pip could not install lava-nc==$LAVA_VERSION into $ENV_DIR; skipping (the engine still works)."
  exit 0
fi
if "$ENV_DIR/bin/python" -c "import lava.magma.core.run_configs"; then
  echo "setup_lava: lava-nc $LAVA_VERSION ready in $ENV_DIR (found automatically by the loihi2 driver)"
else
  echo "setup_lava: lava-nc installed but does not import; see the error above. The engine still works."
fi
exit 0
