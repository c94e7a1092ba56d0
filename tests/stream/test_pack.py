"""LM packing: the reference cutter, PackedStream over real shard sets, resume, collator, lockstep
(the chunked packer against the reference: test_pack_chunked.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import ShardStream, StreamConfig, make_loader
from pipeline.pack.stream import IGNORE_INDEX, BlockCollator, DocFormat, PackedStream, added_specials, lockstep
from tests.helpers.data import build_set
from tests.helpers.pack_reference import block_arrays, cut_blocks

pytestmark = pytest.mark.timeout(120)

docs_strategy = st.lists(st.integers(1, 40), min_size=0, max_size=30).map(
    lambda lengths: [np.arange(sum(lengths[:i]), sum(lengths[:i + 1])) + 1000 for i in range(len(lengths))])


def concat(arrays) -> list[int]:
    return [int(t) for a in arrays for t in a]


# -- pure ------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(docs=docs_strategy, seq_len=st.integers(2, 48), split=st.booleans())
def test_cut_blocks_keeps_every_token_once_in_order(docs, seq_len, split):
    blocks = [pieces for pieces, _ in cut_blocks(iter(docs), seq_len, split)]
    assert concat(p.tokens for pieces in blocks for p in pieces) == concat(docs)
    for b, pieces in enumerate(blocks):
        used = sum(len(p.tokens) for p in pieces)
        assert 0 < used <= seq_len
        if split and b < len(blocks) - 1:
            assert used == seq_len  # only the last block is short
        for p in pieces:
            assert np.array_equal(p.tokens, docs[p.doc][p.start:p.start + len(p.tokens)])
    if not split:
        for d, doc in enumerate(docs):
            where = [(b, p.start) for b, pieces in enumerate(blocks) for p in pieces if p.doc == d]
            if len(doc) <= seq_len:
                assert len(where) == 1  # a document that fits is never split
            else:
                first_block = where[0][0]
                assert blocks[first_block][0].doc == d  # a long one starts a fresh block
                assert len(where) == -(-len(doc) // seq_len)


@settings(max_examples=300, deadline=None)
@given(docs=docs_strategy, seq_len=st.integers(2, 48), split=st.booleans(), data=st.data())
def test_cut_blocks_resumes_from_any_cursor(docs, seq_len, split, data):
    full = list(cut_blocks(iter(docs), seq_len, split))
    if not full:
        return
    k = data.draw(st.integers(0, len(full) - 1))
    cursor = full[k][1]
    rest = list(cut_blocks(iter(docs[cursor.doc:]), seq_len, split, skip=cursor.offset))
    expect = [[(p.doc - cursor.doc, p.start, p.tokens.tolist()) for p in pieces] for pieces, _ in full[k + 1:]]
    got = [[(p.doc, p.start, p.tokens.tolist()) for p in pieces] for pieces, _ in rest]
    assert got == expect


@settings(max_examples=200, deadline=None)
@given(docs=docs_strategy, seq_len=st.integers(2, 48), split=st.booleans())
def test_block_arrays_shapes_positions_and_labels(docs, seq_len, split):
    for pieces, _ in cut_blocks(iter(docs), seq_len, split):
        b = block_arrays(pieces, seq_len, pad_id=7)
        for key in ("input_ids", "labels", "position_ids", "doc_ids", "attention_mask"):
            assert b[key].shape == (seq_len,)
        real = b["attention_mask"] == 1
        assert real.sum() == b["num_tokens"] and real[:b["num_tokens"]].all()  # padding is trailing
        assert (b["labels"][real] == b["input_ids"][real]).all()
        assert (b["labels"][~real] == IGNORE_INDEX).all() and (b["input_ids"][~real] == 7).all()
        assert sum(b["seqlens"]) == seq_len
        starts = np.flatnonzero(np.diff(b["doc_ids"], prepend=-2) != 0)  # every run start
        assert (b["position_ids"][starts] == 0).all()
        steps = np.diff(b["position_ids"])
        assert ((steps == 1) | (np.diff(b["doc_ids"]) != 0)).all()  # +1 inside a run


def test_doc_format_strips_bert_specials_and_appends_sep(minilm):
    import shards

    tok = shards.load_tokenizer(minilm)
    prefix, suffix = added_specials(tok)
    assert (prefix, suffix) == ((101,), (102,))  # [CLS] ... [SEP]
    fmt = DocFormat(102, prefix, suffix)
    full = tok.encode("hello world").ids
    assert fmt.tokens(full).tolist() == tok.encode("hello world", add_special_tokens=False).ids + [102]
    assert fmt.tokens(full[1:-1]).tolist() == full[1:]  # already stripped: unchanged body
    assert fmt.tokens([101, 102]) is None  # an empty document


def test_collator_stacks_and_describes_segments():
    docs = [np.arange(5) + 10, np.arange(9) + 20, np.arange(3) + 30]
    blocks = []
    for pieces, _ in cut_blocks(iter(docs), 8):
        b = block_arrays(pieces, 8, 0)
        b["sample_ids"] = [str(p.doc) for p in pieces]
        blocks.append(b)
    batch = BlockCollator(8)(blocks)
    assert batch["input_ids"].shape == (3, 8) and batch["input_ids"].dtype == torch.long
    assert batch["cu_seqlens"].tolist() == [0, 5, 8, 14, 16, 17, 24]  # the last run is padding
    assert batch["max_seqlen"] == 7 and batch["num_tokens"] == 17
    assert batch["sample_ids"] == [["0", "1"], ["1", "2"], ["2"]]
    assert batch["started_ids"] == ["0", "1", "2"]  # each document once, in the block it starts in
    filler = BlockCollator(8).filler(2)
    assert filler["is_pad"].all() and (filler["labels"] == IGNORE_INDEX).all() and filler["num_tokens"] == 0


# -- PackedStream over shard sets --------------------------------------------------
def expected_docs(stream: ShardStream, fmt: DocFormat) -> list[list[int]]:
    out = []
    for item in stream:
        if not item["is_pad"]:
            tokens = fmt.tokens(item["input_ids"])
            if tokens is not None:
                out.append(tokens.tolist())
    return out


def unpadded(blocks) -> list[int]:
    return [int(t) for b in blocks for t in b["input_ids"][b["attention_mask"] == 1]]


@pytest.mark.parametrize("split", [True, False])
def test_packed_stream_keeps_every_token_on_the_fly(tmp_path, minilm, split):
    url = build_set(tmp_path, n=40, max_records=6)
    packed = PackedStream(ShardStream(url, tokenizer=minilm, shuffle=True, seed=3), seq_len=12,
                          split_documents=split)
    blocks = list(packed)
    docs = expected_docs(ShardStream(url, tokenizer=minilm, shuffle=True, seed=3), packed.format)
    assert len(docs) == 40
    assert unpadded(blocks) == [t for d in docs for t in d]
    assert all(b["input_ids"].shape == (12,) for b in blocks)
    assert sum(b["num_tokens"] for b in blocks) == packed.stats["tokens"] == sum(map(len, docs))
    import shards
    tok = shards.load_tokenizer(minilm)
    first = ShardStream(url, tokenizer=None, shuffle=True, seed=3, config=StreamConfig())
    text = next(iter(first))["text"]  # independent check of the stripping convention
    assert docs[0] == tok.encode(text, add_special_tokens=False).ids + [102]


def test_pretokenized_shards_pack_like_on_the_fly(tmp_path, minilm):
    plain = build_set(tmp_path, n=30, max_records=5, name="plain")
    pretok = build_set(tmp_path, n=30, max_records=5, tokenizer=minilm, name="pretok")
    a = list(PackedStream(ShardStream(plain, tokenizer=minilm), seq_len=10))
    b_stream = PackedStream(ShardStream(pretok), seq_len=10)  # tokenizer found via the manifest
    assert b_stream.format.prefix == (101,)
    b = list(b_stream)
    assert [x["input_ids"].tolist() for x in a] == [x["input_ids"].tolist() for x in b]
    assert [x["sample_ids"] for x in a] == [x["sample_ids"] for x in b]


def test_ranks_pack_every_document_exactly_once(tmp_path, minilm):
    url = build_set(tmp_path, n=31, max_records=4)  # 31 records over 2 ranks: one rank-evening pad
    seen, pads = [], 0
    for rank in range(2):
        packed = PackedStream(ShardStream(url, tokenizer=minilm, rank=rank, world_size=2), seq_len=9)
        blocks = list(packed)
        ids = [s for b in blocks for s in b["sample_ids"]]
        assert [s for i, s in enumerate(ids) if i == 0 or ids[i - 1] != s] == \
            packed.collator()(blocks)["started_ids"]  # a split document counts once, where it starts
        seen += packed.collator()(blocks)["started_ids"]
        pads += packed.stats["pad_documents"]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 31
    assert pads == 1


def test_packed_stream_needs_a_separator(tmp_path):
    url = build_set(tmp_path, n=5)
    with pytest.raises(ValueError, match="sep_id"):
        PackedStream(ShardStream(url), seq_len=8)
    with pytest.raises(ValueError, match="seq_len"):
        PackedStream(ShardStream(url), seq_len=1, sep_id=0)


# -- resume through the stateful loader ----------------------------------------------
def make_packed(url, minilm, split=True):
    return PackedStream(ShardStream(url, tokenizer=minilm, shuffle=True, seed=5,
                                    config=StreamConfig(shuffle_buffer=8, block_size=4)),
                        seq_len=8, split_documents=split)


def as_lists(batch) -> list:
    return [batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["sample_ids"]]


def run_resumed(url, minilm, workers, k, split=True, epoch=0):
    ds = make_packed(url, minilm, split)
    ds.set_epoch(epoch)
    loader = make_loader(ds, batch_size=3, num_workers=workers, collate_fn=ds.collator())
    it = iter(loader)
    first = [as_lists(next(it)) for _ in range(k)]
    state = json.loads(json.dumps(loader.state_dict()))  # the state must be plain JSON
    del it, loader
    ds2 = make_packed(url, minilm, split)
    loader2 = make_loader(ds2, batch_size=3, num_workers=workers, collate_fn=ds2.collator())
    loader2.load_state_dict(state)
    return first + [as_lists(b) for b in loader2], state


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("split", [True, False])
def test_resume_mid_block_equals_uninterrupted(tmp_path, minilm, workers, split):
    url = build_set(tmp_path, n=36, max_records=5)
    ds = make_packed(url, minilm, split)
    full = [as_lists(b) for b in make_loader(ds, batch_size=3, num_workers=workers, collate_fn=ds.collator())]
    assert len(full) >= 8
    mid_document = 0
    for k in (0, 1, 3, len(full) // 2 + 1, len(full) - 1):
        got, state = run_resumed(url, minilm, workers, k, split)
        assert got == full, f"resume after {k} batches differs"
        mid_document += '"offset": 0' not in json.dumps(state)
    if split:
        assert mid_document > 0  # at least one snapshot fell inside a document


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_are_tensors_in_the_main_process(tmp_path, minilm, workers):
    url = build_set(tmp_path, n=12, max_records=5)
    ds = make_packed(url, minilm)
    batch = next(iter(make_loader(ds, batch_size=3, num_workers=workers, collate_fn=ds.collator())))
    assert type(batch) is dict  # workers send numpy; it unpickles as tensors
    for key in ("input_ids", "labels", "position_ids", "doc_ids", "attention_mask"):
        assert isinstance(batch[key], torch.Tensor) and batch[key].dtype == torch.long and batch[key].shape == (3, 8)
    assert batch["is_pad"].dtype == torch.bool and batch["cu_seqlens"].dtype == torch.int32
    assert batch["cu_seqlens"][-1] == 3 * 8 and isinstance(batch["num_tokens"], int)


def test_packed_mixture_resumes_from_any_block_including_the_last(tmp_path, minilm):
    from pipeline.mix import MixedStream

    urls = [build_set(tmp_path, n=n, max_records=4, name=f"set{n}") for n in (9, 17)]

    def make():
        mixed = MixedStream([(ShardStream(u, tokenizer=minilm), w) for u, w in zip(urls, (0.4, 0.6))], seed=3)
        return PackedStream(mixed, seq_len=8, chunk_tokens=20)

    packed = make()
    blocks, states = [], [json.loads(json.dumps(packed.state_dict()))]
    for block in iter(packed):
        blocks.append(block)
        states.append(json.loads(json.dumps(packed.state_dict())))
    assert len(blocks) >= 4
    for k in (1, len(blocks) // 2, len(blocks)):  # the last: a mixture's state after its end restarts sources
        resumed = make()
        resumed.load_state_dict(states[k])
        assert [b["input_ids"].tolist() for b in resumed] == [b["input_ids"].tolist() for b in blocks[k:]], k


def test_resume_in_a_later_epoch(tmp_path, minilm):
    url = build_set(tmp_path, n=20, max_records=5)
    ds = make_packed(url, minilm)
    ds.set_epoch(1)
    full = [as_lists(b) for b in make_loader(ds, batch_size=3, collate_fn=ds.collator())]
    got, _ = run_resumed(url, minilm, 0, 2, epoch=1)
    assert got == full


# -- lockstep --------------------------------------------------------------------------
def test_lockstep_without_process_group_passes_through():
    assert list(lockstep(iter([1, 2, 3]), filler={"x": 0})) == [1, 2, 3]


def _lockstep_worker(rank: int, init: str, counts: list[int], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=len(counts))
    try:
        got = list(lockstep(iter(range(counts[rank])), filler="filler"))
        with open(f"{out}.{rank}", "w") as f:
            json.dump(got, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.timeout(120)
def test_lockstep_gives_every_rank_the_same_number_of_steps(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_lockstep_worker, args=(init, [3, 5], str(tmp_path / "out")), nprocs=2,
                       start_method="fork")
    r0 = json.loads((tmp_path / "out.0").read_text())
    r1 = json.loads((tmp_path / "out.1").read_text())
    assert r0 == [0, 1, 2, "filler", "filler"] and r1 == [0, 1, 2, 3, 4]


# -- the runnable tools ----------------------------------------------------------------
def tiny_corpus(tmp_path) -> str:
    lines = [f"line {i} of a small play, where the {'king' if i % 3 else 'queen'} speaks to act {i % 5}."
             for i in range(400)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_lm_smoke_perplexity_falls(tmp_path, capsys):
    from tools import lm_smoke

    rc = lm_smoke.main(["--corpus", tiny_corpus(tmp_path), "--work", str(tmp_path / "w"), "--steps", "12",
                        "--seq-len", "32", "--batch-size", "4", "--eval-batches", "2", "--workers", "0",
                        "--d-model", "32", "--layers", "1", "--heads", "2"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and result["ppl_after"] < result["ppl_before"]


@pytest.mark.slow
def test_pack_bench_reports_every_mode(tmp_path, capsys):
    from tools.bench import pack as pack_bench

    assert pack_bench.main(["--corpus", tiny_corpus(tmp_path), "--work", str(tmp_path / "w"), "--repeats", "1",
                            "--seq-len", "64", "--workers", "0"]) == 0
    modes = [json.loads(line)["mode"] for line in capsys.readouterr().out.strip().splitlines()]
    assert modes == ["classify", "raw_pretok", "packed", "packed_pretok", "packed_pretok_items", "classify_loader",
                     "packed_loader", "packed_pretok_loader"]
