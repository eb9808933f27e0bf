#!/usr/bin/env bash
# Set up and run the test suite (GPU tests skip without a GPU; lava tests skip without the lava env, with the reason).
# Extra arguments go to pytest, e.g. scripts/test.sh -m gpu  or  scripts/test.sh tests/drivers/test_cpu.py
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Without a GPU, Triton kernels run in its interpreter (TRITON_INTERPRET=1), at the tests' small sizes.
if ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then
  export TRITON_INTERPRET=1
fi
# pytest exits 5 when it collected no test: that is a failure here, never a pass.
.venv/bin/python -m pytest "$@"
