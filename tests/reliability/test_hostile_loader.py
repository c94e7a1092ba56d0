"""Hostile review of the unified loader (pipeline/loader/, settings.py) over ShardStream: exact resume
from a state saved after EVERY batch (json round trip, across the epoch boundary, at the very end),
exactly once per epoch across simulated ranks, tampered states, iterator reuse.  Plain tests guard
right behaviour; each ``xfail(strict=True)`` proves an open hole (its reason: where, and the fix).
Packed and mixed streams: test_hostile_loader_pack.py (it uses the helpers here)."""
from __future__ import annotations

import copy
import json
import os
from collections import Counter

import numpy as np
import pytest

import shards
from pipeline import ShardStream, StreamConfig, make_loader
from pipeline.settings import ResumeError
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(120)


# -- helpers (shared with test_hostile_loader_pack.py) -----------------------------------------
def fingerprint(batch: dict) -> tuple:
    """Every field of a batch as plain lists, bit for bit (dtype included)."""
    out = []
    for key in sorted(batch):
        value = batch[key]
        if hasattr(value, "numpy"):
            value = value.numpy()
        if isinstance(value, np.ndarray):
            out.append((key, str(value.dtype), value.tolist()))
        else:  # lists of names, or a plain number (max_seqlen)
            out.append((key, list(value) if isinstance(value, (list, tuple)) else value))
    return tuple(out)


def epochs_run(loader, stream, epochs, states: list | None = None) -> list:
    """Fingerprints of ``epochs`` whole epochs; ``states`` gets the JSON state before the run and after
    each batch (so states[k] is the state after k batches, counted over all epochs)."""
    out = []
    for epoch in epochs:
        stream.set_epoch(epoch)
        if states is not None and not states:
            states.append(json.dumps(loader.state_dict()))
        for batch in loader:
            out.append(fingerprint(batch))
            if states is not None:
                states.append(json.dumps(loader.state_dict()))
    return out


def resumed_run(make, state_json: str, epochs, **loader_kw) -> list:
    """A fresh loader resumed from ``state_json``: the rest of its epoch, then the later epochs."""
    stream = make()
    loader = make_loader(stream, **loader_kw)
    state = json.loads(state_json)
    loader.load_state_dict(state)
    out = [fingerprint(b) for b in loader]
    for epoch in epochs:
        if epoch > state["epoch"]:
            stream.set_epoch(epoch)
            out += [fingerprint(b) for b in loader]
    return out


def check_every_cut(make, epochs=(0, 1), cuts=None, **loader_kw) -> int:
    """The resumed sequence from the state after k batches equals the uninterrupted one from k, for
    every k in ``cuts`` (default: all, 0 and the very end included).  Returns the batch count."""
    stream = make()
    states: list[str] = []
    full = epochs_run(make_loader(stream, **loader_kw), stream, epochs, states)
    assert len(states) == len(full) + 1
    for k in (range(len(full) + 1) if cuts is None else [c for c in cuts if c <= len(full)]):
        assert resumed_run(make, states[k], epochs, **loader_kw) == full[k:], f"cut after {k} of {len(full)}"
    return len(full)


def refused(make, state: dict, **loader_kw) -> str:
    """The one-line error a tampered state gets, at load_state_dict or at the first batch at the latest."""
    loader = make_loader(make(), **loader_kw)
    with pytest.raises(ValueError) as info:  # ResumeError is a ValueError
        loader.load_state_dict(json.loads(json.dumps(state)))
        list(loader)
    message = str(info.value)
    assert "\n" not in message and message, message
    return message


def mid_state(make, k: int = 2, **loader_kw) -> dict:
    loader = make_loader(make(), **loader_kw)
    it = iter(loader)
    for _ in range(k):
        next(it)
    return json.loads(json.dumps(loader.state_dict()))


def corrupt_shard(url: str, index: int, flip: bool = False) -> None:
    """Shard ``index`` truncated to half (or one bit flipped a third of the way in)."""
    m = shards.load_manifest(url)
    path = os.path.join(url, m.shards[index].path)
    data = bytearray(open(path, "rb").read())
    if flip:
        data[len(data) // 3] ^= 0x10
    else:
        data = data[: len(data) // 2]
    with open(path, "wb") as f:
        f.write(bytes(data))


# -- fixtures ------------------------------------------------------------------------------
N = 29  # records; 5 shards of <= 7


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return build_set(tmp_path_factory.mktemp("plain"), n=N, max_records=7)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    url = build_set(tmp_path_factory.mktemp("broken"), n=N, max_records=7)
    corrupt_shard(url, 2)
    return url


def shard_maker(url, tokenizer=None, **kw):
    config = {k: kw.pop(k) for k in ("shuffle_buffer", "group_by_length", "on_corrupt", "block_size", "verify") if k in kw}
    return lambda: ShardStream(url, tokenizer=tokenizer, max_length=16 if tokenizer else None,
                               config=StreamConfig(**config), **kw)


# -- exact resume after every batch ---------------------------------------------------------
@pytest.mark.parametrize("workers,per_message", [(0, 1), (0, 3), (2, 1), (2, 3)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shard_stream_resumes_exactly_after_every_batch(plain, minilm, workers, per_message, shuffle):
    make = shard_maker(plain, minilm, shuffle=shuffle, seed=3, shuffle_buffer=6, block_size=2)
    cuts = None if workers == 0 else [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17]  # epoch 0 is 8 batches
    assert check_every_cut(make, cuts=cuts, batch_size=4, num_workers=workers, batches_per_message=per_message) \
        == 2 * 8


@pytest.mark.parametrize("workers", [0, 2])
def test_group_by_length_resumes_exactly_after_every_batch(plain, minilm, workers):
    make = shard_maker(plain, minilm, shuffle=True, seed=5, shuffle_buffer=8, group_by_length=True)
    cuts = None if workers == 0 else [0, 1, 3, 5, 8, 9, 11, 16]
    check_every_cut(make, cuts=cuts, batch_size=3, num_workers=workers, batches_per_message=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_shard_skip_resumes_exactly_with_pads_flagged(broken, minilm, workers):
    make = shard_maker(broken, minilm, shuffle=True, seed=1, shuffle_buffer=5, on_corrupt="skip")
    cuts = None if workers == 0 else [0, 1, 2, 4, 6, 8, 12]
    check_every_cut(make, cuts=cuts, batch_size=4, num_workers=workers, batches_per_message=2)
    pads = sum(int(b["is_pad"].sum()) for b in make_loader(make(), batch_size=4, num_workers=workers))
    assert pads == shards.load_manifest(broken).shards[2].num_records


def test_bit_flipped_arrow_shard_is_skipped(tmp_path):
    url = build_set(tmp_path, n=N, max_records=7)
    corrupt_shard(url, 2, flip=True)
    loader = make_loader(shard_maker(url, on_corrupt="skip")(), batch_size=4)
    pads = sum(int(b["is_pad"].sum()) for b in loader)
    assert pads == shards.load_manifest(url).shards[2].num_records


def final_stats(make, state_json: str | None, **loader_kw) -> dict:
    loader = make_loader(make(), **loader_kw)
    if state_json is not None:
        loader.load_state_dict(json.loads(state_json))
    for _ in loader:
        pass
    return {k: v for k, v in loader.stats().items() if v}


def test_corrupt_shard_counts_survive_a_resume_exactly(broken, minilm):
    make = shard_maker(broken, minilm, on_corrupt="skip")
    whole = final_stats(make, None, batch_size=4)
    assert whole["skipped_shards"] == 1
    states: list[str] = []
    stream = make()
    epochs_run(make_loader(stream, batch_size=4), stream, (0,), states)
    for k, state in enumerate(states):
        assert final_stats(make, state, batch_size=4) == whole, f"cut after {k}"


# -- exactly once per epoch, equal steps on every rank -----------------------------------------
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_per_epoch_over_ranks(plain, world_size, workers):
    ids, steps = Counter(), set()
    for rank in range(world_size):
        stream = ShardStream(plain, shuffle=True, seed=2, rank=rank, world_size=world_size,
                             config=StreamConfig(shuffle_buffer=4, block_size=3))
        stream.set_epoch(1)
        loader = make_loader(stream, batch_size=3, num_workers=workers)
        batches = list(loader)
        steps.add(len(batches))
        assert len(batches) == len(loader)
        for b in batches:
            ids.update(s for s, pad in zip(list(b["sample_id"]), b["is_pad"].tolist()) if not pad)
    assert len(steps) == 1, steps
    assert len(ids) == N and set(ids.values()) == {1}, ids


# -- tampered states ------------------------------------------------------------------------
def tampered(state: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(state)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


SHARD_TAMPERS = [
    (("kind",), "pipeline.loader/1"), (("kind",), None), (("epoch",), -1), (("epoch",), "0"), (("epoch",), 1.0),
    (("epoch",), True), (("batches",), -1), (("batches",), 10**6), (("batches",), "2"), (("batches",), 3),
    (("last",), 5), (("last",), -1), (("last",), "0"), (("workers",), {}), (("workers",), [7]),
    (("workers",), []), (("workers", 0, "samples"), -4), (("workers", 0, "samples"), 10**6),
    (("workers", 0, "samples"), "8"), (("workers", 0, "samples"), 7), (("workers", 0, "batches"), 3),
    (("workers", 0, "batches"), None), (("settings",), None), (("settings",), []), (("settings", "seed"), 4),
    (("settings", "shuffle"), True), (("settings", "batch_size"), 2), (("settings", "identity"), "0" * 64),
    (("settings", "rank"), 1), (("settings", "world_size"), 2), (("settings", "group"), 9),
    (("stats",), []), (("segments",), {}),
]


@pytest.mark.parametrize("path,value", SHARD_TAMPERS, ids=[f"{'.'.join(map(str, p))}={v!r}" for p, v in SHARD_TAMPERS])
def test_tampered_shard_state_is_a_one_line_refusal(plain, path, value):
    make = shard_maker(plain)
    state = mid_state(make, 2, batch_size=4)
    assert state["batches"] == 2
    refused(make, tampered(state, path, value), batch_size=4)


def test_tampered_stats_values_are_refused_at_load(plain):
    make = shard_maker(plain)
    state = tampered(mid_state(make, 2, batch_size=4), ("stats", "skipped_shards"), "x")
    loader = make_loader(make(), batch_size=4)
    with pytest.raises(ResumeError):
        loader.load_state_dict(state)


def test_state_of_another_data_set_is_refused(plain, tmp_path):
    other = build_set(tmp_path, n=N, max_records=6, name="other")  # same records, other shards
    more = build_set(tmp_path, n=N + 3, max_records=7, name="more")
    for url in (other, more):
        state = mid_state(shard_maker(url), 2, batch_size=4)
        assert "identity" in refused(shard_maker(plain), state, batch_size=4)
    boundary = json.loads(json.dumps(make_loader(shard_maker(other)(), batch_size=4).state_dict()))
    assert "identity" in refused(shard_maker(plain), boundary, batch_size=4)


def test_a_streams_own_state_is_not_a_loader_state(plain):
    stream = shard_maker(plain)()
    it = iter(stream)
    for _ in range(4):
        next(it)
    own = json.loads(json.dumps(stream.state_dict()))
    for batch_size in (1, 4):
        refused(shard_maker(plain), own, batch_size=batch_size)
    loader_state = mid_state(shard_maker(plain), 4, batch_size=1)
    with pytest.raises(ResumeError):
        shard_maker(plain)().load_state_dict(loader_state)


# -- iterator reuse ---------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_two_iterations_in_a_row_give_the_same_epoch(plain, workers):
    loader = make_loader(shard_maker(plain, shuffle=True)(), batch_size=4, num_workers=workers)
    first = [fingerprint(b) for b in loader]
    assert loader.state_dict()["batches"] == len(first) == len(loader)
    assert [fingerprint(b) for b in loader] == first
    assert loader.state_dict()["batches"] == len(first)


@pytest.mark.parametrize("workers", [0, 2])
def test_abandoned_iterator_then_a_new_one_restarts_the_epoch_and_the_state_follows(plain, workers):
    make = shard_maker(plain, shuffle=True)
    loader = make_loader(make(), batch_size=4, num_workers=workers)
    full = [fingerprint(b) for b in loader]
    it = iter(loader)
    next(it), next(it), next(it)
    del it
    it = iter(loader)
    assert loader.state_dict()["batches"] == 0
    assert fingerprint(next(it)) == full[0]
    state = json.dumps(loader.state_dict())
    assert resumed_run(make, state, (0,), batch_size=4, num_workers=workers) == full[1:]


def test_a_stale_iterator_does_not_move_the_state(plain):
    make = shard_maker(plain)
    loader = make_loader(make(), batch_size=4)
    full = [fingerprint(b) for b in loader]
    old = iter(loader)
    next(old)
    new = iter(loader)
    next(new), next(new)
    next(old, None)
    state = json.dumps(loader.state_dict())
    assert resumed_run(make, state, (0,), batch_size=4) == full[2:]


def test_state_after_exhaustion_and_set_epoch(plain, caplog):
    make = shard_maker(plain, shuffle=True)
    stream = make()
    loader = make_loader(stream, batch_size=4)
    epoch0 = [fingerprint(b) for b in loader]
    end = json.dumps(loader.state_dict())
    assert json.loads(end)["batches"] == len(epoch0) and json.loads(end)["epoch"] == 0
    stream.set_epoch(1)
    epoch1 = [fingerprint(b) for b in loader]
    assert epoch1 != epoch0
    assert resumed_run(make, end, (0, 1), batch_size=4) == epoch1  # end of 0: nothing of it repeated
    resumed = make()
    again = make_loader(resumed, batch_size=4)
    again.load_state_dict(json.loads(end))
    resumed.set_epoch(1)  # set after the load: the epoch starts afresh, with a warning
    assert [fingerprint(b) for b in again] == epoch1
    assert "starts from its beginning" in caplog.text
