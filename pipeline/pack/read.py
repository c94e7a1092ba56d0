"""Reading documents for PackedStream a chunk at a time: from items, or from columns.

Both readers turn what the inner stream gives into ``Docs`` (cut.py): every
document of the chunk end to end with its length, name and position in the chunk,
and say the inner stream's position after a read (``position()``, plain integers).
- ``ItemReader``: any stream whose ``__iter__`` yields dicts and that has
  ``position()``/``seek(position)`` (MixedStream, test doubles);
- ``ChunkReader``: a stream with ``read_chunks(skip)`` (ShardStream), whose columnar Chunks
  (flat ids + offsets) go to ``DocFormat.join_flat`` as they are: no per-document
  dict, array or string.  Its position is ``{"samples": n}``: samples of the worker read.
A read stops once it holds ``budget`` tokens (pads included) or ``CHUNK_ITEMS`` items.
After a read, ``cum`` holds the running counts of its items (documents, empty and pad
documents, and the inner stream's ``inner_keys``): counts.py reports them as positions
pass the items, never as they are read (a resume re-reads a chunk).
The item positions in ``Docs.items`` count from the start of the read plus ``first``
(the items skipped to reach a resumed document), as a resume state names them.
"""
from __future__ import annotations

import inspect
from collections import Counter
from itertools import islice
from typing import Iterator

import numpy as np

from pipeline.pack.cut import DocFormat, Docs
from pipeline.settings import ResumeError

CHUNK_ITEMS = 8192  # items per read at most
NEEDS_IDS = ("PackedStream needs token ids: give the inner ShardStream a tokenizer= or "
             "build the shards with --tokenizer")


def make_reader(stream, fmt: DocFormat, read: Counter, start: dict | None, skip: int):
    """The columnar reader when ``stream`` has ``read_chunks``, else the per-item one, from the
    inner position ``start`` and ``skip`` items after it (they come before the resumed document).
    ``read``: the counts of the items read (ahead of the blocks; counts.py reports them as delivered)."""
    cls = ChunkReader if callable(getattr(stream, "read_chunks", None)) else ItemReader
    return cls(stream, fmt, read, start, skip)


def _docs(fmt: DocFormat, flat: np.ndarray, raw: np.ndarray, names: tuple, where: np.ndarray, pads: np.ndarray,
          first: int, chunk: int) -> tuple[Docs, dict]:
    """Docs of the non-pad items (``flat`` ids, ``raw`` lengths, ``names`` = (shard, record,
    source) arrays, ``where`` their item positions): specials off, separator on; and the
    running counts of the items (``pads``: per item of the read, ``first``: the first's position)."""
    joined, lengths, kept = fmt.join_flat(flat, raw)
    n = len(lengths)
    if n < len(raw):  # documents with no tokens once the tokenizer's specials are off
        where = where[kept]
        names = tuple(a[kept] for a in names)
    is_doc = np.zeros(len(pads), dtype=bool)
    is_doc[where - first] = True
    counts = running({"documents": is_doc, "pad_documents": pads, "empty_documents": ~(pads | is_doc)})
    z = np.zeros(n, dtype=np.int64)
    return Docs(joined, lengths, z, *names, np.full(n, chunk, dtype=np.int64), where), counts


def running(per_item: dict) -> dict:
    """{key: [0, c0, c0 + c1, ...]} of per-item counts (bool or int arrays)."""
    out = {}
    for key, values in per_item.items():
        cum = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(values, out=cum[1:])
        out[key] = cum
    return out


def _parse_ids(items: list[dict]) -> tuple:
    """(shard, record, source) arrays of dict items ("SSSSS:RRRRRR" ids; source -1 when none)."""
    pairs = [it["sample_id"].rsplit(":", 1) for it in items]
    shard = np.array([int(p[0].rsplit("/", 1)[-1]) for p in pairs], dtype=np.int64)
    record = np.array([int(p[1]) for p in pairs], dtype=np.int64)
    source = np.array([int(it.get("source", -1)) for it in items], dtype=np.int64)
    return shard, record, source


class ItemReader:
    """Documents from ``iter(stream)``: one dict per item."""

    def __init__(self, stream, fmt: DocFormat, read: Counter, start: dict | None, skip: int):
        self.fmt, self.stream, self.read_counts = fmt, stream, read
        self.cum: dict = {}
        self.inner_keys: set = set()
        if start is not None:
            stream.seek(start)
        self.items = iter(stream)
        # The position before the first item (what a resume names the epoch start by): a stream whose
        # __iter__ is not a generator takes its seek at iter() (ShardStream, MixedStream); a lazy one
        # reports a stale position until its first item, so its start stays None (unknown).
        eager = not inspect.isgeneratorfunction(getattr(type(stream), "__iter__", None))
        self.start = start if start is not None else stream.position() if eager else None
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
        inner = InnerCounts(self.stream)  # its counts after each item: a skip is counted as its item comes
        for item in self.items:
            got.append(item)
            inner.after_item()
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
        docs, self.cum = _docs(self.fmt, flat, raw, _parse_ids(got), where, np.asarray(pads, dtype=bool), first, chunk)
        self.inner_keys, seen = inner.running()
        for key, values in seen.items():
            self.cum[key] = self.cum.get(key, 0) + values
        self.read_counts.update({k: int(a[-1]) for k, a in self.cum.items()})
        return docs, n_items, exhausted

    def position(self) -> dict:
        return self.stream.position()


class InnerCounts:
    """The inner stream's counters before a read and after each of its items.  Asking a MixedStream for them
    builds a dict from every source's (~10 us an item: ~40% of packing a mixture's CPU), so a stream
    with ``counts_mark()`` (mix.py: a cheap value that moves whenever its counters may have) is asked
    again only after an item that moved it; any other stream after every item."""

    def __init__(self, stream):
        self.stream, self.items = stream, 0
        found = getattr(stream, "counts_mark", None)
        self._mark = found if callable(found) else _unwatched
        self._seen = self._mark()  # before the counters: a count between the two moves the next mark
        self.before = counters_of(stream)
        self._at: list[int] = []      # items after which the counters were taken (0-based, ascending)
        self._taken: list[dict] = []  # the counters taken there

    def after_item(self) -> None:
        mark = self._mark()
        if mark is None or mark != self._seen:
            self._seen = mark
            self._at.append(self.items)
            self._taken.append(counters_of(self.stream))
        self.items += 1

    def running(self) -> tuple[set, dict]:
        """(the counters' names after the items, {name: [0, after item 0 - before, after item 1 - before, ...]})."""
        if not self.items:
            return set(), {}
        points = [self.before, *self._taken]
        # per item, the counters in effect after it: 0 = before (nothing moved yet), j = the j-th taken
        which = np.searchsorted(np.asarray(self._at, dtype=np.int64), np.arange(self.items), side="right")
        keys = {k for j in np.unique(which).tolist() for k in points[j]}
        out = {}
        for key in keys:
            values = np.array([p.get(key, 0) for p in points], dtype=np.int64)
            seen = np.concatenate([values[:1], values[which]])
            out[key] = seen - seen[0]
        return keys, out


def _unwatched():
    return None


class ChunkReader:
    """Documents from ``stream.read_chunks(skip)``: whole columnar chunks per read."""

    inner_keys = frozenset(("skipped_shards", "skipped_samples"))  # Chunk.skipped, per sample

    def __init__(self, stream, fmt: DocFormat, read: Counter, start: dict | None, skip: int):
        self.fmt, self.read_counts = fmt, read
        self.cum: dict = {}
        self.start = start if start is not None else {"samples": 0}  # the position before the first item
        self.samples = int(self.start.get("samples", 0)) + skip
        self.chunks: Iterator = stream.read_chunks(self.samples)

    def _next(self):
        return next(self.chunks, None)

    def position(self) -> dict:
        return {"samples": self.samples}

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
        if any(c.ids is None and not c.is_pad.all() for c in got):
            raise ValueError(NEEDS_IDS)
        flat = _cat([c.ids.values for c in got if c.ids is not None], np.int32)
        raw = _cat([c.ids.lengths if c.ids is not None else np.zeros(len(c), np.int64) for c in got], np.int64)
        shard, record = _cat([c.shard for c in got], np.int64), _cat([c.record for c in got], np.int64)
        where = np.arange(first, first + n_items, dtype=np.int64)
        self.samples += n_items
        if pad.any():  # rank-evening repeats and corrupt-shard placeholders carry no document
            if len(raw):
                flat, raw = flat[np.repeat(keep, raw)], raw[keep]
            where, shard, record = where[keep], shard[keep], record[keep]
        names = (shard, record, np.full(len(shard), -1, np.int64))
        docs, self.cum = _docs(self.fmt, flat, raw, names, where, pad, first, chunk)
        if any(c.skipped is not None for c in got):  # counts of the inner stream (as it names them when any)
            marks = _cat([c.skipped if c.skipped is not None else np.zeros(len(c), np.int8) for c in got], np.int8)
            self.cum.update(running({"skipped_samples": marks > 0, "skipped_shards": marks == 2}))
        self.read_counts.update({k: int(a[-1]) for k, a in self.cum.items()})
        return docs, n_items, exhausted


def counters_of(stream) -> dict:
    found = getattr(stream, "counters", None)
    return found() if callable(found) else dict(getattr(stream, "stats", {}))


def _cat(arrays: list, dtype) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype)
