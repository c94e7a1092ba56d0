"""A bounded local-disk cache of remote shards, for the second and later epochs.

    cache = ShardCache("/tmp/shard-cache", cache_limit=8 << 30)
    data = cache.get("s3://bucket/shards/shard-00003.arrow", info, storage_options)

Entries are named by the shard's sha256 and size (content addressed), so two
shard sets, a rebuilt set or several ranks and DataLoader workers can share one
folder safely.  A new entry is checked against the manifest's sha256 before it
is stored, written to a temporary name and renamed (readers never see half a
file), and checked by size when read back; ``shards.fetch_shard`` also
hashes a cached copy and, when it fails, drops it and fetches the shard again once.  Least recently used entries (file
mtime, refreshed on each hit) are evicted to stay under ``cache_limit`` bytes;
a shard larger than the limit is returned without being stored.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections import Counter

from shards import storage
from shards.manifest import ShardInfo

log = logging.getLogger(__name__)
SUFFIX = ".shard"


class ShardCache:
    """See the module docstring; ``stats`` counts hits, misses, evictions and uncached shards."""

    def __init__(self, cache_dir: str, cache_limit: int):
        if int(cache_limit) < 0:
            raise ValueError(f"cache_limit={cache_limit}: expected a number of bytes >= 0 (0 disables it)")
        self.cache_dir = os.path.abspath(os.path.expanduser(str(cache_dir)))
        self.cache_limit = int(cache_limit)
        os.makedirs(self.cache_dir, exist_ok=True)
        self.stats: Counter = Counter()
        self._lock = threading.Lock()  # the prefetch thread and the consumer may both call get

    def entry_path(self, info: ShardInfo) -> str:
        return os.path.join(self.cache_dir, f"{info.sha256}-{info.num_bytes}{SUFFIX}")

    def get(self, url: str, info: ShardInfo, storage_options: dict | None = None) -> bytes:
        """The shard's bytes: from the cache when present and of the right size, else fetched."""
        data = self.lookup(info)
        return data if data is not None else self.fetch(url, info, storage_options)

    def lookup(self, info: ShardInfo) -> bytes | None:
        """The cached copy (checked by size only), or None."""
        data = self._read_entry(self.entry_path(info), info)
        if data is not None:
            self.stats["hits"] += 1
        return data

    def fetch(self, url: str, info: ShardInfo, storage_options: dict | None = None) -> bytes:
        """Read the shard from ``url`` and store it when it matches the manifest's size and sha256."""
        self.stats["misses"] += 1
        hasher = hashlib.sha256()
        data = storage.read_object(url, storage_options, hasher=hasher)
        if len(data) != info.num_bytes or hasher.hexdigest() != info.sha256:
            # Not stored: the caller's own check reports the mismatch with the shard's URL.
            self.stats["not_stored_bad"] += 1
            return data
        self._store(self.entry_path(info), data)
        return data

    def drop(self, info: ShardInfo, why: str) -> None:
        """Remove a cached copy that failed the caller's check, so the next read fetches again."""
        path = self.entry_path(info)
        log.warning("shard cache: dropped %s, it failed its check (%s); fetching the shard again", path, why)
        self.stats["dropped_bad"] += 1
        _unlink(path)

    def _read_entry(self, path: str, info: ShardInfo) -> bytes | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a folder or an unreadable file in the entry's place: fetch instead
            log.warning("shard cache: %s is unreadable (%s); dropping it and fetching the shard", path, exc)
            self.stats["dropped_unreadable"] += 1
            _unlink(path)
            return None
        if len(data) != info.num_bytes:  # a damaged entry: drop it, fetch again
            log.warning("shard cache: %s has %d bytes, expected %d; refetching", path, len(data), info.num_bytes)
            self.stats["dropped_bad_size"] += 1
            _unlink(path)
            return None
        try:
            os.utime(path)  # most recently used
        except FileNotFoundError:
            pass  # evicted by another process meanwhile; the bytes are already read
        return data

    def _store(self, path: str, data: bytes) -> None:
        if len(data) > self.cache_limit:
            self.stats["too_large"] += 1
            return
        with self._lock:
            self._evict(self.cache_limit - len(data))
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-", suffix=SUFFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except OSError as exc:
                _unlink(tmp)
                # A full or read-only disk must not stop training: the bytes are in hand.
                log.warning("shard cache: could not store %s (%s); continuing without it", path, exc)
                self.stats["store_failed"] += 1
                return
        self.stats["stored"] += 1

    def entries(self) -> list[tuple[float, int, str]]:
        """(mtime, size, path) of the cached shards, oldest first."""
        found = []
        with os.scandir(self.cache_dir) as it:
            for e in it:
                if e.name.endswith(SUFFIX) and not e.name.startswith(".tmp-"):
                    try:
                        st = e.stat()
                    except FileNotFoundError:
                        continue  # evicted by another process meanwhile
                    found.append((st.st_mtime, st.st_size, e.path))
        return sorted(found)

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def _evict(self, budget: int) -> None:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= budget:
                break
            _unlink(path)
            total -= size
            self.stats["evicted"] += 1


def _unlink(path: str) -> None:
    """Remove a cache entry, or whatever sits in its place; a failure only means it stays stale."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # the next store reports it too; reading goes on from the source
        log.warning("shard cache: could not remove %s (%s)", path, exc)
