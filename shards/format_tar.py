"""webdataset tar shards: per sample ``KEY.txt``, ``KEY.cls``, ``KEY.input_ids.npy``.

Readable by ``webdataset.WebDataset(urls)`` alone.  Headers are fixed (mtime 0,
uid 0, mode 0644) so a build is byte-for-byte reproducible.  The reader
refuses unsafe members (``..``, absolute paths, links) and oversized records.
"""
from __future__ import annotations

import io
import tarfile
from typing import Iterator

import numpy as np

from .formats import Batch, CorruptShardError

EXT = ".tar"
MAX_MEMBER_BYTES = 256 << 20
BATCH_ROWS = 1024


def _member_bytes(payload: int) -> int:
    return 512 + -(-payload // 512) * 512  # header + payload padded to a block


def record_bytes(text_chars: int, n_ids: int | None, labelled: bool) -> int:
    """Estimated bytes of one sample's members in the tar."""
    size = _member_bytes(text_chars)
    if labelled:
        size += _member_bytes(2)
    if n_ids is not None:
        size += _member_bytes(128 + 4 * n_ids)
    return size


def _key(index: int) -> str:
    return f"{index:08d}"


class Writer:
    def __init__(self, path: str, fields: list[str]):
        self.fields = fields
        self._file = open(path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._count = 0

    def _add(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(payload))

    def write(self, texts: list[str], labels: list[int] | None, ids: list[np.ndarray] | None) -> None:
        for i, text in enumerate(texts):
            key = _key(self._count)
            if "text" in self.fields:
                self._add(f"{key}.txt", text.encode("utf-8"))
            if labels is not None:
                self._add(f"{key}.cls", str(int(labels[i])).encode())
            if ids is not None:
                buf = io.BytesIO()
                np.save(buf, np.asarray(ids[i], dtype=np.int32), allow_pickle=False)
                self._add(f"{key}.input_ids.npy", buf.getvalue())
            self._count += 1

    def close(self) -> None:
        self._tar.close()
        self._file.close()


def _check_member(info: tarfile.TarInfo, url: str) -> None:
    name = info.name
    if not info.isfile():
        raise CorruptShardError(f"shard {url}: member {name!r} is not a regular file "
                                f"(links and devices are refused); rebuild the shard")
    if name.startswith("/") or ".." in name.split("/"):
        raise CorruptShardError(f"shard {url}: unsafe member path {name!r}; rebuild the shard")
    if info.size > MAX_MEMBER_BYTES:
        raise CorruptShardError(f"shard {url}: member {name!r} is {info.size} bytes, over the "
                                f"{MAX_MEMBER_BYTES}-byte record limit; refusing to load it")


def _samples(data, url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    try:
        tar = tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:")
    except tarfile.TarError as exc:
        raise CorruptShardError(f"shard {url}: not a tar file ({exc}); rebuild it") from exc
    key, parts = None, {}
    try:
        for info in tar:
            _check_member(info, url)
            base = info.name.rsplit("/", 1)[-1]
            k, _, ext = base.partition(".")
            if k != key and key is not None:
                yield key, parts
                parts = {}
            key = k
            parts[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CorruptShardError(f"shard {url}: truncated or damaged tar ({exc}); rebuild it") from exc
    if key is not None:
        yield key, parts


def read_batches(data, url: str, start: int = 0, stop: int | None = None,
                 columns: tuple[str, ...] = ("text", "label", "input_ids")) -> Iterator[Batch]:
    rows: list[dict] = []
    first = start
    for index, (_, parts) in enumerate(_samples(data, url)):
        if stop is not None and index >= stop:
            break
        if index < start:
            continue
        rows.append(parts)
        if len(rows) == BATCH_ROWS:
            yield _to_batch(rows, first, columns, url)
            first += len(rows)
            rows = []
    if rows:
        yield _to_batch(rows, first, columns, url)


def _to_batch(rows: list[dict], start: int, columns, url: str) -> Batch:
    try:
        text = [r["txt"].decode("utf-8") for r in rows] if "txt" in rows[0] and "text" in columns else None
        label = (np.array([int(r["cls"]) for r in rows], dtype=np.int64)
                 if "cls" in rows[0] and "label" in columns else None)
        ids = ([np.load(io.BytesIO(r["input_ids.npy"]), allow_pickle=False) for r in rows]
               if "input_ids.npy" in rows[0] and "input_ids" in columns else None)
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptShardError(f"shard {url}: malformed sample near record {start} ({exc}); rebuild it") from exc
    return Batch(start, text, label, ids)
