"""Write a stream of records into shards, rolling over at max bytes or records.

Records arrive column-wise (:class:`Columns`: an Arrow string array of texts
and a numpy array of label ids) and are written in groups of ``BATCH_ROWS``
counted from the start of the unit; a group is cut where a shard fills up.
The shard bytes therefore depend only on the records, never on how the
reader happened to chunk them.

Shards are written under a temporary name and renamed only when closed, so a
crash never leaves a partial file under a shard name.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa

from shards import formats
from shards.tokenizer import encode_batch

BATCH_ROWS = 1024


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 64 << 20
    max_records: int | None = None


@dataclass(frozen=True)
class Part:
    """A finished shard file of one unit of work."""

    path: str
    num_records: int
    num_bytes: int
    sha256: str


class Columns(NamedTuple):
    """Consecutive records of a unit: texts (no nulls) and label ids (None when unlabelled)."""

    text: pa.Array | pa.ChunkedArray
    label: np.ndarray | None
    text_chars: int = 0  # characters of the records read, for progress (includes unknown labels)


def columns_of(records: Iterable[tuple[str, int | None]], labelled: bool) -> Iterator[Columns]:
    """(text, label id) records as Columns of up to ``BATCH_ROWS`` records."""
    batch = []
    for r in records:
        batch.append(r)
        if len(batch) == BATCH_ROWS:
            yield _to_columns(batch, labelled)
            batch = []
    if batch:
        yield _to_columns(batch, labelled)


def _to_columns(batch: list, labelled: bool) -> Columns:
    texts = [t for t, _ in batch]
    labels = np.array([label for _, label in batch], np.int64) if labelled else None
    return Columns(pa.array(texts, pa.string()), labels, sum(map(len, texts)))


def string_lengths(texts: pa.Array) -> np.ndarray:
    """UTF-8 bytes of each string of an Arrow string array, from its offsets (no compute call)."""
    offsets = np.frombuffer(texts.buffers()[1], np.int32, len(texts) + 1, texts.offset * 4)
    return np.diff(offsets).astype(np.int64)


def groups(columns: Iterable[Columns], n: int = BATCH_ROWS, on_columns=None
           ) -> Iterator[tuple[pa.Array, np.ndarray | None, np.ndarray]]:
    """Re-cut a stream of Columns into groups of exactly ``n`` records (the last may be short):
    (texts, label ids, UTF-8 bytes of each text: found once per chunk, not per group).

    ``on_columns(records, text_chars)`` is called as each Columns is taken in.
    """
    texts, labels, lengths, have = [], [], [], 0
    for col in columns:
        if on_columns is not None:
            on_columns(len(col.text), col.text_chars)
        chunks = col.text.chunks if isinstance(col.text, pa.ChunkedArray) else [col.text]
        start = 0  # of the chunk in col.label
        for chunk in chunks:
            off = 0
            chunk_lengths = string_lengths(chunk) if len(chunk) else None
            while off < len(chunk):
                take = min(n - have, len(chunk) - off)
                texts.append(chunk.slice(off, take))
                lengths.append(chunk_lengths[off:off + take])
                if col.label is not None:
                    labels.append(col.label[start + off:start + off + take])
                have += take
                off += take
                if have == n:
                    yield _join(texts, labels, lengths)
                    texts, labels, lengths, have = [], [], [], 0
            start += len(chunk)
    if have:
        yield _join(texts, labels, lengths)


def _join(texts: list, labels: list, lengths: list) -> tuple[pa.Array, np.ndarray | None, np.ndarray]:
    text = texts[0] if len(texts) == 1 else pa.concat_arrays(texts)
    label = (labels[0] if len(labels) == 1 else np.concatenate(labels)) if labels else None
    return text, label, lengths[0] if len(lengths) == 1 else np.concatenate(lengths)


class PartWriter:
    """Writes ``{prefix}-{k:05d}{ext}`` files into a local directory."""

    def __init__(self, fmt: str, directory: str, prefix: str, fields: list[str], limits: Limits,
                 tokenizer=None, max_length: int | None = None, on_progress=None):
        self.module = formats.get(fmt)
        self.arrow_in = getattr(self.module, "ACCEPTS_ARROW", False)
        self.directory, self.prefix, self.fields, self.limits = directory, prefix, fields, limits
        self.tokenizer, self.max_length = tokenizer, max_length
        self.on_progress = on_progress
        self.parts: list[Part] = []
        self._writer = None
        self._count = self._bytes = self._batches = 0
        self._tmp = self._final = ""

    def write(self, records: Iterable[tuple[str, int | None]]) -> list[Part]:
        """Write (text, label id) records; returns the finished parts."""
        return self.write_columns(columns_of(records, "label" in self.fields))

    def write_columns(self, columns: Iterable[Columns]) -> list[Part]:
        """Write a stream of :class:`Columns`; returns the finished parts."""
        labelled = "label" in self.fields
        # progress as the records are read (in reader-sized steps), not per group
        for text, label, lengths in groups(columns, on_columns=self.on_progress):
            texts = text if self.arrow_in and self.tokenizer is None else text.to_pylist()
            ids = None
            if self.tokenizer is not None:
                ids = encode_batch(self.tokenizer, texts, self.max_length)
                texts = text if self.arrow_in else texts
            n_ids = np.fromiter(map(len, ids), np.int64, len(ids)) if ids is not None else None
            sizes = np.asarray(self.module.record_bytes(lengths, n_ids, labelled), np.int64)
            self._write_group(texts, label if labelled else None, ids, sizes)
        if self._writer is not None:
            self._close(None)
        return self.parts

    def _write_group(self, texts, labels, ids, sizes: np.ndarray) -> None:
        """Write one group, closing a shard before the first record that would overfill it.

        The same decisions as checking :meth:`_full` record by record, found with
        prefix sums: batches (hence the overhead) only change when a shard closes.
        """
        n, i, total = len(sizes), 0, int(sizes.sum())
        if self._writer is not None and self._fits(n, total):  # the common case: no shard closes in this group
            self._count += n
            self._bytes += total
            self._flush(texts, labels, ids, 0, n)
            return
        cum = np.concatenate(([0], np.cumsum(sizes)))
        pending = 0  # first record of the group not yet written
        while i < n:
            if self._writer is None:
                self._open()
                self._take(sizes, i, i + 1)  # a fresh shard takes its first record whatever its size
                i += 1
                continue
            overhead = self.module.overhead_bytes(self._batches + 1, len(self.fields))
            j = np.arange(i, n)
            full = self._bytes + (cum[j] - cum[i]) + sizes[j] + overhead > self.limits.max_bytes
            if self.limits.max_records is not None:
                full |= self._count + (j - i) >= self.limits.max_records
            hits = np.flatnonzero(full)
            stop = i + int(hits[0]) if hits.size else n
            self._take(sizes, i, stop)
            i = stop
            if i < n:
                self._close((texts, labels, ids, pending, i))
                pending = i
        self._flush(texts, labels, ids, pending, n)

    def _fits(self, n: int, nbytes: int) -> bool:
        """Whether the open shard takes ``n`` more records of ``nbytes`` in one more batch: the loop of
        :meth:`_write_group` would find no record that fills it (its checks grow with each record)."""
        overhead = self.module.overhead_bytes(self._batches + 1, len(self.fields))
        if self._bytes + nbytes + overhead > self.limits.max_bytes:
            return False
        return self.limits.max_records is None or self._count + n <= self.limits.max_records

    def _take(self, sizes: np.ndarray, lo: int, hi: int) -> None:
        self._count += hi - lo
        self._bytes += int(sizes[lo:hi].sum())

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.parts):05d}{formats.EXTENSIONS[self.module.EXT[1:]]}"
        self._final = os.path.join(self.directory, name)
        # unique per attempt: two attempts at one unit (a retried task) never share a temp file
        self._tmp = f"{self._final}.partial-{uuid.uuid4().hex[:12]}"
        self._writer = self.module.Writer(self._tmp, self.fields)
        self._count = self._bytes = self._batches = 0

    def _flush(self, texts, labels, ids, lo: int, hi: int) -> None:
        """Write records [lo, hi) of the group as one batch of the open shard."""
        if hi <= lo:
            return
        part_texts = texts.slice(lo, hi - lo) if isinstance(texts, pa.Array) else texts[lo:hi]
        part_labels = None
        if "label" in self.fields:
            part_labels = labels[lo:hi] if self.arrow_in else labels[lo:hi].tolist()
        part_ids = ids[lo:hi] if "input_ids" in self.fields else None
        self._writer.write(part_texts, part_labels, part_ids)
        self._batches += 1

    def _close(self, pending) -> None:
        if pending is not None:
            self._flush(*pending)
        # the writer hashed the bytes as it wrote them: no second read of the file
        digest, nbytes = self._writer.close()
        os.replace(self._tmp, self._final)
        self.parts.append(Part(self._final, self._count, nbytes, digest))
        self._writer = None
