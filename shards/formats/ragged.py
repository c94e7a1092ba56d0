"""``Ragged``: variable-length rows (token ids) as one flat array plus offsets.

The layout of an Arrow ``list<int32>`` column: row ``i`` is
``values[offsets[i]:offsets[i + 1]]``.  Every operation is a few numpy calls
whatever the number of rows, which is what keeps per-sample Python work out
of the read path (an SST-2 sentence is ~13 tokens: per-row objects would cost
as much as tokenizing it).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np


@dataclass(frozen=True)
class Ragged:
    values: np.ndarray   # int32, all rows end to end
    offsets: np.ndarray  # int64, len(rows) + 1, starting at 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def rows(self) -> list[np.ndarray]:
        """One array per row (views into ``values``)."""
        return np.split(self.values, self.offsets[1:-1]) if len(self) else []

    @classmethod
    def from_lengths(cls, values: np.ndarray, lengths: np.ndarray) -> "Ragged":
        return cls(values, offsets_of(lengths))

    @classmethod
    def from_lists(cls, rows: list, dtype=np.int32) -> "Ragged":
        """From a list of sequences (lists of ints or arrays), in two C-level passes."""
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        if rows and isinstance(rows[0], np.ndarray):
            values = np.concatenate(rows).astype(dtype, copy=False)
        else:
            values = np.fromiter(chain.from_iterable(rows), dtype=dtype, count=int(lengths.sum()))
        return cls.from_lengths(values, lengths)

    @classmethod
    def empty(cls, n: int = 0) -> "Ragged":
        return cls(np.zeros(0, np.int32), np.zeros(n + 1, np.int64))

    def take(self, index: np.ndarray) -> "Ragged":
        """Rows ``index`` (any order, repeats allowed) as a new Ragged."""
        index = np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        offsets = offsets_of(lengths)
        gather = np.repeat(self.offsets[:-1][index] - offsets[:-1], lengths)
        gather += np.arange(offsets[-1], dtype=np.int64)
        return Ragged(self.values[gather], offsets)

    def slice(self, lo: int, hi: int) -> "Ragged":
        offsets = self.offsets[lo:hi + 1]
        return Ragged(self.values[offsets[0]:offsets[-1]], offsets - offsets[0])

    def truncate(self, max_length: int, keep_last: bool = True) -> "Ragged":
        """Rows cut to ``max_length``; with ``keep_last`` a cut row keeps its final id
        (the closing special token, as the tokenizer's own truncation does)."""
        lengths = self.lengths
        if max_length < 1 or not (lengths > max_length).any():
            return self
        cut = lengths > max_length
        kept = np.minimum(lengths, max_length)
        offsets = offsets_of(kept)
        gather = np.repeat(self.offsets[:-1] - offsets[:-1], kept)
        gather += np.arange(offsets[-1], dtype=np.int64)
        if keep_last:
            gather[offsets[1:][cut] - 1] = self.offsets[1:][cut] - 1
        return Ragged(self.values[gather], offsets)

    def padded(self, width: int, pad_id: int, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
        """``[rows, width]`` ids filled with ``pad_id`` past each row, and the 0/1 mask."""
        mask = np.arange(width) < self.lengths[:, None]
        ids = np.full(mask.shape, pad_id, dtype=dtype)
        ids[mask] = self.values
        return ids, mask.astype(dtype)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def concat(parts: list[Ragged]) -> Ragged:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return Ragged.empty()
    values = np.concatenate([p.values for p in parts])
    return Ragged.from_lengths(values, np.concatenate([p.lengths for p in parts]))
