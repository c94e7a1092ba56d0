"""Skip counts travel with the delivered batches (Chunk.skipped, loader/batch.py): a state after k
batches holds exactly the skips of those k batches, with workers and several batches per message too,
and a superseded iterator moves neither the position nor the counts (the newest one owns the state)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import ShardStream, StreamConfig, make_loader
from pipeline.chunk import concat, from_rows
from tests.helpers.data import build_set
from tests.reliability.test_hostile_loader import corrupt_shard

pytestmark = pytest.mark.timeout(120)
N = 29  # records; 5 shards of <= 7, shard 2 truncated


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    url = build_set(tmp_path_factory.mktemp("broken"), n=N, max_records=7)
    corrupt_shard(url, 2)
    return url


def make(url, **kw):
    return ShardStream(url, shuffle=True, seed=4, config=StreamConfig(on_corrupt="skip", shuffle_buffer=6), **kw)


def skip_counts(stats: dict) -> tuple[int, int]:
    return stats.get("skipped_shards", 0), stats.get("skipped_samples", 0)


def pads_from_shard(batch, shard: int) -> int:
    ids = list(batch["sample_id"])
    return sum(1 for sid, pad in zip(ids, batch["is_pad"].tolist()) if pad and sid.startswith(f"{shard:05d}:"))


@pytest.mark.parametrize("workers,per_message", [(0, 1), (2, 1), (2, 3)])
def test_every_state_holds_exactly_the_skips_of_its_batches(broken, workers, per_message):
    loader = make_loader(make(broken), batch_size=4, num_workers=workers, batches_per_message=per_message)
    delivered, states = 0, []
    for batch in loader:
        delivered += pads_from_shard(batch, 2)
        states.append((delivered, json.dumps(loader.state_dict())))
    assert delivered == 7 and skip_counts(loader.stats()) == (1, 7)
    for k, (pads, state) in enumerate(states):
        assert json.loads(state)["stats"].get("skipped_samples", 0) == pads, f"after batch {k}"
        resumed = make_loader(make(broken), batch_size=4, num_workers=workers, batches_per_message=per_message)
        resumed.load_state_dict(json.loads(state))
        for _ in resumed:
            pass
        assert skip_counts(resumed.stats()) == (1, 7), f"resumed after batch {k}"


def test_a_streams_own_state_counts_skipped_items_exactly(broken):
    whole = make(broken)
    items = list(whole)
    assert skip_counts(whole.stats) == (1, 7)
    for cut in (0, 3, 11, 20, len(items)):
        stream = make(broken)
        it = iter(stream)
        head = [next(it) for _ in range(cut)]
        state = json.loads(json.dumps(stream.state_dict()))
        skipped_head = sum(1 for i in head if i["is_pad"] and i["sample_id"].startswith("00002:"))
        assert state["stats"].get("skipped_samples", 0) == skipped_head
        rest = make(broken)
        rest.load_state_dict(state)
        list(rest)
        assert skip_counts(state["stats"])[1] + skip_counts(rest.stats)[1] == 7


@pytest.mark.parametrize("workers", [0, 2])
def test_a_superseded_iterator_moves_neither_position_nor_counts(broken, workers):
    loader = make_loader(make(broken), batch_size=4, num_workers=workers)
    full = [list(b["sample_id"]) for b in loader]
    old = iter(loader)
    head = [next(old) for _ in range(3)]
    head_pads = sum(pads_from_shard(b, 2) for b in head)  # folded into the counts when `new` starts
    old_batches = [list(b["sample_id"]) for b in head]
    new = iter(loader)
    assert [list(next(new)["sample_id"])] == full[:1]
    rest_of_old = [list(b["sample_id"]) for b in old]  # it still runs on its own, to its end
    assert old_batches + rest_of_old == full
    state = loader.state_dict()
    assert state["batches"] == 1
    assert [list(b["sample_id"]) for b in new] == full[1:]
    # the first whole epoch, the old iterator's batches before `new` was made, the newest iterator's
    assert skip_counts(loader.stats())[1] == 7 + head_pads + 7


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=6), st.data())
def test_skip_counts_survive_any_permutation_and_cut(parts, data):
    chunks = []
    for shard, (n, skipped) in enumerate(parts):
        chunk = from_rows(shard, 0, n, skipped)
        if skipped:
            marks = np.ones(n, np.int8)
            marks[0] = 2
            chunk = chunk.__class__(chunk.shard, chunk.record, chunk.is_pad, skipped=marks)
        chunks.append(chunk)
    whole = concat(chunks)
    order = np.array(data.draw(st.permutations(range(len(whole)))), dtype=np.int64)
    shuffled = whole.take(order)
    cut = data.draw(st.integers(0, len(whole)))
    head, tail = shuffled.slice(0, cut).skip_counts(), shuffled.slice(cut, len(whole)).skip_counts()
    total = {k: head.get(k, 0) + tail.get(k, 0) for k in ("skipped_shards", "skipped_samples")}
    want_shards = sum(1 for _, s in parts if s)
    want_samples = sum(n for n, s in parts if s)
    assert total == {"skipped_shards": want_shards, "skipped_samples": want_samples}
