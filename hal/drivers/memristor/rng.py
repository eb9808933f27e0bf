"""Fresh Gaussian noise for large tensors, drawn in parallel on the CPU.

torch draws random numbers on the CPU with one thread per generator, which makes the per-read output noise the
slowest step of a crossbar read. Here a large tensor is split into one chunk per intra-op thread, each chunk gets
its own generator seeded from the caller's generator, and the chunks are drawn concurrently (torch releases the
GIL inside the kernels). The result is as fresh and as reproducible under ``manual_seed`` as one draw; only the
stream differs. On CUDA, and for small tensors, it is a single draw.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

#: Below this many elements one draw is faster than dispatching threads.
PARALLEL_MIN_ELEMENTS = 1 << 16

_pools: dict[int, ThreadPoolExecutor] = {}


def _executor(workers: int) -> ThreadPoolExecutor:
    """One pool per worker count, created on first use and kept for the life of the process."""
    if workers not in _pools:
        _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hal-memristor-rng")
    return _pools[workers]


def add_gaussian_(tensor: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``tensor += std * N(0, 1)`` in place (``tensor`` contiguous), drawing from ``generator``."""
    workers = torch.get_num_threads()
    if tensor.device.type != "cpu" or workers < 2 or tensor.numel() < PARALLEL_MIN_ELEMENTS or not tensor.is_contiguous():
        return tensor.add_(torch.randn(tensor.shape, generator=generator, device=tensor.device, dtype=tensor.dtype), alpha=std)
    seeds = torch.randint(0, 2**62, (workers,), generator=generator).tolist()
    chunks = tensor.view(-1).chunk(workers)

    def draw(chunk: torch.Tensor, seed: int) -> None:
        local = torch.Generator().manual_seed(seed)
        chunk.add_(torch.randn(chunk.shape, generator=local, dtype=chunk.dtype), alpha=std)

    for future in [_executor(workers).submit(draw, c, s) for c, s in zip(chunks, seeds)]:
        future.result()
    return tensor
