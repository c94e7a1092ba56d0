"""webdataset tar shards: per sample ``KEY.txt``, ``KEY.cls``, ``KEY.input_ids.npy``.

Readable by ``webdataset.WebDataset(urls)`` alone.  Both directions are
hand-written over 512-byte ustar blocks because ``tarfile`` costs ~10x more
per member than the rest of the pipeline:

- write (``tar_writer``): fixed headers (mtime 0, uid/gid 0, mode 0644, no
  user names), so a build is byte-for-byte reproducible; the archive ends with
  two zero blocks padded to a 10240-byte record, as ``tarfile`` does.
- read: over the in-memory shard; every header's checksum is checked, and
  only regular files with relative names and no ``..`` are accepted (links,
  devices, directories and extension headers are refused), each at most
  ``MAX_MEMBER_BYTES``.  ``.npy`` members are parsed without pickle.
"""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np

from .formats import Batch, CorruptShardError
from .ragged import Ragged
from .tar_writer import BLOCK, RECORD, Writer, header, npy_bytes, npy_header  # noqa: F401 (the format's API)

EXT = ".tar"
ACCEPTS_ARROW = True  # Writer.write takes an Arrow string array and a numpy label array as they are
MAX_MEMBER_BYTES = 256 << 20
BATCH_ROWS = 1024

_ZERO_BLOCK = bytes(BLOCK)
REGULAR = (b"0", b"\x00")


def _member_bytes(payload: int) -> int:
    return BLOCK + -(-payload // BLOCK) * BLOCK  # header + payload padded to a block


def record_bytes(text_bytes: int, n_ids: int | None, labelled: bool) -> int:
    """Bytes of one sample's members in the tar."""
    size = _member_bytes(text_bytes)
    if labelled:
        size += _member_bytes(2)
    if n_ids is not None:
        size += _member_bytes(128 + 4 * n_ids)
    return size


def overhead_bytes(n_batches: int, n_fields: int) -> int:
    """An upper bound on the end-of-archive blocks and the padding to a whole record."""
    return 2 * BLOCK + RECORD - BLOCK


def _octal(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for huge values
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.rstrip(b" \x00") or b"0", 8)
    except ValueError:
        raise ValueError(f"bad {what} field {bytes(field)!r}") from None


def _parse_header(data: bytes, offset: int, url: str) -> tuple[str, int, int]:
    """(name, size, stored checksum) of the member header at ``offset``, checked
    for safety; the checksums themselves are checked all at once afterwards."""
    where = f"shard {url}: tar header at byte {offset}"
    try:
        stored = _octal(data[offset + 148: offset + 156], "checksum")
        size = _octal(data[offset + 124: offset + 136], "size")
    except ValueError as exc:
        raise CorruptShardError(f"{where}: {exc}; rebuild the shard") from exc
    name = data[offset: offset + 100].split(b"\x00", 1)[0]
    if data[offset + 345]:  # ustar prefix: the directory part of a long name
        name = data[offset + 345: offset + 500].split(b"\x00", 1)[0] + b"/" + name
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptShardError(f"{where}: member name {name!r} is not UTF-8; rebuild the shard") from exc
    kind = data[offset + 156: offset + 157]
    if kind not in REGULAR:
        raise CorruptShardError(f"shard {url}: member {text!r} is not a regular file (type {kind!r}: "
                                f"links, directories, devices and extension headers are refused); "
                                f"rebuild the shard")
    if not text or text.startswith("/") or ".." in text.split("/"):
        raise CorruptShardError(f"shard {url}: unsafe member path {text!r} (absolute or with '..'); "
                                f"rebuild the shard")
    if size > MAX_MEMBER_BYTES:
        raise CorruptShardError(f"shard {url}: member {text!r} is {size} bytes, over the "
                                f"{MAX_MEMBER_BYTES}-byte record limit; refusing to load it")
    return text, size, stored


def _check_checksums(data: bytes, offsets: list[int], stored: list[int], url: str) -> None:
    """Every header's checksum (sum of its bytes, the checksum field as spaces), vectorised:
    a Python ``sum`` over 512 bytes would cost more than the rest of the read."""
    blocks = np.frombuffer(data, np.uint8, count=len(data) // BLOCK * BLOCK).reshape(-1, BLOCK)
    index = np.asarray(offsets, dtype=np.int64) // BLOCK
    want = np.asarray(stored, dtype=np.int64)
    for lo in range(0, len(index), 8192):
        headers = blocks[index[lo: lo + 8192]]
        actual = headers.sum(1, dtype=np.int64) - headers[:, 148:156].sum(1, dtype=np.int64) + 8 * 32
        bad = np.flatnonzero(actual != want[lo: lo + 8192])
        if len(bad):
            k = lo + int(bad[0])
            raise CorruptShardError(f"shard {url}: tar header at byte {offsets[k]}: checksum mismatch "
                                    f"(stored {stored[k]}, computed {int(actual[bad[0]])}); the shard is "
                                    f"damaged, rebuild it")


def members(data, url: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of each member's payload in the shard bytes, all checked."""
    data = data if isinstance(data, bytes) else bytes(data)
    n, offset = len(data), 0
    found, offsets, stored = [], [], []
    while True:
        if offset + BLOCK > n:
            raise CorruptShardError(f"shard {url}: truncated tar (no end-of-archive block after byte "
                                    f"{offset}); rebuild it")
        if data[offset + 257: offset + 262] != b"ustar":
            if data[offset: offset + BLOCK] != _ZERO_BLOCK:
                raise CorruptShardError(f"shard {url}: tar header at byte {offset}: not a ustar header "
                                        f"(bad magic); the shard is damaged or not a tar file; rebuild it")
            # end-of-archive: only zero padding may follow (catches a zeroed-out start)
            if data[offset:].strip(b"\x00"):
                raise CorruptShardError(f"shard {url}: data after the end-of-archive block at byte "
                                        f"{offset}; the shard is damaged, rebuild it")
            break
        name, size, checksum = _parse_header(data, offset, url)
        start = offset + BLOCK
        if start + size > n:
            raise CorruptShardError(f"shard {url}: member {name!r} needs {size} bytes at {start} but the "
                                    f"shard has {n}; truncated, rebuild it")
        found.append((name, start, start + size))
        offsets.append(offset)
        stored.append(checksum)
        offset = start + size + (-size % BLOCK)
    _check_checksums(data, offsets, stored, url)
    return found


class _Index:
    """Where each sample's members lie: ``spans[ext]`` is an (n, 2) array of (start, end)."""

    def __init__(self, n: int, spans: dict[str, np.ndarray]):
        self.n, self.spans = n, spans


# The index of the shard read last, by identity: a reader asks for several record
# ranges of one shard in turn, and a tar (unlike Arrow) has no random access.
# Holding it keeps no extra shard alive: the caller holds the shard while it reads.
_last: tuple = (None, None)


def _index(data, url: str) -> _Index:
    global _last
    cached, index = _last
    if cached is data:
        return index
    index = _build_index(data, url)
    _last = (data, index)
    return index


def _build_index(data, url: str) -> _Index:
    """Members grouped into samples (webdataset's rule: the key is the path up to the
    first dot of the file name); every sample must have the same members."""
    spans: dict[str, list] = {}
    key, parts, n = None, {}, 0

    def close_sample():
        if n == 0:
            for ext in parts:
                spans[ext] = []
        if parts.keys() != spans.keys():
            raise CorruptShardError(f"shard {url}: sample {key!r} has members {sorted(parts)}, the first "
                                    f"sample has {sorted(spans)}; rebuild the shard")
        for ext, span in parts.items():
            spans[ext].append(span)

    for name, start, end in members(data, url):
        slash = name.rfind("/") + 1
        dot = name.find(".", slash)
        k, ext = (name, "") if dot < 0 else (name[:dot], name[dot + 1:])
        if k != key and key is not None:
            close_sample()
            n += 1
            parts = {}
        key = k
        parts[ext] = (start, end)
    if key is not None:
        close_sample()
        n += 1
    return _Index(n, {ext: np.asarray(v, dtype=np.int64).reshape(-1, 2) for ext, v in spans.items()})


def read_batches(data, url: str, start: int = 0, stop: int | None = None,
                 columns: tuple[str, ...] = ("text", "label", "input_ids")) -> Iterator[Batch]:
    index = _index(data, url)
    stop = index.n if stop is None else min(stop, index.n)
    view = memoryview(data)
    for lo in range(start, stop, BATCH_ROWS):
        yield _to_batch(view, index, lo, min(lo + BATCH_ROWS, stop), columns, url)


def _load_npy(payload: memoryview, url: str, record: int) -> np.ndarray:
    n_header = int.from_bytes(payload[8:10], "little") + 10 if len(payload) >= 10 else 0
    n = (len(payload) - n_header) // 4
    if n_header and n >= 0 and payload[:n_header] == npy_header(n) and n_header + 4 * n == len(payload):
        # a copy, so a sample kept downstream does not pin the whole shard in memory
        return np.frombuffer(payload, dtype="<i4", offset=n_header, count=n).copy()
    arr = np.load(io.BytesIO(payload), allow_pickle=False)  # written by another tool: general path
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"input_ids of record {record} is {arr.dtype} with shape {arr.shape}, "
                         f"expected a 1-D integer array")
    return arr.astype(np.int32, copy=False)


def _to_batch(view: memoryview, index: _Index, lo: int, hi: int, columns, url: str) -> Batch:
    def spans(ext: str, column: str):
        return index.spans[ext][lo:hi].tolist() if ext in index.spans and column in columns else None

    txt, cls, npy = spans("txt", "text"), spans("cls", "label"), spans("input_ids.npy", "input_ids")
    try:
        text = [str(view[a:b], "utf-8") for a, b in txt] if txt is not None else None
        label = np.array([int(view[a:b]) for a, b in cls], dtype=np.int64) if cls is not None else None
        ids = [_load_npy(view[a:b], url, lo + i) for i, (a, b) in enumerate(npy)] if npy is not None else None
        ids = Ragged.from_lists(ids) if ids is not None else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptShardError(f"shard {url}: malformed sample in records {lo}..{hi - 1} ({exc!r}); "
                                f"rebuild it") from exc
    return Batch(lo, text, label, ids)
