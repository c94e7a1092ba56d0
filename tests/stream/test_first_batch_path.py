"""What the first batch waits for: one slice of a shuffled shard (not the whole shard decoded),
one batch tokenized (not ``tokenize_batch`` texts), one batch per worker's first message (not
``group`` of them) -- and none of it changes the samples, their order, or the checks."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shards
from pipeline import ShardStream, StreamConfig, fetch, make_loader, split
from pipeline.chunk import rechunk
from pipeline.loader import order
from pipeline.loader.batch import _first_alone, _FirstRound, _Messages
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(120)


def sample_ids(chunks) -> list[str]:
    return [s for c in chunks for s in c.sample_ids()]


def rows(chunks) -> list[tuple[int, int]]:
    return [(s, r) for c in chunks for s, r in zip(c.shard.tolist(), c.record.tolist())]


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_a_shuffled_shard_yields_its_first_slice_before_reading_the_rest(tmp_path, monkeypatch, fmt):
    url = build_set(tmp_path, n=400, max_records=200, fmt=fmt)
    ds = ShardStream(url, shuffle=True, seed=3, config=StreamConfig(block_size=16))
    plan = split.plan(ds.manifest.shard_sizes, 0, 1, 0, 1, 3, 0, True, 16)
    shard = plan[0].shard
    slices = [s for s in plan if s.shard == shard]
    read = []
    real = shards.read_batches

    def counting(manifest, url, data, start=0, stop=None, columns=()):
        for b in real(manifest, url, data, start, stop, columns):
            read.append(len(b))
            yield b

    monkeypatch.setattr(shards, "read_batches", counting)
    data = fetch.fetch(ds, shard)
    chunks = fetch.shard_chunks(ds, shard, slices, data, want_text=True)
    first = next(chunks)
    assert rows([first]) == [(shard, r) for r in range(slices[0].start, slices[0].stop)]
    assert sum(read) == len(slices[0]), "the first slice waited for records it does not hold"
    rest = list(chunks)
    assert [len(c) for c in [first, *rest]] == [len(s) for s in slices]
    assert rows([first, *rest]) == [(shard, r) for s in slices for r in range(s.start, s.stop)]


def test_a_shard_giving_fewer_records_than_planned_is_refused(tmp_path, monkeypatch):
    url = build_set(tmp_path, n=60, max_records=30)
    ds = ShardStream(url)
    slices = [split.Slice(0, 0, 10), split.Slice(0, 10, 30)]
    real = shards.read_batches
    monkeypatch.setattr(shards, "read_batches", lambda m, u, d, lo, hi, cols: real(m, u, d, lo, hi - 5, cols))
    chunks = fetch.shard_chunks(ds, 0, slices, fetch.fetch(ds, 0), want_text=True)
    assert len(next(chunks)) == 10
    with pytest.raises(shards.CorruptShardError, match=r"records 0\.\.29 gave 25 of 30"):
        next(chunks)


def test_the_first_tokenized_chunk_is_one_batch_and_the_samples_do_not_change(tmp_path, minilm):
    url = build_set(tmp_path, n=300, max_records=100)
    ds = ShardStream(url, tokenizer=minilm, max_length=16, shuffle=True, seed=1,
                     config=StreamConfig(tokenize_batch=128, shuffle_buffer=200))
    plain, led = list(ds.chunks(0, 1)), list(ds.chunks(0, 1, lead=8))
    assert len(led[0]) == 8 and max(len(c) for c in led) <= 128
    assert sample_ids(led) == sample_ids(plain)
    ids = [np.concatenate([c.ids.values for c in chunks]) for chunks in (plain, led)]
    assert np.array_equal(ids[0], ids[1])


def round_robin(answers: list[list]) -> list[tuple[int, list]]:
    """torch's DataLoader: requests to the workers in turn; one that has run out is passed over."""
    pending, out = [list(a) for a in answers], []
    while any(pending):
        for w, left in enumerate(pending):
            if left:
                out.append((w, left.pop(0)))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=4), st.integers(2, 5))
def test_lone_first_batches_are_delivered_in_the_order_of_whole_messages(counts, group):
    def messages(w, count, lone):
        out, index = [], 0
        sizes = order.message_sizes(0, group)
        for k, size in enumerate(_first_alone(sizes) if lone else sizes):
            got = list(range(index, min(index + size, count)))
            if not got:
                if lone and k == 1:
                    out.append([])
                break
            out.append([(w, i) for i in got])
            index += len(got)
            if len(got) < size:
                break
        return out

    whole = [b for _, m in round_robin([messages(w, c, False) for w, c in enumerate(counts)]) for b in m]
    first_round, lone = _FirstRound(), []
    for w, m in round_robin([messages(w, c, True) for w, c in enumerate(counts)]):
        lone += [b for part in first_round.place(w, m) for b in part]
    assert lone == whole
    assert not first_round.held


def test_a_fresh_workers_first_message_is_one_batch(tmp_path):
    url = build_set(tmp_path, n=100, max_records=30)
    ds = ShardStream(url, shuffle=True, seed=2)
    loader = make_loader(ds, 4, num_workers=2, batches_per_message=5)
    sent = {}
    for lone in (False, True):
        with mock.patch("pipeline.world.worker", return_value=(1, 2)):
            sent[lone] = [len(made) for _, made, _, _ in _Messages(loader, loader._fresh(), [False, False], lone)]
    assert sent[False] == [5, 5, 3] and sent[True] == [1, 4, 5, 3]


@pytest.mark.parametrize("n", [8, 100])
def test_two_workers_deliver_the_order_of_whole_messages(tmp_path, n):
    url = build_set(tmp_path, n=n, max_records=30)
    ds = ShardStream(url, shuffle=True, seed=2)
    got = [list(b["sample_id"]) for b in make_loader(ds, 4, num_workers=2, batches_per_message=3)]
    mine = [[c.sample_ids() for c in rechunk(ds.chunks(w, 2), 4)] for w in range(2)]
    whole = round_robin([[b[i:i + 3] for i in range(0, len(b), 3)] for b in mine])
    assert got == [batch for _, message in whole for batch in message]
