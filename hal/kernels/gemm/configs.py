"""Tile configurations of the fused linear kernel: the candidates ``triton.autotune`` picks among on a GPU.

Chosen from a bandwidth model, not yet from measurement (no GPU was at hand when they were written; the GPU run of
benchmarks/fused_linear.py records which config won at each shape, and is where the set gets pruned):

* Small M (1 to 64 rows, the target: decode steps and small-batch MLPs) is bound by the weight stream: the kernel
  must read N x K weights once, spread over every SM. So BLOCK_M is the row count padded to what ``tl.dot`` takes
  (16, 32 or 64: not tuned, one program covers all rows and the weight is read once), BLOCK_N is small (16 to 64)
  so that N / BLOCK_N programs cover the SMs (at N = 1024, BLOCK_N 16 gives 64 programs), and a weight tile is 4 to
  16 KiB (BLOCK_N x BLOCK_K x 2 bytes) with 3 to 6 stages in flight, which keeps some 24 to 48 KiB of loads
  outstanding per SM: the bytes-in-flight a streaming read needs on Hopper (HBM bandwidth x latency / SMs is about
  4.8 TB/s x ~1 us / 132 SMs = 36 KiB; assumed: typical DRAM latency, the 4.8 TB/s and 132 SMs from the H200
  datasheet).
* Large M (above 64 rows) is correct but not tuned for: a few square tiles of the usual Triton matmul shapes. There
  each program also recomputes its rows' norm statistics, so it is slower than cuBLAS; the fused form is meant for
  launch-bound small batches.

Under TRITON_INTERPRET=1 one small config runs, so tests at small sizes cross several tiles along M, N and K.
"""

from __future__ import annotations

from hal.kernels import interpreting

#: (BLOCK_N, BLOCK_K, num_warps, num_stages) for small M; BLOCK_M comes from the row count.
SMALL_M_TILES: tuple[tuple[int, int, int, int], ...] = (
    (16, 256, 4, 4), (16, 128, 4, 5), (16, 256, 2, 4), (32, 64, 4, 6),
    (32, 128, 4, 4), (32, 256, 4, 3), (64, 64, 4, 4), (64, 128, 4, 3),
)
#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for M above 64.
LARGE_M_TILES: tuple[tuple[int, int, int, int, int], ...] = (
    (64, 64, 64, 4, 4), (64, 128, 64, 4, 3), (128, 64, 64, 4, 3), (128, 128, 64, 8, 3),
)
#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of the interpreter.
INTERPRETER_TILE = (16, 16, 32, 1, 1)
#: Rows above this take the large-M tiles.
SMALL_M_MAX = 64
#: The autotuner's timing per config (ms): short, because a decode-sized kernel runs for microseconds.
TUNE_WARMUP_MS, TUNE_REP_MS = 5, 25



def m_bucket(m: int) -> int:
    """The row-count bucket the autotuner keys on: 16, 32, 64 (the BLOCK_M of small M), or 128 for any larger M."""
    return 2 * SMALL_M_MAX if m > SMALL_M_MAX else max(16, _pow2(m))


Tile = tuple[int, int, int, int, int]  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)


def all_tiles() -> tuple[Tile, ...]:
    """Every tile the autotuner may pick among (each bucket takes a subset, see ``candidates``)."""
    if interpreting():
        return (INTERPRETER_TILE,)
    small = tuple((bm, *tile) for bm in (16, 32, 64) for tile in SMALL_M_TILES)
    return small + tuple(t for t in LARGE_M_TILES if t not in small)


def candidates(bucket: int, n_max: int, k: int) -> tuple[Tile, ...]:
    """The tiles tried for one row bucket, widest weight (n_max rows) and K.

    A small bucket tries the small-M tiles with BLOCK_M = the bucket; a large one the large-M tiles. Tiles far wider
    than the matrix (BLOCK_N above the widest weight's N, BLOCK_K above K, both padded to a power of two) are
    dropped, since they would mostly load masked zeros; at least one tile always remains.
    """
    if interpreting():
        return (INTERPRETER_TILE,)
    if bucket > SMALL_M_MAX:
        family = LARGE_M_TILES
    else:
        family = tuple((bucket, *tile) for tile in SMALL_M_TILES)
    fitting = tuple(t for t in family if t[1] <= max(16, _pow2(n_max)) and t[2] <= max(64, _pow2(k)))
    return fitting or family[:1]


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p
