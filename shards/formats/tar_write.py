"""The writer of webdataset tar shards (the format and its reader: ``format_tar``).

Fixed headers (mtime 0, uid/gid 0, mode 0644, no user names), so a build is
byte-for-byte reproducible; the archive ends with two zero blocks padded to a
10240-byte record, as ``tarfile`` does.  A batch of records is laid out at
once with numpy: building each member's 512-byte header in Python cost ~80%
of a tar build.  Bytes go through a :class:`HashingSink`, so the shard's
sha256 needs no second read; one thread of the writer's own hashes and writes
a batch while the next is laid out, in slices of ``WRITE_SLICE`` bytes.
"""
from __future__ import annotations

import functools
import io
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from shards.formats.sink import HashingSink

BLOCK = 512
RECORD = 20 * BLOCK  # tar archives are padded to whole 10 KiB records
# A batch goes to the sink in slices this big: a tar shard is ~26x the bytes of an Arrow one for short
# texts, and write(2) cost 3-8x the kernel time per byte in 2 MB calls than in 256 KB ones (page-cache
# copy, profiled with perf), so the whole-batch write was most of a tar build; each slice is also
# hashed just before it is written, while it is still in the core's cache.
WRITE_SLICE = 256 << 10

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
_FIXED_ARRAY = np.frombuffer(bytes(_FIXED), np.uint8)


def key(index: int) -> str:
    """A sample's key: its index in the shard, zero-padded to 8 digits (more past 10**8)."""
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
    """Writes one tar shard; headers and payloads of a whole batch are laid out with numpy
    (a header per member built in Python cost ~80% of a tar build), hashing as it writes."""

    def __init__(self, path: str, fields: list[str]):
        self.fields = fields
        self._sink = HashingSink(path)
        # one thread hashes and writes a batch (slice by slice, see WRITE_SLICE) while the next is laid out
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tar-write")
        self._pending: Future | None = None
        self._count = 0
        # two buffers in turn (the writer thread may still read the previous one), each reused:
        # a fresh buffer per batch would page-fault
        self._bufs = [np.zeros(0, np.uint8), np.zeros(0, np.uint8)]

    def write(self, texts: list[str] | pa.Array, labels, ids) -> None:
        """Records: texts (a list or an Arrow string array), labels (ints, or None) and
        token ids (1-D int arrays, or None); members ``KEY.txt``, ``KEY.cls``, ``KEY.input_ids.npy``."""
        n = len(texts) if texts is not None else len(labels) if labels is not None else len(ids)
        # keys are zero-padded to 8 digits; a run where their width is constant is laid out at once
        for lo, hi in _same_width_runs(self._count, n):
            columns = [(_text_pieces(texts, lo, hi), b"txt")] if "text" in self.fields else []
            if labels is not None:
                columns.append((_label_pieces(labels[lo:hi]), b"cls"))
            if ids is not None:
                columns.append((_npy_pieces(ids[lo:hi]), b"input_ids.npy"))
            if columns:
                self._write_run(hi - lo, columns)
            self._count += hi - lo

    def _write_run(self, n: int, columns: list) -> None:
        exts = [ext for _, ext in columns]
        sizes = np.stack([sum(np.diff(offsets) for _, offsets in pieces) for pieces, _ in columns], axis=1)
        if sizes.size and sizes.max() >= 8 ** 11:
            raise ValueError(f"tar member of {int(sizes.max())} bytes does not fit a ustar header (< 8 GiB)")
        span = BLOCK + -(-sizes // BLOCK) * BLOCK  # (n, kinds): header + payload padded to a block
        starts = np.zeros(span.size, np.int64)
        np.cumsum(span.ravel()[:-1], out=starts[1:])
        starts = starts.reshape(span.shape)  # where each member's header starts in this run
        total = int(starts[-1, -1] + span[-1, -1])
        self._bufs.reverse()
        if len(self._bufs[0]) < total:
            self._bufs[0] = np.zeros(max(total, 2 * len(self._bufs[0])), np.uint8)
        out = self._bufs[0][:total]
        out[:] = 0
        blocks = out.reshape(-1, BLOCK)
        blocks[starts.ravel() // BLOCK] = _headers(self._count, n, exts, sizes)
        for k, (pieces, _) in enumerate(columns):
            at = starts[:, k] + BLOCK
            for data, offsets in pieces:  # a payload made of several pieces (npy header + values)
                _scatter(out, at, data, offsets)
                at = at + np.diff(offsets)
        self._wait()
        self._pending = self._pool.submit(self._put, out)

    def _put(self, out: np.ndarray) -> None:
        """Hash and write one laid-out batch (on the writer's thread)."""
        for lo in range(0, len(out), WRITE_SLICE):
            self._sink.write(out[lo: lo + WRITE_SLICE])

    def _wait(self) -> None:
        """Until the batch in flight is written; raises its error (a full disk ...)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> tuple[str, int]:
        """Ends the archive; returns (sha256 hex digest, bytes) of the whole file."""
        try:
            self._wait()
            end = 2 * BLOCK
            end += -(self._sink.num_bytes + end) % RECORD
            self._sink.write(bytes(end))
        finally:
            self._pool.shutdown()
            self._sink.close()
        return self._sink.digest()


def _same_width_runs(first: int, n: int) -> list[tuple[int, int]]:
    """[lo, hi) runs of records ``first + i`` whose keys have the same number of digits."""
    runs, lo = [], 0
    while lo < n:
        width = len(key(first + lo))
        hi = min(n, 10 ** width - first)
        runs.append((lo, hi))
        lo = hi
    return runs


def _headers(first: int, n: int, exts: list[bytes], sizes: np.ndarray) -> np.ndarray:
    """The (n * kinds, 512) ustar headers of members ``KEY.EXT`` (key ``first + i``, record
    major), each byte as :func:`header` writes it: name, size and checksum vary, the rest is fixed."""
    kinds = len(exts)
    width = len(key(first + n - 1))
    out = np.empty((n, kinds, BLOCK), np.uint8)
    out[:] = _FIXED_ARRAY
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (np.arange(first, first + n, dtype=np.int64)[:, None] // powers % 10 + 48).astype(np.uint8)
    out[:, :, :width] = digits[:, None, :]
    name_sum = digits.sum(1, dtype=np.int64)[:, None] + np.array([sum(b"." + e) for e in exts])
    for k, ext in enumerate(exts):
        suffix = np.frombuffer(b"." + ext, np.uint8)
        out[:, k, width: width + len(suffix)] = suffix
    octal = (sizes[:, :, None] >> (3 * np.arange(10, -1, -1)) & 7) + 48  # 11 digits, then NUL
    out[:, :, 124:135] = octal
    checksum = _FIXED_SUM + name_sum + octal.sum(2)
    out[:, :, 148:154] = (checksum[:, :, None] >> (3 * np.arange(5, -1, -1)) & 7) + 48
    out[:, :, 154] = 0
    out[:, :, 155] = 32  # "%06o\0 ", as tarfile writes it
    return out.reshape(-1, BLOCK)


def _scatter(out: np.ndarray, at: np.ndarray, data: np.ndarray, offsets: np.ndarray) -> None:
    """Copy piece i (``data[offsets[i]:offsets[i+1]]``) to ``out[at[i]:]``.

    Short pieces (labels, most sentences) go by one fancy-index assignment over all
    their bytes; long ones by a slice copy each, cheaper than an 8-byte index per byte.
    """
    n = len(at)
    lo, hi = int(offsets[0]), int(offsets[-1])
    if hi == lo:
        return
    lengths = np.diff(offsets)
    if hi - lo < _SHORT_PIECE * n:
        out[np.repeat(at - offsets[:-1], lengths) + np.arange(lo, hi)] = data[lo:hi]
        return
    view, source = memoryview(out), memoryview(data)
    for a, start, end in zip(at.tolist(), offsets[:-1].tolist(), offsets[1:].tolist()):
        view[a: a + end - start] = source[start:end]


_SHORT_PIECE = 64  # mean bytes below which one vectorised copy beats a slice copy per piece


def _text_pieces(texts, lo: int, hi: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """UTF-8 bytes of texts [lo, hi) as one (data, offsets) piece per record."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    part = texts.slice(lo, hi - lo) if isinstance(texts, pa.Array) else pa.array(texts[lo:hi], pa.string())
    if part.null_count:
        raise ValueError("text column has nulls; the reader must drop records without text")
    if not pa.types.is_string(part.type):
        raise ValueError(f"text column is {part.type}, expected an Arrow string array")
    offsets = np.frombuffer(part.buffers()[1], np.int32, len(part) + 1, part.offset * 4).astype(np.int64)
    data = part.buffers()[2]
    return [(np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8), offsets)]


def _table_pieces(keys: np.ndarray, render) -> list[tuple[np.ndarray, np.ndarray]]:
    """One piece per record, ``render(key)``, rendered once per distinct key."""
    distinct, which = np.unique(keys, return_inverse=True)
    rendered = [render(k) for k in distinct.tolist()]
    table_offsets = np.zeros(len(rendered) + 1, np.int64)
    np.cumsum([len(r) for r in rendered], out=table_offsets[1:])
    lengths = np.diff(table_offsets)[which]
    offsets = np.zeros(len(keys) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # gather: record i's bytes are the rendered bytes of its key, laid end to end
    table = np.frombuffer(b"".join(rendered), np.uint8)
    index = np.repeat(table_offsets[:-1][which] - offsets[:-1], lengths) + np.arange(offsets[-1])
    return [(table[index], offsets)]


def _label_pieces(labels) -> list[tuple[np.ndarray, np.ndarray]]:
    return _table_pieces(np.asarray(labels, np.int64).reshape(-1), lambda v: b"%d" % v)


def _npy_pieces(ids) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each record's ``.npy`` bytes as two pieces: the header for its length, then its values."""
    arrays = [np.ascontiguousarray(x, dtype="<i4") for x in ids]
    lengths = np.fromiter(map(len, arrays), np.int64, len(arrays))
    header_pieces = _table_pieces(lengths, npy_header)
    offsets = np.zeros(len(arrays) + 1, np.int64)
    np.cumsum(lengths * 4, out=offsets[1:])
    values = np.concatenate(arrays).view(np.uint8) if arrays else np.zeros(0, np.uint8)
    return header_pieces + [(values, offsets)]
