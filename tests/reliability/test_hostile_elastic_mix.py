"""Hostile review of the elastic mid-epoch resume of a MixedStream (pipeline/mix_elastic.py): with
stop="drain" every sample exactly once across any chain of topology changes, first_exhausted none twice, cycle
its defined behaviour; a damaged or foreign state refused with a one-line ResumeError.  Ranks are simulated
in-process (tests/helpers/elastickit.py).  Each hole the review found was a strict xfail until fixed; all are
plain tests now."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import ResumeError, make_loader
from tests.helpers.data import build_set
from tests.helpers.elastickit import (
    SIZES,
    SLOW,
    assert_every_sample_once,
    drain,
    edited,
    every_sample,
    mix_chain,
    mix_stretch,
    mixture,
)


@pytest.fixture(scope="module")
def mix_urls(tmp_path_factory) -> list[str]:
    tmp = tmp_path_factory.mktemp("hostile-elastic-mix")
    return [build_set(tmp, n=n, max_records=4, name=f"set{i}") for i, n in enumerate(SIZES)]


# == mixture: what holds =========================================================================================
@pytest.mark.parametrize("stretches", [
    [(2, 0, 3, 2), (3, 0, 2, 0), (1, 0, 4, 0), (2, 0, 2, None)],  # changes right after stretches that took nothing
    [(2, 0, 3, None), (3, 0, 2, None)],                           # a change after the epoch ended
    [(1, 0, 4, 8), (3, 0, 1, 2), (2, 2, 2, 1), (1, 0, 3, None)],  # the small source ran out first; workers 0 -> 2
])
def test_a_drained_mixture_trains_every_sample_once(mix_urls, stretches):
    assert_every_sample_once(mix_urls, mix_chain(mix_urls, stretches)[0])


def test_a_mixture_order_after_a_change_is_the_same_whichever_old_state_is_passed(mix_urls):
    _, states, _ = mix_stretch(mix_urls, 2, 0, 3, None, 2)
    orders = []
    for state in states:
        loader = make_loader(mixture(mix_urls, 0, 1), 4)
        loader.load_state_dict(state, all_ranks=states)
        orders.append([(s, sid) for b in loader for s, sid in zip(b["source"].tolist(), b["sample_id"])])
    assert orders[0] == orders[1] and orders[0]


def test_first_exhausted_trains_none_twice_and_cycle_resumes_with_defined_behaviour(mix_urls):
    stretches = [(2, 0, 3, 3), (3, 0, 2, 1), (1, 0, 4, None)]
    seen, _ = mix_chain(mix_urls, stretches, stop="first_exhausted")
    assert max(seen.values()) == 1 and set(seen) <= every_sample(mix_urls)
    seen, _ = mix_chain(mix_urls, stretches, stop="cycle")  # a source that ran out counts whole; what is left cycles
    assert set(seen) == every_sample(mix_urls) and all(n == 1 for (source, _), n in seen.items() if source == 0), \
        "here the small source runs out first in every worker: only it may repeat"


@pytest.mark.parametrize("key, value, match", [
    ("sources", [{"samples": 10 ** 6}, None], "out of range"), ("passes", ["x", 0], "passes"),
    ("sources", ["bad", None], "not a position"), ("dropped", [False], "passes/dropped/sources|must list one entry per source"),
])
def test_a_damaged_old_mixture_position_is_refused_at_the_elastic_load(mix_urls, key, value, match):
    _, states, _ = mix_stretch(mix_urls, 2, 0, 3, None, 2)
    damaged = edited(states, lambda s: s[1]["workers"][0].__setitem__(key, value))
    with pytest.raises(ResumeError, match=match) as info:
        make_loader(mixture(mix_urls, 0, 1), 4).load_state_dict(damaged[0], all_ranks=damaged)
    assert "\n" not in str(info.value)


# == mixture: holes ==============================================================================================
@pytest.mark.parametrize("key, value", [("dropped", [False, "yes"]), ("draws", -1), ("items", 1000)])
def test_a_mixture_position_a_plain_load_refuses_is_refused_elastically_too(mix_urls, key, value):
    _, states, _ = mix_stretch(mix_urls, 2, 0, 3, None, 2)
    damaged = edited(states, lambda s: s[1]["workers"][0].__setitem__(key, value))
    with pytest.raises(ResumeError):  # the same-topology load refuses it
        make_loader(mixture(mix_urls, 1, 2), 3).load_state_dict(damaged[1])
    with pytest.raises(ResumeError):
        make_loader(mixture(mix_urls, 0, 1), 4).load_state_dict(damaged[0], all_ranks=damaged)


def test_a_drain_state_that_claims_a_pass_without_a_drop_is_refused_or_loses_nothing(mix_urls):
    seen, states, _ = mix_stretch(mix_urls, 2, 0, 3, None, 2)
    assert all(w["passes"] == [0, 0] and w["sources"][1] for s in states for w in s["workers"])
    damaged = edited(states, lambda s: s[1]["workers"][0].__setitem__("passes", [0, 1]))
    try:
        rest, _, _ = mix_stretch(mix_urls, 1, 0, 4, damaged, None)
    except ResumeError:
        return
    assert_every_sample_once(mix_urls, seen + rest)


@pytest.mark.parametrize("batches", [0, 1])
def test_a_damaged_mixture_segment_in_a_same_topology_state_is_refused_at_load(mix_urls, batches):
    _, old, _ = mix_stretch(mix_urls, 2, 0, 3, None, 2)
    _, new, _ = mix_stretch(mix_urls, 1, 0, 4, old, batches)
    damaged = edited(new[0], lambda s: s["segments"][0]["sources"][1].__setitem__("delivered", [[99], [99]]))
    with pytest.raises(ResumeError, match="delivered 99"):
        loader = make_loader(mixture(mix_urls, 0, 1), 4)
        loader.load_state_dict(damaged)
        drain(loader, None, lambda b: None)


def test_mixture_states_of_two_checkpoints_are_refused(mix_urls):
    _, at2, _ = mix_stretch(mix_urls, 2, 0, 3, None, 2)
    _, at3, _ = mix_stretch(mix_urls, 2, 0, 3, None, 3)
    with pytest.raises(ResumeError, match="one checkpoint"):
        make_loader(mixture(mix_urls, 0, 1), 4).load_state_dict(at2[0], all_ranks=[at2[0], at3[1]])


def test_a_cycled_mixture_after_a_change_sees_every_sample_and_repeats_from_what_was_left(mix_urls):
    """Defined behaviour (mix_elastic.py): under stop='cycle' a source that runs out after a change restarts
    over what the earlier stretches left of it, so its repeats concentrate there (an unchanged epoch repeats
    the whole part); every sample is still seen at least once."""
    seen, _ = mix_chain(mix_urls, [(2, 0, 3, 3), (3, 0, 2, 1), (1, 0, 4, None)], stop="cycle")
    assert set(seen) == every_sample(mix_urls) and min(seen.values()) >= 1


# == property: chains of changes =================================================================================
@pytest.mark.parametrize("workers, stops, examples", [([0], ["drain"], 5),
                                                      pytest.param([0, 2], ["drain", "cycle", "first_exhausted"], 40,
                                                                   marks=SLOW)])
def test_mixture_chains_keep_their_stopping_rule(mix_urls, workers, stops, examples):
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from(workers), st.integers(1, 5), st.integers(0, 4)),
                    min_size=2, max_size=4), st.booleans(), st.sampled_from(stops))
    def check(changes, shuffle, stop):
        changes[-1] = (*changes[-1][:3], None)
        seen, _ = mix_chain(mix_urls, changes, shuffle=shuffle, stop=stop)
        if stop == "drain":
            assert_every_sample_once(mix_urls, seen)
        elif stop == "first_exhausted":
            assert max(seen.values()) == 1 and set(seen) <= every_sample(mix_urls)
        else:  # cycle: every sample at least once (which source repeats depends on each worker's draws)
            assert set(seen) == every_sample(mix_urls)
    check()
