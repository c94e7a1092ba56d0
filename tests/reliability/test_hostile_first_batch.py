"""A hostile review of the first-batch path (lazy shard slices, a one-batch lead chunk, lone first
batches put back in the order of whole messages by ``_FirstRound``): every attack compares the
delivered order, saved states and resumes with the uninterrupted run of whole messages, and a
damaged shard's records with what the loader delivers before refusing it."""
from __future__ import annotations

import io
import json
import pathlib

import pytest

import shards
from pipeline import PackedStream, ShardStream, StreamConfig, fetch, make_loader, split
from pipeline.loader import batch as loader_batch
from tests.helpers import elastickit
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(180)


def damage_text(url: str, shard: int, needle: bytes) -> None:
    """One byte of a stored text made invalid UTF-8, size unchanged (what verify='size' lets through)."""
    path = pathlib.Path(url) / json.loads((pathlib.Path(url) / "index.json").read_text())["shards"][shard]["path"]
    data = bytearray(path.read_bytes())
    at = data.index(needle)
    data[at] = 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fmt", ["tar", "arrow"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_a_shard_damaged_in_a_later_slice_is_refused_before_any_of_its_records(tmp_path, shuffle, fmt):
    """Regression: slices yielded as read delivered 96 of the shard's records (shuffled) before the
    damaged one was read; the old whole-shard read refused it first."""
    url = build_set(tmp_path, n=120, max_records=120, fmt=fmt)  # one shard
    damage_text(url, 0, b"record number 110 ")
    ds = ShardStream(url, shuffle=shuffle, seed=1,
                     config=StreamConfig(verify="size", block_size=8, shuffle_buffer=16, tokenize_batch=16))
    delivered = []
    with pytest.raises(shards.CorruptShardError, match="shard-00000"):
        for batch in make_loader(ds, 4):
            delivered += list(batch["sample_id"])
    assert delivered == [], f"{len(delivered)} records of the damaged shard delivered before it was refused"


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_deliver_none_of_a_damaged_shard(tmp_path, workers):
    url = build_set(tmp_path, n=60, max_records=12, fmt="tar")  # five shards; shard 2 holds records 24..35
    damage_text(url, 2, b"record number 34 ")
    ds = ShardStream(url, shuffle=True, seed=1, config=StreamConfig(verify="size", block_size=4, shuffle_buffer=8))
    delivered = []
    with pytest.raises(shards.CorruptShardError, match="shard-00002"):
        for batch in make_loader(ds, 2, num_workers=workers, batches_per_message=3):
            delivered += list(batch["sample_id"])
    assert not [s for s in delivered if s.startswith("00002:")]


def test_a_shard_short_of_its_last_samples_is_refused_before_any_of_its_records(tmp_path):
    import tarfile

    url = build_set(tmp_path, n=120, max_records=120, fmt="tar")
    path = next(pathlib.Path(url).glob("*.tar"))
    with tarfile.open(path) as whole:
        members = [(m, whole.extractfile(m).read()) for m in whole.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as short:  # the last two samples dropped
        for member, payload in members[:-4]:
            short.addfile(member, io.BytesIO(payload))
    ds = ShardStream(url, shuffle=True, seed=1, config=StreamConfig(verify="none", block_size=8, shuffle_buffer=16))
    delivered = []
    with pytest.raises(shards.CorruptShardError, match="shard-00000.*118 records"):
        for batch in make_loader(ds, 4, num_workers=2, batches_per_message=3):
            delivered += list(batch["sample_id"])
    assert delivered == []


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_a_shuffled_shard_is_read_in_a_few_passes_not_one_per_block(tmp_path, monkeypatch, fmt):
    """Regression: a reader call per run of adjacent blocks (100 here); an Arrow call walks the file from
    its first record batch, so a big shard with small blocks cost O(blocks x batches) (1.2-1.6 s of CPU
    for 200k records, block_size=64, against 0.07 s).  Only the first window's blocks are read one run at
    a time, the rest in one pass; the records delivered are the plan's, in its order."""
    url = build_set(tmp_path, n=400, max_records=400, fmt=fmt)
    ds = ShardStream(url, shuffle=True, seed=5, config=StreamConfig(block_size=4, shuffle_buffer=16))
    slices = split.plan(ds.manifest.shard_sizes, 0, 1, 0, 1, 5, 0, True, 4)
    calls, real = [], shards.read_batches

    def counting(*args, **kw):
        calls.append(args[3:5])
        return real(*args, **kw)

    monkeypatch.setattr(shards, "read_batches", counting)
    chunks = list(fetch.shard_chunks(ds, 0, slices, fetch.fetch(ds, 0), want_text=True))
    rows = [(s, r) for c in chunks for s, r in zip(c.shard.tolist(), c.record.tolist())]
    assert rows == [(0, r) for s in slices for r in range(s.start, s.stop)]
    assert [len(c) for c in chunks] == [len(s) for s in slices]
    assert len(slices) == 100 and len(calls) <= 4 + 1, f"{len(calls)} reader calls for {len(slices)} blocks"


# -- the first round: order, states and resumes against whole messages -------------------------------------------
class _WholeMessages(loader_batch._Messages):
    """The loader before the change: every message whole, the first one too."""

    def __init__(self, loader, positions, lead, lone=False):
        super().__init__(loader, positions, lead, False)


class _AsTheyCome:
    def place(self, worker_id, answer):
        return [answer]


def fingerprint(batch) -> str:
    return json.dumps({k: v.tolist() if hasattr(v, "tolist") else v for k, v in sorted(batch.items())})


def samples(run: list[tuple[str, str]]) -> list[str]:
    """The real (not pad) samples a ShardStream run delivered."""
    return [s for b, _ in run for s, pad in zip(json.loads(b)["sample_id"], json.loads(b)["is_pad"]) if not pad]


def steps(make, batch, workers, group, epochs=(0,), state=None, all_ranks=None) -> list[tuple[str, str]]:
    """(batch, state saved after it) for every batch a fresh loader delivers, resumed from ``state``."""
    ds = make()
    loader = make_loader(ds, batch, num_workers=workers, batches_per_message=group,
                         collate_fn=ds.collator() if isinstance(ds, PackedStream) else None)
    if state is not None:
        loader.load_state_dict(json.loads(state), all_ranks=all_ranks)
        epochs = [e for e in epochs if e > json.loads(state)["epoch"]]
        out = [(fingerprint(b), json.dumps(loader.state_dict(), sort_keys=True)) for b in loader]
    else:
        out = []
    for epoch in epochs:
        ds.set_epoch(epoch)
        out += [(fingerprint(b), json.dumps(loader.state_dict(), sort_keys=True)) for b in loader]
    return out


def assert_first_round_exact(monkeypatch, make, batch, workers, group, epochs=(0,), cuts=(1, 2, 3, 4, 5, 7),
                             resumed=None, start=None, all_ranks=None):
    """Batches and every saved state as with whole messages; a resume from a state saved inside the
    first round (and again from one saved right after that resume) continues exactly (``resumed``:
    what of a run is compared after a resume; default all of it).  ``start``, ``all_ranks``: the
    run compared is itself resumed from there (elastically when the topology differs)."""
    resumed = resumed or (lambda run: run)
    new = steps(make, batch, workers, group, epochs, start, all_ranks)
    with monkeypatch.context() as m:
        m.setattr(loader_batch, "_Messages", _WholeMessages)
        m.setattr(loader_batch, "_FirstRound", _AsTheyCome)
        whole = steps(make, batch, workers, group, epochs, start, all_ranks)
    assert [b for b, _ in new] == [b for b, _ in whole], "delivered order differs from whole messages"
    assert [s for _, s in new] == [s for _, s in whole], "a saved state differs from whole messages"
    for cut in [c for c in cuts if c < len(new)]:
        rest = steps(make, batch, workers, group, epochs, state=new[cut - 1][1])
        assert resumed(rest) == resumed(new[cut:]), f"resumed after batch {cut}: batches or states differ"
        if rest:
            again = steps(make, batch, workers, group, epochs, state=rest[0][1])
            assert resumed(again) == resumed(new[cut + 1:]), f"resumed again after batch {cut + 1}: batches or states differ"
    return new


def shard_stream(url, **kw):
    config = StreamConfig(shuffle_buffer=6, block_size=3, tokenize_batch=5, **kw.pop("config", {}))
    return lambda: ShardStream(url, shuffle=True, seed=4, config=config, **kw)


@pytest.mark.parametrize("n,batch,workers,group", [
    (29, 2, 2, 3),   # uneven workers, several messages each
    (29, 2, 3, 3),   # three workers: two lone batches held at once
    (31, 3, 3, 2),   # the rest of a first message is one batch
    (5, 2, 3, 4),    # every worker has exactly one batch: each answers its lone one, then an empty message
    (2, 1, 3, 2),    # a worker with no batch at all
    (7, 2, 2, 8),    # every worker's whole epoch inside its first message
])
def test_first_round_order_states_and_resumes_are_those_of_whole_messages(tmp_path, monkeypatch, n, batch, workers,
                                                                          group):
    url = build_set(tmp_path, n=n, max_records=4)
    assert_first_round_exact(monkeypatch, shard_stream(url), batch, workers, group)


def test_every_epoch_has_its_own_first_round(tmp_path, monkeypatch):
    url = build_set(tmp_path, n=17, max_records=4)
    new = assert_first_round_exact(monkeypatch, shard_stream(url), 2, 2, 3, epochs=(0, 1), cuts=(1, 2, 9, 10, 11, 12))
    assert len(new) == 2 * 9


def test_no_workers_resume_anywhere(tmp_path, monkeypatch):
    url = build_set(tmp_path, n=13, max_records=4)
    assert_first_round_exact(monkeypatch, shard_stream(url), 2, 0, 3, cuts=(1, 2, 3))


def test_grouped_by_length_first_round(tmp_path, monkeypatch, minilm):
    url = build_set(tmp_path, n=40, max_records=7)
    make = shard_stream(url, tokenizer=minilm, max_length=12, config={"group_by_length": True})
    assert_first_round_exact(monkeypatch, make, 2, 2, 3, cuts=(1, 2, 3))


def test_packed_first_round(tmp_path, monkeypatch, minilm):
    """Resumes compared with their stats too: a packed stream counts a document, block or token as its
    position passes it (pack/counts.py), so a resume does not count again the chunk it re-reads."""
    url = elastickit.build_docs(tmp_path, minilm)
    assert_first_round_exact(monkeypatch, lambda: elastickit.packed(url, 0, 1), 2, 2, 3, cuts=(1, 2, 3))


def test_mixed_first_round(tmp_path, monkeypatch):
    urls = [build_set(tmp_path, n=n, max_records=4, name=f"s{n}") for n in elastickit.SIZES]
    assert_first_round_exact(monkeypatch, lambda: elastickit.mixture(urls, 0, 1), 2, 3, 3, cuts=(1, 2, 3))


def test_ranks_with_pads_take_equal_steps_and_every_sample_once(tmp_path, monkeypatch):
    url = build_set(tmp_path, n=29, max_records=4)
    runs = [assert_first_round_exact(monkeypatch, shard_stream(url, rank=r, world_size=2), 2, 2, 3) for r in range(2)]
    assert len(runs[0]) == len(runs[1])
    got = samples(runs[0]) + samples(runs[1])
    assert sorted(got) == sorted(set(got)) and len(got) == 29


@pytest.mark.parametrize("cut", [1, 2, 4])
def test_elastic_resume_of_a_state_saved_inside_the_first_round(tmp_path, monkeypatch, cut):
    """Saved after ``cut`` batches of 2 workers (batch 2), resumed on 3 workers (batch 3): the resumed
    stretch is a fresh first round of its own, resumed and resumed again exactly; every sample once."""
    url = build_set(tmp_path, n=29, max_records=4)
    make = shard_stream(url)
    before = steps(make, 2, 2, 3)[:cut]
    state = before[-1][1]
    after = assert_first_round_exact(monkeypatch, make, 3, 3, 2, start=state, all_ranks=[json.loads(state)])
    got = samples(before) + samples(after)
    assert sorted(got) == sorted(set(got)) and len(got) == 29
