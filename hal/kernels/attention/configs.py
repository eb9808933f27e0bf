"""Tile configurations per GPU architecture: candidates the kernel autotunes among on first use of a shape.

A candidate is (BLOCK_M, BLOCK_N, num_warps, num_stages). The forward and the dQ kernel tile (query, key) as
(BLOCK_M, BLOCK_N); the dK/dV kernel as well, walking query tiles per key tile. Candidate lists are short on
purpose: each one is a separate compilation. The Hopper lists were chosen from the register budget (255 registers
per thread, fp32 accumulators of BLOCK_M x HEAD_DIM spread over num_warps warps) and the 228 KB of shared memory per
SM (datasheet: NVIDIA H100 Tensor Core GPU Architecture whitepaper), then pruned by measurement (see
benchmarks/notes/attention.md). Blackwell (sm_100: same 228 KB shared memory per SM, NVIDIA Blackwell architecture
technical brief) is declared with the same shapes plus larger key tiles, selectable with ``arch="blackwell"``;
it has not been measured here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hal.kernels import interpreting


@dataclass(frozen=True)
class TileConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    use_tma: bool = False  # forward only: K/V tiles through the Hopper bulk tensor copy engine (TMA descriptors)
    # forward only: Triton's automatic warp specialization of the full-tile loop; with ``gluon`` the ping-pong
    # kernel (two consumer warpgroups of 4 warps taking turns on the tensor cores, one loader warp)
    warp_specialize: bool = False
    single_loop: bool = False  # forward only: one masked loop over partial and full tiles (one pipeline fill)
    gluon: bool = False  # forward only, Hopper: the Gluon kernel (TMA ring of num_stages, softmax/wgmma overlap)


@dataclass(frozen=True)
class ArchConfigs:
    """Candidate tile configs of one architecture, per kernel and head dimension."""

    forward: dict[int, tuple[TileConfig, ...]]
    backward_dkdv: dict[int, tuple[TileConfig, ...]]
    backward_dq: dict[int, tuple[TileConfig, ...]]


T = TileConfig

# Gluon kernels first: the ping-pong kernel (gluon + warp_specialize; num_warps is per consumer warpgroup) and the
# one-warpgroup-per-64-rows kernel (two programs per SM) beat every Triton config measured on an H100 at head dim 128
# (run 8 in benchmarks/notes/attention.md). The Triton configs stay as candidates: head dim 256, and any machine
# whose Triton lacks Gluon (a candidate that fails to build is skipped).
HOPPER = ArchConfigs(
    forward={64: (T(128, 128, 4, 2, warp_specialize=True, gluon=True), T(128, 128, 4, 3, warp_specialize=True, gluon=True),
                  T(64, 64, 4, 2, gluon=True), T(128, 128, 8, 3), T(128, 64, 4, 3), T(128, 64, 4, 2, single_loop=True)),
             128: (T(128, 128, 4, 2, warp_specialize=True, gluon=True), T(128, 128, 4, 3, warp_specialize=True, gluon=True),
                   T(64, 64, 4, 2, gluon=True), T(128, 128, 8, 3), T(128, 128, 8, 2, True), T(128, 64, 4, 2),
                   T(64, 64, 4, 3)),
             256: (T(64, 64, 4, 2), T(128, 64, 8, 2), T(128, 64, 8, 2, True))},
    backward_dkdv={64: (T(64, 64, 4, 2), T(64, 128, 8, 3)),
                   128: (T(64, 64, 4, 2), T(64, 64, 4, 3), T(64, 128, 8, 2)),
                   256: (T(32, 64, 4, 2), T(64, 64, 8, 1))},
    backward_dq={64: (T(64, 64, 4, 2), T(128, 64, 8, 3)),
                 128: (T(64, 64, 4, 2), T(128, 64, 8, 2), T(64, 32, 4, 3)),
                 256: (T(64, 32, 4, 2), T(64, 64, 8, 1))},
)

BLACKWELL = ArchConfigs(
    forward={64: (T(128, 128, 4, 3), T(128, 128, 8, 3)),
             128: (T(128, 128, 8, 3), T(128, 64, 4, 3), T(256, 128, 8, 2)),
             256: (T(128, 64, 8, 2), T(64, 64, 4, 2))},
    backward_dkdv=HOPPER.backward_dkdv,
    backward_dq=HOPPER.backward_dq,
)

# The Triton interpreter (TRITON_INTERPRET=1, CPU): small tiles so tests cross several tiles at small sizes.
INTERPRETER = ArchConfigs(
    forward={d: (T(32, 32, 4, 1),) for d in (16, 32, 64, 128, 256)},
    backward_dkdv={d: (T(32, 32, 4, 1),) for d in (16, 32, 64, 128, 256)},
    backward_dq={d: (T(32, 32, 4, 1),) for d in (16, 32, 64, 128, 256)},
)

ARCHITECTURES: dict[str, ArchConfigs] = {"hopper": HOPPER, "blackwell": BLACKWELL, "interpreter": INTERPRETER}



def detect_arch(device: torch.device | None = None) -> str:
    """The config family for ``device``: interpreter, hopper (sm_90) or blackwell (sm_100 and later)."""
    if interpreting() or not torch.cuda.is_available():
        return "interpreter"
    major, _ = torch.cuda.get_device_capability(device)
    return "blackwell" if major >= 10 else "hopper"
