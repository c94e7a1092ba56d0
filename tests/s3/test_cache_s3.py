"""ShardCache: a bounded LRU of remote shards on local disk, alone and under ShardStream."""
from __future__ import annotations

import os

import pytest

import shards
from pipeline import ShardStream, StreamConfig
from shards.cache import ShardCache

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]


def shard_gets(proxy) -> int:
    return sum(1 for method, path, _, _ in proxy.log if method == "GET" and "/shard-" in path)


def ids(url, so, config):
    ds = ShardStream(url, storage_options=so, config=config, shuffle=True, seed=2)
    out = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        out.append([it["sample_id"] for it in ds])
    return out


def test_second_epoch_reads_from_the_cache(s3_build_set, fault_proxy, tmp_path):
    url = s3_build_set(n=60, max_records=6)
    proxy, so = fault_proxy(0.0)
    plain = ids(url, so, StreamConfig())
    assert shard_gets(proxy) == 20  # 10 shards, read in each of 2 epochs
    proxy, so = fault_proxy(0.0)
    cached = ids(url, so, StreamConfig(cache_dir=str(tmp_path / "cache")))
    assert cached == plain
    assert shard_gets(proxy) == 10  # the second epoch came from disk
    assert len(os.listdir(tmp_path / "cache")) == 10


def test_cache_stays_under_its_limit_and_evicts_least_recently_used(s3_build_set, s3_options, tmp_path):
    url = s3_build_set(n=60, max_records=6)
    manifest = shards.load_manifest(url, s3_options)
    infos = manifest.shards
    limit = sum(s.num_bytes for s in infos[:3])  # room for about three shards
    cache = ShardCache(tmp_path / "c", limit)
    for info in infos:
        data = cache.get(shards.shard_url(url, info), info, s3_options)
        assert len(data) == info.num_bytes
        assert cache.size() <= limit
    assert cache.stats["misses"] == 10 and cache.stats["evicted"] >= 6
    kept = {os.path.basename(p) for _, _, p in cache.entries()}
    assert os.path.basename(cache.entry_path(infos[-1])) in kept  # the newest stays
    assert os.path.basename(cache.entry_path(infos[0])) not in kept  # the oldest went first
    cache.get(shards.shard_url(url, infos[-1]), infos[-1], s3_options)
    assert cache.stats["hits"] == 1


def test_damaged_entry_is_refetched_and_bad_data_is_not_stored(s3_build_set, s3_options, tmp_path):
    url = s3_build_set(n=12, max_records=6)
    info = shards.load_manifest(url, s3_options).shards[0]
    shard = shards.shard_url(url, info)
    cache = ShardCache(tmp_path / "c", 1 << 20)
    good = cache.get(shard, info, s3_options)
    with open(cache.entry_path(info), "r+b") as f:
        f.truncate(info.num_bytes - 3)  # a torn or damaged file on the local disk
    assert cache.get(shard, info, s3_options) == good
    assert cache.stats["dropped_bad_size"] == 1 and cache.stats["misses"] == 2

    # A manifest whose hash does not match the object: the bytes are returned for the caller
    # to reject (CorruptShardError names the shard) but never cached.
    wrong = shards.ShardInfo(info.path, info.num_records, info.num_bytes, "0" * 64)
    with pytest.raises(shards.CorruptShardError, match="sha256 mismatch"):
        shards.fetch_shard(shard, wrong, s3_options, "sha256", cache)
    assert not os.path.exists(cache.entry_path(wrong)) and cache.stats["not_stored_bad"] == 1


def test_shard_larger_than_the_limit_is_served_uncached(s3_build_set, s3_options, tmp_path):
    url = s3_build_set(n=12, max_records=6)
    info = shards.load_manifest(url, s3_options).shards[0]
    cache = ShardCache(tmp_path / "c", info.num_bytes - 1)
    assert len(cache.get(shards.shard_url(url, info), info, s3_options)) == info.num_bytes
    assert cache.entries() == [] and cache.stats["too_large"] == 1
    with pytest.raises(ValueError, match="cache_limit"):
        ShardCache(tmp_path / "d", -1)


def test_poisoned_entry_is_dropped_and_refetched_from_s3(s3_build_set, fault_proxy, tmp_path):
    """A same-size cached copy that fails its sha256 is dropped and fetched from S3 again once:
    the epoch succeeds with the same samples; later epochs read the good copy from disk."""
    url = s3_build_set(n=60, max_records=6)
    proxy, so = fault_proxy(0.0)
    config = StreamConfig(cache_dir=str(tmp_path / "cache"))
    ds = ShardStream(url, storage_options=so, config=config, shuffle=True, seed=2)
    first = [it["sample_id"] for it in ds]
    assert shard_gets(proxy) == 10
    victim = ShardCache(str(tmp_path / "cache"), 1 << 30).entry_path(ds.manifest.shards[4])
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(victim, "wb").write(bytes(data))
    assert [it["sample_id"] for it in ds] == first
    assert shard_gets(proxy) == 11 and ds._cache.stats["dropped_bad"] == 1
    assert [it["sample_id"] for it in ds] == first
    assert shard_gets(proxy) == 11  # the refetched copy was stored again
