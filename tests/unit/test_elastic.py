"""Elastic mid-epoch resume (pipeline/elastic.py): a state saved at (W, K, B) resumed at
(W', K', B'), possibly twice, trains every record of the epoch exactly once.

The streams are simulated here independently of elastic.py, as stream.py reads a plan:
the worker's slices expanded to records, cut into windows, each window permuted with
shuffle.window_order, the first ``delivered`` samples taken.  The first segment reads
split.plan itself, so a wrong plan_after for later segments cannot hide behind it."""
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import elastic, split
from pipeline.elastic import Segment
from pipeline.shuffle import window_order

sizes = st.lists(st.integers(0, 30), min_size=1, max_size=6)
topologies = st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 5), st.integers(1, 12))
seeds = st.integers(0, 2**31)


def records(slices):
    return [(s.shard, r, s.pad) for s in slices for r in range(s.start, s.stop)]


def stream_delivers(slices, done, window, key, shuffle):
    """Non-pad (shard, record) of the first ``done`` samples the stream yields for this plan."""
    items = records(slices)
    if shuffle:
        seed, epoch, rank, worker = key
        windows = [items[i:i + window] for i in range(0, len(items), window)]
        items = [w[j] for k, w in enumerate(windows) for j in window_order(len(w), seed, epoch, rank, worker, k)]
    return [(shard, r) for shard, r, pad in items[:done] if not pad]


def plan_of(shard_sizes, block, seed, epoch, shuffle, segments, rank, world, worker, workers):
    if not segments:  # the first stretch reads what split.plan says, as the stream does today
        return split.plan(shard_sizes, rank, world, worker, workers, seed, epoch, shuffle, block)
    return elastic.plan_after(shard_sizes, block, seed, epoch, shuffle, segments, rank, world, worker, workers)


def run_segment(data, setup, segments, topology, seen):
    """Draw whole-batch delivered counts for every worker, record what they delivered."""
    shard_sizes, block, seed, epoch, shuffle = setup
    world, workers, batch, window = topology
    counts = []
    for rank in range(world):
        row = []
        for worker in range(workers):
            plan = plan_of(shard_sizes, block, seed, epoch, shuffle, segments, rank, world, worker, workers)
            count = sum(len(s) for s in plan)
            done = min(count, batch * data.draw(st.integers(0, -(-count // batch))))
            seen.update(stream_delivers(plan, done, window, (seed, epoch, rank, worker), shuffle))
            row.append(done)
        counts.append(row)
    return Segment(world, workers, batch, window, counts)


def final_plans(setup, segments, world, workers):
    shard_sizes, block, seed, epoch, shuffle = setup
    return {(r, w): elastic.plan_after(shard_sizes, block, seed, epoch, shuffle, segments, r, world, w, workers)
            for r in range(world) for w in range(workers)}


@settings(max_examples=250, deadline=None)
@given(st.data(), sizes, st.integers(1, 9), seeds, st.integers(0, 3), st.booleans(),
       st.lists(topologies, min_size=1, max_size=2), st.integers(1, 6), st.integers(1, 3))
def test_chain_of_changes_trains_every_record_exactly_once(data, shard_sizes, block, seed, epoch, shuffle,
                                                         changes, new_world, new_workers):
    setup = (shard_sizes, block, seed, epoch, shuffle)
    seen: Counter = Counter()
    segments: list[Segment] = []
    for topology in changes:
        segments.append(run_segment(data, setup, segments, topology, seen))
    plans = final_plans(setup, segments, new_world, new_workers)
    for plan in plans.values():
        seen.update((shard, r) for shard, r, pad in records(plan) if not pad)
    everything = Counter((shard, r) for shard, n in enumerate(shard_sizes) for r in range(n))
    assert seen == everything  # each record exactly once: none lost, none twice
    per_rank = {r: sum(len(s) for w in range(new_workers) for s in plans[r, w]) for r in range(new_world)}
    assert len(set(per_rank.values())) == 1
    pads = sum(len(s) for plan in plans.values() for s in plan if s.pad)
    assert pads <= new_world - 1
    left = elastic.remaining(sum(shard_sizes), segments, seed, epoch, shuffle)
    assert per_rank[0] == split.per_rank(len(left), new_world)
    sized = elastic.worker_counts_after(sum(shard_sizes), segments, seed, epoch, shuffle, new_world, new_workers)
    assert sized == [sum(len(s) for s in plans[0, w]) for w in range(new_workers)]
    assert final_plans(setup, segments, new_world, new_workers) == plans  # deterministic
    blocks = split.epoch_blocks(shard_sizes, block, seed, epoch, shuffle)
    for plan in plans.values():
        assert not any(mergeable(a, b, blocks) for a, b in zip(plan, plan[1:]))


def mergeable(a, b, blocks):
    """Two neighbouring slices that should have been one: contiguous, same pad flag, one block."""
    same_block = any(k.shard == a.shard and k.start <= a.start and b.stop <= k.stop for k in blocks)
    return a.shard == b.shard and a.stop == b.start and a.pad == b.pad and same_block


@settings(max_examples=200, deadline=None)
@given(sizes, st.integers(1, 9), seeds, st.integers(0, 3), st.booleans(), st.integers(1, 6), st.integers(1, 4))
def test_no_segments_is_split_plan(shard_sizes, block, seed, epoch, shuffle, world, workers):
    for r in range(world):
        for w in range(workers):
            assert elastic.plan_after(shard_sizes, block, seed, epoch, shuffle, [], r, world, w, workers) == \
                split.plan(shard_sizes, r, world, w, workers, seed, epoch, shuffle, block)


@settings(max_examples=100, deadline=None)
@given(sizes, st.integers(1, 9), seeds, st.booleans(), topologies, st.integers(1, 6), st.integers(1, 4))
def test_nothing_delivered_resumes_as_a_fresh_epoch(shard_sizes, block, seed, shuffle, old, world, workers):
    old_world, old_workers, batch, window = old
    zero = Segment(old_world, old_workers, batch, window, [[0] * old_workers] * old_world)
    for r in range(world):
        for w in range(workers):
            assert elastic.plan_after(shard_sizes, block, seed, 1, shuffle, [zero], r, world, w, workers) == \
                split.plan(shard_sizes, r, world, w, workers, seed, 1, shuffle, block)


def whole_epoch(shard_sizes, world, workers, batch, window=4):
    counts = split.worker_counts(sum(shard_sizes), world, workers)
    return Segment(world, workers, batch, window, [counts] * world)


@pytest.mark.parametrize("shuffle", [False, True])
def test_everything_delivered_leaves_nothing(shuffle):
    segment = whole_epoch([13, 0, 8], 3, 2, 4)
    assert len(elastic.remaining(21, [segment], 5, 0, shuffle)) == 0
    assert all(elastic.plan_after([13, 0, 8], 4, 5, 0, shuffle, [segment], r, 4, w, 2) == []
               for r in range(4) for w in range(2))


def test_partial_last_batch_counts_and_a_cut_inside_it_is_refused():
    # one worker of 7 samples, batches of 3: 0, 3, 6 or all 7 are whole-batch counts
    assert len(elastic.remaining(7, [Segment(1, 1, 3, 4, [[7]])], 0, 0, True)) == 0
    assert elastic.remaining(7, [Segment(1, 1, 3, 4, [[6]])], 0, 0, False).tolist() == [6]
    with pytest.raises(ValueError, match="rank 0 worker 0 delivered 5; valid: a multiple of 3 up to 7, or 7"):
        elastic.remaining(7, [Segment(1, 1, 3, 4, [[5]])], 0, 0, False)
    with pytest.raises(ValueError, match="delivered 9"):
        elastic.remaining(7, [Segment(1, 1, 1, 4, [[9]])], 0, 0, False)


def test_world_grows_beyond_the_remaining_samples():
    # 10 records, 8 delivered in order: records 8 and 9 remain for 5 ranks
    plans = [elastic.plan_after([10], 4, 0, 0, False, [Segment(1, 1, 4, 4, [[8]])], r, 5, 0, 1) for r in range(5)]
    assert plans == [[split.Slice(0, 8, 9)], [split.Slice(0, 9, 10)], [split.Slice(0, 8, 9, pad=True)],
                     [split.Slice(0, 9, 10, pad=True)], [split.Slice(0, 8, 9, pad=True)]]


def test_pads_of_the_old_segment_are_not_delivered():
    # 5 records on 2 ranks: rank 1 reads 3, 4 and a pad repeating record 0, which rank 0 never delivered
    segment = Segment(2, 1, 3, 8, [[0], [3]])
    assert elastic.remaining(5, [segment], 0, 0, False).tolist() == [0, 1, 2]


def test_delivered_takes_the_window_permutation_of_the_partial_window():
    # one worker, 10 samples, windows of 4: 6 delivered = window 0 whole + 2 of window 1's order
    segment = Segment(1, 1, 2, 4, [[6]])
    second = 4 + window_order(4, 3, 2, 0, 0, 1)[:2]
    assert elastic.delivered(10, segment, 3, 2, True).tolist() == sorted([0, 1, 2, 3, *second.tolist()])
    assert elastic.delivered(10, segment, 3, 2, False).tolist() == [0, 1, 2, 3, 4, 5]


def test_segment_round_trips_through_json_and_refuses_bad_shapes():
    segment = Segment(2, 3, 4, 8192, [[4, 8, 8], [4, 8, 5]])
    assert Segment.from_json(json.loads(json.dumps(segment.to_json()))) == segment
    with pytest.raises(ValueError, match="expected 2 rows"):
        Segment(2, 3, 4, 16, [[4, 8, 8]])
    with pytest.raises(ValueError, match="missing window"):
        Segment.from_json({"world": 1, "workers": 1, "batch_size": 1, "delivered": [[0]]})
    with pytest.raises(ValueError, match=r"Segment\(batch_size=0\)"):
        Segment(1, 1, 0, 16, [[0]])


@pytest.mark.timeout(60)
def test_remaining_at_ten_million_positions_is_the_complement():
    total = 10_000_000
    counts = split.worker_counts(total, 8, 4)
    done = [[c // 2 // 32 * 32 for c in counts]] * 8
    left = elastic.remaining(total, [Segment(8, 4, 32, 8192, done)], 7, 0, True)
    assert len(left) == total - 8 * sum(done[0])
    assert np.all(np.diff(left) > 0)  # epoch order, no repeats
