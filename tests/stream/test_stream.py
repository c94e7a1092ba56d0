"""ShardStream + make_loader: exactly once over ranks x workers, resume, tokenization."""
import json
from collections import Counter

import pytest

from pipeline import ShardStream, StreamConfig, make_loader
from tests.helpers.data import build_set
from tests.helpers.streamkit import loader_run


def epoch_ids(url, world=1, workers=0, batch=8, **kw):
    """sample ids (real, pads) and batch counts per rank for one epoch."""
    real, pads, batches = Counter(), 0, []
    for rank in range(world):
        ds = ShardStream(url, rank=rank, world_size=world, **kw)
        n = 0
        for b in make_loader(ds, batch, num_workers=workers):
            n += 1
            for sid, pad in zip(b["sample_id"], b["is_pad"].tolist()):
                if pad:
                    pads += 1
                else:
                    real[sid] += 1
        batches.append(n)
    return real, pads, batches


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 3])
def test_exactly_once_over_ranks_and_workers(tmp_path, fmt, workers, world):
    url = build_set(tmp_path, n=100, max_records=7, fmt=fmt)
    real, pads, batches = epoch_ids(url, world, workers, shuffle=True, seed=5)
    assert len(real) == 100 and set(real.values()) == {1}
    assert pads == -(-100 // world) * world - 100
    assert len(set(batches)) == 1, f"ranks got different step counts: {batches}"


def test_item_fields_and_labels(tmp_path, minilm):
    url = build_set(tmp_path, n=10, max_records=4)
    items = list(ShardStream(url, tokenizer=minilm, max_length=6))
    assert [it["sample_id"] for it in items][:5] == ["00000:000000", "00000:000001", "00000:000002",
                                                     "00000:000003", "00001:000000"]
    first = items[0]
    assert first["label"] == 0 and first["text"].startswith("record number 0")
    assert len(first["input_ids"]) == 6 and first["input_ids"][0] == 101 and first["input_ids"][-1] == 102
    assert ShardStream(url).label_names == ["neg", "pos"]


def test_on_the_fly_equals_pretokenized(tmp_path, minilm):
    plain = build_set(tmp_path, n=30, max_records=8, name="plain")
    pre = build_set(tmp_path, n=30, max_records=8, name="pre", tokenizer=minilm, max_length=16)
    a = {it["sample_id"]: it["input_ids"].tolist() for it in ShardStream(plain, tokenizer=minilm, max_length=16)}
    b = {it["sample_id"]: it["input_ids"].tolist() for it in ShardStream(pre)}
    assert a == b
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(minilm)
    text = next(iter(ShardStream(plain)))["text"]
    assert a["00000:000000"] == hf(text, truncation=True, max_length=16)["input_ids"]


def test_refuses_a_different_tokenizer(tmp_path, minilm):
    from tokenizers import Tokenizer, models, pre_tokenizers

    import shards
    pre = build_set(tmp_path, n=5, tokenizer=minilm)
    other = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(shards.TokenizerError, match="fingerprint"):
        ShardStream(pre, tokenizer=other)
    ShardStream(pre, tokenizer=minilm)  # the same one is fine


def test_shuffle_is_deterministic_and_changes_per_epoch(tmp_path):
    url = build_set(tmp_path, n=200, max_records=20)

    def order(epoch, seed=1):
        ds = ShardStream(url, shuffle=True, seed=seed, config=StreamConfig(shuffle_buffer=16, block_size=5))
        ds.set_epoch(epoch)
        return [it["sample_id"] for it in ds]

    assert order(0) == order(0)
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1))
    assert order(0) != order(0, seed=2)
    assert [it["sample_id"] for it in ShardStream(url)] == sorted(order(0))


def run(url, workers, batch, cut=None, state=None, epochs=(0,), **kw):
    """Batches (lists of ids) from a fresh loader, optionally resumed from ``state``, stopping after ``cut``."""
    return loader_run(url, batch, workers, cut, state, epochs=epochs, **kw)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_mid_epoch_gives_the_remaining_stream(tmp_path, workers, shuffle):
    url = build_set(tmp_path, n=90, max_records=11)
    kw = dict(shuffle=shuffle, seed=3, rank=1, world_size=2, config=StreamConfig(shuffle_buffer=10, block_size=4))
    full, _ = run(url, workers, 4, **kw)
    n = len(full)
    for cut in sorted({1, n // 2, n - 1}):
        head, state = run(url, workers, 4, cut=cut, **kw)
        assert head == full[:cut]
        tail, _ = run(url, workers, 4, state=state, **kw)
        assert head + tail == full, f"cut at {cut}"


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_epoch_boundary_continues_next_epoch(tmp_path, workers):
    url = build_set(tmp_path, n=40, max_records=9)
    kw = dict(shuffle=True, seed=7, config=StreamConfig(shuffle_buffer=8, block_size=4))
    full, _ = run(url, workers, 4, epochs=(0, 1), **kw)
    first_epoch, _ = run(url, workers, 4, epochs=(0,), **kw)
    n = len(first_epoch)
    head, state = run(url, workers, 4, cut=n, epochs=(0, 1), **kw)
    assert head == full[:n]
    rest_of_epoch0, _ = run(url, workers, 4, state=state, epochs=(0,), **kw)
    assert rest_of_epoch0 == []
    epoch1, _ = run(url, workers, 4, epochs=(1,), **kw)
    assert head + epoch1 == full


def test_resume_with_other_world_size_is_refused(tmp_path):
    url = build_set(tmp_path, n=30, max_records=5)
    _, state = run(url, 0, 2, cut=2, rank=0, world_size=2)
    with pytest.raises(ValueError, match="cannot resume mid-epoch"):
        run(url, 0, 2, state=state, rank=0, world_size=3)


def test_empty_and_tiny_shard_sets(tmp_path):
    url = build_set(tmp_path, n=1, max_records=1)
    real, pads, batches = epoch_ids(url, world=4, workers=2, batch=2)
    assert real == {"00000:000000": 1} and pads == 3 and batches == [1, 1, 1, 1]


@pytest.mark.corpora
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_sst2_every_id_once_for_world_sizes(tmp_path, corpora, fmt):
    from shards.build.driver import BuildConfig, build
    from shards.corpus.read import CorpusSpec
    out = str(tmp_path / fmt)
    build([str(corpora / "sst2" / "train.tsv")],
          BuildConfig(out=out, format=fmt, spec=CorpusSpec(text_fields=("sentence",), label_field="label")))
    for world in (1, 2, 3):
        real, pads, batches = epoch_ids(out, world, workers=2, batch=256, shuffle=True,
                                        config=StreamConfig(keep_text=False))
        print(f"sst2 {fmt} world {world}: {len(real)} distinct ids, {pads} pads, batches/rank {batches}")
        assert len(real) == 67349 and set(real.values()) == {1}
        assert len(set(batches)) == 1


def test_state_taken_right_after_iter_in_a_later_epoch_resumes_that_epoch(tmp_path):
    # the loader takes its position when the iterator is made; it must not carry the
    # previous epoch's consumed count (which would skip the whole new epoch on resume).
    url = build_set(tmp_path, n=20, max_records=6)
    ds = ShardStream(url)
    loader = make_loader(ds, 4, num_workers=0)
    assert sum(1 for _ in loader) == 5
    ds.set_epoch(1)
    it = iter(loader)
    state = json.dumps(loader.state_dict())
    del it
    resumed, _ = run(url, 0, 4, state=state)
    assert len(resumed) == 5


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores, on purpose
@pytest.mark.parametrize("workers,group", [(2, 1), (2, 3), (3, 2)])
def test_resume_at_every_batch_with_messages_of_several_batches(tmp_path, workers, group):
    # 3 workers over 37 samples: 12/12/13 samples -> 4/4/5 batches of 3, so workers run out
    # at different rounds and messages end mid-group
    url = build_set(tmp_path, n=37, max_records=5)
    kw = dict(shuffle=True, seed=11, config=StreamConfig(shuffle_buffer=6, block_size=4))

    def batches(cut=None, state=None):
        ds = ShardStream(url, **kw)
        loader = make_loader(ds, 3, num_workers=workers, batches_per_message=group)
        if state is not None:
            loader.load_state_dict(json.loads(state))
        out = []
        for b in loader:
            out.append(list(b["sample_id"]))
            if len(out) == cut:
                return out, json.dumps(loader.state_dict())
        return out, json.dumps(loader.state_dict())

    full, _ = batches()
    assert sorted(s for b in full for s in b) == sorted(f"{s:05d}:{r:06d}" for s in range(8) for r in range(5)
                                                        if s * 5 + r < 37)
    for cut in range(1, len(full)):
        head, state = batches(cut=cut)
        tail, _ = batches(state=state)
        assert head + tail == full, f"cut at {cut}"


def test_loader_state_from_another_kind_is_refused(tmp_path):
    url = build_set(tmp_path, n=10, max_records=5)
    loader = make_loader(ShardStream(url), 2)
    with pytest.raises(ValueError, match="kind"):
        loader.load_state_dict({"epoch": 0, "consumed": 3})


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_long_tensors_padded_to_the_longest(tmp_path, minilm, workers):
    import torch
    url = build_set(tmp_path, n=12, max_records=5)
    ds = ShardStream(url, tokenizer=minilm, max_length=12)
    items = {it["sample_id"]: it["input_ids"].tolist() for it in ShardStream(url, tokenizer=minilm, max_length=12)}
    for b in make_loader(ds, 4, num_workers=workers, pad_to_multiple_of=8):
        assert b["input_ids"].dtype == b["attention_mask"].dtype == b["labels"].dtype == torch.int64
        assert b["input_ids"].shape[1] % 8 == 0 and b["is_pad"].dtype == torch.bool
        for row, mask, sid in zip(b["input_ids"].tolist(), b["attention_mask"].tolist(), b["sample_id"]):
            n = sum(mask)
            assert row[:n] == items[sid] and set(row[n:]) <= {0} and mask == [1] * n + [0] * (len(mask) - n)


def test_read_chunks_matches_items_and_the_item_state_resumes_exactly(tmp_path, minilm):
    url = build_set(tmp_path, n=50, max_records=7)
    kw = dict(tokenizer=minilm, max_length=10, shuffle=True, seed=2, config=StreamConfig(tokenize_batch=8,
                                                                                         shuffle_buffer=12))
    items = [(it["sample_id"], it["input_ids"].tolist()) for it in ShardStream(url, **kw)]
    for skip in (0, 7, 13, 50):
        got = [pair for chunk in ShardStream(url, **kw).read_chunks(skip)
               for pair in zip(chunk.sample_ids(), [x.tolist() for x in chunk.ids.rows()])]
        assert got == items[skip:], skip
    ds = ShardStream(url, **kw)
    states = [(0, json.dumps(ds.state_dict()))]
    for done, _ in enumerate(ds, start=1):
        if done in (1, 8, 25, 49, 50):
            states.append((done, json.dumps(ds.state_dict())))
    for done, state in states:
        again = ShardStream(url, **kw)
        again.load_state_dict(json.loads(state))
        assert [(it["sample_id"], it["input_ids"].tolist()) for it in again] == items[done:]


def test_spawned_workers_give_the_same_batches(tmp_path, minilm):
    url = build_set(tmp_path, n=40, max_records=6)

    def ids(**kw):
        ds = ShardStream(url, tokenizer=minilm, max_length=8, shuffle=True, seed=4)
        return [list(b["sample_id"]) + b["input_ids"].flatten().tolist() for b in make_loader(ds, 4, **kw)]

    assert ids(num_workers=2, multiprocessing_context="spawn") == ids(num_workers=2)


def test_state_for_another_epoch_than_the_stream_is_not_applied(tmp_path, caplog):
    url = build_set(tmp_path, n=20, max_records=6)
    _, state = run(url, 0, 4, cut=2)
    ds = ShardStream(url)
    loader = make_loader(ds, 4)
    loader.load_state_dict(json.loads(state))
    ds.set_epoch(1)
    assert sum(1 for _ in loader) == 5 and "starts from its beginning" in caplog.text


def test_a_per_sample_state_is_not_silently_dropped_by_the_loader(tmp_path):
    url = build_set(tmp_path, n=20, max_records=6)
    ds = ShardStream(url)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = ds.state_dict()
    fresh = ShardStream(url)
    fresh.load_state_dict(state)
    with pytest.raises(ValueError, match="loader.load_state_dict"):
        iter(make_loader(fresh, 4))
