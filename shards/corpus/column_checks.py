"""The per-record checks of the column-wise readers (JSONL, CSV/TSV, txt), on whole blocks at a time.

Each answers what the per-line path answers record by record, with as little work per record as
the common case allows: UTF-8 is validated by Arrow's validator (Python's decoder only locates an
error), "empty after ``str.strip()``" is asked only of texts that start with a whitespace byte,
and a label column's checks run on its distinct values (a few) instead of its rows (a million).
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from shards.corpus.records import EXACT_FLOAT, LABEL_BAD_CHARS
from shards.lazy import compute as pc

# What Python's str.strip() strips (every c with c.isspace(); a test checks the list):
# "empty after strip" must mean the same here.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                 "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
LABEL_BAD_RE2 = "[" + LABEL_BAD_CHARS.replace("\u2028", "\\x{2028}").replace("\u2029", "\\x{2029}") + "]"
# the first UTF-8 byte of each PY_WHITESPACE character: a text starting with no such byte is not blank
WHITESPACE_FIRST_BYTE = np.zeros(256, bool)
WHITESPACE_FIRST_BYTE[[c.encode()[0] for c in PY_WHITESPACE]] = True
# label types read column-wise (the label rule of corpus_records: strings stripped, integers in
# decimal); booleans and floats are left to the per-line path, which refuses or converts them
LABEL_TYPES = (pa.string(), pa.int64(), pa.float64())
DENSE_LABEL_RANGE = 1 << 16  # integer labels spanning fewer values are coded by a table, not a sort
SCRATCH_BYTES = 32 << 20  # a larger block's temporary mask is not kept
_SCRATCH = threading.local()


def utf8_valid(data) -> bool:
    """Whether ``data`` (bytes-like) is valid UTF-8, as ``str(data, "utf-8")`` decides (no surrogates,
    no overlong forms, nothing past U+10FFFF), checked by Arrow's validator: 20-30x faster than decoding."""
    n = len(data)
    if n >= 1 << 31:  # past int32 offsets: Python's decoder
        try:
            str(data, "utf-8")
        except UnicodeDecodeError:
            return False
        return True
    offsets = pa.py_buffer(np.array([0, n], np.int32))
    try:
        pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def scratch_mask(n: int) -> np.ndarray:
    """A bool buffer of ``n`` for a temporary mask, kept per thread up to SCRATCH_BYTES: a fresh 8 MB
    temporary per block costs the page faults of its memory (huge pages cleared) at every block."""
    if n > SCRATCH_BYTES:
        return np.empty(n, bool)
    mask = getattr(_SCRATCH, "mask", None)
    if mask is None or len(mask) < n:
        mask = _SCRATCH.mask = np.empty(max(n, 1 << 20), bool)
    return mask[:n]


def utf8_chars(data: np.ndarray) -> int:
    """UTF-8 characters in valid UTF-8 ``data`` (uint8): the bytes that are not continuation bytes
    (0x80-0xBF, below -64 as int8)."""
    return len(data) - int(np.count_nonzero(np.less(data.view(np.int8), -64, out=scratch_mask(len(data)))))


def _chunks(text: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return text.chunks if isinstance(text, pa.ChunkedArray) else [text]


def _offsets_and_bytes(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets of each string, the data buffer as uint8) of a string array, without copies."""
    buffers = chunk.buffers()
    offsets = np.frombuffer(buffers[1], np.int32, len(chunk) + 1, chunk.offset * 4)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def text_chars(text: pa.Array | pa.ChunkedArray, is_ascii: bool = False) -> int:
    """Characters of all the strings of a string array (nulls hold none), from its data buffer;
    ``is_ascii``: the strings are known to be ASCII (cut from ASCII bytes), their bytes are their characters."""
    total = 0
    for chunk in _chunks(text):
        if len(chunk):
            offsets, data = _offsets_and_bytes(chunk)
            values = data[int(offsets[0]):int(offsets[-1])]
            total += len(values) if is_ascii else utf8_chars(values)
    return total


def has_nul(text: pa.Array | pa.ChunkedArray) -> bool:
    """Whether any string of a string array holds a NUL character (a min over its bytes: a search of the
    JSON for ``\\u0000`` cost ~10x more, its backslashes being everywhere in escaped text)."""
    for chunk in _chunks(text):
        if len(chunk):
            offsets, data = _offsets_and_bytes(chunk)
            values = data[int(offsets[0]):int(offsets[-1])]
            if len(values) and values.min() == 0:
                return True
    return False


def blank_texts(text: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per row: True where the text is empty after ``str.strip()`` (a null row too: its missing_field
    check comes first).  Only texts whose first byte may start a whitespace character are trimmed."""
    parts = [np.zeros(0, bool)]
    for chunk in _chunks(text):
        if not len(chunk):
            continue
        offsets, data = _offsets_and_bytes(chunk)
        lengths = np.diff(offsets)
        blank = lengths == 0
        if len(data):
            first = data[np.minimum(offsets[:-1], len(data) - 1)]
            maybe = np.flatnonzero(~blank & WHITESPACE_FIRST_BYTE[first])
            if maybe.size:
                trimmed = pc.utf8_trim(chunk.take(int64_array(maybe)), PY_WHITESPACE)
                blank[maybe] = pc.fill_null(pc.equal(pc.binary_length(trimmed), 0), False).to_numpy(zero_copy_only=False)
        parts.append(blank)
    return np.concatenate(parts)


class LabelCodes(NamedTuple):
    """A label column as its distinct values (label strings: stripped, integers in decimal) and,
    per row, the index of its value (-1: null)."""

    index: np.ndarray
    values: pa.Array
    decimal: bool = False  # the values are integers in decimal: never empty, never a control character

    def per_row(self, per_value: np.ndarray, for_null) -> np.ndarray:
        """A per-value array spread to the rows (``for_null`` on null rows)."""
        return np.append(per_value, np.asarray(for_null, per_value.dtype))[self.index]

    def missing(self) -> np.ndarray:
        """Per row: null or empty (missing_field)."""
        if self.decimal:
            return self.index < 0
        return self.per_row(pc.equal(pc.binary_length(self.values), 0).to_numpy(zero_copy_only=False), True)

    def bad(self) -> np.ndarray:
        """Per row: holds a line break or a control character (bad_label)."""
        if self.decimal:
            return np.zeros(len(self.index), bool)
        return self.per_row(pc.match_substring_regex(self.values, LABEL_BAD_RE2).to_numpy(zero_copy_only=False), False)

    def ids(self, label_set: pa.Array) -> np.ndarray:
        """Per row: the label id by ``label_set`` (-1: unknown or null)."""
        found = pc.fill_null(pc.index_in(self.values, value_set=label_set), -1).to_numpy(zero_copy_only=False)
        return self.per_row(found.astype(np.int64), -1)

    def strings(self) -> pa.DictionaryArray:
        """Per row: the label string, as a dictionary array over the distinct values (a null row: "")."""
        values = pa.concat_arrays([self.values, pa.array([""], pa.string())])
        index = np.where(self.index < 0, len(self.values), self.index).astype(np.int32)
        return pa.DictionaryArray.from_arrays(pa.Array.from_buffers(pa.int32(), len(index), [None, pa.py_buffer(index)]),
                                              values)

def label_codes(column: pa.Array | pa.ChunkedArray) -> LabelCodes | None:
    """The column's :class:`LabelCodes`, or None for a type the per-line path words its own way
    (a boolean, a list, a float that is not an exact integer, ...)."""
    if column.type == pa.int64():  # the common case (0/1 labels): numpy, no pyarrow.compute (its import is 0.1 s)
        return _int_codes(column)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.nulls(0, column.type)
    if column.type == pa.null():
        return LabelCodes(np.full(len(column), -1, np.int64), pa.array([], pa.string()))
    if column.type not in LABEL_TYPES:
        return None
    encoded = pc.dictionary_encode(column)
    index = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    values = encoded.dictionary
    if values.type == pa.float64():  # 1.0 -> "1"; any other float: the per-line path refuses it
        exact = pc.and_kleene(pc.equal(pc.floor(values), values), pc.less(pc.abs(values), EXACT_FLOAT))
        if not pc.all(exact).as_py():
            return None
        values = pc.cast(values, pa.int64())
    values = pc.utf8_trim(values, PY_WHITESPACE) if values.type == pa.string() else pc.cast(values, pa.string())
    return LabelCodes(index, values)


def _int_codes(column: pa.Array | pa.ChunkedArray) -> LabelCodes:
    """:func:`label_codes` of an int64 column, with numpy: its distinct values in increasing order."""
    ints, valid = _int64_values(column)
    distinct, codes = _distinct_ints(ints if valid is None else ints[valid])
    if valid is None:
        index = codes
    else:
        index = np.full(len(ints), -1, np.int64)
        index[valid] = codes
    values = pa.array([str(v) for v in distinct.tolist()], pa.string())  # as a cast to string writes them
    return LabelCodes(index, values, decimal=True)


def _distinct_ints(ints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values in increasing order, per value its index in them)."""
    if len(ints) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    low, high = int(ints.min()), int(ints.max())  # Python ints: high - low never overflows
    if high - low >= DENSE_LABEL_RANGE:
        distinct, index = np.unique(ints, return_inverse=True)
        return distinct, index.astype(np.int64).reshape(-1)
    offsets = ints - low
    present = np.flatnonzero(np.bincount(offsets, minlength=high - low + 1))
    code_of = np.zeros(high - low + 1, np.int64)
    code_of[present] = np.arange(len(present))
    return present + low, code_of[offsets]


def _int64_values(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, validity or None when no row is null) of an int64 column, from its buffers."""
    chunks = [c for c in _chunks(column) if len(c)]
    if not chunks:
        return np.zeros(0, np.int64), None
    ints = [np.frombuffer(c.buffers()[1], np.int64, len(c), c.offset * 8) for c in chunks]
    ints = np.concatenate(ints) if len(ints) > 1 else ints[0]
    if not column.null_count:
        return ints, None
    valid = [np.unpackbits(np.frombuffer(c.buffers()[0], np.uint8), bitorder="little")[c.offset:c.offset + len(c)]
             if c.null_count else np.ones(len(c), np.uint8) for c in chunks]
    return ints, np.concatenate(valid).astype(bool)


def int64_array(values: np.ndarray) -> pa.Int64Array:
    """A numpy int64 array as an Arrow one, zero-copy (``pa.array`` on numpy imports numpy.ma: 13 ms)."""
    values = np.ascontiguousarray(values, np.int64)
    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])
