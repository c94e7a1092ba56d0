"""Every setting that decides the order is in the state and checked (issue 14, item 2).

A mid-epoch state resumed under another seed, shuffle, shuffle window, block
size, batch size, world size, worker count, tokenizer/max_length (packed
blocks) or over other data (same size, other content) would repeat some
samples and skip others; each is refused naming the old and the new value.  A
ShardStream's world size, workers and batch size resume elastically instead, given
every old rank's state (pipeline/loader/elastic_state.py); packed and mixed streams
still refuse them.
Counters out of range are refused in every loader mode.
"""
from __future__ import annotations

import json
from itertools import islice

import pytest

from pipeline import MixedStream, PackedStream, ShardStream, StreamConfig, make_loader
from tests.conftest import build_set, write_jsonl

N = 60
BASE = dict(shuffle=True, seed=3, rank=0, world_size=2)
CFG = dict(shuffle_buffer=10, block_size=4)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-settings")
    a = build_set(root, n=N, max_records=7, name="a")
    b = build_set(root, n=N // 2, max_records=7, name="b")
    return {"a": a, "b": b, "a_other": _same_size_other_content(root, a)}


def _same_size_other_content(root, url):
    """The same number of records and shards as ``url``, other texts: only the identity tells them apart."""
    from shards.build.driver import BuildConfig, build
    from shards.build.writer import Limits
    from shards.corpus.read import CorpusSpec

    src = write_jsonl(root / "other-src" / "data.jsonl",
                      [{"text": f"another text {i}", "label": ("neg", "pos")[i % 2]} for i in range(N)])
    build([src], BuildConfig(out=str(root / "other"), format="arrow", spec=CorpusSpec(label_field="label"),
                             limits=Limits(max_records=7)))
    mine, other = (json.load(open(f"{u}/index.json")) for u in (url, str(root / "other")))
    assert mine["num_records"] == other["num_records"] and len(mine["shards"]) == len(other["shards"])
    return str(root / "other")


def stream(url, *, config=None, **kw):
    return ShardStream(url, **{**BASE, **kw}, config=StreamConfig(**{**CFG, **(config or {})}))


# (what changes, ShardStream kwargs, StreamConfig overrides, loader overrides, "old, new" in the message)
CHANGES = [
    ("seed", {"seed": 4}, {}, {}, "seed was 3, now 4"),
    ("shuffle", {"shuffle": False}, {}, {}, "shuffle was True, now False"),
    ("shuffle_buffer", {}, {"shuffle_buffer": 12}, {}, "shuffle_buffer was 10, now 12"),
    ("block_size", {}, {"block_size": 5}, {}, "block_size was 4, now 5"),
    ("world_size", {"world_size": 3}, {}, {}, "world_size was 2, now 3"),
    ("rank", {"rank": 1}, {}, {}, "rank was 0, now 1"),
]
LOADER_CHANGES = [c for c in CHANGES if c[0] != "world_size"]  # the topology resumes elastically (below)
ELASTIC_CHANGES = [("world_size", {"world_size": 3}, {}), ("batch_size", {}, {"batch": 5}),
                   ("num_workers", {}, {"workers": "other"})]


def saved_loader_state(url, workers, cut=2, rank=0):
    loader = make_loader(stream(url, rank=rank), 4, num_workers=workers)
    for k, _ in enumerate(loader, start=1):
        if k == cut:
            return json.loads(json.dumps(loader.state_dict()))
    raise AssertionError("epoch shorter than the cut")


@pytest.fixture(scope="module", params=[0, 2], ids=["workers0", "workers2"])
def loader_state(request, sets):
    return request.param, saved_loader_state(sets["a"], request.param)


@pytest.mark.parametrize("name,kw,cfg,lkw,message", LOADER_CHANGES, ids=[c[0] for c in LOADER_CHANGES])
def test_batch_loader_refuses_each_changed_setting(sets, loader_state, name, kw, cfg, lkw, message):
    workers, state = loader_state
    new_workers = (2 if workers == 0 else 0) if lkw.get("workers") == "other" else workers
    loader = make_loader(stream(sets["a"], config=cfg, **kw), lkw.get("batch", 4), num_workers=new_workers)
    with pytest.raises(ValueError, match="cannot resume mid-epoch") as err:
        loader.load_state_dict(state)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name,kw,lkw", ELASTIC_CHANGES, ids=[c[0] for c in ELASTIC_CHANGES])
def test_batch_loader_resumes_a_changed_topology_elastically(sets, name, kw, lkw):
    """A ShardStream's world size, workers or batch size may change mid-epoch (pipeline/elastic.py):
    with only one rank's state it is refused naming what is needed; with every rank's it resumes,
    the new stretch recording the old one as a segment."""
    states = [saved_loader_state(sets["a"], 0, rank=rank) for rank in range(2)]
    def fresh(rank=0):
        world = kw.get("world_size", 2)
        return make_loader(stream(sets["a"], rank=rank, world_size=world), lkw.get("batch", 4),
                           num_workers=2 if lkw.get("workers") else 0)
    with pytest.raises(ValueError, match=r"needs every old rank's state \(none given, 2 needed\)") as err:
        fresh().load_state_dict(states[0])
    assert "\n" not in str(err.value)
    loader = fresh()
    loader.load_state_dict(states[0], all_ranks=states)
    resumed = loader.state_dict()
    assert resumed["segments"] == [{"world": 2, "workers": 1, "batch_size": 4, "window": 10,
                                    "delivered": [[8], [8]]}]
    assert resumed["batches"] == 0 and resumed["settings"]["world_size"] == kw.get("world_size", 2)


def test_batch_loader_refuses_other_data_of_the_same_size(sets, loader_state):
    workers, state = loader_state
    loader = make_loader(stream(sets["a_other"]), 4, num_workers=workers)
    with pytest.raises(ValueError, match="identity was '[0-9a-f]{16}', now '[0-9a-f]{16}'"):
        loader.load_state_dict(state)
    boundary = {**state, "batches": 0}  # nothing of the epoch delivered: still other data
    with pytest.raises(ValueError, match="cannot resume over other data: .*identity was"):
        make_loader(stream(sets["a_other"]), 4, num_workers=workers).load_state_dict(boundary)


@pytest.mark.parametrize("batches", [-1, 10_000, "3", 2.0, True, None])
def test_batch_loader_refuses_counters_out_of_range(sets, loader_state, batches):
    workers, state = loader_state
    loader = make_loader(stream(sets["a"]), 4, num_workers=workers)
    with pytest.raises(ValueError, match=r"batches=.* is out of range \(valid: 0\.\.\d+\)|batches=.* out of range"):
        loader.load_state_dict({**state, "batches": batches})


def test_batches_past_the_end_never_end_the_epoch_silently(sets, loader_state):
    workers, state = loader_state
    done = make_loader(stream(sets["a"]), 4, num_workers=workers)
    end = sum(1 for _ in done)
    assert end == len(done)
    loader = make_loader(stream(sets["a"]), 4, num_workers=workers)
    loader.load_state_dict(done.state_dict())  # the exact end is a position: nothing left
    assert list(loader) == []
    with pytest.raises(ValueError, match=f"batches={end + 1} is out of range \\(valid: 0..{end}\\)"):
        make_loader(stream(sets["a"]), 4, num_workers=workers).load_state_dict({**state, "batches": end + 1})


def test_an_epoch_boundary_state_loads_under_another_layout(sets, loader_state):
    workers, state = loader_state
    boundary = {**state, "batches": 0}
    loader = make_loader(stream(sets["a"], world_size=3, seed=9), 5, num_workers=2 - workers)
    loader.load_state_dict(boundary)
    ids = [s for b in loader for s, pad in zip(b["sample_id"], b["is_pad"].tolist()) if not pad]
    assert len(ids) == len(set(ids)) == N // 3


def test_a_state_from_the_previous_version_is_refused_mid_epoch_only(sets, loader_state):
    workers, state = loader_state
    settings = {k: v for k, v in state["settings"].items() if k not in ("shuffle_buffer", "block_size", "identity")}
    old = {**state, "settings": settings}
    loader = make_loader(stream(sets["a"]), 4, num_workers=workers)
    with pytest.raises(ValueError, match="shuffle_buffer was not recorded, now 10.*older version"):
        loader.load_state_dict(old)
    loader.load_state_dict({**old, "batches": 0})  # an epoch boundary: nothing to repeat or skip
    assert sum(1 for _ in loader) == len(loader)


# -- ShardStream's own per-sample state --------------------------------------------------
def with_settings(state: dict, **changed) -> dict:
    return {**state, "settings": {**state["settings"], **changed}}


def with_position(state: dict, **changed) -> dict:
    """``state`` with worker 0's position changed (batches too when it is a count of samples)."""
    return {**state, "workers": [{**state["workers"][0], **changed}, *state["workers"][1:]]}


@pytest.fixture(scope="module")
def sample_state(sets):
    ds = stream(sets["a"])
    list(islice(iter(ds), 7))
    return json.loads(json.dumps(ds.state_dict()))


@pytest.mark.parametrize("name,kw,cfg,lkw,message", CHANGES, ids=[c[0] for c in CHANGES])
def test_shard_stream_refuses_each_changed_setting(sets, sample_state, name, kw, cfg, lkw, message):
    with pytest.raises(ValueError, match="cannot resume mid-epoch") as err:
        stream(sets["a"], config=cfg, **kw).load_state_dict(sample_state)
    assert message in str(err.value)


def test_shard_stream_refuses_other_data_workers_and_counters(sets, sample_state):
    with pytest.raises(ValueError, match="identity was"):
        stream(sets["a_other"]).load_state_dict(sample_state)
    ds = stream(sets["a"])
    ds.load_state_dict(with_settings(sample_state, worker=1, num_workers=2))  # saved by worker 1 of 2
    with pytest.raises(ValueError, match="worker was 1, now 0; num_workers was 2, now 1"):
        iter(ds)
    with pytest.raises(ValueError, match=r"worker=5 is out of range \(valid: 0..1\)"):
        ds.load_state_dict(with_settings(sample_state, worker=5, num_workers=2))
    for consumed in (-1, "7", 1.5):
        with pytest.raises(ValueError, match="batches=.* is out of range"):
            stream(sets["a"]).load_state_dict({**sample_state, "batches": consumed})
        with pytest.raises(ValueError, match="samples=.* is out of range"):
            stream(sets["a"]).load_state_dict(with_position(sample_state, samples=consumed))
    past = stream(sets["a"])
    beyond = N // 2 + 1  # this rank has N/2 samples
    past.load_state_dict({**with_position(sample_state, samples=beyond, batches=beyond), "batches": beyond})
    with pytest.raises(ValueError, match=f"samples={beyond} is out of range \\(valid: 0..{N // 2}\\)"):
        iter(past)


def test_shard_stream_resumes_exactly_with_the_same_settings(sets, sample_state):
    full = [it["sample_id"] for it in stream(sets["a"])]
    ds = stream(sets["a"])
    ds.load_state_dict(sample_state)
    assert full[:7] + [it["sample_id"] for it in ds] == full


# -- PackedStream ---------------------------------------------------------------------------
def packed(url, minilm, *, tokenizer=None, max_length=32, config=None, **kw):
    inner = ShardStream(url, tokenizer=tokenizer or minilm, max_length=max_length, **{**BASE, **kw},
                        config=StreamConfig(**{**CFG, "tokenize_batch": 4, "keep_text": False, **(config or {})}))
    return PackedStream(inner, seq_len=16, sep_id=102, chunk_tokens=40)


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "[SEP]": 102, "record": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


@pytest.fixture(scope="module")
def packed_state(sets, minilm):
    ds = packed(sets["a"], minilm)
    it = iter(ds)
    next(it), next(it), next(it)
    state = json.loads(json.dumps(ds.state_dict()))
    position = state["workers"][0]
    assert state["batches"] == 3 and (position["inner"] is not None or position["skip"] or position["offset"])
    return state


PACKED_CHANGES = CHANGES + [
    ("max_length", {"max_length": 20}, {}, {}, "max_length was 32, now 20"),
    ("tokenizer", {"tokenizer": "word"}, {}, {}, "tokenizer was '"),
]


@pytest.mark.parametrize("name,kw,cfg,lkw,message", PACKED_CHANGES, ids=[c[0] for c in PACKED_CHANGES])
def test_packed_stream_refuses_each_changed_setting(sets, minilm, packed_state, name, kw, cfg, lkw, message):
    if kw.get("tokenizer") == "word":
        kw = {**kw, "tokenizer": _word_tokenizer()}
    with pytest.raises(ValueError, match="cannot resume mid-epoch: packed state") as err:
        packed(sets["a"], minilm, config=cfg, **kw).load_state_dict(packed_state)
    assert message in str(err.value)


def test_packed_stream_refuses_other_data_and_bad_counters(sets, minilm, packed_state):
    with pytest.raises(ValueError, match="identity was"):
        packed(sets["a_other"], minilm).load_state_dict(packed_state)
    for key, value in (("skip", -1), ("offset", "2"), ("blocks", 9)):
        with pytest.raises(ValueError, match=f"{key}=.* is out of range|has 9 blocks in 3 batches"):
            packed(sets["a"], minilm).load_state_dict(with_position(packed_state, **{key: value}))
    with pytest.raises(ValueError, match="epoch=-3 is out of range"):
        packed(sets["a"], minilm).load_state_dict({**packed_state, "epoch": -3})


def test_packed_loader_refuses_another_batch_size_or_worker_count(sets, minilm):
    ds = packed(sets["a"], minilm)
    loader = make_loader(ds, 2, num_workers=0)
    next(iter(loader))
    state = loader.state_dict()
    # another batch size or worker count is an elastic resume: it needs every old rank's state
    with pytest.raises(ValueError, match=r"every old rank's state \(none given, 2 needed\)"):
        make_loader(packed(sets["a"], minilm), 3, num_workers=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"every old rank's state \(none given, 2 needed\)"):
        make_loader(packed(sets["a"], minilm), 2, num_workers=2).load_state_dict(state)
    with pytest.raises(ValueError, match="batches=-1 is out of range"):
        make_loader(packed(sets["a"], minilm), 2, num_workers=0).load_state_dict({**state, "batches": -1})
    older = {**state, "settings": {k: v for k, v in state["settings"].items() if k != "batch_size"}}
    with pytest.raises(ValueError, match="batch_size was not recorded, now 2.*older version"):
        make_loader(packed(sets["a"], minilm), 2, num_workers=0).load_state_dict(older)


# -- MixedStream ----------------------------------------------------------------------------
def mixture(sets, a="a", mix_seed=1, **kw):
    return MixedStream([(stream(sets[a], **kw), 1.0), (stream(sets["b"], **kw), 1.0)], seed=mix_seed, stop="drain")


@pytest.fixture(scope="module")
def mixed_state(sets):
    m = mixture(sets)
    list(islice(iter(m), 9))
    state = json.loads(json.dumps(m.state_dict()))
    assert all(s is not None for s in state["workers"][0]["sources"]), "both sources started"
    return state


MIXED_CHANGES = CHANGES + [("mixture seed", {"mix_seed": 2}, {}, {}, "seed was 1, now 2")]


@pytest.mark.parametrize("name,kw,cfg,lkw,message", MIXED_CHANGES, ids=[c[0] for c in MIXED_CHANGES])
def test_mixed_stream_refuses_each_changed_setting(sets, mixed_state, name, kw, cfg, lkw, message):
    with pytest.raises(ValueError, match="cannot resume mid-epoch") as err:
        mixture(sets, config=cfg, **kw).load_state_dict(mixed_state)
    assert message in str(err.value)


def test_mixed_stream_refuses_other_data_and_resumes_exactly(sets, mixed_state):
    with pytest.raises(ValueError, match="identities was"):
        mixture(sets, a="a_other").load_state_dict(mixed_state)
    full = [(it["source"], it["sample_id"]) for it in mixture(sets)]
    m = mixture(sets)
    m.load_state_dict(mixed_state)
    assert full[:9] + [(it["source"], it["sample_id"]) for it in m] == full


def test_packed_loader_epoch_boundary_state_loads_under_another_worker_count(sets, minilm):
    def started(loader):
        return sorted(sid for b in loader for sid in b["started_ids"])

    ds = packed(sets["a"], minilm)
    ds.set_epoch(1)
    loader = make_loader(ds, 2, num_workers=0)
    state = loader.state_dict()  # made with the iterator: nothing delivered yet
    epoch1 = started(loader)
    epoch0 = started(make_loader(packed(sets["a"], minilm), 2, num_workers=0))
    assert epoch1 != epoch0 and len(epoch1) == N // 2
    other = packed(sets["a"], minilm)
    resumed = make_loader(other, 2, num_workers=2)
    resumed.load_state_dict(state)  # the epoch it names starts afresh under two workers
    assert started(resumed) == epoch1
    with pytest.raises(ValueError, match="cannot resume over other data"):
        make_loader(packed(sets["a_other"], minilm), 2, num_workers=2).load_state_dict(state)


def test_packed_loader_with_workers_refuses_unknown_workers_and_bad_counters(sets, minilm):
    loader = make_loader(packed(sets["a"], minilm), 2, num_workers=2)
    it = iter(loader)
    next(it), next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    del it
    assert state["kind"] == "pipeline.loader/2" and len(state["workers"]) == 2

    def load(**change):
        make_loader(packed(sets["a"], minilm), 2, num_workers=2).load_state_dict({**state, **change})

    def at(**position):
        return [{**state["workers"][0], **position}, state["workers"][1]]

    with pytest.raises(ValueError, match=r"3 worker positions, this loader has 2"):
        load(workers=state["workers"] + [state["workers"][0]])
    with pytest.raises(ValueError, match=r"last=5 is out of range \(valid: 0..1\)"):
        load(last=5)
    with pytest.raises(ValueError, match=r"workers\[0\]\.offset=-2 is out of range"):
        load(workers=at(offset=-2))
    with pytest.raises(ValueError, match="not the sum of the workers' batches"):
        load(workers=at(batches=state["workers"][0]["batches"] + 1))
    load()  # the state as saved loads
