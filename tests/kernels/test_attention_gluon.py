"""The Gluon Hopper forward kernels build for sm_90a on any machine, through hal.kernels.attention.offline_compile.

The kernels run only on a Hopper GPU (tests marked ``gpu`` in test_attention.py check them against the float64
reference there); this module catches what breaks them before that. The compilation runs in a subprocess without
TRITON_INTERPRET, which the CPU test run sets for the Triton kernels.
"""

import json
import os
import subprocess
import sys

import pytest

from hal.kernels.attention.configs import HOPPER

pytest.importorskip("triton.experimental.gluon", reason="this Triton has no Gluon")


def test_hopper_lists_put_the_gluon_kernels_first():
    # the first candidate is what compile_attention(autotune=False) uses on Hopper
    for head_dim in (64, 128):
        assert HOPPER.forward[head_dim][0].gluon and HOPPER.forward[head_dim][0].warp_specialize
    assert not any(c.gluon for c in HOPPER.forward[256]), "head dim 256 does not fit the Gluon kernels' registers"


def test_gluon_kernels_compile_for_sm90a_within_its_limits():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "hal.kernels.attention.offline_compile"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    expected = sum(1 for d in (128, 64) for c in HOPPER.forward[d] if c.gluon)
    assert len(rows) == expected, done.stderr[-2000:]
    for row in rows:
        assert "error" not in row, row
        assert row["fits_sm90"], row
        assert row["wgmma"] and row["tma"], row
        assert row["setmaxnreg"] == row["config"]["warp_specialize"], row
        if "local_bytes" in row:
            assert row["local_bytes"] == 0, f"register spills to local memory: {row}"
