"""Seeded window shuffle: which order the samples of one window of a worker's stream take.

A worker's stream (already a shuffled sequence of shard blocks, see split.py)
is cut into windows of ``shuffle_buffer`` consecutive samples and each window
is permuted.  The permutation is a pure function of (seed, epoch, rank,
worker, window index), so a resumed stream recomputes it for the window that
holds its position instead of replaying everything before it, and the whole
shuffle is a few numpy calls per window rather than Python work per sample.
"""
from __future__ import annotations

import numpy as np
from numpy.random import SeedSequence, default_rng  # numpy loads .random on first use: ~12 ms, not at the first batch

_SALT = 0x5EED_5A4D  # keeps these streams apart from other uses of the same seed


def window_order(n: int, seed: int, epoch: int, rank: int, worker: int, window: int) -> np.ndarray:
    """A permutation of ``range(n)`` for this window."""
    return keyed_permutation(n, _SALT, seed, epoch, rank, worker, window)


def keyed_permutation(n: int, salt: int, seed: int, epoch: int, rank: int, worker: int, window: int) -> np.ndarray:
    """A permutation of ``range(n)``, a pure function of its integer arguments; ``salt`` keeps
    one use (samples of a window, batches of a window) apart from another."""
    key = [int(salt), int(seed) % (1 << 64), int(epoch), int(rank), int(worker), int(window)]
    return default_rng(SeedSequence(key)).permutation(n)
