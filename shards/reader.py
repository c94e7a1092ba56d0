"""Read shards: fetch a shard's bytes, verify size and sha256 while reading, stream its batches.

This is the public read API that ``pipeline`` uses; it never unpickles.
"""
from __future__ import annotations

import hashlib
from typing import Iterator

from . import formats, storage
from .formats import Batch, CorruptShardError
from .index import Manifest, ShardInfo, shard_url

VERIFY_MODES = ("sha256", "size", "none")


def fetch_shard(url: str, info: ShardInfo, storage_options: dict | None = None,
                verify: str = "sha256", cache=None) -> bytes:
    """The verified bytes of one shard; a failed check raises CorruptShardError naming it."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify={verify!r}; valid: {', '.join(VERIFY_MODES)}")
    hasher = hashlib.sha256() if verify == "sha256" else None
    try:
        if cache is not None:
            data = cache.get(url, info, storage_options)
            if hasher is not None:
                hasher.update(data)
        else:
            data = storage.read_object(url, storage_options, expected_size=None, hasher=hasher)
    except FileNotFoundError as exc:
        raise CorruptShardError(f"shard {url}: missing ({exc}); rebuild the shard set or pass "
                                f"on_corrupt='skip'") from exc
    if verify != "none" and len(data) != info.num_bytes:
        raise CorruptShardError(f"shard {url}: size mismatch (expected {info.num_bytes} bytes, got "
                                f"{len(data)}); rebuild it or pass on_corrupt='skip'")
    if hasher is not None and hasher.hexdigest() != info.sha256:
        raise CorruptShardError(f"shard {url}: sha256 mismatch (expected {info.sha256}, got "
                                f"{hasher.hexdigest()}); rebuild it or pass on_corrupt='skip'")
    return data


def read_batches(manifest: Manifest, url: str, data: bytes, start: int = 0, stop: int | None = None,
                 columns: tuple[str, ...] = ("text", "label", "input_ids")) -> Iterator[Batch]:
    """Batches of records [start, stop) of a fetched shard, in manifest format."""
    return formats.get(manifest.format).read_batches(data, url, start, stop, columns)


def iter_shard(manifest: Manifest, base: str, index: int, storage_options: dict | None = None,
               verify: str = "sha256", columns=("text", "label", "input_ids")) -> Iterator[Batch]:
    """Fetch, verify and stream one shard of a shard set (convenience for tools and tests)."""
    info = manifest.shards[index]
    url = shard_url(base, info)
    data = fetch_shard(url, info, storage_options, verify)
    yield from read_batches(manifest, url, data, 0, None, columns)


def verify_shard(manifest: Manifest, base: str, index: int, storage_options: dict | None = None) -> int:
    """Hash and fully parse one shard; returns its record count or raises CorruptShardError."""
    info = manifest.shards[index]
    n = sum(len(b) for b in iter_shard(manifest, base, index, storage_options, "sha256"))
    if n != info.num_records:
        raise CorruptShardError(f"shard {shard_url(base, info)}: {n} records, manifest says "
                                f"{info.num_records}; rebuild it")
    return n
