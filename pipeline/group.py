"""Length grouping (``StreamConfig(group_by_length=True)``): batches of samples of similar length.

A batch is padded to its longest sample, so a random batch of short and long
sentences is mostly padding.  With grouping, each window of a worker's stream
is cut into sub-windows of ``GROUP_BATCHES`` batches (as Hugging Face's
LengthGroupedSampler cuts megabatches), each sub-window is sorted by token
length and cut into batches, and the order of all the window's batches is
shuffled: every batch holds neighbours in length, the epoch still mixes short
and long batches.

What keeps exactly-once, equal steps and exact resume:

- The window is ``shuffle_buffer`` rounded down to a multiple of the batch
  size (at least one batch): :func:`window_size`.  Only a worker's last window
  can be shorter, so a worker still yields ``ceil(samples / batch_size)``
  batches (split.py), the count the loader plans with, and batch ``b`` starts
  in window ``b * batch_size // window``.
- The order inside a window is a pure function of the window's token lengths
  and (seed, epoch, rank, worker, window): samples are first permuted as
  without grouping (shuffle.py) so that equal lengths fall in random batches,
  cut into sub-windows in that order, and each stably sorted by length; the
  full batches are permuted with their own key.  A sub-window is whole
  batches, so no batch spans two.  A resumed worker recomputes its window and starts at the batch it is
  at; nothing before that window is read.
- The short batch of a worker's last window (if any) stays last, as without
  grouping.  With ``shuffle=False`` the batches of a sub-window stay in
  ascending length.
- A state records ``group_batches`` (settings.py): one made under another
  value, or before sub-windows (read as 0: whole windows), is refused
  mid-epoch instead of resuming into another order.

Everything is one ``argsort`` and one gather per window: no per-sample Python.
"""
from __future__ import annotations

import numpy as np

from pipeline.shuffle import keyed_permutation, window_order

_BATCH_SALT = 0xBA7C_4E55  # the batch order of a window, apart from its sample order
# Batches per sorted sub-window (0: the whole window, the grouping before sub-windows).  A fixed
# count (Hugging Face's megabatch), so how finely batches are grouped does not follow shuffle_buffer
# (8192 samples at batch 16 sorted 512 batches together).  Measured on SST-2 (batch 16, max_length
# 64): pad fraction 0.004 whole windows, 0.04 at 50, 0.62 random; the label lean of a batch (its
# positive share's variance over a random batch's) is ~1.1x at every size from 2 batches to the
# whole window, and dev accuracy after 150 steps was -0.4 +- 1.2 points vs random at 50 (11 seeds),
# -0.7 +- 1.1 at whole windows (5 seeds): no size shown free of the drop (tools.bench.group_accuracy).
GROUP_BATCHES = 50


def window_size(shuffle_buffer: int, batch_size: int) -> int:
    """Samples per grouping window: ``shuffle_buffer`` rounded down to whole batches (>= 1 batch)."""
    return max(1, shuffle_buffer // batch_size) * batch_size


def sub_windows(n: int, batch_size: int) -> np.ndarray:
    """The sub-window of each of a window's ``n`` positions: ``GROUP_BATCHES`` batches each (the
    last may be shorter), or one for the whole window when it is 0.  Read at call time, so a bench
    can set the module's value."""
    if GROUP_BATCHES == 0:
        return np.zeros(n, dtype=np.int64)
    return np.arange(n) // (GROUP_BATCHES * batch_size)


def recorded(order: dict) -> dict:
    """The settings a state records for grouping: ``group_batches`` with ``group_by_length`` on, so a
    state made under another sub-window (or the whole-window grouping before it) is refused mid-epoch."""
    if not order.get("group_by_length") or "group_batches" in order:  # off, or already recorded
        return order
    return {**order, "group_batches": GROUP_BATCHES}


def window_index(lengths: np.ndarray, batch_size: int, shuffle: bool, key: tuple[int, int, int, int, int]
                 ) -> np.ndarray:
    """The window's samples in delivery order: cut the result into ``batch_size`` pieces and
    each piece is one batch, in order.  ``key`` is (seed, epoch, rank, worker, window)."""
    n = len(lengths)
    first = window_order(n, *key) if shuffle else np.arange(n)
    ranked = first[np.lexsort((lengths[first], sub_windows(n, batch_size)))]
    full = n // batch_size
    if not shuffle or full < 2:
        return ranked
    batches = keyed_permutation(full, _BATCH_SALT, *key)
    head = ranked[:full * batch_size].reshape(full, batch_size)[batches].reshape(-1)
    return np.concatenate([head, ranked[full * batch_size:]])

