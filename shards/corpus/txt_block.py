"""txt read one record per line, column-wise: a block of whole lines becomes an Arrow string
array with a few numpy calls, giving exactly what the per-line path
(:func:`shards.corpus.records.txt_records` over :func:`shards.corpus.decode.split_lines`) gives.

Per line, in the per-line path's order: over ``--max-record-bytes`` is ``too_long``, only
whitespace (``bytes.strip()``'s) is ``blank_line``, a NUL byte is ``nul_byte``, bytes that are not
UTF-8 are ``invalid_utf8``; the rest is written as it is.  A block holding a CR (CRLF or lone CR
line breaks), many invalid lines, or any bad line under ``--on-bad-record error`` (which must
name the first one) is read by the per-line path itself.
"""
from __future__ import annotations

import re
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa

from shards.build.prefetch import prefetch
from shards.build.writer import Columns
from shards.corpus.column_checks import scratch_mask, utf8_chars, utf8_valid
from shards.corpus.decode import Where, shaped_line_blocks, split_lines
from shards.corpus.records import txt_records
from shards.corpus.spec import BLANK, BadRecords, CorpusSpec, Unit, kind_of

BLOCK_BYTES = 8 << 20
MAX_UTF8_ERRORS = 16  # invalid lines located one by one in a block; past that, the block goes per line
WHITESPACE = np.zeros(256, bool)
WHITESPACE[[9, 10, 11, 12, 13, 32]] = True  # bytes.strip()'s
NOT_WHITESPACE = re.compile(rb"[^\t\n\x0b\x0c\r ]")
MAX_BLANK_SEARCHES = 2000  # lines a block's blank check searches one by one (~0.5 us each); past that, numpy


def read_columns(unit: Unit, spec: CorpusSpec, bad: BadRecords, storage_options: dict | None = None
                 ) -> Iterator[Columns]:
    """The unit's lines as Columns (one record per non-blank line), as the per-line path gives them."""
    where = Where(unit, storage_options)
    compression = kind_of(unit.url, spec.input_format)[1]
    limit = spec.max_record_bytes

    def shape(block: bytes, first: int) -> tuple[int | None, Columns | Kept]:
        return shaped_columns(block, first, limit, bad, where)
    blocks = shaped_line_blocks(unit, limit, bad, where, compression, storage_options, BLOCK_BYTES, shape)
    # read, cut and checked a block or two ahead, on a thread (the numpy passes release the GIL); the
    # kept lines' bytes are gathered here, on the thread that consumes this generator (the build's
    # reader thread): the two share the work that one thread did, ahead of the writer
    for _, _, columns in prefetch(blocks, depth=2):
        yield columns if isinstance(columns, Columns) else _strings(*columns)


def line_bounds(a: np.ndarray, ends_with_newline: bool) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) offsets of each LF-ended line of a block (end: the LF, or the block's end)."""
    newlines = np.flatnonzero(np.equal(a, 10, out=scratch_mask(len(a))))
    starts = np.concatenate(([0], newlines + 1))
    if ends_with_newline:
        return starts[:-1], newlines
    return starts, np.concatenate((newlines, [len(a)]))


def blank_lines(block: bytes, a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per line: only ``bytes.strip()``'s whitespace (9-13, 32) or nothing.  Its first, second and last
    bytes settle nearly every line (a text line starts or ends with a letter; a blank one is short), a
    regex the few others; with many others, one numpy pass over the bytes (no input is slower than that)."""
    lengths = ends - starts
    last = np.maximum(ends - 1, starts)  # an empty line's "bytes" are its line feed: whitespace
    maybe = WHITESPACE[a[starts]] & WHITESPACE[a[np.minimum(starts + 1, last)]] & WHITESPACE[a[last]]
    unsettled = np.flatnonzero(maybe & (lengths > 3))
    if len(unsettled) > MAX_BLANK_SEARCHES:
        space = (a == 32) | ((a - np.uint8(9)) <= 4)
        return ~np.logical_or.reduceat(~space, starts)
    blank = maybe & (lengths <= 3)
    for k in unsettled.tolist():
        blank[k] = NOT_WHITESPACE.search(block, int(starts[k]), int(ends[k])) is None
    return blank


def per_line(block: bytes, first: int, limit: int, bad: BadRecords, where) -> Columns:
    texts = [r.text for r in txt_records(split_lines(block, first, limit, bad, where), bad, where)]
    return Columns(pa.array(texts, pa.string()), None, sum(map(len, texts)))


class Kept(NamedTuple):
    """The lines of a checked block that are records (its bad lines counted), for :func:`_strings`."""

    block: bytes
    keep: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    is_ascii: bool


def block_columns(block: bytes, first: int, limit: int, bad: BadRecords, where) -> Columns:
    columns = shaped_columns(block, first, limit, bad, where)[1]
    return columns if isinstance(columns, Columns) else _strings(*columns)


def shaped_columns(block: bytes, first: int, limit: int, bad: BadRecords, where) -> tuple[int | None, Columns | Kept]:
    """(lines the block ends, or None: not counted here; the block's records as Columns, or its Kept
    lines, their bytes not gathered yet)."""
    if not block or b"\r" in block:
        return None, per_line(block, first, limit, bad, where)
    a = np.frombuffer(block, np.uint8)
    starts, ends = line_bounds(a, block.endswith(b"\n"))
    return len(starts) - (not block.endswith(b"\n")), _checked_columns(block, first, limit, bad, where, a, starts, ends)


def _checked_columns(block: bytes, first: int, limit: int, bad: BadRecords, where, a: np.ndarray,
                     starts: np.ndarray, ends: np.ndarray) -> Columns | Kept:
    """The records of a block of LF-ended lines (``starts``, ``ends``), its bad lines counted."""
    too_long = (ends - starts) > limit
    blank = blank_lines(block, a, starts, ends) & ~too_long
    # per line: does it hold a NUL? one pass over the bytes, only in a block that has one
    nul = np.zeros(len(starts), bool)
    if b"\0" in block:
        nul = np.logical_or.reduceat(a == 0, starts) & ~too_long & ~blank
    invalid = np.zeros(len(starts), bool)
    is_ascii = block.isascii()
    if not is_ascii and not _mark_invalid(block, starts, invalid):
        return per_line(block, first, limit, bad, where)
    invalid &= ~too_long & ~blank & ~nul
    if bad.policy == "error" and (too_long.any() or nul.any() or invalid.any()):
        return per_line(block, first, limit, bad, where)  # raises naming the first bad line
    for reason, mask in (("too_long", too_long), (BLANK, blank), ("nul_byte", nul), ("invalid_utf8", invalid)):
        bad.add_many(reason, int(np.count_nonzero(mask)))
    good = ~(too_long | blank | nul | invalid)
    return Kept(block, good, starts, ends, is_ascii)


def _mark_invalid(block: bytes, starts: np.ndarray, invalid: np.ndarray) -> bool:
    """Mark the lines holding bytes that are not UTF-8; False if there are too many to locate."""
    view, at = memoryview(block), 0
    for _ in range(MAX_UTF8_ERRORS):
        try:
            if not utf8_valid(view[at:]):
                str(view[at:], "utf-8")  # raises where the first invalid sequence is
            return True
        except UnicodeDecodeError as exc:
            line = int(np.searchsorted(starts, at + exc.start, side="right")) - 1
            invalid[line] = True
            if line + 1 >= len(starts):
                return True
            at = int(starts[line + 1])
    return False


def _strings(block: bytes, keep: np.ndarray, starts: np.ndarray, ends: np.ndarray, is_ascii: bool) -> Columns:
    """Lines ``keep`` of a block of LF-ended lines as an Arrow string array: the kept lines' bytes
    without their line feeds, picked by one byte mask (numpy, no per-line object); ``is_ascii``: the
    block is ASCII (its bytes are its characters)."""
    a = np.frombuffer(block, np.uint8)
    offsets = np.zeros(int(np.count_nonzero(keep)) + 1, np.int64)
    np.cumsum((ends - starts)[keep], out=offsets[1:])
    if keep.all():  # kept lines hold no line feed but their ends: the block without them (4x faster than a mask)
        data = np.frombuffer(block.replace(b"\n", b""), np.uint8)
    else:
        spans = np.diff(starts, append=len(a))  # each line with its line feed
        picked = np.repeat(keep, spans)
        picked[ends[ends < len(a)]] = False
        data = a[picked]
    text = pa.Array.from_buffers(pa.string(), len(offsets) - 1, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                               pa.py_buffer(data)])
    return Columns(text, None, len(data) if is_ascii else utf8_chars(data))

