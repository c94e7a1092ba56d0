"""What crosses the worker pipe narrow comes back exact: message.narrow and the block dtypes."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.collate import to_tensors
from pipeline.loader.message import narrow, pack
from pipeline.pack.blocks import block_dtypes


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-(1 << 40), 1 << 40) | st.integers(-200, 70000), min_size=1, max_size=40))
def test_narrow_keeps_every_value_in_the_smallest_dtype(values):
    a = np.array(values, dtype=np.int64).reshape(1, -1)
    got = narrow(a)
    assert got.tolist() == a.tolist()
    smaller = [d for d in (np.uint8, np.int8, np.uint16, np.int16, np.int32) if np.dtype(d).itemsize < got.itemsize]
    assert all(np.iinfo(d).min > a.min() or np.iinfo(d).max < a.max() for d in smaller)


def test_a_narrowed_batch_becomes_long_tensors_with_lm_targets():
    import torch
    ids = np.array([[5, 70000, 3, 0]], dtype=np.int64)
    doc_ids = np.array([[0, 0, 1, -1]], dtype=np.int64)
    (batch,) = pack([{"input_ids": ids, "doc_ids": doc_ids, "position_ids": np.array([[0, 1, 0, 0]])}])
    assert batch["input_ids"].dtype == np.int32
    assert batch["doc_ids"].dtype == np.int8
    out = to_tensors(batch)
    assert all(out[k].dtype == torch.int64 for k in ("input_ids", "labels", "attention_mask", "doc_ids"))
    assert out["input_ids"].tolist() == ids.tolist()
    assert out["labels"].tolist() == [[5, 70000, 3, -100]] and out["attention_mask"].tolist() == [[1, 1, 1, 0]]


class _Vocab:
    def __init__(self, n):
        self.n = n

    def get_vocab_size(self, with_added_tokens=True):
        return self.n


def test_block_dtypes_are_16_bits_only_where_every_value_fits():
    assert block_dtypes(_Vocab(30522), 128, (0, 102)) == (np.uint16, np.int16)
    assert block_dtypes(_Vocab(65536), 128, (0, 102))[0] == np.uint16
    assert block_dtypes(_Vocab(65537), 128, (0, 102))[0] == np.int64  # id 65536 would wrap
    assert block_dtypes(None, 128, (0, 102))[0] == np.int64            # vocabulary unknown
    assert block_dtypes(_Vocab(100), 1 << 15, (0, 1))[1] == np.int64   # positions up to 32767 only
