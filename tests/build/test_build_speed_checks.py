"""The block-wise checks of shards/corpus/column_checks.py answer what the per-record rules answer
(``str(b, "utf-8")``, ``str.strip()``, :func:`shards.corpus.records.normalize_label`), on Arrow arrays
of every shape the readers hand them (chunked, sliced, with nulls)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.corpus.column_checks import (
    PY_WHITESPACE,
    blank_texts,
    label_codes,
    text_chars,
    utf8_chars,
    utf8_valid,
)
from shards.corpus.decode import count_lines
from shards.corpus.records import normalize_label

pytestmark = pytest.mark.timeout(120)

# bytes around every UTF-8 boundary: ASCII, continuation bytes, 2/3/4-byte leads, surrogate and
# overlong leads, bytes that never occur
EDGE_BYTES = [0x00, 0x0A, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1,
              0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xF8, 0xFF]
WHITESPACE_HEAVY = st.text(st.sampled_from(list(PY_WHITESPACE) + ["a", "é", "\u3001", "\x00", "\u2027"]), max_size=6)


def _decodes(data: bytes) -> bool:
    try:
        str(data, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(EDGE_BYTES) | st.integers(0, 255), max_size=12).map(bytes))
def test_utf8_valid_is_pythons_decoder(data):
    assert utf8_valid(data) == _decodes(data)
    assert utf8_valid(memoryview(b"ok " + data)[3:]) == _decodes(data)


def test_utf8_valid_every_three_and_four_byte_sequence_lead():
    for lead in range(0xE0, 0xF8):
        for second in range(256):
            for tail in (b"\x80", b"\xbf", b"\x7f", b"\xc0", b"\x80\x80", b"\xbf\xbf"):
                data = bytes([lead, second]) + tail
                assert utf8_valid(data) == _decodes(data), data


def _chunked(texts: list[str | None], cut: int, offset: int) -> pa.ChunkedArray:
    """``texts`` as a chunked array cut at ``cut``, its second chunk a slice of a larger array."""
    head = pa.array(texts[:cut], pa.string())
    padded = pa.array(["pad"] * offset + texts[cut:], pa.string())
    return pa.chunked_array([head, padded.slice(offset)], pa.string())


@settings(max_examples=300, deadline=None)
@given(st.lists(WHITESPACE_HEAVY | st.none(), max_size=40), st.integers(0, 40), st.integers(0, 3))
def test_blank_texts_is_str_strip(texts, cut, offset):
    cut = min(cut, len(texts))
    got = blank_texts(_chunked(texts, cut, offset))
    assert got.tolist() == [t is None or not t.strip() for t in texts]
    assert text_chars(_chunked(texts, cut, offset)) == sum(len(t) for t in texts if t is not None)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_utf8_chars_counts_characters(text):
    assert utf8_chars(np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)) == len(text)


LABEL_STRINGS = st.text(st.sampled_from([" ", "\t", "\n", "\x85", "\u2028", "\x7f", "\x01", "a", "b", "1", "é"]), max_size=4)


def _per_record(values: list, label_set: list[str]) -> tuple[list[bool], list[bool], list[int]]:
    """(missing, bad label, id by ``label_set`` or -1) per value, by the per-record rule."""
    missing, bad, ids = [], [], []
    for v in values:
        label, why = normalize_label(v)
        missing.append(why is not None and why[0] == "missing_field")
        bad.append(why is not None and why[0] == "bad_label")
        ids.append(label_set.index(label) if label in label_set else -1)
    return missing, bad, ids


@settings(max_examples=300, deadline=None)
@given(st.lists(LABEL_STRINGS | st.none(), max_size=30), st.integers(0, 30))
def test_string_labels_by_distinct_values_are_the_record_rule(values, cut):
    label_set = ["1", "a", "b", "a b"]
    column = _chunked(values, min(cut, len(values)), 1)
    codes = label_codes(column)
    missing, bad, ids = _per_record(values, label_set)
    assert codes.missing().tolist() == missing
    assert (codes.bad() & ~codes.missing()).tolist() == [b and not m for b, m in zip(bad, missing)]
    assert codes.ids(pa.array(label_set)).tolist() == ids
    good = [i for i, (m, b) in enumerate(zip(missing, bad)) if not m and not b]
    strings = codes.strings().to_pylist()
    assert [strings[i] for i in good] == [normalize_label(values[i])[0] for i in good]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-10**12, 10**12) | st.none(), max_size=20))
def test_integer_labels_are_decimal_strings(values):
    codes = label_codes(pa.chunked_array([pa.array(values, pa.int64())]))
    assert codes.missing().tolist() == [v is None for v in values]
    strings = codes.strings().to_pylist()
    assert [s for s, v in zip(strings, values) if v is not None] == [str(v) for v in values if v is not None]


def test_float_labels_exact_integers_only():
    codes = label_codes(pa.array([1.0, None, -3.0, 2.0 ** 52], pa.float64()))
    assert codes.strings().to_pylist() == ["1", "", "-3", str(2 ** 52)]
    assert label_codes(pa.array([1.0, 1.5], pa.float64())) is None  # the per-line path refuses 1.5
    assert label_codes(pa.array([2.0 ** 53], pa.float64())) is None
    assert label_codes(pa.array([True, False], pa.bool_())) is None


def test_null_label_column_is_all_missing():
    codes = label_codes(pa.nulls(3))
    assert codes.missing().tolist() == [True] * 3
    assert codes.ids(pa.array(["a"])).tolist() == [-1] * 3


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\r\n", b"xyz"]), max_size=40), st.integers(0, 1 << 17))
def test_count_lines_small_and_large_blocks(pieces, pad):
    for data in (b"".join(pieces), b"q" * pad + b"".join(pieces)):
        assert count_lines(data) == len(data.splitlines()) - (bool(data) and not data.endswith((b"\n", b"\r")))
