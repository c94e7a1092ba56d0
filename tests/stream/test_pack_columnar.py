"""PackedStream's columnar read path (ShardStream.read_chunks) against its per-item path on real
shard sets: the same blocks, sample ids and stats, and states that resume either path."""
from __future__ import annotations

import json
import pathlib

import pytest
from torch.utils.data import IterableDataset

from pipeline import ShardStream, StreamConfig, make_loader
from pipeline.pack.read import ChunkReader, ItemReader, make_reader
from pipeline.pack.stream import PackedStream
from tests.helpers.data import build_set
from tests.stream.test_pack_chunked import assert_same_blocks

pytestmark = pytest.mark.timeout(180)
N = 61  # over 3 ranks: 21 per rank, rank 2 has 2 rank-evening pads


class ItemsOnly(IterableDataset):
    """A ShardStream seen through ``__iter__`` only (no ``read_chunks``): the per-item path."""

    def __init__(self, stream: ShardStream):
        self.inner, self.tokenizer, self.manifest = stream, stream.tokenizer, stream.manifest

    @property
    def epoch(self):
        return self.inner.epoch

    @property
    def stats(self):
        return self.inner.stats

    def set_epoch(self, epoch):
        self.inner.set_epoch(epoch)

    def position(self):
        return self.inner.position()

    def seek(self, position):
        self.inner.seek(position)

    def loader_settings(self):
        return self.inner.loader_settings()

    def counters(self):
        return self.inner.counters()

    def reset_stats(self):
        self.inner.reset_stats()

    def __iter__(self):
        return iter(self.inner)


@pytest.fixture(scope="module")
def sets(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("columnar")
    return {"text": build_set(root, n=N, max_records=7, name="text"),
            "pretok": build_set(root, n=N, max_records=7, tokenizer=minilm, name="pretok")}


def make(sets, minilm, kind, rank=2, world_size=3, split=True, items_only=False, chunk_tokens=30):
    tokenizer = minilm if kind == "text" else None
    cfg = StreamConfig(shuffle_buffer=16, block_size=4, tokenize_batch=5, keep_text=False)
    stream = ShardStream(sets[kind], tokenizer=tokenizer, shuffle=True, seed=4, rank=rank, world_size=world_size,
                         config=cfg)
    return PackedStream(ItemsOnly(stream) if items_only else stream, seq_len=12, split_documents=split,
                        chunk_tokens=chunk_tokens)


def blocks_and_states(packed: PackedStream) -> tuple[list[dict], list[dict]]:
    it = iter(packed)
    states, blocks = [json.loads(json.dumps(packed.state_dict()))], []
    for block in it:
        blocks.append(block)
        states.append(json.loads(json.dumps(packed.state_dict())))
    return blocks, states


@pytest.mark.parametrize("kind", ["text", "pretok"])
@pytest.mark.parametrize("rank,world_size,split,chunk_tokens", [(0, 1, True, 30), (2, 3, True, None),
                                                                (2, 3, False, 30), (1, 3, False, 1)])
def test_columnar_path_equals_per_item_path(sets, minilm, kind, rank, world_size, split, chunk_tokens):
    columnar = make(sets, minilm, kind, rank, world_size, split, chunk_tokens=chunk_tokens)
    per_item = make(sets, minilm, kind, rank, world_size, split, items_only=True, chunk_tokens=chunk_tokens)
    assert isinstance(make_reader(columnar.stream, columnar.format, columnar.stats, None, 0), ChunkReader)
    assert isinstance(make_reader(per_item.stream, per_item.format, per_item.stats, None, 0), ItemReader)
    got, expect = list(columnar), list(per_item)
    assert len(got) >= 8
    assert_same_blocks(got, expect)
    assert columnar.state_dict()["stats"] == per_item.state_dict()["stats"]
    assert columnar.stats["pad_documents"] == (2 if rank == 2 else 0)


@pytest.mark.parametrize("kind", ["text", "pretok"])
def test_states_resume_either_path_at_every_block(sets, minilm, kind):
    blocks, states = blocks_and_states(make(sets, minilm, kind))
    _, item_states = blocks_and_states(make(sets, minilm, kind, items_only=True))
    assert len(states) == len(item_states)
    for k in range(len(blocks) + 1):
        for state, items_only in ((states[k], True), (states[k], False), (item_states[k], False)):
            resumed = make(sets, minilm, kind, items_only=items_only, chunk_tokens=7)
            resumed.load_state_dict(state)
            assert_same_blocks(list(resumed), blocks[k:])


def as_lists(batch) -> list:
    return [batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["sample_ids"],
            batch["started_ids"]]


@pytest.mark.parametrize("kind", ["text", "pretok"])
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resume_matches_the_per_item_path(sets, minilm, kind, workers):
    def loader(items_only=False):
        ds = make(sets, minilm, kind, items_only=items_only)
        return make_loader(ds, batch_size=2, num_workers=workers, collate_fn=ds.collator())

    full = [as_lists(b) for b in loader(items_only=True)]
    assert [as_lists(b) for b in loader()] == full
    assert len(full) >= 6
    for k in (1, len(full) // 2, len(full) - 1):
        first = loader()
        it = iter(first)
        head = [as_lists(next(it)) for _ in range(k)]
        state = json.loads(json.dumps(first.state_dict()))
        del it, first
        second = loader()
        second.load_state_dict(state)
        assert head + [as_lists(b) for b in second] == full, f"resume after {k} batches"


def test_corrupt_shard_pads_pack_alike(sets, minilm, tmp_path):
    import shutil

    url = shutil.copytree(sets["pretok"], tmp_path / "corrupt")
    victim = sorted(pathlib.Path(url).glob("shard-*"))[2]
    victim.write_bytes(b"\0" * victim.stat().st_size)  # same size, wrong sha256
    cfg = StreamConfig(on_corrupt="skip", tokenize_batch=4, keep_text=False)
    columnar = PackedStream(ShardStream(str(url), config=cfg), seq_len=12, chunk_tokens=20)
    per_item = PackedStream(ItemsOnly(ShardStream(str(url), config=cfg)), seq_len=12, chunk_tokens=20)
    assert_same_blocks(list(columnar), list(per_item))
    assert columnar.stats["pad_documents"] == 7 and columnar.stats["documents"] == N - 7
    assert columnar.state_dict()["stats"] == per_item.state_dict()["stats"]


def test_columnar_path_needs_token_ids(sets):
    packed = PackedStream(ShardStream(sets["text"], config=StreamConfig(keep_text=False)), seq_len=8, sep_id=0)
    with pytest.raises(ValueError, match="needs token ids"):
        list(packed)
