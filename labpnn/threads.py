"""How many threads torch and the BLAS libraries compute on, for the length of a block.

On a small machine one thread is the deliberate default (`labpnn run --threads`, the RL
scheme's `threads`): the products of PIB steps at the recipes' batch sizes gain little from a
pool, and a pool beside another job busy-waits for the cores it shares (benchmarks/bench_threads.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def limited(threads: int | None) -> Iterator[None]:
    """torch and BLAS on `threads` threads inside the block (None: the libraries' defaults),
    torch's count restored after."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)
