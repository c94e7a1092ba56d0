"""webdataset tar shards: per sample ``KEY.txt``, ``KEY.cls``, ``KEY.input_ids.npy``.

Readable by ``webdataset.WebDataset(urls)`` alone.  Both directions are
hand-written over 512-byte ustar blocks because ``tarfile`` costs ~10x more
per member than the rest of the pipeline:

- write: fixed headers (mtime 0, uid/gid 0, mode 0644, no user names), so a
  build is byte-for-byte reproducible; the archive ends with two zero blocks
  padded to a 10240-byte record, as ``tarfile`` does.
- read: over the in-memory shard; every header's checksum is checked, and
  only regular files with relative names and no ``..`` are accepted (links,
  devices, directories and extension headers are refused), each at most
  ``MAX_MEMBER_BYTES``.  ``.npy`` members are parsed without pickle.
"""
from __future__ import annotations

import functools
import io
from typing import Iterator

import numpy as np

from .formats import Batch, CorruptShardError
from .ragged import Ragged

EXT = ".tar"
MAX_MEMBER_BYTES = 256 << 20
BATCH_ROWS = 1024
BLOCK = 512
RECORD = 20 * BLOCK  # tar archives are padded to whole 10 KiB records

# Header fields that never change (see the module docstring), and their checksum.
_FIXED = bytearray(BLOCK)
_FIXED[100:108] = b"0000644\x00"   # mode
_FIXED[108:116] = b"0000000\x00"   # uid
_FIXED[116:124] = b"0000000\x00"   # gid
_FIXED[136:148] = b"00000000000\x00"  # mtime
_FIXED[148:156] = b" " * 8         # checksum is computed with this field as spaces
_FIXED[156:157] = b"0"             # regular file
_FIXED[257:265] = b"ustar\x0000"   # POSIX ustar magic + version
_FIXED_SUM = sum(_FIXED)
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


def _key(index: int) -> str:
    return f"{index:08d}"


def header(name: str, size: int) -> bytes:
    """The ustar header block of a regular file ``name`` of ``size`` bytes."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"tar member name {name!r} is over 100 bytes")
    if not 0 <= size < 8 ** 11:
        raise ValueError(f"tar member {name!r}: {size} bytes does not fit a ustar header (< 8 GiB)")
    block = bytearray(_FIXED)
    block[: len(encoded)] = encoded
    size_field = b"%011o\x00" % size
    block[124:136] = size_field
    checksum = _FIXED_SUM + sum(encoded) + sum(size_field)
    block[148:156] = b"%06o\x00 " % checksum
    return bytes(block)


@functools.lru_cache(maxsize=8192)
def npy_header(n: int) -> bytes:
    """The .npy (v1.0) header of a 1-D little-endian int32 array of ``n`` values."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i4", "fortran_order": False, "shape": (n,)})
    return buf.getvalue()


def npy_bytes(ids) -> bytes:
    arr = np.ascontiguousarray(ids, dtype="<i4")
    return npy_header(len(arr)) + arr.tobytes()


class Writer:
    def __init__(self, path: str, fields: list[str]):
        self.fields = fields
        self._file = open(path, "wb")
        self._count = 0
        self._offset = 0

    def _member(self, out: list, name: str, payload: bytes) -> None:
        out.append(header(name, len(payload)))
        out.append(payload)
        pad = -len(payload) % BLOCK
        if pad:
            out.append(_ZERO_BLOCK[:pad])
        self._offset += BLOCK + len(payload) + pad

    def write(self, texts: list[str], labels: list[int] | None, ids: list[np.ndarray] | None) -> None:
        out: list[bytes] = []
        with_text = "text" in self.fields
        for i, text in enumerate(texts):
            key = _key(self._count)
            if with_text:
                self._member(out, f"{key}.txt", text.encode("utf-8"))
            if labels is not None:
                self._member(out, f"{key}.cls", b"%d" % int(labels[i]))
            if ids is not None:
                self._member(out, f"{key}.input_ids.npy", npy_bytes(ids[i]))
            self._count += 1
        self._file.write(b"".join(out))

    def close(self) -> None:
        end = 2 * BLOCK
        end += -(self._offset + end) % RECORD
        self._file.write(bytes(end))
        self._file.close()


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
