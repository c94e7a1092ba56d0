"""The writer of Arrow IPC file shards (the format and its reader: ``shards.formats.arrow``).

Record batches of up to ``BATCH_ROWS`` rows (:mod:`shards.build.writer`); the bytes go
through a :class:`HashingSink`, so the shard's sha256 needs no second read.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from shards.formats.sink import HashingSink

SINK_BUFFER = 1 << 20


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
    _, offset_buffer, data = texts.buffers()
    offsets = np.frombuffer(offset_buffer, np.int32, n + 1, texts.offset * 4)
    first = int(offsets[0])
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


def relabel(path: str, new_ids: np.ndarray) -> None:
    """Rewrite a finished shard's label ids in place (id ``i`` becomes ``new_ids[i]``).  Only the
    label values change: an int64 column keeps its layout (the caller hashes the file again)."""
    with pa.memory_map(path) as source:
        spans = _label_spans(path, source.read_buffer())
    mapped = np.memmap(path, np.uint8, mode="r+")
    for offset, rows in spans:
        ids = mapped[offset:offset + 8 * rows].view(np.int64)
        ids[:] = new_ids[ids]
    mapped.flush()
    del mapped


def _label_spans(path: str, whole: pa.Buffer) -> list[tuple[int, int]]:
    """(file offset, rows) of each record batch's label values in a shard's bytes ``whole``."""
    reader = pa.ipc.open_file(whole)
    column = reader.schema.get_field_index("label")
    spans = []
    for i in range(reader.num_record_batches):
        batch = reader.get_batch(i)
        offset = batch.column(column).buffers()[1].address - whole.address
        if not 0 <= offset <= whole.size - 8 * batch.num_rows:
            raise RuntimeError(f"{path}: batch {i}'s label values are not in the file's bytes (a compressed shard?)")
        spans.append((offset, batch.num_rows))
    return spans
