"""A mixture of two tar shard sets builds each shard's member index at most once per shard read.

The index (shards/formats/tar_read.py) is cached per shard content; the stream reads a
shard's planned slices in one pass.  A shuffled plan cuts every shard into many slices,
so a reader call per slice, or a cache miss per call, would show as more builds than reads.
"""
from unittest import mock

import pytest

import shards
from pipeline import ShardStream, StreamConfig, make_loader
from pipeline.mix import MixedStream
from shards.formats import tar_read
from shards.formats.base import Memo
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(120)


def count_calls(target, name):
    return mock.patch.object(target, name, side_effect=getattr(target, name), autospec=False)


@pytest.mark.parametrize("stop", ["first_exhausted", "cycle"])
def test_mixed_tar_sets_build_no_more_indexes_than_shards_read(tmp_path, stop):
    urls = [build_set(tmp_path, n=n, max_records=20, fmt="tar", name=f"tar{n}") for n in (60, 100)]
    cfg = StreamConfig(block_size=3, shuffle_buffer=16, prefetch=False)
    mixed = MixedStream([(ShardStream(u, shuffle=True, seed=s, config=cfg), 1.0) for s, u in enumerate(urls)],
                        seed=5, stop=stop)
    cold = mock.patch.object(tar_read, "_INDEXES", Memo(16))  # every shard's first read builds its index
    with cold, count_calls(tar_read, "_build_index") as builds, count_calls(shards, "fetch_shard") as reads:
        ids = [sid for b in make_loader(mixed, 4) for sid in b["sample_id"]]
    assert len(ids) >= 40
    assert reads.call_count >= 3  # several shards of both sets were read
    assert 0 < builds.call_count <= reads.call_count, (builds.call_count, reads.call_count)
    distinct = {c.args[0] for c in reads.call_args_list}  # shard URLs
    assert builds.call_count <= len(distinct)  # cached per shard: a repeated read builds nothing
