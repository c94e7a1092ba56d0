"""Write a stream of records into shards, rolling over at max bytes or records.

Shards are written under a temporary name and renamed only when closed, so a
crash never leaves a partial file under a shard name.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator

from . import formats, storage
from .tokenizer import encode_batch

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


def _batched(records: Iterable, n: int) -> Iterator[list]:
    batch = []
    for r in records:
        batch.append(r)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


class PartWriter:
    """Writes ``{prefix}-{k:05d}{ext}`` files into a local directory."""

    def __init__(self, fmt: str, directory: str, prefix: str, fields: list[str], limits: Limits,
                 tokenizer=None, max_length: int | None = None, on_progress=None):
        self.module = formats.get(fmt)
        self.directory, self.prefix, self.fields, self.limits = directory, prefix, fields, limits
        self.tokenizer, self.max_length = tokenizer, max_length
        self.on_progress = on_progress
        self.parts: list[Part] = []
        self._writer = None
        self._count = self._bytes = self._batches = 0
        self._tmp = self._final = ""
        self._pending: tuple[list, list, list] = ([], [], [])

    def write(self, records: Iterable[tuple[str, int | None]]) -> list[Part]:
        """Write (text, label id) records; returns the finished parts."""
        labelled = "label" in self.fields
        for batch in _batched(records, BATCH_ROWS):
            texts = [t for t, _ in batch]
            labels = [label for _, label in batch] if labelled else None
            ids = encode_batch(self.tokenizer, texts, self.max_length) if self.tokenizer else None
            for i, text in enumerate(texts):
                text_bytes = len(text) if text.isascii() else len(text.encode("utf-8"))
                size = self.module.record_bytes(text_bytes, len(ids[i]) if ids is not None else None, labelled)
                if self._writer is not None and self._full(size):
                    self._close()
                if self._writer is None:
                    self._open()
                self._pending[0].append(text)
                self._pending[1].append(labels[i] if labelled else None)
                self._pending[2].append(ids[i] if ids is not None else None)
                self._count += 1
                self._bytes += size
            self._flush()
            if self.on_progress:
                self.on_progress(len(batch), sum(map(len, texts)))
        if self._writer is not None:
            self._close()
        return self.parts

    def _full(self, next_size: int) -> bool:
        if self.limits.max_records is not None and self._count >= self.limits.max_records:
            return True
        # the file's own overhead (headers, footer, padding) counts towards max_bytes
        overhead = self.module.overhead_bytes(self._batches + 1, len(self.fields))
        return self._bytes + next_size + overhead > self.limits.max_bytes

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.parts):05d}{formats.EXTENSIONS[self.module.EXT[1:]]}"
        self._final = os.path.join(self.directory, name)
        # unique per attempt: two attempts at one unit (a retried task) never share a temp file
        self._tmp = f"{self._final}.partial-{uuid.uuid4().hex[:12]}"
        self._writer = self.module.Writer(self._tmp, self.fields)
        self._count = self._bytes = self._batches = 0

    def _flush(self) -> None:
        texts, labels, ids = self._pending
        if texts:
            self._writer.write(texts, labels if "label" in self.fields else None,
                               ids if "input_ids" in self.fields else None)
            self._batches += 1
        self._pending = ([], [], [])

    def _close(self) -> None:
        self._flush()
        self._writer.close()
        os.replace(self._tmp, self._final)
        digest, nbytes = storage.sha256_file(self._final)
        self.parts.append(Part(self._final, self._count, nbytes, digest))
        self._writer = None
