"""A packed stream's stats after a resume: a run resumed from the state saved after any batch reports the
final stats of the uninterrupted run (documents, empty and pad documents, blocks, tokens, pad tokens, and
the inner stream's skips), with 0 and 2 workers, split_documents on and off, read as columnar chunks
(ShardStream) or an item at a time (MixedStream), and across an elastic resume (other workers).

Regression: the counts were taken as a chunk was read, ahead of the blocks delivered, so a resume that
re-read the chunk counted it again (documents 16 -> 30 resumed after batch 1)."""
from __future__ import annotations

import json

import pytest

from pipeline import MixedStream, PackedStream, ShardStream, StreamConfig, make_loader
from tests.helpers import elastickit
from tests.reliability.test_hostile_loader import corrupt_shard

pytestmark = pytest.mark.timeout(300)
SEQ = 16
BATCH = 3


@pytest.fixture(scope="module")
def urls(tmp_path_factory, minilm):
    """Two pre-tokenized sets of documents (short, long, empty); the second has a corrupt shard."""
    first = elastickit.build_docs(tmp_path_factory.mktemp("stats-a"), minilm)
    second = elastickit.build_docs(tmp_path_factory.mktemp("stats-b"), minilm)
    corrupt_shard(second, 1)
    return first, second


def shard_stream(url, seed=3):
    config = StreamConfig(shuffle_buffer=4, block_size=3, tokenize_batch=4, on_corrupt="skip")
    return ShardStream(url, shuffle=True, seed=seed, config=config)


def make(urls, inner: str, split: bool, minilm) -> PackedStream:
    if inner == "shard":  # columnar reads (ChunkReader), the corrupt shard's samples skipped
        stream = shard_stream(urls[1])
    else:  # an item at a time (ItemReader)
        stream = MixedStream([(shard_stream(urls[0], 2), 0.6), (shard_stream(urls[1], 5), 0.4)], seed=2, stop="drain")
    return PackedStream(stream, SEQ, split_documents=split, chunk_tokens=40, tokenizer=minilm)


def run(urls, inner, split, workers, minilm, state=None) -> tuple[list[str], dict]:
    """Every state saved (after each batch) and the final stats."""
    ds = make(urls, inner, split, minilm)
    loader = make_loader(ds, BATCH, num_workers=workers, collate_fn=ds.collator())
    if state is not None:
        loader.load_state_dict(json.loads(state))
    states = [json.dumps(loader.state_dict())]
    for _ in loader:
        states.append(json.dumps(loader.state_dict()))
    return states, loader.stats()


@pytest.mark.parametrize("inner", ["shard", "mixed"])
@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_final_stats_are_the_uninterrupted_runs(urls, inner, split, workers, minilm):
    states, whole = run(urls, inner, split, workers, minilm)
    assert whole["documents"] > 0 and whole["empty_documents"] > 0 and whole["blocks"] > 0
    if inner == "shard":
        assert whole["skipped_samples"] > 0 and whole["pad_documents"] == whole["skipped_samples"]
    saved = [json.loads(s)["stats"] for s in states]
    for k in range(len(saved) - 1):  # counts only grow, batch by batch
        assert all(saved[k + 1].get(key, 0) >= v for key, v in saved[k].items()), f"after batch {k}"
    assert len(states) > 4
    for k in range(len(states)):  # 0 (the epoch start) .. every batch, the last included
        _, resumed = run(urls, inner, split, workers, minilm, states[k])
        assert resumed == whole, f"resumed after batch {k} of {len(states) - 1}"


def test_a_state_holds_what_its_batches_delivered(urls, minilm):
    """The stats saved after k batches count the blocks and tokens of exactly those k batches."""
    ds = make(urls, "shard", True, minilm)
    loader = make_loader(ds, BATCH, collate_fn=ds.collator())
    blocks = tokens = 0
    for batch in loader:
        blocks += len(batch["input_ids"])
        tokens += int(batch["attention_mask"].sum())
        stats = loader.state_dict()["stats"]
        assert (stats["blocks"], stats["tokens"], stats["pad_tokens"]) == (blocks, tokens, blocks * SEQ - tokens)


def test_an_elastic_resume_counts_each_document_and_token_once(urls, minilm):
    """Saved with 2 workers, resumed with none (the same world): documents and tokens as the whole run
    (blocks and padding depend on how the workers split the documents)."""
    states, whole = run(urls, "shard", True, 2, minilm)
    for k in (1, 2, len(states) // 2):
        ds = make(urls, "shard", True, minilm)
        loader = make_loader(ds, BATCH, collate_fn=ds.collator())
        state = json.loads(states[k])
        loader.load_state_dict(state, all_ranks=[state])
        for _ in loader:
            pass
        got = loader.stats()
        for key in ("documents", "empty_documents", "pad_documents", "skipped_samples", "skipped_shards", "tokens"):
            assert got.get(key, 0) == whole.get(key, 0), f"{key} resumed after batch {k}"
