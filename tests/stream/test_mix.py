"""Weighted mixing: parser, proportions, determinism, stopping rules, resume, equal steps per rank."""
from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import IterableDataset

from pipeline import ShardStream, make_loader
from pipeline.mix import STOP_RULES, MixedStream, choose, open_mixture, parse_mixture
from pipeline.pack.stream import PackedStream
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(120)


class ListStream(IterableDataset):
    """An in-memory source with ShardStream's protocol (and its stale-state-before-first-next quirk)."""

    def __init__(self, name: str, n: int):
        self.items = [f"{name}{i}" for i in range(n)]
        self.epoch, self._consumed, self._resume = 0, 0, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def position(self):
        return {"samples": self._consumed}

    def seek(self, position):
        self._resume = position["samples"]

    def __iter__(self):
        skip, self._resume = self._resume, 0
        self._consumed = skip
        order = self.items[self.epoch:] + self.items[:self.epoch]  # epochs differ
        for item in order[skip:]:
            self._consumed += 1
            yield item


def mixed(sizes, weights, stop="first_exhausted", seed=0):
    return MixedStream([(ListStream("abcdefgh"[i], n), w) for i, (n, w) in enumerate(zip(sizes, weights))],
                       seed=seed, stop=stop)


# -- parser ------------------------------------------------------------------------
def test_parse_mixture_forms():
    assert parse_mixture("a.json:0.7,b.json:0.3") == [("a.json", 0.7), ("b.json", 0.3)]
    assert parse_mixture("s3://bucket/set:2, /data/x") == [("s3://bucket/set", 2.0), ("/data/x", 1.0)]
    assert parse_mixture("s3://bucket/set") == [("s3://bucket/set", 1.0)]


@pytest.mark.parametrize("bad", ["", "a:0.5,", "a:0", "a:-1", "a:inf", ":0.5"])
def test_parse_mixture_rejects(bad):
    with pytest.raises(ValueError, match="mixture"):
        parse_mixture(bad)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="stop="):
        mixed([3], [1], stop="longest")
    with pytest.raises(ValueError, match="weight"):
        mixed([3, 3], [1, 0])
    with pytest.raises(ValueError, match="at least one"):
        MixedStream([])


# -- proportions and determinism -------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_proportions_over_10k_draws(seed):
    weights = [0.7, 0.2, 0.1]
    draws = list(islice(mixed([20000] * 3, weights, seed=seed), 10000))
    counts = Counter(x[0] for x in draws)
    for name, w in zip("abc", weights):
        sigma = (10000 * w * (1 - w)) ** 0.5
        assert abs(counts[name] - 10000 * w) < 5 * sigma, (name, counts)


def test_choose_renormalises_over_live_sources():
    assert choose([1, 1, 2], [True, True, True], 0.49) == 1
    assert choose([1, 1, 2], [False, True, True], 0.3) == 1
    assert choose([1, 1, 2], [False, True, True], 0.4) == 2
    assert choose([1, 1, 2], [True, False, False], 0.99) == 0


def test_deterministic_for_a_seed_and_epoch():
    assert list(mixed([50, 80], [1, 2], seed=7)) == list(mixed([50, 80], [1, 2], seed=7))
    assert list(mixed([50, 80], [1, 2], seed=7)) != list(mixed([50, 80], [1, 2], seed=8))
    m = mixed([50, 80], [1, 2], seed=7)
    m.set_epoch(1)
    assert list(m) != list(mixed([50, 80], [1, 2], seed=7))


# -- stopping rules --------------------------------------------------------------------
def test_first_exhausted_stops_when_a_draw_finds_a_source_empty():
    out = list(mixed([10, 1000], [1, 1], seed=3))
    a = [x for x in out if x[0] == "a"]
    assert a == [f"a{i}" for i in range(10)]        # the small source ran out completely
    assert 0 < len(out) - 10 < 1000                  # and the large one was cut short


def test_cycle_repeats_small_sources_until_every_source_ran_out():
    out = list(mixed([10, 300], [1, 1], stop="cycle", seed=3))
    counts = Counter(out)
    assert all(counts[f"b{i}"] == 1 for i in range(300))   # the largest exactly once
    assert all(counts[f"a{i}"] >= 10 for i in range(10))   # the small one many times over


def test_drain_yields_every_item_exactly_once():
    out = list(mixed([10, 30, 5], [1, 5, 1], stop="drain", seed=3))
    assert sorted(out) == sorted([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(30)]
                                 + [f"c{i}" for i in range(5)])


def test_cycle_drops_a_source_with_no_items():
    m = mixed([0, 20], [1, 1], stop="cycle", seed=1)
    out = list(m)
    assert sorted(out) == sorted(f"b{i}" for i in range(20)) and m.stats["empty_sources"] == 1


# -- resume --------------------------------------------------------------------------
@settings(max_examples=250, deadline=None)
@given(sizes=st.lists(st.integers(0, 25), min_size=1, max_size=4), stop=st.sampled_from(STOP_RULES),
       seed=st.integers(0, 10**6), epoch=st.integers(0, 3), data=st.data())
def test_resume_after_any_item_equals_uninterrupted(sizes, stop, seed, epoch, data):
    weights = data.draw(st.lists(st.floats(0.05, 10), min_size=len(sizes), max_size=len(sizes)))
    ref = mixed(sizes, weights, stop, seed)
    ref.set_epoch(epoch)
    full = list(ref)
    k = data.draw(st.integers(0, len(full)))
    m = mixed(sizes, weights, stop, seed)
    list(m)                      # a finished earlier epoch leaves stale source state behind
    m.set_epoch(epoch)
    it = iter(m)
    first = list(islice(it, k))
    state = json.loads(json.dumps(m.state_dict()))
    fresh = mixed(sizes, weights, stop, seed)
    fresh.load_state_dict(state)
    assert first + list(fresh) == full


def at(state: dict, **position) -> dict:
    """``state`` with its worker position changed (a damaged state)."""
    return {**state, "workers": [{**state["workers"][0], **position}]}


def test_resume_refuses_a_different_mixture_mid_epoch():
    m = mixed([5, 5], [1, 1])
    it = iter(m)
    next(it), next(it)
    state = json.loads(json.dumps(m.state_dict()))
    with pytest.raises(ValueError, match=r"mid-epoch: mixed state: weights was \[1.0, 1.0\], now \[1.0, 2.0\]$|"
                                         r"weights was \[1.0, 1.0\], now \[1.0, 2.0\]\. "):
        mixed([5, 5], [1, 2]).load_state_dict(state)
    with pytest.raises(ValueError, match="seed was 0, now 1"):
        mixed([5, 5], [1, 1], seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="draws=-1 is out of range"):
        mixed([5, 5], [1, 1]).load_state_dict(at(state, draws=-1))
    with pytest.raises(ValueError, match="weights was .*; identities was"):
        mixed([5, 5, 5], [1, 1, 1]).load_state_dict(state)
    with pytest.raises(ValueError, match="passes must list one entry per source"):
        mixed([5, 5], [1, 1]).load_state_dict(at(state, passes=[0, 0, 0]))
    # at an epoch boundary nothing was drawn: the new mixture starts the epoch afresh
    fresh = mixed([5, 5], [1, 2])
    fresh.load_state_dict(mixed([5, 5], [1, 1]).state_dict())
    assert len(list(fresh)) > 0


# -- real shard sets -------------------------------------------------------------------
def shard_sets(tmp_path):
    return build_set(tmp_path, n=23, max_records=5, name="small"), build_set(tmp_path, n=41, max_records=6,
                                                                          name="large")


def source_ids(batch) -> list:
    return list(zip(batch["source"], batch["sample_id"]))


def collate(items):
    return {"source": [it["source"] for it in items], "sample_id": [it["sample_id"] for it in items]}


@pytest.mark.parametrize("stop", STOP_RULES)
def test_equal_steps_per_rank_and_worker(tmp_path, stop):
    small, large = shard_sets(tmp_path)
    for workers in (1, 2):
        for worker in range(workers):  # each worker makes its own batches: its length must match
            lengths = set()
            for rank in range(2):
                streams = [ShardStream(u, rank=rank, world_size=2) for u in (small, large)]
                m = MixedStream([(streams[0], 0.6), (streams[1], 0.4)], seed=9, stop=stop)
                lengths.add(len(_in_worker(m, worker, workers)))
            assert len(lengths) == 1, (workers, worker, lengths)


def _in_worker(stream, worker, workers):
    """Run the stream as DataLoader worker ``worker`` of ``workers`` would (no processes)."""
    from unittest import mock

    with mock.patch("pipeline.world.worker", return_value=(worker, workers)):
        return list(stream)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resume_of_a_mixture(tmp_path, workers):
    small, large = shard_sets(tmp_path)

    def make():
        return MixedStream([(ShardStream(small, shuffle=True, seed=1), 0.5),
                            (ShardStream(large, shuffle=True, seed=2), 0.5)], seed=4, stop="cycle")

    full = [source_ids(b) for b in make_loader(make(), batch_size=4, num_workers=workers, collate_fn=collate)]
    for k in (1, len(full) // 2):
        loader = make_loader(make(), batch_size=4, num_workers=workers, collate_fn=collate)
        it = iter(loader)
        first = [source_ids(next(it)) for _ in range(k)]
        state = json.loads(json.dumps(loader.state_dict()))
        del it, loader
        loader2 = make_loader(make(), batch_size=4, num_workers=workers, collate_fn=collate)
        loader2.load_state_dict(state)
        assert first + [source_ids(b) for b in loader2] == full


def test_mixture_of_packed_streams_resumes(tmp_path, minilm):
    small, large = shard_sets(tmp_path)

    def make():
        return open_mixture(f"{small}:0.3,{large}:0.7",
                            lambda url: PackedStream(ShardStream(url, tokenizer=minilm), seq_len=8), seed=2)

    ds = make()
    assert isinstance(ds, MixedStream) and ds.tokenizer is not None
    collate = ds.collator()
    full = [(b["source"].tolist(), b["input_ids"].tolist()) for b in make_loader(ds, 3, collate_fn=collate)]
    loader = make_loader(make(), 3, collate_fn=collate)
    it = iter(loader)
    first = [(b["source"].tolist(), b["input_ids"].tolist()) for b in islice(it, 4)]
    state = loader.state_dict()
    loader2 = make_loader(make(), 3, collate_fn=collate)
    loader2.load_state_dict(state)
    assert first + [(b["source"].tolist(), b["input_ids"].tolist()) for b in loader2] == full
    started = [sid for b in make_loader(make(), 3, collate_fn=collate) for sid in b["started_ids"]]
    assert len(started) == len(set(started)) and {s.split("/")[0] for s in started} == {"0", "1"}
