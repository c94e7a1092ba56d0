"""Cache poisoning (issue 14, item 5): a cached shard that fails its check is dropped and
fetched again once; only when the source fails too is the shard corrupt.

The remote set lives in fsspec's in-process ``memory://`` filesystem (a remote protocol,
so ``ShardStream`` uses its cache); the S3 variant is in tests/s3/test_cache_s3.py.
"""
from __future__ import annotations

import hashlib
import logging
import os
import uuid

import fsspec
import pytest

import shards
from pipeline import ShardStream, StreamConfig
from shards.cache import ShardCache
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(120)


def flip(path: str, at: int = 100) -> None:
    """One bit of the file changed in place: same size, so only the sha256 can tell."""
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
def remote_set(tmp_path):
    """A built shard set copied to memory://; yields its URL and removes it after."""
    local = build_set(tmp_path, n=30, max_records=6, fmt="arrow")
    fs = fsspec.filesystem("memory")
    root = f"/poison-{uuid.uuid4().hex}"
    for name in os.listdir(local):
        with open(os.path.join(local, name), "rb") as f:
            fs.pipe(f"{root}/{name}", f.read())
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


def epoch_ids(ds, epoch: int) -> list[str]:
    ds.set_epoch(epoch)
    return [item["sample_id"] for item in ds]


def test_poisoned_cache_entry_is_dropped_refetched_and_the_epoch_succeeds(remote_set, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    ds = ShardStream(remote_set, config=StreamConfig(cache_dir=str(cache_dir)))
    first = epoch_ids(ds, 0)
    entries = sorted(os.listdir(cache_dir))
    assert len(first) == 30 and len(entries) == 5
    for name in entries[:2]:
        flip(str(cache_dir / name))
    with caplog.at_level(logging.WARNING, logger="shards.cache"):
        second = epoch_ids(ds, 0)
    assert second == first
    dropped = [r for r in caplog.records if "failed its check" in r.getMessage()]
    assert len(dropped) == 2 and all("sha256 mismatch" in r.getMessage() for r in dropped)
    assert ds._cache.stats["dropped_bad"] == 2
    m = shards.load_manifest(remote_set)
    for info in m.shards:  # the refetched copies were stored again, and are good
        data = open(ShardCache(str(cache_dir), 1 << 30).entry_path(info), "rb").read()
        assert hashlib.sha256(data).hexdigest() == info.sha256
    assert epoch_ids(ds, 0) == first and ds._cache.stats["dropped_bad"] == 2  # no more drops


def test_poisoned_cache_and_corrupt_source_is_a_corrupt_shard(remote_set, tmp_path):
    cache_dir = tmp_path / "cache"
    ds = ShardStream(remote_set, config=StreamConfig(cache_dir=str(cache_dir)))
    epoch_ids(ds, 0)
    m = shards.load_manifest(remote_set)
    victim = m.shards[1]
    flip(ShardCache(str(cache_dir), 1 << 30).entry_path(victim))
    fs = fsspec.filesystem("memory")
    src = shards.shard_url(remote_set, victim).removeprefix("memory://")
    data = bytearray(fs.cat(src))
    data[200] ^= 0x01
    fs.pipe(src, bytes(data))
    with pytest.raises(shards.CorruptShardError, match=r"shard-00001\.arrow: sha256 mismatch"):
        epoch_ids(ds, 0)
    assert ds._cache.stats["dropped_bad"] == 1  # dropped once, fetched once, then corrupt


def test_local_disk_cache_drop_and_refetch_through_fetch_shard(tmp_path, caplog):
    """The same through the public read API, with a local-disk source."""
    url = build_set(tmp_path, n=12, max_records=6)
    m = shards.load_manifest(url)
    info = m.shards[0]
    shard = shards.shard_url(url, info)
    cache = ShardCache(str(tmp_path / "c"), 1 << 30)
    good = shards.fetch_shard(shard, info, cache=cache, manifest=m)
    flip(cache.entry_path(info))
    with caplog.at_level(logging.WARNING, logger="shards.cache"):
        again = shards.fetch_shard(shard, info, cache=cache, manifest=m)
    assert again == good and cache.stats["dropped_bad"] == 1 and cache.stats["misses"] == 2
    assert sum("fetching the shard again" in r.getMessage() for r in caplog.records) == 1
    assert open(cache.entry_path(info), "rb").read() == good  # stored again
    flip(cache.entry_path(info))
    flip(shard)
    with pytest.raises(shards.CorruptShardError, match="sha256 mismatch"):
        shards.fetch_shard(shard, info, cache=cache, manifest=m)
    assert not os.path.exists(cache.entry_path(info))  # the bad copy is gone, not kept for next time


def test_truncated_cache_entry_is_refetched(tmp_path):
    url = build_set(tmp_path, n=12, max_records=6)
    m = shards.load_manifest(url)
    info = m.shards[1]
    cache = ShardCache(str(tmp_path / "c"), 1 << 30)
    good = shards.fetch_shard(shards.shard_url(url, info), info, cache=cache)
    with open(cache.entry_path(info), "r+b") as f:
        f.truncate(info.num_bytes // 2)
    assert shards.fetch_shard(shards.shard_url(url, info), info, cache=cache) == good
    assert cache.stats["dropped_bad_size"] == 1
