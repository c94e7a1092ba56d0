"""Elastic mid-epoch resume through make_loader + ShardStream (pipeline/loader/elastic_state.py):
a state saved at (world W, workers K, batch B) resumes at (W', K', B') with every old rank's state,
and every sample of the epoch is trained exactly once across the change(s).

Ranks are simulated in-process (``ShardStream(rank=r, world_size=W)``), each with its own
loader; every rank takes the same number of batches, as DDP training does."""
import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import PackedStream, ResumeError, ShardStream, StreamConfig, make_loader
from pipeline.mix import MixedStream
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(120)
N = 53  # records: not a multiple of the worlds, batches or shards below, so pads and short batches occur


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    return build_set(tmp_path_factory.mktemp("elastic"), n=N, max_records=6)


def all_ids(url) -> set:
    return {it["sample_id"] for it in ShardStream(url)}


def stream(url, rank, world, shuffle=True, seed=5, **kw):
    config = StreamConfig(shuffle_buffer=kw.pop("window", 7), block_size=kw.pop("block", 4), **kw)
    return ShardStream(url, rank=rank, world_size=world, shuffle=shuffle, seed=seed, config=config)


class Stretch:
    """One stretch of training: every rank's batches under one topology, and its saved states."""

    def __init__(self, url, world, workers, batch, states=None, take=None, **kw):
        self.real, self.pads, self.batches, self.states = Counter(), 0, [], []
        for rank in range(world):
            loader = make_loader(stream(url, rank, world, **kw), batch, num_workers=workers)
            if states is not None:  # any old rank's state as ``state``; the new rank may not have existed
                loader.load_state_dict(states[min(rank, len(states) - 1)], all_ranks=states)
            self._run(loader, take)
            self.states.append(json.loads(json.dumps(loader.state_dict())))  # what a checkpoint holds

    def _run(self, loader, take):
        count = 0
        for batch in loader:
            for sid, pad in zip(batch["sample_id"], batch["is_pad"].tolist()):
                if pad:
                    self.pads += 1
                else:
                    self.real[sid] += 1
            count += 1
            if count == take:
                break
        self.batches.append(count)


def chain(url, stretches, shuffle=True):
    """Run (world, workers, batch, take) stretches, each resumed from the last; the last runs to the end."""
    seen, pads, states, runs = Counter(), 0, None, []
    for i, (world, workers, batch, take) in enumerate(stretches):
        run = Stretch(url, world, workers, batch, states, None if i == len(stretches) - 1 else take,
                      shuffle=shuffle)
        assert len(set(run.batches)) == 1, f"stretch {i}: ranks took {run.batches} batches"
        seen.update(run.real)
        pads += run.pads
        states, runs = run.states, runs + [run]
    return seen, pads, runs


def assert_exactly_once(url, seen, pads, stretches):
    assert set(seen) == all_ids(url)
    assert [sid for sid, n in seen.items() if n != 1] == []
    assert pads <= sum(world - 1 for world, *_ in stretches)  # each stretch's plan pads at most world-1


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("before, after", [((2, 2, 4), (1, 0, 6)), ((2, 0, 4), (3, 2, 4)), ((3, 2, 2), (2, 0, 5))])
def test_a_changed_topology_trains_every_sample_once(url, shuffle, before, after):
    stretches = [(*before, 3), (*after, None)]
    seen, pads, runs = chain(url, stretches, shuffle)
    assert_exactly_once(url, seen, pads, stretches)
    assert all(s.get("segments") and len(s["segments"]) == 1 for s in runs[1].states)


@pytest.mark.parametrize("shuffle", [True, False])
def test_chained_twice_two_one_three(url, shuffle):
    stretches = [(2, 2, 4, 2), (1, 0, 6, 3), (3, 2, 4, None)]
    seen, pads, runs = chain(url, stretches, shuffle)
    assert_exactly_once(url, seen, pads, stretches)
    assert [len(s["segments"]) for s in runs[2].states] == [2, 2, 2]


def test_a_same_topology_resume_inside_an_elastic_stretch_continues_it(url):
    first = Stretch(url, 2, 0, 4, take=3)
    second = Stretch(url, 1, 0, 5, first.states, take=2)  # elastic, then stopped again
    third = Stretch(url, 1, 0, 5, second.states)           # same topology: a plain resume with segments
    seen = first.real + second.real + third.real
    assert set(seen) == all_ids(url) and max(seen.values()) == 1
    assert second.states[0]["segments"] == third.states[0]["segments"]


def test_the_next_epoch_starts_whole_without_segments(url):
    first = Stretch(url, 2, 0, 4, take=3)
    ds = stream(url, 0, 1)
    loader = make_loader(ds, 5)
    loader.load_state_dict(first.states[0], all_ranks=first.states)
    assert sum(1 for _ in loader) < -(-N // 5)  # the rest of epoch 0
    ds.set_epoch(1)
    ids = [sid for b in loader for sid in b["sample_id"]]
    assert sorted(ids) == sorted(all_ids(url)) and "segments" not in loader.state_dict()


def test_a_state_saved_right_after_an_elastic_load_is_still_mid_epoch(url):
    first = Stretch(url, 2, 0, 4, take=3)
    loader = make_loader(stream(url, 0, 1), 5)
    loader.load_state_dict(first.states[1], all_ranks=first.states)
    saved = loader.state_dict()
    assert saved["batches"] == 0 and len(saved["segments"]) == 1
    again = make_loader(stream(url, 0, 1, seed=6), 5)
    with pytest.raises(ResumeError, match="seed was 5, now 6"):
        again.load_state_dict(saved)


def test_other_changes_still_refused_with_the_topology(url):
    first = Stretch(url, 2, 0, 4, take=2)
    for kw, match in [({"seed": 6}, "seed was 5, now 6"), ({"block": 5}, "block_size was 4, now 5"),
                      ({"window": 8}, "shuffle_buffer was 7, now 8"), ({"shuffle": False}, "shuffle was True")]:
        loader = make_loader(stream(url, 0, 1, **kw), 4)
        with pytest.raises(ResumeError, match=match):
            loader.load_state_dict(first.states[0], all_ranks=first.states)


def test_every_old_rank_is_needed_in_rank_order(url):
    first = Stretch(url, 2, 0, 4, take=2)
    loader = make_loader(stream(url, 0, 1), 4)
    with pytest.raises(ResumeError, match=r"every old rank's state \(none given, 2 needed\)"):
        loader.load_state_dict(first.states[0])
    with pytest.raises(ResumeError, match="in rank order"):
        loader.load_state_dict(first.states[0], all_ranks=first.states[::-1])
    damaged = json.loads(json.dumps(first.states))
    damaged[1]["workers"][0]["samples"] = 3  # not a whole batch of 4
    with pytest.raises(ResumeError, match="delivered 3|samples=3, batches=2: not 4 samples a batch"):
        loader.load_state_dict(damaged[0], all_ranks=damaged)


def test_a_packed_mixture_refuses_a_topology_change_in_one_line(url, minilm):
    def packed_loader(world, batch):
        mixed = MixedStream([(ShardStream(url, tokenizer=minilm, rank=0, world_size=world), 1.0)], seed=1)
        return make_loader(PackedStream(mixed, 16), batch)
    loader = packed_loader(2, 2)
    next(iter(loader))
    saved = loader.state_dict()
    with pytest.raises(ResumeError, match=r"world_size was 2, now 1") as e:
        packed_loader(1, 2).load_state_dict(saved, all_ranks=[saved, saved])
    assert "\n" not in str(e.value)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(0, 4)), min_size=2, max_size=3),
       st.booleans())
def test_small_topology_chains_train_every_sample_once(url, changes, shuffle):
    stretches = [(world, 0, batch, take) for world, batch, take in changes]
    seen, pads, _ = chain(url, stretches, shuffle)
    assert_exactly_once(url, seen, pads, stretches)
