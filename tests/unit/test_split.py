"""Property tests of the epoch split: exactly once, disjoint, equal per rank, deterministic."""
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import split

sizes = st.lists(st.integers(0, 40), min_size=0, max_size=12)
worlds = st.integers(1, 8)
workers = st.integers(1, 4)
seeds = st.integers(0, 2**31)
epochs = st.integers(0, 5)
blocks = st.integers(1, 17)


def everything(shard_sizes, world, nworkers, seed, epoch, shuffle, block):
    """{(rank, worker): [(shard, record, pad), ...]} for one epoch."""
    out = {}
    for rank in range(world):
        for w in range(nworkers):
            plan = split.plan(shard_sizes, rank, world, w, nworkers, seed, epoch, shuffle, block)
            out[rank, w] = [(s.shard, r, s.pad) for s in plan for r in range(s.start, s.stop)]
    return out


@settings(max_examples=300, deadline=None)
@given(sizes, worlds, workers, seeds, epochs, st.booleans(), blocks)
def test_every_record_exactly_once_and_equal_ranks(shard_sizes, world, nworkers, seed, epoch, shuffle, block):
    parts = everything(shard_sizes, world, nworkers, seed, epoch, shuffle, block)
    real = Counter((s, r) for items in parts.values() for s, r, pad in items if not pad)
    expected = {(s, r) for s, n in enumerate(shard_sizes) for r in range(n)}
    assert set(real) == expected
    assert all(c == 1 for c in real.values())
    total = sum(shard_sizes)
    per_rank = [sum(len(parts[r, w]) for w in range(nworkers)) for r in range(world)]
    assert per_rank == [split.per_rank(total, world)] * world
    # identical worker split on every rank -> identical batch counts for any batch size
    for w in range(nworkers):
        assert len({len(parts[r, w]) for r in range(world)}) == 1
    pads = [x for items in parts.values() for x in items if x[2]]
    assert len(pads) == split.per_rank(total, world) * world - total < world or total == 0
    assert all((s, r) in expected for s, r, _ in pads)


@settings(max_examples=200, deadline=None)
@given(sizes, worlds, workers, seeds, epochs, blocks)
def test_deterministic_and_epoch_changes_order(shard_sizes, world, nworkers, seed, epoch, block):
    a = everything(shard_sizes, world, nworkers, seed, epoch, True, block)
    b = everything(shard_sizes, world, nworkers, seed, epoch, True, block)
    assert a == b


def test_shuffle_changes_with_epoch_and_seed():
    shard_sizes = [50] * 20
    order = lambda seed, epoch: [(s.shard, s.start) for s in split.plan(shard_sizes, 0, 1, 0, 1, seed, epoch, True, 10)]
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert order(0, 0) == order(0, 0)


def test_no_shuffle_is_manifest_order():
    plan = split.plan([3, 0, 2], 0, 1, 0, 1, shuffle=False)
    assert [(s.shard, s.start, s.stop, s.pad) for s in plan] == [(0, 0, 3, False), (2, 0, 2, False)]


def test_fewer_records_than_consumers():
    # 2 records, 3 ranks x 2 workers: every rank still yields 1 sample; one is a flagged pad
    parts = everything([2], 3, 2, 0, 0, False, 4)
    assert sum(len(v) for v in parts.values()) == 3
    assert sum(1 for v in parts.values() for x in v if x[2]) == 1


def test_rejects_bad_arguments():
    import pytest
    with pytest.raises(ValueError, match="rank 2/2"):
        split.plan([1], 2, 2, 0, 1)
    with pytest.raises(ValueError, match="block_size"):
        split.plan([1], 0, 1, 0, 1, block_size=0)
