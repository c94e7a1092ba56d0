"""Hostile review of the unified loader over PackedStream and MixedStream: exact resume after every
batch (json round trip, across the epoch boundary), every token of every document exactly once,
tampered positions.  Plain tests guard right behaviour; each ``xfail(strict=True)`` proves an open
hole (its reason: where, and the fix).  Helpers: test_hostile_loader.py."""
from __future__ import annotations

from collections import Counter

import pytest

from pipeline import ShardStream, StreamConfig, make_loader
from pipeline.mix import MixedStream
from pipeline.pack.stream import PackedStream
from tests.helpers.data import build_set
from tests.reliability.test_hostile_loader import (
    check_every_cut,
    corrupt_shard,
    mid_state,
    refused,
    tampered,
)

pytestmark = pytest.mark.timeout(120)
N = 23


@pytest.fixture(scope="module")
def sets(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("hostile-pack")
    broken = build_set(root, n=N, max_records=5, name="broken")
    corrupt_shard(broken, 1)
    return {"text": build_set(root, n=N, max_records=5, name="text"),
            "ids": build_set(root, n=N, max_records=5, tokenizer=minilm, name="ids"),
            "large": build_set(root, n=31, max_records=6, name="large"),
            "broken": broken}


def packed_maker(url, minilm, seq_len=8, split=True, chunk_tokens=24, rank=None, world_size=None, **stream_kw):
    def make():
        inner = ShardStream(url, tokenizer=minilm, shuffle=True, seed=2, rank=rank, world_size=world_size,
                            config=StreamConfig(keep_text=False, shuffle_buffer=6, **stream_kw))
        return PackedStream(inner, seq_len=seq_len, split_documents=split, chunk_tokens=chunk_tokens)
    return make


# -- exact resume after every batch ---------------------------------------------------------
PACKS = [("text", 8, True), ("text", 8, False), ("text", 32, True), ("text", 32, False), ("ids", 4, True),
         ("ids", 5, False)]  # documents are ~10 tokens: seq_len below and above that


@pytest.mark.parametrize("source,seq_len,split", PACKS)
@pytest.mark.parametrize("workers,per_message", [(0, 1), (0, 3), (2, 2)])
def test_packed_resumes_exactly_after_every_batch(sets, minilm, source, seq_len, split, workers, per_message):
    make = packed_maker(sets[source], minilm, seq_len, split)
    cuts = None if workers == 0 else [0, 1, 4, 13]
    total = check_every_cut(make, cuts=cuts, batch_size=3, num_workers=workers, batches_per_message=per_message)
    assert total >= 4


@pytest.mark.parametrize("workers", [0, 2])
def test_packed_with_a_skipped_corrupt_shard_resumes_exactly(sets, minilm, workers):
    make = packed_maker(sets["broken"], minilm, on_corrupt="skip")
    check_every_cut(make, cuts=None if workers == 0 else [0, 1, 3, 6], batch_size=2, num_workers=workers,
                    batches_per_message=2)


def mixed_maker(sets, minilm, stop, packed=False):
    def make():
        sources = [ShardStream(sets[name], tokenizer=minilm, max_length=16, shuffle=True, seed=i,
                               config=StreamConfig(keep_text=False, shuffle_buffer=5))
                   for i, name in enumerate(("text", "large"))]
        if packed:
            sources = [PackedStream(s, seq_len=8, chunk_tokens=16) for s in sources]
        return MixedStream([(sources[0], 0.6), (sources[1], 0.4)], seed=7, stop=stop)
    return make


@pytest.mark.parametrize("stop", ["first_exhausted", "cycle", "drain"])
@pytest.mark.parametrize("workers,per_message", [(0, 1), (0, 4), (2, 2)])
def test_mixed_resumes_exactly_after_every_batch(sets, minilm, stop, workers, per_message):
    make = mixed_maker(sets, minilm, stop)
    cuts = None if workers == 0 else [0, 1, 3, 13]
    epochs = (0,) if stop == "cycle" else (0, 1)  # cycle across the boundary: the xfail below
    check_every_cut(make, epochs, cuts=cuts, batch_size=3, num_workers=workers, batches_per_message=per_message)


@pytest.mark.parametrize("packed", [False, True])
def test_cycle_mixture_resumed_at_the_epoch_end_reads_the_next_epoch_exactly(sets, minilm, packed):
    cycle_across_the_boundary(sets, minilm, packed, workers=0)


def test_cycle_mixture_with_workers_resumed_at_the_epoch_end(sets, minilm):
    cycle_across_the_boundary(sets, minilm, False, workers=2)  # fresh worker processes: no stale seek


def cycle_across_the_boundary(sets, minilm, packed, workers):
    make = mixed_maker(sets, minilm, "cycle", packed)
    per_epoch = len(list(make_loader(make(), batch_size=3, num_workers=workers)))
    check_every_cut(make, (0, 1), cuts=[per_epoch - 1, per_epoch, per_epoch + 1], batch_size=3,
                    num_workers=workers, batches_per_message=1)


@pytest.mark.parametrize("stop", ["cycle", "drain"])
def test_mixture_of_packed_streams_resumes_exactly_after_every_batch(sets, minilm, stop):
    make = mixed_maker(sets, minilm, stop, packed=True)
    check_every_cut(make, (0,) if stop == "cycle" else (0, 1), batch_size=2, num_workers=0, batches_per_message=3)


# -- every token of every document exactly once -----------------------------------------------
def doc_tokens(url, minilm, rank, world_size) -> dict:
    """Each real document's tokens as PackedStream should pack them (specials stripped, sep added)."""
    stream = ShardStream(url, tokenizer=minilm, shuffle=True, seed=2, rank=rank, world_size=world_size,
                         config=StreamConfig(keep_text=False, shuffle_buffer=6))
    out = {}
    for item in stream:
        if not item["is_pad"]:
            out[item["sample_id"]] = [int(t) for t in item["input_ids"]][1:]  # [CLS] off; [SEP] is the separator
    return out


@pytest.mark.parametrize("seq_len,split", [(4, True), (8, False), (32, False)])
@pytest.mark.parametrize("world_size,workers", [(1, 2), (2, 0), (3, 2)])
def test_every_token_of_every_document_once(sets, minilm, seq_len, split, world_size, workers):
    seen_docs = Counter()
    for rank in range(world_size):
        make = packed_maker(sets["text"], minilm, seq_len, split, rank=rank, world_size=world_size)
        want = doc_tokens(sets["text"], minilm, rank, world_size)
        got: dict = {}
        for batch in make_loader(make(), batch_size=2, num_workers=workers):
            real = batch["attention_mask"].bool()
            assert (batch["labels"][~real] == -100).all() and (batch["doc_ids"][~real] == -1).all()
            for row, names in zip(range(len(batch["input_ids"])), batch["sample_ids"]):
                ids, docs = batch["input_ids"][row], batch["doc_ids"][row]
                for d, name in enumerate(names):
                    got.setdefault(name, []).extend(ids[docs == d].tolist())
            seen_docs.update(s for s in batch["started_ids"])
        assert got == want, f"rank {rank}"
    assert len(seen_docs) == N and set(seen_docs.values()) == {1}


# -- tampered positions -------------------------------------------------------------------------
PACK_TAMPERS = [(("workers", 0, "skip"), -1), (("workers", 0, "offset"), "3"), (("workers", 0, "blocks"), 10**6),
                (("settings", "seq_len"), 4), (("settings", "split_documents"), False),
                (("settings", "tokenizer"), "0" * 64), (("settings", "sep_id"), 0)]


@pytest.mark.parametrize("path,value", PACK_TAMPERS, ids=[f"{'.'.join(map(str, p))}={v!r}" for p, v in PACK_TAMPERS])
def test_tampered_packed_state_is_a_one_line_refusal(sets, minilm, path, value):
    make = packed_maker(sets["text"], minilm)
    state = mid_state(make, 5, batch_size=2)
    refused(make, tampered(state, path, value), batch_size=2)


@pytest.mark.parametrize("key,value", [("offset", 500), ("skip", 10**5)])
def test_packed_offset_or_skip_past_the_data_is_refused(sets, minilm, key, value):
    make = packed_maker(sets["text"], minilm, seq_len=4)
    state = mid_state(make, 3, batch_size=1)
    assert state["workers"][0]["offset"] > 0  # seq_len 4 < documents: the cut is inside one
    refused(make, tampered(state, ("workers", 0, key), value), batch_size=1)


@pytest.mark.parametrize("inner", ["x", None])
def test_tampered_packed_inner_position_is_a_one_line_refusal(sets, minilm, inner):
    make = packed_maker(sets["text"], minilm)
    state = mid_state(make, 5, batch_size=2)
    assert state["workers"][0]["inner"] is not None
    refused(make, tampered(state, ("workers", 0, "inner"), inner), batch_size=2)


MIX_TAMPERS = [(("workers", 0, "draws"), -1), (("workers", 0, "passes"), [0]), (("workers", 0, "dropped"), [0, 1]),
               (("workers", 0, "sources"), None), (("settings", "weights"), [0.5, 0.5]),
               (("settings", "stop"), "drain"), (("settings", "identities"), ["0" * 64, "1" * 64])]


@pytest.mark.parametrize("path,value", MIX_TAMPERS, ids=[f"{'.'.join(map(str, p))}={v!r}" for p, v in MIX_TAMPERS])
def test_tampered_mixed_state_is_a_one_line_refusal(sets, minilm, path, value):
    make = mixed_maker(sets, minilm, "cycle")
    state = mid_state(make, 3, batch_size=2)
    refused(make, tampered(state, path, value), batch_size=2)


def test_tampered_mixed_ended_flag_is_refused(sets, minilm):
    make = mixed_maker(sets, minilm, "cycle")
    state = mid_state(make, 3, batch_size=2)
    refused(make, tampered(state, ("workers", 0, "ended"), "no"), batch_size=2)


def test_tampered_mixed_source_position_is_refused_at_load(sets, minilm):
    from pipeline.settings import ResumeError
    make = mixed_maker(sets, minilm, "cycle")
    state = mid_state(make, 3, batch_size=2)
    sources = state["workers"][0]["sources"]
    bad = tampered(state, ("workers", 0, "sources"), [{"samples": "x"} if s else s for s in sources])
    with pytest.raises(ResumeError):
        make_loader(make(), batch_size=2).load_state_dict(bad)
