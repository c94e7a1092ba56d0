"""shards.Ragged against plain lists of lists."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shards import Ragged
from shards.formats.ragged import concat

rows_st = st.lists(st.lists(st.integers(0, 30000), max_size=12), max_size=20)


def as_lists(r: Ragged) -> list[list[int]]:
    return [x.tolist() for x in r.rows()]


@settings(max_examples=200, deadline=None)
@given(rows_st, st.data())
def test_take_slice_concat_match_lists(rows, data):
    r = Ragged.from_lists(rows)
    assert len(r) == len(rows) and as_lists(r) == rows
    index = data.draw(st.lists(st.integers(0, max(len(rows) - 1, 0)), max_size=30)) if rows else []
    assert as_lists(r.take(np.array(index, dtype=np.int64))) == [rows[i] for i in index]
    lo = data.draw(st.integers(0, len(rows)))
    hi = data.draw(st.integers(lo, len(rows)))
    assert as_lists(r.slice(lo, hi)) == rows[lo:hi]
    assert as_lists(concat([r.slice(0, lo), r.slice(lo, len(rows))])) == rows


@settings(max_examples=200, deadline=None)
@given(rows_st, st.integers(1, 8))
def test_truncate_keeps_the_last_id_like_the_tokenizer(rows, max_length):
    cut = as_lists(Ragged.from_lists(rows).truncate(max_length))
    assert cut == [x if len(x) <= max_length else x[:max_length - 1] + x[-1:] for x in rows]
    plain = as_lists(Ragged.from_lists(rows).truncate(max_length, keep_last=False))
    assert plain == [x[:max_length] for x in rows]


@settings(max_examples=100, deadline=None)
@given(rows_st.filter(bool), st.integers(0, 4))
def test_padded_fills_pad_after_each_row(rows, extra):
    width = max(map(len, rows)) + extra
    ids, mask = Ragged.from_lists(rows).padded(width, pad_id=-1)
    assert ids.shape == mask.shape == (len(rows), width)
    for i, row in enumerate(rows):
        assert ids[i].tolist() == row + [-1] * (width - len(row))
        assert mask[i].tolist() == [1] * len(row) + [0] * (width - len(row))


def test_from_arrays_and_empty():
    r = Ragged.from_lists([np.array([1, 2], np.int64), np.array([], np.int64)])
    assert r.values.dtype == np.int32 and as_lists(r) == [[1, 2], []]
    assert len(Ragged.empty(3)) == 3 and as_lists(Ragged.empty(3)) == [[], [], []]


def test_sample_ids_read_like_a_list_and_pickle_as_arrays():
    import pickle

    from pipeline.chunk import SampleIds
    ids = SampleIds(np.array([0, 12, 3]), np.array([5, 0, 123456]))
    assert ids == ["00000:000005", "00012:000000", "00003:123456"] and len(ids) == 3
    assert ids[1] == "00012:000000" and ids[-1] == "00003:123456" and list(ids[:2]) == ids.tolist()[:2]
    assert "00003:123456" in ids and ids.index("00012:000000") == 1
    fresh = SampleIds(np.array([7]), np.array([1]))
    blob = pickle.dumps(fresh)
    assert b"00007" not in blob and pickle.loads(blob) == ["00007:000001"]
