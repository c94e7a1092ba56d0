"""The chunked, vectorised packer against the per-document reference (tests/pack_reference.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import IterableDataset

from pipeline.chunk import Chunk
from pipeline.pack.read import ChunkReader, make_reader
from pipeline.pack.stream import ARRAY_KEYS, DocFormat, PackedStream
from shards import Ragged
from tests.helpers.pack_reference import reference_blocks

pytestmark = pytest.mark.timeout(120)


# -- the chunked packer against the reference ------------------------------------------
class ItemStream(IterableDataset):
    """In-memory items with ShardStream's protocol (position: samples consumed)."""

    def __init__(self, items: list[dict]):
        self.items, self.epoch, self._consumed, self._resume = items, 0, 0, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def position(self):
        return {"samples": self._consumed}

    def seek(self, position):
        if position["samples"] < 0:  # like MixedStream's, a position taken after the end is not one
            raise ValueError("ItemStream: position taken after the end of the pass")
        self._resume = position["samples"]

    def __iter__(self):
        skip, self._resume = self._resume, 0
        self._consumed = skip
        for item in self.items[skip:]:
            self._consumed += 1
            yield item
        self._consumed = -1


class ChunkStream(ItemStream):
    """The same items also as columnar Chunks of the given sizes (ShardStream.read_chunks'
    protocol: from sample ``skip`` on)."""

    def __init__(self, items: list[dict], sizes: list[int]):
        super().__init__(items)
        self.sizes = sizes

    def read_chunks(self, skip):
        pos = skip
        k = 0
        while pos < len(self.items):
            part = self.items[pos:pos + self.sizes[k % len(self.sizes)]]
            chunk = Chunk(np.zeros(len(part), np.int64), np.arange(pos, pos + len(part), dtype=np.int64),
                          np.array([it["is_pad"] for it in part], dtype=bool),
                          ids=Ragged.from_lists([it["input_ids"] for it in part]))
            pos, k = pos + len(part), k + 1
            yield chunk


FORMATS = [DocFormat(3), DocFormat(3, (1,), (2,)), DocFormat(3, (1, 4), (2,)), DocFormat(3, (), (2, 5))]


@st.composite
def items_strategy(draw):
    """Documents (some carrying the format's specials, some empty, some longer than a block) and pads."""
    items = []
    for i in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["doc", "doc", "doc", "specials", "pad", "empty"]))
        n = draw(st.integers(1, 12)) if draw(st.integers(0, 5)) else draw(st.integers(13, 70))
        body = list(range(100 + 1000 * i, 100 + 1000 * i + n))
        ids = {"doc": body, "specials": [1, 4, *body, 2, 5], "pad": body, "empty": [1, 2]}[kind]
        items.append({"sample_id": f"00000:{i:06d}", "is_pad": kind == "pad", "input_ids": np.asarray(ids, dtype=np.int32)})
    return items


def packer(items, fmt, seq_len, split, chunk_tokens) -> PackedStream:
    packed = PackedStream(ItemStream(items), seq_len, split_documents=split, sep_id=fmt.sep_id, pad_id=9,
                          chunk_tokens=chunk_tokens)
    object.__setattr__(packed, "format", fmt)  # the specials a tokenizer would add
    return packed


def assert_same_blocks(got: list[dict], expect: list[dict]) -> None:
    assert len(got) == len(expect)
    for b, (g, e) in enumerate(zip(got, expect)):
        assert sorted(g) == sorted(e), f"block {b}: keys"
        for key in ARRAY_KEYS:
            assert g[key].dtype == np.int64 and g[key].tolist() == e[key].tolist(), f"block {b}: {key}"
        for key in ("seqlens", "num_tokens", "is_pad", "starts", "sample_ids"):
            assert g[key] == e[key], f"block {b}: {key}"


@settings(max_examples=300, deadline=None)
@given(items=items_strategy(), fmt=st.sampled_from(FORMATS), seq_len=st.integers(2, 24), split=st.booleans(),
       chunk_tokens=st.sampled_from([1, 5, 17, 64, None]))
def test_chunked_packer_equals_reference(items, fmt, seq_len, split, chunk_tokens):
    packed = packer(items, fmt, seq_len, split, chunk_tokens)
    got = list(packed)
    assert_same_blocks(got, reference_blocks(items, fmt, seq_len, split, pad_id=9))
    docs = [it for it in items if not it["is_pad"] and fmt.tokens(it["input_ids"]) is not None]
    assert packed.stats["documents"] == len(docs) and packed.stats["blocks"] == len(got)
    assert packed.stats["pad_documents"] == sum(it["is_pad"] for it in items)


@settings(max_examples=300, deadline=None)
@given(items=items_strategy(), fmt=st.sampled_from(FORMATS), seq_len=st.integers(2, 24), split=st.booleans(),
       chunk_tokens=st.sampled_from([1, 5, 17, 64, None]), data=st.data())
def test_chunked_packer_resumes_from_any_block(items, fmt, seq_len, split, chunk_tokens, data):
    packed = packer(items, fmt, seq_len, split, chunk_tokens)
    it = iter(packed)
    states, blocks = [json.loads(json.dumps(packed.state_dict()))], []
    for block in it:  # the state after each block, as a DataLoader worker would take it
        blocks.append(block)
        states.append(json.loads(json.dumps(packed.state_dict())))
    k = data.draw(st.integers(0, len(blocks)))
    resumed = packer(items, fmt, seq_len, split, data.draw(st.sampled_from([1, 7, None])))
    resumed.load_state_dict(states[k])
    assert_same_blocks(list(resumed), blocks[k:])


def test_a_packed_state_is_refused_mid_epoch_under_other_settings_and_read_at_the_boundary():
    items = [{"sample_id": f"00000:{i:06d}", "is_pad": False, "input_ids": np.arange(10) + 100 * i}
             for i in range(6)]
    packed = packer(items, FORMATS[0], 8, True, None)
    full, it = [], iter(packed)
    full += [next(it), next(it), next(it)]
    mid = json.loads(json.dumps(packed.state_dict()))
    assert mid["kind"] == "pipeline.loader/2" and mid["workers"][0]["offset"] == 2  # 24 = 11 + 11 + 2 tokens
    full += list(it)
    with pytest.raises(ValueError, match="cannot resume mid-epoch: .*seq_len was 8, now 9"):
        packer(items, FORMATS[0], 9, True, None).load_state_dict(mid)
    resumed = packer(items, FORMATS[0], 8, True, None)
    resumed.load_state_dict(mid)
    assert_same_blocks(list(resumed), full[3:])
    boundary = packer(items, FORMATS[0], 9, True, None)  # nothing of the epoch out: any layout
    boundary.load_state_dict(packer(items, FORMATS[0], 8, True, None).state_dict())
    assert len(list(boundary)) == -(-66 // 9)


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(st.lists(st.integers(0, 6), max_size=8), max_size=12), fmt=st.sampled_from(FORMATS))
def test_join_equals_per_document_tokens(docs, fmt):
    arrays = [np.asarray(d, dtype=np.int32) for d in docs]
    tokens, lengths, kept = fmt.join(arrays)
    each = [fmt.tokens(a) for a in arrays]
    assert kept.tolist() == [t is not None for t in each]
    assert tokens.dtype == np.int32 and tokens.tolist() == [int(x) for t in each if t is not None for x in t]
    assert lengths.tolist() == [len(t) for t in each if t is not None]


def columnar(items: list[dict]) -> list[dict]:
    """``items`` named as a Chunk names them (shard 0, record = position)."""
    return [dict(it, sample_id=f"00000:{i:06d}") for i, it in enumerate(items)]


def chunk_packer(items, sizes, fmt, seq_len, split, chunk_tokens) -> PackedStream:
    packed = PackedStream(ChunkStream(items, sizes), seq_len, split_documents=split, sep_id=fmt.sep_id, pad_id=9,
                          chunk_tokens=chunk_tokens)
    object.__setattr__(packed, "format", fmt)
    return packed


chunk_sizes = st.lists(st.integers(1, 9), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(items=items_strategy(), sizes=chunk_sizes, fmt=st.sampled_from(FORMATS), seq_len=st.integers(2, 24),
       split=st.booleans(), chunk_tokens=st.sampled_from([1, 5, 17, 64, None]), data=st.data())
def test_columnar_reader_equals_reference_and_resumes_across_paths(items, sizes, fmt, seq_len, split,
                                                                   chunk_tokens, data):
    items = columnar(items)
    packed = chunk_packer(items, sizes, fmt, seq_len, split, chunk_tokens)
    assert isinstance(make_reader(packed.stream, fmt, packed.stats, None, 0), ChunkReader)
    it = iter(packed)
    states, blocks = [json.loads(json.dumps(packed.state_dict()))], []
    for block in it:
        blocks.append(block)
        states.append(json.loads(json.dumps(packed.state_dict())))
    assert_same_blocks(blocks, reference_blocks(items, fmt, seq_len, split, pad_id=9))
    per_item = packer(items, fmt, seq_len, split, chunk_tokens)
    list(per_item)
    assert packed.stats == per_item.stats
    k = data.draw(st.integers(0, len(blocks)))
    # a columnar state resumes the per-item path and the columnar one (other chunk sizes) alike
    other_sizes, other_tokens = data.draw(chunk_sizes), data.draw(st.sampled_from([1, 7, None]))
    for resumed in (packer(items, fmt, seq_len, split, None),
                    chunk_packer(items, other_sizes, fmt, seq_len, split, other_tokens)):
        resumed.load_state_dict(states[k])
        assert_same_blocks(list(resumed), blocks[k:])
    # and a per-item state resumes the columnar path
    per_item = packer(items, fmt, seq_len, split, chunk_tokens)
    item_states = [json.loads(json.dumps(per_item.state_dict()))]
    for _ in per_item:
        item_states.append(json.loads(json.dumps(per_item.state_dict())))
    resumed = chunk_packer(items, sizes, fmt, seq_len, split, chunk_tokens)
    resumed.load_state_dict(item_states[k])
    assert_same_blocks(list(resumed), blocks[k:])
