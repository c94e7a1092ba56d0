"""``Chunk``: consecutive samples of a stream as columns (the unit every stage passes on).

A chunk holds, per sample, where it came from (shard, record), whether it is
a pad, and its text / label / token ids.  Stages permute, cut and join
chunks with a few numpy calls; per-sample Python objects are made only at
the very end, and only for callers that want one dict per sample.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from shards import Ragged, concat_ragged, sample_ids


@dataclass(frozen=True)
class Chunk:
    shard: np.ndarray            # int64 per sample
    record: np.ndarray           # int64 per sample: index in its shard
    is_pad: np.ndarray           # bool per sample
    text: list[str] | None = None
    label: np.ndarray | None = None  # int64 per sample
    ids: Ragged | None = None
    # int8 per sample, None when no sample is: 1 from a skipped (corrupt) shard read, 2 the read's first
    # sample; counted when delivered (skip_counts), so a resume at any position counts each exactly once
    skipped: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.shard)

    def take(self, index: np.ndarray) -> "Chunk":
        return Chunk(self.shard[index], self.record[index], self.is_pad[index],
                     None if self.text is None else [self.text[i] for i in index.tolist()],
                     None if self.label is None else self.label[index],
                     None if self.ids is None else self.ids.take(index),
                     None if self.skipped is None else self.skipped[index])

    def slice(self, lo: int, hi: int) -> "Chunk":
        if lo == 0 and hi >= len(self):
            return self
        return Chunk(self.shard[lo:hi], self.record[lo:hi], self.is_pad[lo:hi],
                     None if self.text is None else self.text[lo:hi],
                     None if self.label is None else self.label[lo:hi],
                     None if self.ids is None else self.ids.slice(lo, hi),
                     None if self.skipped is None else self.skipped[lo:hi])

    def with_ids(self, ids: Ragged) -> "Chunk":
        return replace(self, ids=ids)

    def without_text(self) -> "Chunk":
        return self if self.text is None else replace(self, text=None)

    def skip_counts(self) -> dict[str, int]:
        """{"skipped_shards", "skipped_samples"} among these samples; {} when none is from a skipped read."""
        if self.skipped is None:
            return {}
        samples = int(np.count_nonzero(self.skipped))
        return {"skipped_shards": int(np.count_nonzero(self.skipped == 2)), "skipped_samples": samples} \
            if samples else {}

    def sample_ids(self) -> list[str]:
        return format_ids(self.shard, self.record)

    def items(self) -> list[dict]:
        """One dict per sample: sample_id, is_pad and whichever of text/label/input_ids it has."""
        rows = [{"sample_id": sid, "is_pad": pad} for sid, pad in zip(self.sample_ids(), self.is_pad.tolist())]
        if self.text is not None:
            for row, text in zip(rows, self.text):
                row["text"] = text
        if self.label is not None:
            for row, label in zip(rows, self.label.tolist()):
                row["label"] = label
        if self.ids is not None:
            for row, ids in zip(rows, self.ids.rows()):
                row["input_ids"] = ids
        return rows


def format_ids(shard: np.ndarray, record: np.ndarray) -> list[str]:
    return sample_ids(shard.tolist(), record.tolist())


class SampleIds(Sequence):
    """A batch's sample ids ("SSSSS:RRRRRR" strings; ``SOURCE/`` prefixed where ``source`` >= 0,
    a mixture's), formatted when first read: the batch crosses the worker pipe as int arrays
    instead of a string per sample."""

    __slots__ = ("shard", "record", "source", "_strings")

    def __init__(self, shard: np.ndarray, record: np.ndarray, source: np.ndarray | None = None):
        self.shard, self.record, self.source, self._strings = shard, record, source, None

    def _all(self) -> list[str]:
        if self._strings is None:
            self._strings = format_ids(self.shard, self.record)
            if self.source is not None and len(self.source) and (self.source >= 0).any():
                self._strings = [s if k < 0 else f"{k}/{s}" for k, s in zip(self.source.tolist(), self._strings)]
        return self._strings

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, i):
        return self._all()[i]

    def __iter__(self):
        return iter(self._all())

    def __eq__(self, other) -> bool:
        if isinstance(other, (list, tuple, SampleIds)):
            return self._all() == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"SampleIds({self._all()!r})"

    def __reduce__(self):
        return SampleIds, (self.shard, self.record, self.source)

    def tolist(self) -> list[str]:
        return list(self._all())


def from_rows(shard: int, start: int, n: int, pad: bool, text=None, label=None, ids=None) -> Chunk:
    """Records ``start .. start+n-1`` of one shard."""
    return Chunk(np.full(n, shard, np.int64), np.arange(start, start + n, dtype=np.int64),
                 np.full(n, pad, bool), text, label, ids)


def concat(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    return Chunk(np.concatenate([c.shard for c in chunks]), np.concatenate([c.record for c in chunks]),
                 np.concatenate([c.is_pad for c in chunks]),
                 None if first.text is None else [t for c in chunks for t in c.text],
                 None if first.label is None else np.concatenate([c.label for c in chunks]),
                 None if first.ids is None else concat_ragged([c.ids for c in chunks]),
                 _concat_skipped(chunks))


def _concat_skipped(chunks: list[Chunk]) -> np.ndarray | None:
    if all(c.skipped is None for c in chunks):
        return None
    return np.concatenate([np.zeros(len(c), np.int8) if c.skipped is None else c.skipped for c in chunks])


def rechunk(chunks, size: int, join=None):
    """The same samples in chunks of exactly ``size`` (the last may be shorter).  Works for any
    parts with ``len`` and ``slice(start, stop)``; ``join`` concatenates them (default: Chunks)."""
    join = join or concat
    held: list = []
    count = 0
    for chunk in chunks:
        start, end = 0, len(chunk)
        while start < end:  # pieces cut from the chunk itself: no slice of the rest per piece
            take = min(size - count, end - start)
            held.append(chunk.slice(start, start + take))
            count += take
            start += take
            if count == size:
                yield join(held)
                held, count = [], 0
    if held:
        yield join(held)
