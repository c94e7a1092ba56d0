"""Reading documents for PackedStream a chunk at a time: from items, or from columns.

Both readers turn what the inner stream gives into ``Docs`` (pack_cut.py): every
document of the chunk end to end with its length, name and position in the chunk.
- ``ItemReader``: any stream whose ``__iter__`` yields dicts (MixedStream, test doubles);
- ``ChunkReader``: a stream with ``iter_chunks()`` (ShardStream), whose columnar Chunks
  (flat ids + offsets) go to ``DocFormat.join_flat`` as they are: no per-document
  dict or array.  It reads whole inner chunks, so the inner ``state_dict()`` taken
  after a read is exact (ShardStream counts consumption by whole chunks).
A read stops once it holds ``budget`` tokens (pads included) or ``CHUNK_ITEMS`` items.
The item positions in ``Docs.items`` count from the start of the read plus ``first``
(the items skipped to reach a resumed document), as a resume state names them.
"""
from __future__ import annotations

from collections import Counter
from itertools import islice
from typing import Iterator

import numpy as np

from pipeline.chunk import format_ids
from pipeline.pack.cut import DocFormat, Docs
from pipeline.settings import ResumeError

CHUNK_ITEMS = 8192  # items per read at most
NEEDS_IDS = ("PackedStream needs token ids: give the inner ShardStream a tokenizer= or "
             "build the shards with --tokenizer")


def make_reader(stream, fmt: DocFormat, stats: Counter, skip: int):
    """The columnar reader when ``stream`` has ``iter_chunks``, else the per-item one; ``skip``
    items already dropped (they come before the resumed document)."""
    cls = ChunkReader if callable(getattr(stream, "iter_chunks", None)) else ItemReader
    return cls(stream, fmt, stats, skip)


def _docs(fmt: DocFormat, stats: Counter, flat: np.ndarray, raw: np.ndarray, names, where: np.ndarray,
          n_pads: int, chunk: int) -> Docs:
    """Docs of the non-pad items (``flat`` ids, ``raw`` lengths): specials off, separator on."""
    joined, lengths, kept = fmt.join_flat(flat, raw)
    n = len(lengths)
    if n < len(raw):  # documents with no tokens once the tokenizer's specials are off
        where = where[kept]
        names = names(kept) if callable(names) else [s for s, k in zip(names, kept.tolist()) if k]
    elif callable(names):
        names = names(None)
    stats["pad_documents"] += n_pads
    stats["empty_documents"] += len(raw) - n
    stats["documents"] += n
    return Docs(joined, lengths, np.zeros(n, dtype=np.int64), names, np.full(n, chunk, dtype=np.int64), where)


class ItemReader:
    """Documents from ``iter(stream)``: one dict per item."""

    def __init__(self, stream, fmt: DocFormat, stats: Counter, skip: int):
        self.fmt, self.stats = fmt, stats
        self.items = iter(stream)
        # re-read what the chunk had before the resumed document
        skipped = sum(1 for _ in islice(self.items, skip))
        if skipped < skip:
            raise ResumeError(f"packed state: skip={skip} items, but the stream has only {skipped} from the "
                              f"saved position: the state belongs to other data")

    def read(self, chunk: int, first: int, budget: int) -> tuple[Docs, int, bool]:
        """Documents of up to ~``budget`` tokens, the items read, whether the stream ran out."""
        got: list[dict] = []
        tokens = 0
        exhausted = True
        for item in self.items:
            got.append(item)
            ids = item.get("input_ids")
            if ids is not None:
                tokens += len(ids)
            if tokens >= budget or len(got) >= CHUNK_ITEMS:
                exhausted = False
                break
        n_items = len(got)
        pads = [bool(it.get("is_pad")) for it in got]
        where = np.arange(first, first + n_items, dtype=np.int64)
        if any(pads):  # rank-evening repeats and corrupt-shard placeholders carry no document
            got = [it for it, pad in zip(got, pads) if not pad]
            where = where[~np.asarray(pads, dtype=bool)]
        try:
            arrays = [it["input_ids"] for it in got]
        except KeyError:
            raise ValueError(NEEDS_IDS) from None
        raw = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        names = [it["sample_id"] for it in got]
        return _docs(self.fmt, self.stats, flat, raw, names, where, n_items - len(got), chunk), n_items, exhausted


class ChunkReader:
    """Documents from ``stream.iter_chunks()``: whole columnar chunks per read."""

    def __init__(self, stream, fmt: DocFormat, stats: Counter, skip: int):
        self.fmt, self.stats = fmt, stats
        self.chunks: Iterator = stream.iter_chunks()
        self.head = None  # the rest of the chunk the resumed document is in
        left = skip
        for chunk in self.chunks:
            if left < len(chunk):
                self.head = chunk.slice(left, len(chunk)) if left else chunk
                left = 0
                break
            left -= len(chunk)
        if left:
            raise ResumeError(f"packed state: skip={skip} items, but the stream has only {skip - left} from the "
                              f"saved position: the state belongs to other data")

    def _next(self):
        if self.head is not None:
            head, self.head = self.head, None
            return head
        return next(self.chunks, None)

    def read(self, chunk: int, first: int, budget: int) -> tuple[Docs, int, bool]:
        got = []
        tokens = n_items = 0
        exhausted = True
        while (part := self._next()) is not None:
            got.append(part)
            n_items += len(part)
            if part.ids is not None:
                tokens += int(part.ids.offsets[-1])
            if tokens >= budget or n_items >= CHUNK_ITEMS:
                exhausted = False
                break
        pad = _cat([c.is_pad for c in got], bool)
        keep = ~pad
        n_pads = int(pad.sum())
        if any(c.ids is None and not c.is_pad.all() for c in got):
            raise ValueError(NEEDS_IDS)
        flat = _cat([c.ids.values for c in got if c.ids is not None], np.int32)
        raw = _cat([c.ids.lengths if c.ids is not None else np.zeros(len(c), np.int64) for c in got], np.int64)
        shard, record = _cat([c.shard for c in got], np.int64), _cat([c.record for c in got], np.int64)
        where = np.arange(first, first + n_items, dtype=np.int64)
        if n_pads:  # rank-evening repeats and corrupt-shard placeholders carry no document
            if len(raw):
                flat, raw = flat[np.repeat(keep, raw)], raw[keep]
            where, shard, record = where[keep], shard[keep], record[keep]

        def names(kept):
            s, r = (shard, record) if kept is None else (shard[kept], record[kept])
            return format_ids(s, r)

        return _docs(self.fmt, self.stats, flat, raw, names, where, n_pads, chunk), n_items, exhausted


def _cat(arrays: list, dtype) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype)
