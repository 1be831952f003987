"""Preallocated key/value storage for the layers of one model."""
from __future__ import annotations

import math
import mmap

import numpy as np

from .config import ModelConfig
from .validation import check_int


class KVCache:
    """Keys and values of every layer for ``batch_size`` sequences of up to ``max_len`` tokens.

    ``k[layer]`` and ``v[layer]`` are (batch, num_kv_heads, max_len, head_dim) arrays written in place; row b
    holds ``lengths[b]`` valid positions. Rows are independent, so ``rows(i, j)`` views a contiguous range of
    them for a batch that only involves those rows.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int | None = None, dtype=np.float32):
        batch_size = check_int("batch_size", batch_size, 1)
        max_len = config.max_seq_len if max_len is None else check_int("max_len", max_len, 1)
        shape = (config.num_layers, batch_size, config.num_kv_heads, max_len, config.head_dim)
        self.k = _untouched_zeros(shape, dtype)    # (layers, B, hkv, max_len, dk)
        self.v = _untouched_zeros(shape, dtype)
        self.lengths = np.zeros(batch_size, np.int64)  # valid positions per row

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        """Forget every row's contents (the storage is kept)."""
        self.lengths[:] = 0

    def move_row(self, src: int, dst: int) -> None:
        """Copy row ``src``'s valid positions into row ``dst``: compacts the live rows of a batch."""
        n = int(self.lengths[src])
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n


def _untouched_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros in anonymous memory that the kernel maps page by page as the cache fills, in small pages.

    A cache is written sparsely at first: a few positions of every (layer, row, head). numpy advises its large
    allocations to use transparent huge pages, so each first write there made the kernel clear a whole 2 MB page:
    SmolLM2's first 40-token prefill into an 8-row cache took 2.5 s instead of 0.12 s."""
    count = math.prod(shape)
    memory = mmap.mmap(-1, max(1, count * np.dtype(dtype).itemsize))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):       # for THP "always"; under "madvise" small pages are the default
        memory.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(memory, dtype, count).reshape(shape)
