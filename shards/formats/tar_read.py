"""webdataset tar shards: per sample ``KEY.txt``, ``KEY.cls``, ``KEY.input_ids.npy``.

Readable by ``webdataset.WebDataset(urls)`` alone.  Both directions are hand-written over
512-byte ustar blocks because ``tarfile`` costs ~10x more per member than the rest of the
pipeline.  The writer is :mod:`shards.formats.tar_write` (fixed headers, so a build is
byte-for-byte reproducible).  Reading, over the in-memory shard:

- the member index (``shard_index``): every header's checksum is checked, and only regular
  files with relative names and no ``..`` are accepted (links, devices, directories and
  extension headers are refused), each at most ``MAX_MEMBER_BYTES``.  A shard laid out as
  writers lay it out is indexed with numpy over all headers at once (:mod:`.tar_index`), so
  the first record does not wait for a Python loop over 50k members; any other layout goes
  through the member-by-member walk (:mod:`.tar_walk`), which accepts it or names the problem.
  Indexes are kept per shard content.  ``shards.reader`` scans a local shard's headers as it
  reads it (``scanner``) and hands the scan to ``check``.
- ``check``: record count and label ids against the manifest, before any record is used.
- ``read_batches``: columnar batches; ``.npy`` members are parsed without pickle.
"""
from __future__ import annotations

import io
import re
import threading
import zlib
from typing import Iterator

import numpy as np

from shards.formats.base import Batch, CorruptShardError, Memo, check_labels
from shards.formats.ragged import Ragged
from shards.formats.tar_index import HeaderScan, Index, plain_index
from shards.formats.tar_walk import walk_index
from shards.formats.tar_write import BLOCK, RECORD, Writer, header, npy_bytes, npy_header  # noqa: F401 (the format's API)

EXT = ".tar"
ACCEPTS_ARROW = True  # Writer.write takes an Arrow string array and a numpy label array as they are
MAX_MEMBER_BYTES = 256 << 20
BATCH_ROWS = 1024
INT32_MAX = (1 << 31) - 1
_DECIMAL = re.compile(rb"-?[0-9]{1,20}")


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


# Member indexes by shard content (sha256, size, head/tail checksum): a reader asks for several
# record ranges of a shard in turn, and a mixed stream interleaves shards of several sets; a
# tar (unlike Arrow) has no random access.  Bounded, and it holds no shard bytes.
_INDEXES = Memo(16)


def _key(data, key) -> tuple | None:
    if key is None:
        return None  # unknown shard: no caching, an id() could be reused by other bytes
    view = memoryview(data)
    return (key, len(data), zlib.crc32(view[:4096]), zlib.crc32(view[-4096:]))


def shard_index(data, url: str, key: str | None = None, scan: HeaderScan | None = None) -> Index:
    """The shard's member index, built once per shard content (``key``: its sha256; ``scan``: the
    header scan fed with ``data`` as it was read, see ``scanner``)."""
    k = _key(data, key)
    index = _INDEXES.get(k) if k is not None else None
    if index is None:
        _SCANNED.scan = scan
        try:
            index = _build_index(data, url)
        finally:
            _SCANNED.scan = None
        if k is not None:
            _INDEXES.put(k, index)
    return index


# The scan of the bytes this thread indexes, from shard_index to _fast_index (_build_index keeps its
# (data, url) signature: tests wrap it to count the indexes built).
_SCANNED = threading.local()


def scanner() -> HeaderScan:
    """A header scan for ``shards.reader`` to feed with a shard's bytes as it reads them, then hand to
    ``check``: the vectorised index then reads each header while its chunk is in the CPU cache."""
    return HeaderScan()


def _fast_index(data) -> Index | None:
    """The vectorised index of a plainly laid out shard, or None (the walk then decides)."""
    scan = getattr(_SCANNED, "scan", None)
    if scan is not None:
        return scan.index(data, MAX_MEMBER_BYTES)
    return plain_index(data, MAX_MEMBER_BYTES)  # read at call time: tests lower the cap


def _general_index(data, url: str) -> Index:
    """The member-by-member walk: accepts any safe layout, or names the problem."""
    return walk_index(data, url, MAX_MEMBER_BYTES)


def _build_index(data, url: str) -> Index:
    """The member index: vectorised for a plain shard, else member by member (which names any problem)."""
    return _fast_index(data) or _general_index(data, url)


def check(data, url: str, num_records: int, label_count: int | None = None, key: str | None = None,
          scan: HeaderScan | None = None) -> Index:
    """Refuse the shard before any record is read: its member index must hold ``num_records``
    samples and every label must be an id in [0, label_count).  Returns the index (kept
    under ``key``; with key None, for ``remember`` once the bytes are verified).  ``scan``:
    the header scan fed with ``data`` as it was read (``scanner``)."""
    index = shard_index(data, url, key, scan)
    if index.n != num_records:
        raise CorruptShardError(f"shard {url}: holds {index.n} records, the manifest says {num_records}; "
                                f"the manifest or the shard was changed, rebuild the set")
    if "cls" in index.spans:
        check_labels(_labels(data, index, url), url, label_count)
    return index


def remember(data, key: str, index: Index) -> None:
    """Keep an index built by ``check(..., key=None)`` for these bytes, now known to be ``key``'s."""
    _INDEXES.put(_key(data, key), index)


def _labels(data, index: Index, url: str) -> np.ndarray:
    """Every sample's label id, parsed once per index (decimal ASCII in ``KEY.cls``)."""
    if index.labels is None:
        index.labels = _fast_labels(data, index.spans["cls"])
    if index.labels is None:
        view = memoryview(data)
        labels = np.empty(index.n, np.int64)
        for i, (a, b) in enumerate(index.spans["cls"].tolist()):
            text = bytes(view[a:b]).strip()
            value = int(text) if _DECIMAL.fullmatch(text) else None
            if value is None or not -(1 << 63) <= value < (1 << 63):
                raise CorruptShardError(f"shard {url}: record {i}: label {text[:24]!r} is not a decimal "
                                        f"int64 id; rebuild the shard")
            labels[i] = value
        index.labels = labels
    return index.labels


def _fast_labels(data, spans: np.ndarray) -> np.ndarray | None:
    """Every ``.cls`` payload as an id when each is 1-18 decimal digits then only whitespace
    (what writers produce); None for any other form, which the per-record parse then judges."""
    lengths = spans[:, 1] - spans[:, 0]
    if not len(spans) or lengths.min() < 1 or lengths.max() > 32:
        return None
    width = int(lengths.max())
    flat = np.frombuffer(data, np.uint8)
    at = np.minimum(spans[:, :1] + np.arange(width), len(flat) - 1)
    inside = np.arange(width) < lengths[:, None]
    text = np.where(inside, flat[at], 32).astype(np.int64)  # beyond the payload: as if a space
    digit = (text >= 48) & (text <= 57)
    lead = np.where(digit.all(1), width, np.argmin(digit, 1))
    space = (text == 32) | ((text >= 9) & (text <= 13))
    if lead.min() < 1 or lead.max() > 18 or not (digit | space).all() or (digit.sum(1) != lead).any():
        return None
    value = np.zeros(len(spans), np.int64)
    for c in range(int(lead.max())):
        value = np.where(c < lead, value * 10 + text[:, c] - 48, value)
    return value


def read_batches(data, url: str, start: int = 0, stop: int | None = None,
                 columns: tuple[str, ...] = ("text", "label", "input_ids"), key: str | None = None) -> Iterator[Batch]:
    index = shard_index(data, url, key)
    stop = index.n if stop is None else min(stop, index.n)
    labels = _labels(data, index, url) if "cls" in index.spans and "label" in columns else None
    for lo in range(start, stop, BATCH_ROWS):
        yield _to_batch(data, index, labels, lo, min(lo + BATCH_ROWS, stop), columns, url)


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
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > INT32_MAX):
        raise ValueError(f"input_ids of record {record} hold {int(arr.min())}..{int(arr.max())}, "
                         f"outside token ids 0..{INT32_MAX}")
    return arr.astype(np.int32, copy=False)


def _texts(data, spans: list) -> list[str]:
    if isinstance(data, bytes):  # a bytes slice decodes in ~0.65x the time of str() over a memoryview slice
        return [data[a:b].decode("utf-8") for a, b in spans]
    view = memoryview(data)
    return [str(view[a:b], "utf-8") for a, b in spans]


def _to_batch(data, index: Index, labels, lo: int, hi: int, columns, url: str) -> Batch:
    def spans(ext: str, column: str):
        return index.spans[ext][lo:hi].tolist() if ext in index.spans and column in columns else None

    txt, npy = spans("txt", "text"), spans("input_ids.npy", "input_ids")
    view = memoryview(data)
    try:
        text = _texts(data, txt) if txt is not None else None
        ids = [_load_npy(view[a:b], url, lo + i) for i, (a, b) in enumerate(npy)] if npy is not None else None
        ids = Ragged.from_lists(ids) if ids is not None else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptShardError(f"shard {url}: malformed sample in records {lo}..{hi - 1} ({exc}); "
                                f"rebuild it") from exc
    if ids is not None and len(ids.values) and int(ids.values.min()) < 0:
        r = lo + int(np.searchsorted(ids.offsets, int(np.argmax(ids.values < 0)), side="right")) - 1
        raise CorruptShardError(f"shard {url}: record {r} has a negative token id; rebuild it")
    return Batch(lo, text, labels[lo:hi].copy() if labels is not None else None, ids)
