"""PackedStream's counters as of a position: what a state saved there holds, so a resume counts nothing twice.

The readers (read.py) read a chunk of items ahead of the blocks they make, and a resume
re-reads the chunk from its inner position, skipping to the resumed document.  So a
count taken as an item is read would be counted again after a resume.  Instead each
read chunk keeps, per item, the running counts of its items (``Reader.cum``: documents,
empty_documents, pad_documents, and the inner stream's per-item counts such as
skipped_samples), and a delivered block reports the counts of the items before its
position (inner position of its chunk, items skipped from there) plus the blocks,
tokens and pad tokens delivered.  A resume starts counting after the items it skips, so
saved counts + resumed counts == the uninterrupted run's counts, at every position.
Inner counts that no item carries (retries) are counted at the start of the chunk read.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np


class _Read:
    __slots__ = ("inner", "first", "start", "cum")

    def __init__(self, inner, first: int, start: Counter, cum: dict):
        self.inner, self.first, self.start, self.cum = inner, first, start, cum


class PassedCounts:
    """``prior`` + the counts of an iteration as of a delivered position.  Only what the inner stream counts
    during a read is ours: what it counted reaching the start (a resume's skipped items) was counted before."""

    def __init__(self, inner_counts: Callable[[], dict], prior: Counter, seq_len: int):
        self._inner, self._seq_len = inner_counts, seq_len
        self._total: Counter = Counter(prior)   # as of the end of the last read
        self._reads: dict[int, _Read] = {}  # chunk number -> its read (and the next chunk's start)
        self.blocks = self.tokens = 0  # blocks and real tokens delivered
        self.read_ahead: Counter = Counter()  # the readers' counts of the items read (read.make_reader)

    def read(self, reader, chunk: int, first: int, budget: int, inner) -> tuple:
        """``reader.read(chunk, first, budget)``, keeping the per-item counts of chunk ``chunk``
        (``inner``: the inner position it starts at, what delivered positions name it by)."""
        before = Counter(self._inner())
        got = reader.read(chunk, first, budget)
        after = Counter(self._inner())
        itemized = Counter({k: int(a[-1]) for k, a in reader.cum.items() if k in reader.inner_keys})
        # counted by the inner stream but by no item (retries): at the chunk start; names counted 0 kept
        residual = {k: max(v - before.get(k, 0) - itemized.get(k, 0), 0) for k, v in after.items()}
        start = _sum(self._total, residual)
        self._reads[chunk] = _Read(inner, first, start, reader.cum)
        self._total = _sum(start, {k: int(a[-1]) for k, a in reader.cum.items()})
        return got

    def next_chunk(self, chunk: int, inner) -> None:
        """Chunk ``chunk`` will start at ``inner``: a position there (no item of it read) holds ``_total``."""
        self._reads[chunk] = _Read(inner, 0, Counter(self._total), {})

    def at(self, position: dict, blocks: int, tokens: int) -> Counter:
        """Counts of the items before ``position`` and of the ``blocks`` delivered (``tokens`` real tokens)."""
        inner, skip = position["inner"], position["skip"]
        found = next((c for c in sorted(self._reads, reverse=True) if self._reads[c].inner is inner), None)
        if found is None:  # not a position of this iteration: report what was read
            return _sum(self._total, self._delivered(blocks, tokens))
        for old in [c for c in self._reads if c < found]:  # positions are delivered in order
            del self._reads[old]
        read = self._reads[found]
        i = skip - read.first
        return _sum(read.start, {k: int(a[min(i, len(a) - 1)]) for k, a in read.cum.items()},
                    self._delivered(blocks, tokens))

    def deliver(self, num_tokens: np.ndarray) -> None:
        self.blocks += len(num_tokens)
        self.tokens += int(num_tokens.sum())

    def _delivered(self, blocks: int, tokens: int) -> dict:
        return {"blocks": blocks, "tokens": tokens, "pad_tokens": blocks * self._seq_len - tokens}

    def done(self) -> Counter:
        """Everything read (the epoch's end: every item passed) and delivered."""
        return _sum(self._total, self._delivered(self.blocks, self.tokens))


class DeliveredStats:
    """``stats``: the counts as of the last block delivered (a per-block iteration counts them when they are
    read, ``_pending``); ``_counts()``: an iteration's counters, on top of what was counted before it."""

    @property
    def stats(self) -> Counter:
        self._settle()
        return self._stats

    @stats.setter
    def stats(self, counts: Counter) -> None:
        self._stats, self._pending = counts, None

    def _settle(self) -> None:
        pending, self._pending = self.__dict__.get("_pending"), None
        if pending is not None:
            counts, after, blocks, tokens = pending
            self._stats = counts.at(after, blocks, tokens)

    def _counts(self) -> PassedCounts:
        inner = getattr(self.stream, "counters", None)
        return PassedCounts(inner if callable(inner) else lambda: dict(getattr(self.stream, "stats", {})),
                            Counter(self.stats), self.seq_len)


def _sum(*parts: dict) -> Counter:
    """Counts added up, keys counted 0 kept (``+`` drops them; stats name every count they keep)."""
    out: Counter = Counter()
    for part in parts:
        out.update(part)
    return out
