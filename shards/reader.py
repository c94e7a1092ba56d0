"""Read shards: fetch a shard's bytes, verify size and sha256 while reading, stream its batches.

This is the public read API that ``pipeline`` uses; it never unpickles.  A shard is checked
against its manifest entry before any of its records is used: bytes (size, sha256), then
contents (record count, label ids within ``label_names``, token ids), so a manifest that
does not describe its shards is a corrupt shard, never a short or long stream.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import zlib
from typing import Iterator

import numpy as np

from shards import formats, storage
from shards.formats import Batch, CorruptShardError, Memo
from shards.manifest import Manifest, ShardInfo, shard_url

log = logging.getLogger(__name__)
VERIFY_MODES = ("sha256", "size", "none")
_CHECKED = Memo(256)  # shard contents already checked against their entry (see _content_key)
_ENTRIES = Memo(8)  # id(manifest) -> (manifest, {path: ShardInfo})
READ_CHUNK = 2 << 20  # bytes of a local shard read at a time, then hashed and scanned while in the CPU cache


def fetch_shard(url: str, info: ShardInfo, storage_options: dict | None = None,
                verify: str = "sha256", cache=None, manifest: Manifest | None = None) -> bytes | memoryview:
    """The verified bytes of one shard (a read-only memoryview for a local shard under sha256,
    else bytes); a failed check raises CorruptShardError naming it.

    Unless ``verify='none'`` the contents are checked too (record count; with ``manifest``
    also label ids against its label_names), so a caller's skip policy covers them."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify={verify!r}; valid: {', '.join(VERIFY_MODES)}")
    try:
        if cache is None and verify == "sha256" and not storage.is_remote(url):
            return _fetch_local(url, info, storage_options, manifest)
        data = _fetch_cached(url, info, storage_options, verify, cache) if cache is not None else \
            _fetch_plain(url, info, storage_options, verify)
    except FileNotFoundError as exc:
        raise CorruptShardError(f"shard {url}: missing ({exc}); rebuild the shard set or pass "
                                f"on_corrupt='skip'") from exc
    if verify != "none":
        check_contents(url, info, data, manifest)
    return data


class _Digest(threading.Thread):
    """sha256 of bytes in a thread: hashlib releases the GIL, so it runs beside the content check."""

    def __init__(self, data: bytes):
        super().__init__(name="shard-sha256", daemon=True)
        self.data, self.hexdigest = data, None

    def run(self) -> None:
        self.hexdigest = hashlib.sha256(self.data).hexdigest()


class _ChunkDigest(threading.Thread):
    """sha256 of a buffer being filled, in a thread: each chunk is hashed as soon as it is read
    (``add``), so the hash ends soon after the read instead of starting there."""

    def __init__(self, buf: np.ndarray):
        super().__init__(name="shard-sha256", daemon=True)
        self.view, self.hexdigest = memoryview(buf), None
        self.ready: queue.SimpleQueue = queue.SimpleQueue()

    def add(self, start: int, stop: int) -> None:
        self.ready.put((start, stop))

    def close(self) -> None:
        self.ready.put(None)

    def run(self) -> None:
        hasher = hashlib.sha256()
        while (span := self.ready.get()) is not None:
            hasher.update(self.view[span[0]: span[1]])
        self.view = None  # the buffer is the caller's again: nothing here still exports it
        self.hexdigest = hasher.hexdigest()


def _fetch_local(url: str, info: ShardInfo, storage_options, manifest: Manifest | None):
    """A local shard read a chunk at a time, each chunk hashed on a thread as soon as it is read and
    (tar) its headers scanned while it is in the CPU cache; then its contents are checked beside the
    end of the hash.  Nothing is used or remembered before both pass; a sha256 mismatch is reported
    before a content problem, as when they ran one after the other.  The bytes come back as a
    read-only memoryview.  A file of another size than the entry's (or one that changes size while
    read) is read whole as before, which names the mismatch."""
    module = formats.get(manifest.format) if manifest is not None else None
    scan = module.scanner() if hasattr(module, "scanner") else None
    read = _read_hashing(url, info, storage_options, scan)
    if read is None:
        return _fetch_whole(url, info, storage_options, manifest)
    data, digest = read
    return _verified(url, info, data, manifest, digest, scan)


def _read_hashing(url: str, info: ShardInfo, storage_options, scan) -> tuple[memoryview, _ChunkDigest] | None:
    """(the file's bytes, their digest thread, still hashing the last chunk), or None when the file
    is not ``info.num_bytes`` long."""
    with open(storage.filesystem(url, storage_options)[1], "rb", buffering=0) as f:
        if not info.num_bytes or os.fstat(f.fileno()).st_size != info.num_bytes:
            return None
        buf = np.empty(info.num_bytes, np.uint8)  # numpy maps it in huge pages: ~40 % less CPU than read()'s bytes
        digest = _ChunkDigest(buf)
        digest.start()
        try:
            whole = _fill(f, buf, digest, scan) and not f.read(1)
        finally:
            digest.close()
    if not whole:
        digest.join()
        return None
    buf.flags.writeable = False  # the bytes that are hashed are the bytes that are used
    return memoryview(buf), digest


def _fill(f, buf: np.ndarray, digest: _ChunkDigest, scan) -> bool:
    """Read the file into ``buf``, handing each chunk to the digest and the scan; False if it ends short."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = f.readinto(view[got: got + READ_CHUNK])
        if not n:
            return False
        digest.add(got, got + n)
        got += n
        if scan is not None:
            scan.feed(buf, got)
    return True


def _fetch_whole(url: str, info: ShardInfo, storage_options, manifest: Manifest | None) -> bytes:
    """A local shard read in one call, hashed while its contents are checked."""
    data = storage.read_object(url, storage_options)
    _raise_mismatch(url, info, data, "size", None)
    digest = _Digest(data)
    digest.start()
    return _verified(url, info, data, manifest, digest)


def _verified(url: str, info: ShardInfo, data, manifest: Manifest | None, digest: threading.Thread, scan=None):
    """``data`` once its contents are checked (here) and its sha256 (``digest``, a running thread) is
    the entry's: nothing is remembered before both pass, and a mismatch is named before a content problem."""
    try:
        remember = check_contents(url, info, data, manifest, defer=True, scan=scan)
    except CorruptShardError as exc:
        problem, remember = exc, None
    else:
        problem = None
    digest.join()
    _raise_mismatch(url, info, data, "sha256", digest.hexdigest)
    if problem is not None:
        raise problem
    if remember is not None:
        remember()
    return data


def _fetch_plain(url: str, info: ShardInfo, storage_options, verify: str) -> bytes:
    hasher = hashlib.sha256() if verify == "sha256" else None
    data = storage.read_object(url, storage_options, expected_size=None, hasher=hasher)
    _raise_mismatch(url, info, data, verify, hasher.hexdigest() if hasher else None)
    return data


def _fetch_cached(url: str, info: ShardInfo, storage_options, verify: str, cache) -> bytes:
    """From the cache; a cached copy failing its check is dropped and fetched again, once,
    so a damaged local file never stands for a shard whose source is fine."""
    data = cache.lookup(info)
    if data is not None:
        problem = _mismatch(url, info, data, verify, _digest(data, verify))
        if problem is None:
            return data
        cache.drop(info, problem)
    data = cache.fetch(url, info, storage_options)
    _raise_mismatch(url, info, data, verify, _digest(data, verify))
    return data


def _digest(data: bytes, verify: str) -> str | None:
    return hashlib.sha256(data).hexdigest() if verify == "sha256" else None


def _mismatch(url: str, info: ShardInfo, data: bytes, verify: str, digest: str | None) -> str | None:
    if verify != "none" and len(data) != info.num_bytes:
        return (f"shard {url}: size mismatch (expected {info.num_bytes} bytes, got {len(data)}); "
                f"rebuild it or pass on_corrupt='skip'")
    if verify == "sha256" and digest != info.sha256:
        return (f"shard {url}: sha256 mismatch (expected {info.sha256}, got {digest}); "
                f"rebuild it or pass on_corrupt='skip'")
    return None


def _raise_mismatch(url: str, info: ShardInfo, data: bytes, verify: str, digest: str | None) -> None:
    problem = _mismatch(url, info, data, verify, digest)
    if problem is not None:
        raise CorruptShardError(problem)


def _content_key(info: ShardInfo, data) -> tuple:
    """Which bytes were checked: the entry plus a cheap fingerprint of the bytes in hand
    (under verify='none' they may not be the entry's)."""
    view = memoryview(data)
    return (info, len(data), zlib.crc32(view[:4096]), zlib.crc32(view[-4096:]))


def check_contents(url: str, info: ShardInfo, data, manifest: Manifest | None = None, defer: bool = False,
                   scan=None):
    """The shard holds ``info.num_records`` records, label ids index the manifest's
    label_names and token ids are in range; else CorruptShardError naming the shard.

    ``defer``: the bytes are not verified yet, so nothing is remembered under the entry's
    sha256; returns a function that remembers the results, to call once they are (or None).
    ``scan``: the format's scan of ``data``, fed as it was read (``_fetch_local``)."""
    key = _content_key(info, data) + ((manifest.format, _label_count(manifest)) if manifest else (None,))
    if _CHECKED.get(key):
        return None
    fmt = manifest.format if manifest is not None else formats.sniff(data)
    if fmt is None:
        raise CorruptShardError(f"shard {url}: neither an Arrow IPC file nor a tar (bad magic); "
                                f"rebuild it or pass on_corrupt='skip'")
    module = formats.get(fmt)
    extra = {"scan": scan} if scan is not None else {}
    built = module.check(data, url, info.num_records, _label_count(manifest), None if defer else info.sha256, **extra)

    def remember() -> None:
        if defer and hasattr(module, "remember"):
            module.remember(data, info.sha256, built)
        _CHECKED.put(key, True)

    if not defer:
        remember()
        return None
    return remember


def _label_count(manifest: Manifest | None) -> int | None:
    return None if manifest is None or manifest.label_names is None else len(manifest.label_names)


def entry_for(manifest: Manifest, url: str) -> ShardInfo | None:
    """The manifest entry whose path ``url`` ends with (the longest such path)."""
    held = _ENTRIES.get(id(manifest))
    if held is None or held[0] is not manifest:
        held = (manifest, {s.path: s for s in manifest.shards})
        _ENTRIES.put(id(manifest), held)
    paths = held[1]
    if url in paths:
        return paths[url]
    pos = url.find("/")
    while pos >= 0:
        if url[pos + 1:] in paths:
            return paths[url[pos + 1:]]
        pos = url.find("/", pos + 1)
    return None


def read_batches(manifest: Manifest, url: str, data: bytes, start: int = 0, stop: int | None = None,
                 columns: tuple[str, ...] = ("text", "label", "input_ids")) -> Iterator[Batch]:
    """Batches of records [start, stop) of a fetched shard, in manifest format.  The shard's
    contents are checked against its entry when called, before any batch is made."""
    info = entry_for(manifest, str(url))
    if info is not None:
        check_contents(url, info, data, manifest)
    key = info.sha256 if info is not None else None
    return formats.get(manifest.format).read_batches(data, url, start, stop, columns, key=key)


def iter_shard(manifest: Manifest, base: str, index: int, storage_options: dict | None = None,
               verify: str = "sha256", columns=("text", "label", "input_ids")) -> Iterator[Batch]:
    """Fetch, verify and stream one shard of a shard set (convenience for tools and tests)."""
    info = manifest.shards[index]
    url = shard_url(base, info)
    data = fetch_shard(url, info, storage_options, verify, manifest=manifest)
    yield from read_batches(manifest, url, data, 0, None, columns)


def verify_shard(manifest: Manifest, base: str, index: int, storage_options: dict | None = None) -> int:
    """Hash and fully parse one shard; returns its record count or raises CorruptShardError."""
    info = manifest.shards[index]
    n = sum(len(b) for b in iter_shard(manifest, base, index, storage_options, "sha256"))
    if n != info.num_records:
        raise CorruptShardError(f"shard {shard_url(base, info)}: {n} records, manifest says "
                                f"{info.num_records}; rebuild it")
    return n
