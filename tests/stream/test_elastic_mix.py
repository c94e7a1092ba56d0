"""Elastic mid-epoch resume of a MixedStream (pipeline/mix_elastic.py): a state saved at (world W,
workers K, batch B) resumes at (W', K', B'); with ``stop="drain"`` every sample of every source is
trained exactly once across the change(s), and with ``first_exhausted`` none twice.

Ranks are simulated in-process, each with its own loader; every rank takes the same number of
batches (the draws do not depend on the rank, and every rank reads equal counts of each source)."""
import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import ResumeError, ShardStream, StreamConfig, make_loader
from pipeline.mix import MixedStream
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(300)
SIZES = (29, 17)


@pytest.fixture(scope="module")
def urls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("elastic-mix")
    return [build_set(tmp, n=n, max_records=5, name=f"set{i}") for i, n in enumerate(SIZES)]


def mixture(urls, rank, world, stop="drain", shuffle=True, seed=4):
    config = StreamConfig(shuffle_buffer=6, block_size=3)
    sources = [(ShardStream(u, rank=rank, world_size=world, shuffle=shuffle, seed=seed, config=config), w)
               for u, w in zip(urls, (0.6, 0.4))]
    return MixedStream(sources, seed=seed, stop=stop)


def run_stretch(urls, world, workers, batch, states, take, **kw):
    seen, saved, steps = Counter(), [], []
    for rank in range(world):
        loader = make_loader(mixture(urls, rank, world, **kw), batch, num_workers=workers)
        if states is not None:
            loader.load_state_dict(states[min(rank, len(states) - 1)], all_ranks=states)
        count = 0
        for count, b in enumerate(loader, start=1):
            for sid, pad, source in zip(b["sample_id"], b["is_pad"].tolist(), b["source"].tolist()):
                if not pad:
                    seen[(source, sid)] += 1
            if count == take:
                break
        steps.append(count)
        saved.append(json.loads(json.dumps(loader.state_dict())))
    return seen, saved, steps


def chain(urls, stretches, **kw):
    seen, states = Counter(), None
    for i, (world, workers, batch, take) in enumerate(stretches):
        got, states, steps = run_stretch(urls, world, workers, batch, states,
                                         None if i == len(stretches) - 1 else take, **kw)
        assert len(set(steps)) == 1, f"stretch {i}: ranks took {steps} batches"
        seen.update(got)
    return seen, states


def every_sample(urls) -> set:
    return {(i, it["sample_id"]) for i, u in enumerate(urls) for it in ShardStream(u)}


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("before, after", [((2, 2, 4), (1, 0, 6)), ((2, 0, 4), (3, 2, 3)), ((3, 2, 2), (2, 0, 5))])
def test_a_drained_mixture_trains_every_sample_once_across_a_change(urls, shuffle, before, after):
    seen, states = chain(urls, [(*before, 2), (*after, None)], shuffle=shuffle)
    assert set(seen) == every_sample(urls) and max(seen.values()) == 1
    assert all(len(s["segments"]) == 1 and len(s["segments"][0]["sources"]) == 2 for s in states)


def test_chained_two_one_three(urls):
    seen, states = chain(urls, [(2, 2, 4, 2), (1, 0, 6, 2), (3, 2, 4, None)])
    assert set(seen) == every_sample(urls) and max(seen.values()) == 1
    assert [len(s["segments"]) for s in states] == [2, 2, 2]


def test_first_exhausted_trains_no_sample_twice(urls):
    seen, _ = chain(urls, [(2, 2, 4, 1), (1, 0, 6, 1), (3, 0, 4, None)], stop="first_exhausted")
    assert max(seen.values()) == 1 and set(seen) <= every_sample(urls)


def test_other_changes_are_refused_with_the_topology(urls):
    _, states, _ = run_stretch(urls, 2, 0, 4, None, 2)
    loader = make_loader(mixture(urls, 0, 1, seed=5), 4)
    with pytest.raises(ResumeError, match="seed was 4, now 5"):
        loader.load_state_dict(states[0], all_ranks=states)
    with pytest.raises(ResumeError, match=r"every old rank's state \(none given, 2 needed\)"):
        make_loader(mixture(urls, 0, 1), 4).load_state_dict(states[0])


def test_a_damaged_mixture_segment_is_refused_in_one_line(urls):
    _, states, _ = run_stretch(urls, 2, 0, 4, None, 2)
    loader = make_loader(mixture(urls, 0, 1), 4)
    loader.load_state_dict(states[0], all_ranks=states)
    saved = json.loads(json.dumps(loader.state_dict()))
    saved["segments"][0]["sources"].pop()
    with pytest.raises(ResumeError, match="1 source segments, this mixture has 2 sources") as e:
        make_loader(mixture(urls, 0, 1), 4).load_state_dict(saved)
    assert "\n" not in str(e.value)
    damaged = json.loads(json.dumps(states))
    damaged[1]["workers"][0]["sources"][0] = {"samples": 10 ** 6}
    with pytest.raises(ResumeError, match="out of range"):
        make_loader(mixture(urls, 0, 1), 4).load_state_dict(damaged[0], all_ranks=damaged)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from([0, 2]), st.integers(1, 5), st.integers(0, 3)),
                min_size=2, max_size=3), st.booleans())
def test_drained_topology_chains_train_every_sample_once(urls, changes, shuffle):
    seen, _ = chain(urls, changes, shuffle=shuffle)
    assert set(seen) == every_sample(urls) and max(seen.values()) == 1


def test_a_source_that_ran_out_before_the_change_is_not_read_again(urls):
    stretches = [(1, 0, 4, 11), (2, 2, 3, None)]  # 44 items of 46: the smaller source has run out (drain)
    first, states, _ = run_stretch(urls, 1, 0, 4, None, 11)
    assert any(w["passes"][1] >= 1 or w["dropped"][1] for w in states[0]["workers"] if w["batches"]), \
        "the small source did not run out in the first stretch: the test proves nothing"
    seen, _ = chain(urls, stretches)
    assert set(seen) == every_sample(urls) and max(seen.values()) == 1
