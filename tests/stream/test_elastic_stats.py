"""The loader's stats across a change of world size (loader/elastic_state.py stats_after): states saved at world
size 1, 2, 3 or 4 and resumed at another one (mid-epoch: elastically; at an epoch boundary: afresh) give new ranks
whose stats sum to the old ranks' sum, for every counter, and a run cut and resumed (twice, at two other worlds)
reports the totals of the uninterrupted run for the counters of records delivered: documents, empty documents,
tokens and the corrupt shard's skipped samples.  A ShardStream, a PackedStream over one, and a drained MixedStream.

Regression: each new rank took the stats of the state it was handed, so 2 -> 3 ranks counted rank 1's (or rank
0's) twice and 3 -> 2 lost rank 2's."""
from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from pipeline import MixedStream, PackedStream, ResumeError, ShardStream, StreamConfig, make_loader
from tests.helpers import elastickit
from tests.reliability.test_hostile_loader import corrupt_shard
from tests.stream.test_pack_mix_counts import with_retries

pytestmark = pytest.mark.timeout(600)
WORLDS = (1, 2, 3, 4)
CHANGES = [(a, b) for a in WORLDS for b in WORLDS if a != b]
BATCH = 2
SEQ = 5
# Counters of records delivered: the same whatever the world sizes and cuts (the elastic resume delivers each
# record once).  The shards are read in order and the corrupt one is the last: the pads that even out ranks
# repeat the first records left, never the corrupt shard's, so its skipped samples are its records.  (Retries
# are counted again when a resume re-reads a shard.)
EXACT = ("documents", "empty_documents", "tokens", "skipped_samples")


@pytest.fixture(scope="module")
def urls(tmp_path_factory, minilm):
    """Two pre-tokenized sets of short, long and empty documents, each with its last shard corrupt."""
    out = []
    for name in ("a", "b"):
        url = elastickit.build_docs(tmp_path_factory.mktemp(f"stats-{name}"), minilm)
        corrupt_shard(url, len(ShardStream(url).manifest.shards) - 1)
        out.append(url)
    return out


def shard(url, rank, world, seed=3):
    """Read in order, its corrupt shard skipped, a retry counted before every chunk read (so that every rank
    has counted something before any cut)."""
    config = StreamConfig(shuffle_buffer=4, block_size=3, tokenize_batch=4, on_corrupt="skip")
    return with_retries(ShardStream(url, rank=rank, world_size=world, seed=seed, config=config), 1)


MAKERS = {
    "shard": lambda urls, rank, world: shard(urls[0], rank, world),
    "packed": lambda urls, rank, world: PackedStream(shard(urls[0], rank, world), SEQ),
    "mixed": lambda urls, rank, world: MixedStream([(shard(u, rank, world, seed=s), w)
                                                    for u, s, w in zip(urls, (2, 5), (0.6, 0.4))], seed=2, stop="drain"),
}


def summed(stats) -> dict:
    out = Counter()
    for one in stats:
        out.update(one)
    return dict(out)


def stretch(kind, urls, world, states, take, workers=0):
    """Every rank of one stretch, resumed from ``states`` as the training code does (a new rank is handed rank 0's
    state): (the states saved after ``take`` batches, or at the end; the stats right after the load; at the end)."""
    saved, loaded, final = [], [], []
    for rank in range(world):
        ds = MAKERS[kind](urls, rank, world)
        loader = make_loader(ds, BATCH, num_workers=workers,
                             collate_fn=ds.collator() if isinstance(ds, PackedStream) else None)
        if states is not None:
            loader.load_state_dict(states[rank] if rank < len(states) else states[0], all_ranks=states)
            loaded.append(loader.stats())
            assert loader.state_dict()["stats"] == loaded[-1]  # what a checkpoint right after the load holds
        for count, _ in enumerate(loader, 1):
            if count == take:
                break
        saved.append(json.loads(json.dumps(loader.state_dict())))
        final.append(loader.stats())
    return saved, loaded, final


_WHOLE: dict = {}


def uninterrupted(kind, urls, world) -> dict:
    if (kind, world) not in _WHOLE:
        _WHOLE[kind, world] = summed(stretch(kind, urls, world, None, None)[2])
    return _WHOLE[kind, world]


def another(*worlds) -> int:
    return next(w for w in reversed(WORLDS) if w not in worlds)


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("before, after", CHANGES)
def test_the_summed_stats_are_kept_across_changes_of_world_size(urls, kind, before, after):
    whole = uninterrupted(kind, urls, before)
    assert whole["skipped_samples"] > 0 and (kind != "packed" or whole["empty_documents"] > 0)
    states, _, _ = stretch(kind, urls, before, None, 2)
    third = another(before, after)
    for world, take in ((after, 1), (third, None)):  # cut again and resumed at yet another world
        old = summed(s["stats"] for s in states)
        assert all(s["stats"]["retries"] > 0 for s in states), "a rank counted nothing: the sum proves little"
        states, loaded, final = stretch(kind, urls, world, states, take)
        assert summed(loaded) == old, f"{before} -> {after} -> {third}: right after the load at world {world}"
        assert all(set(stats) == set(old) for stats in loaded)  # every rank names every counter
    got = summed(final)
    for key in EXACT:
        assert got.get(key, 0) == whole.get(key, 0), f"{key}: {before} -> {after} -> {third}"


def test_workers_and_world_change_together(urls):
    """2 ranks x 2 workers -> 3 ranks x 1 worker (real worker processes), a packed stream."""
    whole = uninterrupted("packed", urls, 2)
    states, _, _ = stretch("packed", urls, 2, None, 2, workers=2)
    old = summed(s["stats"] for s in states)
    _, loaded, final = stretch("packed", urls, 3, states, None, workers=1)
    assert summed(loaded) == old
    got = summed(final)
    assert {k: got.get(k, 0) for k in EXACT} == {k: whole.get(k, 0) for k in EXACT}


def at_next_epoch(urls, world) -> list[dict]:
    """Every rank's state at the start of epoch 1, after the whole epoch 0: no batch of it delivered."""
    states = []
    for rank in range(world):
        ds = MAKERS["shard"](urls, rank, world)
        loader = make_loader(ds, BATCH)
        for _ in loader:
            pass
        ds.set_epoch(1)
        iter(loader)
        states.append(json.loads(json.dumps(loader.state_dict())))
        assert states[-1]["batches"] == 0 and not states[-1].get("segments")
    return states


@pytest.mark.parametrize("before, after", [(2, 3), (3, 2), (1, 4), (4, 1)])
def test_an_epoch_boundary_resume_at_another_world_keeps_the_sum(urls, before, after):
    states = at_next_epoch(urls, before)
    old = summed(s["stats"] for s in states)
    assert old["skipped_samples"] > 0
    loaded = []
    for rank in range(after):
        loader = make_loader(MAKERS["shard"](urls, rank, after), BATCH)
        loader.load_state_dict(states[rank] if rank < before else states[0], all_ranks=states)
        loaded.append(loader.stats())
    assert summed(loaded) == old


def test_an_epoch_boundary_resume_at_another_world_needs_every_old_rank(urls, caplog):
    states = at_next_epoch(urls, 2)
    loader = make_loader(MAKERS["shard"](urls, 1, 3), BATCH)
    with pytest.raises(ResumeError, match=r"stats need every old rank's state \(1 given, 2 needed\)"):
        loader.load_state_dict(states[1], all_ranks=states[:1])
    with caplog.at_level(logging.WARNING, logger="pipeline.loader.elastic_state"):
        loader.load_state_dict(states[1])  # without all_ranks: the state's own stats, and a warning says so
    assert loader.stats() == states[1]["stats"]
    assert "resumed at 3 without all_ranks" in caplog.text
