"""make_loader over a set built without labels or tokenizer streams its texts (issue 14, item 7).

Before: 0 batches with num_workers=0, ``generator raised StopIteration`` with workers.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest

from pipeline import ShardStream, StreamConfig, make_loader
from tests.helpers.data import build_set, labelled_records

N = 23


@pytest.fixture(scope="module")
def text_set(tmp_path_factory):
    url = build_set(tmp_path_factory.mktemp("text-only"), n=N, max_records=4, labels=False)
    assert json.load(open(f"{url}/index.json"))["fields"] == ["text"]
    return url


TEXTS = {f"{i // 4:05d}:{i % 4:06d}": r["text"] for i, r in enumerate(labelled_records(N))}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 3])
def test_every_text_once_and_pads_flagged(text_set, workers, world):
    real, pads, steps = Counter(), 0, []
    for rank in range(world):
        ds = ShardStream(text_set, shuffle=True, seed=2, rank=rank, world_size=world,
                         config=StreamConfig(shuffle_buffer=5, block_size=3))
        loader = make_loader(ds, 4, num_workers=workers)
        n = 0
        for batch in loader:
            n += 1
            assert set(batch) == {"sample_id", "is_pad", "text"}
            assert len(batch["text"]) == len(batch["sample_id"]) == len(batch["is_pad"])
            for sid, pad, text in zip(batch["sample_id"], batch["is_pad"].tolist(), batch["text"]):
                assert text == TEXTS[sid]  # a pad repeats a real record's text, flagged
                if pad:
                    pads += 1
                else:
                    real[sid] += 1
        steps.append(n)
        assert n == len(loader)
    assert real == Counter({sid: 1 for sid in TEXTS})
    assert pads == -(-N // world) * world - N
    assert len(set(steps)) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_a_tokenizer_gives_tokenized_batches_without_labels(text_set, minilm, workers):
    ds = ShardStream(text_set, tokenizer=minilm, max_length=12)
    seen = []
    for batch in make_loader(ds, 5, num_workers=workers):
        assert "labels" not in batch and "text" not in batch
        assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"][:, 0].eq(101).all()
        seen += list(batch["sample_id"])
    assert sorted(seen) == sorted(TEXTS)


def test_resume_mid_epoch_over_a_text_only_set(text_set):
    def run(state=None, cut=None):
        loader = make_loader(ShardStream(text_set, shuffle=True, seed=1), 3)
        if state is not None:
            loader.load_state_dict(state)
        out = []
        for batch in loader:
            out += list(batch["sample_id"])
            if len(out) == cut:
                return out, json.loads(json.dumps(loader.state_dict()))
        return out, None

    full, _ = run()
    head, state = run(cut=9)
    tail, _ = run(state=state)
    assert head + tail == full and sorted(full) == sorted(TEXTS)


def test_items_and_collated_loader_without_text_keep_every_sample(text_set):
    # keep_text=False on a text-only set: the texts are still read (they carry the rows), not kept
    ds = ShardStream(text_set, config=StreamConfig(keep_text=False))
    items = list(ds)
    assert [it["sample_id"] for it in items] == sorted(TEXTS) and all("text" not in it for it in items)
    from pipeline import Collator
    got = [s for b in make_loader(ShardStream(text_set), 4, collate_fn=Collator()) for s in b["sample_id"]]
    assert got == sorted(TEXTS)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_mixture_of_text_only_sets_streams_texts(text_set, workers):
    from pipeline import MixedStream
    mixed = MixedStream([(ShardStream(text_set), 1.0), (ShardStream(text_set, shuffle=True, seed=3), 2.0)],
                        seed=1, stop="drain")
    seen = Counter()
    for batch in make_loader(mixed, 4, num_workers=workers):
        assert len(batch["text"]) == len(batch["sample_id"])
        for source, sid, text in zip(batch["source"].tolist(), batch["sample_id"], batch["text"]):
            assert text == TEXTS[sid]
            seen[source, sid] += 1
    assert seen == Counter({(s, sid): 1 for s in (0, 1) for sid in TEXTS})
