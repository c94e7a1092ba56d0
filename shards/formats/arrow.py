"""Arrow IPC *file* shards: columns text (string), label (int64), input_ids (list<int32>).

Written in record batches so a reader streams batch by batch; readable by
``pyarrow.ipc.open_file`` alone.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc  # flatten() needs it too: imported here, before loader workers fork

from shards.formats.base import Batch, CorruptShardError, check_labels
from shards.formats.ragged import Ragged
from shards.formats.sink import HashingSink

EXT = ".arrow"
MAGIC = b"ARROW1"
SINK_BUFFER = 1 << 20
ACCEPTS_ARROW = True  # Writer.write takes an Arrow string array and a numpy label array as they are


def record_bytes(text_bytes: int, n_ids: int | None, labelled: bool) -> int:
    """Bytes of one record's values and offsets in the file."""
    return text_bytes + 4 + (4 * n_ids + 4 if n_ids is not None else 0) + (8 if labelled else 0)


def overhead_bytes(n_batches: int, n_fields: int) -> int:
    """An upper bound on the file's bytes beyond its records (schema, footer, batch
    metadata and 8-byte buffer padding), measured with pyarrow's IPC writer."""
    return 1024 + n_batches * (256 + 128 * n_fields)


def schema(fields: list[str]) -> pa.Schema:
    types = {"text": pa.string(), "label": pa.int64(), "input_ids": pa.list_(pa.int32())}
    return pa.schema([(f, types[f]) for f in fields])


class Writer:
    def __init__(self, path: str, fields: list[str]):
        self.fields = fields
        # background: sha256 and write(2) run on threads of their own while the next batches are laid out
        self._file = HashingSink(path, background=True)
        # buffered: the IPC writer's many small writes reach Python as few large ones (each one a copy,
        # so the sink may hash it after write() returns)
        self._sink = pa.BufferedOutputStream(pa.PythonFile(self._file, mode="w"), SINK_BUFFER)
        self._schema = schema(fields)
        self._writer = pa.ipc.new_file(self._sink, self._schema)

    def write(self, texts: list[str] | pa.Array, labels: list[int] | np.ndarray | None,
              ids: list[np.ndarray] | None) -> None:
        columns = []
        for f in self.fields:
            if f == "text":
                columns.append(_compact(texts) if isinstance(texts, pa.Array) else pa.array(texts, pa.string()))
            elif f == "label":
                columns.append(_int64_array(labels))
            else:
                columns.append(_list_array(ids))
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self._schema))

    def close(self) -> tuple[str, int]:
        """Ends the file; returns (sha256 hex digest, bytes) of the whole file."""
        self._writer.close()
        self._sink.close()
        return self._file.digest()


def _compact(texts: pa.Array) -> pa.StringArray:
    """A string array (no nulls) with offsets from 0 and exactly its own bytes.

    The IPC writer lays out a slice of a larger array differently from a fresh
    one; rebuilt like this the file is byte-identical to ``pa.array(list)``'s.
    """
    if texts.null_count:
        raise ValueError("text column has nulls; the reader must drop records without text")
    n = len(texts)
    offsets = np.frombuffer(texts.buffers()[1], np.int32, n + 1, texts.offset * 4)
    first = int(offsets[0])
    data = texts.buffers()[2]
    data = data.slice(first, int(offsets[-1]) - first) if data is not None else pa.py_buffer(b"")
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets - first), data])


def _int64_array(values) -> pa.Int64Array:
    """Labels as an int64 array; a numpy array is wrapped as is (``pa.array`` on one
    imports numpy.ma, 13 ms of every build's start)."""
    if isinstance(values, np.ndarray):
        values = np.ascontiguousarray(values, np.int64)
        return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])
    return pa.array(values, pa.int64())


def _list_array(ids: list[np.ndarray]) -> pa.ListArray:
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(ids).astype(np.int32) if ids else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


# What pyarrow raises for damaged bytes: ArrowException subclasses, ValueError, and OSError for a message
# header or buffer that points outside the file ("Read out of bounds"); the bytes are in memory, so no
# OSError here is an I/O failure.
DAMAGE = (pa.ArrowException, ValueError, OSError)


def _open(data, url: str):
    if len(data) < 12 or bytes(data[:6]) != MAGIC:
        raise CorruptShardError(f"shard {url}: not an Arrow IPC file (bad magic); rebuild it or "
                                f"pass on_corrupt='skip'")
    try:
        return pa.ipc.open_file(pa.py_buffer(data))
    except DAMAGE as exc:
        raise CorruptShardError(f"shard {url}: unreadable Arrow file ({exc}); rebuild it") from exc


def check(data, url: str, num_records: int, label_count: int | None = None, key: str | None = None) -> None:
    """Refuse the shard before any record is read: the record batches (their row counts are in
    the file's footer and message headers) must hold ``num_records`` rows, every label must be
    an id in [0, label_count) and every token id >= 0."""
    reader = _open(data, url)
    names = set(reader.schema.names)
    found = 0
    for i in range(reader.num_record_batches):
        try:
            batch = reader.get_batch(i)
            found += batch.num_rows
            labels = batch.column("label").to_numpy(zero_copy_only=False) if "label" in names else None
            ids = batch.column("input_ids").flatten() if "input_ids" in names else None
            low = pc.min(ids).as_py() if ids is not None and len(ids) else None
        except DAMAGE as exc:
            raise CorruptShardError(f"shard {url}: record batch {i} is damaged ({exc}); rebuild it") from exc
        if labels is not None:
            check_labels(labels, url, label_count, found - batch.num_rows)
        if low is not None and low < 0:
            raise CorruptShardError(f"shard {url}: record batch {i} holds a negative token id ({low}); rebuild it")
    if found != num_records:
        raise CorruptShardError(f"shard {url}: holds {found} records, the manifest says {num_records}; "
                                f"the manifest or the shard was changed, rebuild the set")


def read_batches(data, url: str, start: int = 0, stop: int | None = None,
                 columns: tuple[str, ...] = ("text", "label", "input_ids"), key: str | None = None) -> Iterator[Batch]:
    """Batches of records [start, stop) from the bytes of one shard (``key`` is unused: Arrow
    has random access, nothing to cache)."""
    reader = _open(data, url)
    names = set(reader.schema.names)
    offset = 0
    for i in range(reader.num_record_batches):
        if stop is not None and offset >= stop:
            return
        try:
            batch = reader.get_batch(i)
            batch.validate()  # offsets and lengths in range, so a damaged batch cannot misread
            n = batch.num_rows
            lo, hi = max(start - offset, 0), n if stop is None else min(stop - offset, n)
            out = _to_batch(batch.slice(lo, hi - lo), offset + lo, names, columns) if lo < hi else None
        except DAMAGE as exc:
            raise CorruptShardError(f"shard {url}: record batch {i} is damaged ({exc}); rebuild it") from exc
        if out is not None:
            yield out
        offset += n


def _to_batch(rb: pa.RecordBatch, start: int, names: set[str], columns) -> Batch:
    text = rb.column("text").to_pylist() if "text" in names and "text" in columns else None
    label = rb.column("label").to_numpy() if "label" in names and "label" in columns else None
    ids = None
    if "input_ids" in names and "input_ids" in columns:
        col = rb.column("input_ids")
        offsets = col.offsets.to_numpy().astype(np.int64)
        # flatten() honours the slice; the copy keeps samples from pinning the whole shard
        values = col.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=True)
        ids = Ragged(values, offsets - offsets[0])
    return Batch(start, text, label, ids)
