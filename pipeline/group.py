"""Length grouping (``StreamConfig(group_by_length=True)``): batches of samples of similar length.

A batch is padded to its longest sample, so a random batch of short and long
sentences is mostly padding.  With grouping, each window of a worker's stream
is sorted by token length and cut into batches, and the order of those
batches is shuffled: every batch holds neighbours in length, the epoch still
mixes short and long batches.

What keeps exactly-once, equal steps and exact resume:

- The window is ``shuffle_buffer`` rounded down to a multiple of the batch
  size (at least one batch): :func:`window_size`.  Only a worker's last window
  can be shorter, so a worker still yields ``ceil(samples / batch_size)``
  batches (split.py), the count the loader plans with, and batch ``b`` starts
  in window ``b * batch_size // window``.
- The order inside a window is a pure function of the window's token lengths
  and (seed, epoch, rank, worker, window): samples are first permuted as
  without grouping (shuffle.py) so that equal lengths fall in random batches,
  then stably sorted by length; the full batches are permuted with their own
  key.  A resumed worker recomputes its window and starts at the batch it is
  at; nothing before that window is read.
- The short batch of a worker's last window (if any) stays last, as without
  grouping.  With ``shuffle=False`` the batches stay in ascending length.

Everything is one ``argsort`` and one gather per window: no per-sample Python.
"""
from __future__ import annotations

import numpy as np

from pipeline.shuffle import keyed_permutation, window_order

_BATCH_SALT = 0xBA7C_4E55  # the batch order of a window, apart from its sample order


def window_size(shuffle_buffer: int, batch_size: int) -> int:
    """Samples per grouping window: ``shuffle_buffer`` rounded down to whole batches (>= 1 batch)."""
    return max(1, shuffle_buffer // batch_size) * batch_size


def window_index(lengths: np.ndarray, batch_size: int, shuffle: bool, key: tuple[int, int, int, int, int]
                 ) -> np.ndarray:
    """The window's samples in delivery order: cut the result into ``batch_size`` pieces and
    each piece is one batch, in order.  ``key`` is (seed, epoch, rank, worker, window)."""
    n = len(lengths)
    first = window_order(n, *key) if shuffle else np.arange(n)
    ranked = first[np.argsort(lengths[first], kind="stable")]
    full = n // batch_size
    if not shuffle or full < 2:
        return ranked
    batches = keyed_permutation(full, _BATCH_SALT, *key)
    head = ranked[:full * batch_size].reshape(full, batch_size)[batches].reshape(-1)
    return np.concatenate([head, ranked[full * batch_size:]])

