"""A PackedStream over a MixedStream takes the mixture's counters after an item only when its ``counts_mark()``
moved (pack/read.py InnerCounts, mix.py), not after every item: the stats and positions after every block are
those of the per-item snapshots (skips of a corrupt shard, retries, empty sources under every stopping rule),
and the counters are built a few times per read, not once per item (~40% of packing a mixture's CPU)."""
from __future__ import annotations

import json

import pytest

import shards.storage
from pipeline import MixedStream, PackedStream, ShardStream, StreamConfig, world
from pipeline.mix_draws import STOP_RULES
from pipeline.pack import read
from tests.helpers import elastickit
from tests.helpers.data import build_set
from tests.reliability.test_hostile_loader import corrupt_shard

pytestmark = pytest.mark.timeout(300)
SEQ = 16


@pytest.fixture(scope="module")
def urls(tmp_path_factory, minilm):
    """Two pre-tokenized sets of short, long and empty documents; the second has a corrupt shard."""
    first = elastickit.build_docs(tmp_path_factory.mktemp("counts-a"), minilm)
    second = elastickit.build_docs(tmp_path_factory.mktemp("counts-b"), minilm)
    corrupt_shard(second, 1)
    return first, second


def with_retries(stream: ShardStream, every: int) -> ShardStream:
    """``stream`` whose reads count a retry (shards.storage) before every ``every``-th chunk."""
    chunks = stream.chunks

    def retrying(*args, **kwargs):
        for k, chunk in enumerate(chunks(*args, **kwargs)):
            if k % every == every - 1:
                shards.storage._count_retry()
            yield chunk
    stream.chunks = retrying
    return stream


def mixture(urls, stop: str, minilm) -> PackedStream:
    config = StreamConfig(shuffle_buffer=4, block_size=3, tokenize_batch=4, on_corrupt="skip")
    sources = [(with_retries(ShardStream(u, shuffle=True, seed=s, config=config), every), w)
               for u, s, every, w in zip(urls, (2, 5), (3, 4), (0.6, 0.4))]
    return PackedStream(MixedStream(sources, seed=2, stop=stop), SEQ, chunk_tokens=40, tokenizer=minilm)


def after_each_block(ds: PackedStream) -> list[str]:
    """The stats and the position after every block, and the final stats."""
    got = [json.dumps([dict(ds.stats), position], sort_keys=True) for _, position in ds.batches(1)]
    return got + [json.dumps(dict(ds.stats), sort_keys=True)]


def per_item(monkeypatch) -> None:
    """Counters after every item, as before counts_mark: a mixture whose counts cannot be watched."""
    monkeypatch.setattr(MixedStream, "counts_mark", lambda self: None)


@pytest.mark.parametrize("stop", STOP_RULES)
def test_the_counts_after_every_block_are_the_per_item_ones(urls, stop, minilm, monkeypatch):
    watched = after_each_block(mixture(urls, stop, minilm))
    final = json.loads(watched[-1])
    assert final["skipped_samples"] > 0 and final["skipped_shards"] > 0 and final["retries"] > 0
    assert final["documents"] > 0 and final["empty_documents"] > 0
    per_item(monkeypatch)
    assert watched == after_each_block(mixture(urls, stop, minilm))


def test_an_empty_source_counted_under_cycle_is_the_per_item_count(tmp_path, minilm, monkeypatch):
    """A source with no items in this worker (one record, worker 0 of 2) is counted in the mixture's own stats."""
    many, one = (build_set(tmp_path, n=n, labels=False, tokenizer=minilm, name=f"set{n}") for n in (30, 1))
    monkeypatch.setattr(world, "worker", lambda: (0, 2))  # one's record goes to worker 1

    def make():
        sources = [(ShardStream(many, shuffle=True, seed=2), 0.5), (ShardStream(one), 0.5)]
        return PackedStream(MixedStream(sources, seed=2, stop="cycle"), SEQ, chunk_tokens=40, tokenizer=minilm)
    watched = after_each_block(make())
    assert json.loads(watched[-1])["empty_sources"] == 1
    per_item(monkeypatch)
    assert watched == after_each_block(make())


def test_the_mixture_counters_are_built_per_read_not_per_item(urls, minilm, monkeypatch):
    calls = {"counters": 0, "reads": 0}
    counters, reader = MixedStream.counters, read.ItemReader.read

    def counting(self):
        calls["counters"] += 1
        return counters(self)

    def reading(self, *args):
        calls["reads"] += 1
        return reader(self, *args)
    monkeypatch.setattr(MixedStream, "counters", counting)
    monkeypatch.setattr(read.ItemReader, "read", reading)
    config = StreamConfig(shuffle_buffer=4, block_size=3)  # nothing skipped, no retries: nothing moves
    sources = [(ShardStream(u, shuffle=True, seed=s, config=config), 0.5) for u, s in zip(urls[:1] * 2, (2, 5))]
    ds = PackedStream(MixedStream(sources, seed=2, stop="drain"), SEQ, chunk_tokens=40, tokenizer=minilm)
    for _ in ds.batches(2):
        pass
    items = 2 * elastickit.N
    assert calls["reads"] < items // 4
    assert calls["counters"] <= 3 * calls["reads"] + 2, calls  # before each read (here and counts.py), after it


def test_the_mark_moves_with_the_mixtures_own_counts_and_retries(urls, minilm):
    mixed = MixedStream([(ShardStream(u), 0.5) for u in urls], seed=2)
    mixed.counters()
    mark = mixed.counts_mark()
    assert mixed.counts_mark() == mark  # nothing counted since
    mixed.stats["empty_sources"] += 1
    assert mixed.counts_mark() != mark
    mark = mixed.counts_mark()
    shards.storage._count_retry()
    assert mixed.counts_mark() != mark


def test_a_mixture_of_packed_streams_is_not_watched(urls, minilm):
    """A PackedStream's counts are computed when asked: no mark, the counters after every item."""
    packed = [(PackedStream(ShardStream(u, tokenizer=minilm), SEQ), 0.5) for u in urls]
    assert MixedStream(packed, seed=2).counts_mark() is None
