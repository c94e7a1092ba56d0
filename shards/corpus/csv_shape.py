"""Which lines of a CSV/TSV block are *clean* (see :mod:`shards.corpus.csv_block`), by numpy passes.

One scan finds the block's line feeds, quotes and control bytes together (finding positions costs
several comparison passes, so one scan, not one per byte value); a line's number is then a count of
the marks before it.  The per-byte masks are kept by the reader from block to block: numpy asks the
kernel for fresh zeroed pages for each new 8 MB array, which costs as much as the comparison itself.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from shards.corpus.jsonl_check import invalid_utf8_lines


def _meaningful(delimiter: str) -> np.ndarray:
    """Per byte value: an ASCII byte that is not whitespace, a quote or the delimiter."""
    table = np.zeros(256, bool)
    table[:128] = True
    table[list(b' \t\n\r\x0b\x0c"')] = False
    table[ord(delimiter)] = False
    return table


MEANINGFUL = {ord(d): _meaningful(d) for d in ",\t"}
MEANINGFUL_RE = {d: re.compile(rb'[^\x80-\xff\s"' + re.escape(d.encode()) + rb"]") for d in ",\t"}
MAX_BLANK_SEARCHES = 2000  # lines a block's blank check searches one by one (~0.5 us each); past that, numpy


class Shape(NamedTuple):
    """A block's LF-ended lines: bounds, which could be clean whatever the header, fields of each
    (None until asked for: pyarrow refuses a row of another number of fields, so the fields are
    counted only in a block where it refused a run, and the run is cut before such rows)."""

    starts: np.ndarray
    ends: np.ndarray
    clean: np.ndarray  # clean if the line has the header's number of fields
    fields: np.ndarray | None = None


def block_shape(block: bytes, limit: int, delimiter: str, masks: Masks | None = None) -> Shape | None:
    """The block's :class:`Shape` (None when it holds a CR: every line goes to the strict reader).

    Runs on the block reader's thread: numpy passes over the bytes, each releasing the GIL.
    """
    a = np.frombuffer(block, np.uint8)
    masks = masks or Masks()
    marks = _marks(a, masks)
    if marks is None:
        return None
    pos, byte, control_lines = marks
    newline_marks = np.flatnonzero(byte == 10)
    newlines = pos[newline_marks]
    starts = np.empty(len(newlines) + 1, np.int64)
    starts[0] = 0
    np.add(newlines, 1, out=starts[1:])
    if block.endswith(b"\n"):
        starts, ends = starts[:-1], newlines
    else:
        ends = np.append(newlines, len(a))
    lengths = ends - starts
    clean = lengths > 0
    if len(a) > limit:
        clean &= lengths <= limit
    if control_lines is not None:
        clean[control_lines] = False
    if len(newline_marks) < len(pos):
        _check_quotes(a, pos, byte, newline_marks, ord(delimiter), clean)
    clean[_blank_lines(block, a, starts, ends, clean, delimiter, masks)] = False
    if not block.isascii():
        clean &= ~invalid_utf8_lines(block, starts)
    return Shape(starts, ends, clean)


def _blank_lines(block: bytes, a: np.ndarray, starts: np.ndarray, ends: np.ndarray, clean: np.ndarray,
                 delimiter: str, masks: Masks) -> np.ndarray:
    """The clean lines with no byte but whitespace, quotes and delimiters: rows that may be blank (the
    strict reader decides).  Their first and last bytes settle nearly every line, the second and the
    last but one a line of quoted fields ("text","pos"), a regex the few others; with many others,
    one numpy pass over the block (a file of such rows is no slower than that)."""
    meaningful = MEANINGFUL[ord(delimiter)]
    last = np.maximum(ends - 1, starts)
    settled = meaningful[a[starts]]
    settled |= meaningful[a[last]]
    maybe = np.flatnonzero(clean & ~settled)
    if not len(maybe):
        return maybe
    first, end = starts[maybe], last[maybe]
    inner = meaningful[a[np.minimum(first + 1, end)]]
    inner |= meaningful[a[np.maximum(end - 1, first)]]
    maybe = maybe[~inner]
    if len(maybe) > MAX_BLANK_SEARCHES:
        # meaningful bytes by comparisons: the table's own on a clean line, which holds no control byte but a tab
        found, other = masks.of(len(a))
        np.greater(a, 32, out=found)
        found &= np.less(a, 128, out=other)
        found &= np.not_equal(a, 34, out=other)
        found &= np.not_equal(a, ord(delimiter), out=other)
        return maybe[~np.logical_or.reduceat(found, starts)[maybe]]
    pattern = MEANINGFUL_RE[delimiter]
    return np.array([k for k in maybe.tolist() if pattern.search(block, int(starts[k]), int(ends[k])) is None], np.int64)


class Masks:
    """Two per-byte masks kept from block to block by one reader (one thread: a block overwrites them)."""

    def __init__(self):
        self.marks = self.quotes = np.empty(0, bool)

    def of(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.marks) < n:
            self.marks, self.quotes = np.empty(n, bool), np.empty(n, bool)
        return self.marks[:n], self.quotes[:n]


def _marks(a: np.ndarray, masks: Masks) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(offsets of the block's line feeds and quotes, their bytes, the lines that hold a control byte
    other than a tab or a line feed: None if none); None if the block holds a CR."""
    # one scan finds them all: finding positions (flatnonzero) costs several comparison passes, and a
    # line's number is then a count of the marks before it, not a search among the line starts
    marks, quotes = masks.of(len(a))
    np.less(a, 32, out=marks)
    np.equal(a, 34, out=quotes)
    marks |= quotes
    pos = np.flatnonzero(marks)
    byte = a[pos]
    newline = byte == 10
    kept = newline | (byte == 34)
    if kept.all():
        return pos, byte, None
    if (byte == 13).any():
        return None
    # tabs (a TSV's delimiters) or other control bytes: the line of each is the line feeds before it
    control = ~kept & (byte != 9)
    control_lines = np.cumsum(newline)[control] if control.any() else None
    return pos[kept], byte[kept], control_lines


def _boundary(delimiter: int) -> np.ndarray:
    """Per byte value: whether a quote next to it may open or close a field (a line feed, the delimiter,
    another quote).  A quote that is a block's first or last byte is looked up as its own neighbour:
    the block's start or end is a line's."""
    table = np.zeros(256, bool)
    table[[10, 34, delimiter]] = True
    return table


BOUNDARY = {ord(d): _boundary(ord(d)) for d in ",\t"}


def _check_quotes(a: np.ndarray, pos: np.ndarray, byte: np.ndarray, newline_marks: np.ndarray, delim: int,
                  clean: np.ndarray) -> None:
    """Unmark the lines whose quotes do not each open or close a whole field (or pair up inside one).

    ``pos``: offsets of the block's line feeds and quotes (nothing else), ``byte``: their bytes,
    ``newline_marks``: which of them are line feeds.  So the marks before a quote are the line feeds
    before its line and the quotes before it in its line, and the marks between two line feeds are
    the quotes of a line."""
    quote_marks = np.flatnonzero(byte == 34)
    qline = quote_marks - np.arange(len(quote_marks))  # line feeds before each quote
    # bounds[k]: the mark of the line feed ending line k - 1 (-1 before the first line), then len(pos)
    bounds = np.empty(len(newline_marks) + 2, np.int64)
    bounds[0], bounds[-1] = -1, len(pos)
    bounds[1:-1] = newline_marks
    # a quote opens a quoted field when an even number of quotes is before it in its line
    opens = ((quote_marks - bounds[qline]) & 1) == 1
    qpos = pos[quote_marks]
    # an opening quote starts a field (or is the 2nd of a doubled ""), a closing one ends it (or is the 1st)
    boundary = BOUNDARY[delim]
    prev = boundary[a[np.maximum(qpos - 1, 0)]]
    nxt = boundary[a[np.minimum(qpos + 1, len(a) - 1)]]
    clean[qline[~np.where(opens, prev, nxt)]] = False
    # an odd number of quotes in a line: an even step between its bounds
    clean &= (np.diff(bounds)[:len(clean)] & 1) == 1


def _opening_quotes(qline: np.ndarray) -> np.ndarray:
    """Whether each quote opens a quoted field (an even number of quotes before it in its line), from
    the line of each quote (in order)."""
    per_line = np.bincount(qline)
    q_before = np.zeros(len(per_line), np.int64)  # quotes before each line's start
    np.cumsum(per_line[:-1], out=q_before[1:])
    return ((np.arange(len(qline)) - q_before[qline]) & 1) == 0


def line_fields(block: bytes, starts: np.ndarray, delimiter: str) -> np.ndarray:
    """Fields of each line of a block whose quotes :func:`block_shape` checked (on a line it found
    unclean the count may be off: such a line is never clean)."""
    a = np.frombuffer(block, np.uint8)
    dpos = np.flatnonzero(a == ord(delimiter))
    # delimiters per line: the lines' bounds looked up among the delimiters (fewer lookups than the other way)
    fields = np.diff(np.searchsorted(dpos, np.append(starts, len(a)))) + 1
    qpos = np.flatnonzero(a == 34)
    if len(qpos):
        qline = np.searchsorted(starts, qpos, side="right") - 1
        opens = _opening_quotes(qline)
        # a quoted delimiter separates nothing: those between an opening quote and the next quote (in a
        # line with an odd number of quotes the count runs on past it, but such a line is never clean)
        before = np.append(np.searchsorted(dpos, qpos), len(dpos))  # delimiters before each quote
        inside = (before[1:] - before[:-1])[opens]
        fields -= np.bincount(qline[opens], weights=inside, minlength=len(starts)).astype(np.int64)
    return fields
