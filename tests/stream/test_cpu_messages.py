"""The loader's cheaper worker messages give the same batches: ids unpadded over the pipe
(collate.RaggedIds, padded once by to_tensors), narrowed by message.pack, and rechunk's
pieces cut from each chunk directly."""
from __future__ import annotations

import pickle
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import ShardStream, make_loader
from pipeline.chunk import from_rows, rechunk
from pipeline.collate import RaggedIds, collate_chunk, to_tensors
from pipeline.loader.message import pack
from shards import Ragged

pytestmark = pytest.mark.timeout(300)


def chunk_of(lengths: list[int], vocab: int, seed: int):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, vocab, int(sum(lengths))).astype(np.int32)
    ids = Ragged.from_lengths(values, np.array(lengths, np.int64))
    return from_rows(3, 10, len(lengths), False, label=np.arange(len(lengths)) % 2, ids=ids)


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(
        torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype if isinstance(a[k], torch.Tensor) else list(a[k]) == list(b[k])
        for k in a)


@settings(max_examples=150, deadline=None)
@given(lengths=st.lists(st.integers(0, 300), min_size=1, max_size=40), vocab=st.sampled_from([2, 300, 30522, 70000]),
       pad_id=st.integers(0, 5), multiple=st.sampled_from([None, 1, 8, 64]), seed=st.integers(0, 2**31))
def test_ragged_batches_become_the_padded_batches_tensors(lengths, vocab, pad_id, multiple, seed):
    chunk = chunk_of(lengths, vocab, seed)
    padded = collate_chunk(chunk, pad_id, multiple)
    ragged = collate_chunk(chunk, pad_id, multiple, ragged=True)
    assert isinstance(ragged["input_ids"], RaggedIds)
    want = to_tensors(padded)
    assert same(to_tensors(ragged), want)
    (sent,) = pickle.loads(pickle.dumps(pack([ragged]), protocol=pickle.HIGHEST_PROTOCOL))
    assert same(to_tensors(sent), want)
    assert want["input_ids"].dtype == torch.int64 and want["attention_mask"].dtype == torch.int64


def test_pack_narrows_ragged_ids_to_16_and_8_bits_and_the_message_shrinks():
    chunk = chunk_of([5, 40, 3, 17] * 16, 30522, 0)
    ragged, padded = collate_chunk(chunk, 0, ragged=True), collate_chunk(chunk, 0)
    (sent,) = pack([ragged])
    assert sent["input_ids"].values.dtype == np.uint16 and sent["input_ids"].lengths.dtype == np.uint8
    assert len(pickle.dumps(pack([ragged]))) * 2 < len(pickle.dumps(pack([padded])))
    wide = RaggedIds(np.array([70000, 1], np.int32), np.array([1, 1]), 300, 0)
    (out,) = pack([{"input_ids": wide}])
    assert out["input_ids"].values.dtype == np.int32 and out["input_ids"].lengths.dtype == np.uint16
    assert to_tensors(out)["input_ids"].tolist() == [[70000] + [0] * 299, [1] + [0] * 299]


class Piece:
    """A minimal part for rechunk: a range of integers."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def slice(self, a: int, b: int) -> "Piece":
        return Piece(self.lo + a, self.lo + min(b, len(self)))


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), max_size=12), size=st.integers(1, 20))
def test_rechunk_cuts_exact_sizes_in_order(sizes, size):
    starts = np.cumsum([0] + sizes)
    parts = [Piece(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
    out = list(rechunk(parts, size, join=lambda held: [x for p in held for x in range(p.lo, p.hi)]))
    flat = [x for piece in out for x in piece]
    assert flat == list(range(int(starts[-1])))
    assert all(len(piece) == size for piece in out[:-1]) and (not out or 0 < len(out[-1]) <= size)


def padded_batches(ds, worker: int, workers: int) -> list[dict]:
    with mock.patch("pipeline.world.worker", return_value=(worker, workers)):
        return [to_tensors(b) for b, _ in ds.batches(8, pad_id=0, pad_to_multiple_of=4)]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_equal_the_streams_padded_batches(tmp_path, minilm, workers):
    from tests.helpers.data import build_set

    url = build_set(tmp_path, n=150, max_records=20)
    ds = ShardStream(url, tokenizer=minilm, max_length=16, shuffle=True, seed=3)
    per_worker = [padded_batches(ds, w, max(workers, 1)) for w in range(max(workers, 1))]
    want = []  # torch's round robin over messages of 3 batches
    for start in range(0, max(map(len, per_worker)), 3):
        for batches in per_worker:
            want += batches[start:start + 3]
    got = list(make_loader(ds, 8, num_workers=workers, pad_to_multiple_of=4, batches_per_message=3))
    assert len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
