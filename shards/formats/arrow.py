"""Arrow IPC *file* shards: columns text (string), label (int64), input_ids (list<int32>).

Written in record batches so a reader streams batch by batch; readable by
``pyarrow.ipc.open_file`` alone.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from shards.formats.arrow_write import Writer, overhead_bytes, record_bytes, schema  # noqa: F401 (the format's API)
from shards.formats.base import Batch, CorruptShardError, check_labels
from shards.formats.ragged import Ragged
from shards.lazy import compute as pc

EXT = ".arrow"
MAGIC = b"ARROW1"
ACCEPTS_ARROW = True  # Writer.write takes an Arrow string array and a numpy label array as they are


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
