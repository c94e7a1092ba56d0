"""Streaming 200 shards through a proxy that faults 10 % of GETs: same ids, nothing lost, retries counted."""
from __future__ import annotations

import time

import pytest

from pipeline import ShardStream, StreamConfig, loader_stats, make_loader
from shards import storage
from tests.helpers.data import build_set

pytestmark = [pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(300)]

RECORDS, PER_SHARD, WORLD, WORKERS = 1000, 5, 2, 2


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory, s3_bucket, s3_options):
    """1000 records in 200 shards, built locally and uploaded (building 200 shards via S3 is slow)."""
    local = build_set(tmp_path_factory.mktemp("many"), n=RECORDS, max_records=PER_SHARD)
    url = f"s3://{s3_bucket}/many-shards"
    fs, path = storage.filesystem(url, s3_options)
    fs.put(local + "/", path, recursive=True)
    return url


def run(url: str, so: dict, config: StreamConfig | None = None):
    """(per-rank id streams in order, summed loader stats, seconds) of one epoch, 2 ranks x 2 workers."""
    streams, stats = [], {}
    t0 = time.perf_counter()
    for rank in range(WORLD):
        ds = ShardStream(url, storage_options=so, rank=rank, world_size=WORLD, shuffle=True, seed=7,
                         config=config)
        loader = make_loader(ds, 16, num_workers=WORKERS, collate_fn=list)
        streams.append([(it["sample_id"], it["is_pad"]) for batch in loader for it in batch])
        for key, value in loader_stats(loader).items():
            stats[key] = stats.get(key, 0) + value
    return streams, stats, time.perf_counter() - t0


def test_ten_percent_faults_lose_and_duplicate_nothing(many_shards, fault_proxy):
    clean_proxy, clean_so = fault_proxy(0.0)
    clean, clean_stats, clean_s = run(many_shards, clean_so)
    real = [sid for stream in clean for sid, pad in stream if not pad]
    assert len(real) == RECORDS and len(set(real)) == RECORDS
    # No faults injected; a read timeout on a very busy machine is the only thing that may retry.
    assert clean_stats.get("retries", 0) <= 8

    proxy, so = fault_proxy(0.10, seed=1)
    faulted, stats, faulted_s = run(many_shards, so)
    assert faulted == clean, "the id stream changed under faults"
    assert proxy.faults > 0 and stats["retries"] > 0
    # Every fault costs exactly one counted retry, except a reset of a reused keep-alive
    # connection, which aiohttp itself retries once (uncounted) before we see an error; read
    # timeouts on a busy machine may add a few (as in the clean run).
    assert proxy.faults - proxy.counts["reset"] <= stats["retries"] <= proxy.faults + clean_stats.get("retries", 0) + 8
    gets = proxy.requests["GET"]
    print(f"\n200 shards, 2 ranks x 2 workers: clean {clean_s:.2f} s, 10% faulted {faulted_s:.2f} s "
          f"(x{faulted_s / clean_s:.2f}); faults {dict(proxy.counts)} of {gets} GETs; "
          f"retries counted {stats['retries']}")


def test_one_object_failing_for_good_names_it(many_shards, fault_proxy):
    proxy, so = fault_proxy(0.0, fail={"/shard-00123.arrow": "internal"})
    bad = f"{many_shards}/shard-00123.arrow"
    t0 = time.perf_counter()
    with pytest.raises(storage.StorageError) as info:
        run(many_shards, so)
    elapsed = time.perf_counter() - t0
    assert bad in str(info.value) and "InternalError" in str(info.value)
    assert proxy.counts["internal"] == storage.RetryPolicy().attempts
    print(f"\npermanently failing shard: error after {elapsed:.1f} s: {str(info.value).splitlines()[-1][:200]}")

    # With on_corrupt="skip" the epoch completes; the shard's samples become counted, flagged pads.
    streams, stats, _ = run(many_shards, so, StreamConfig(on_corrupt="skip"))
    real = [sid for stream in streams for sid, pad in stream if not pad]
    assert len(real) == len(set(real)) == RECORDS - PER_SHARD
    assert not any(sid.startswith("00123:") for sid in real)
    assert stats["skipped_shards"] == 1 and stats["skipped_samples"] == PER_SHARD
