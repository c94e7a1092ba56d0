"""Vectorised checks for :mod:`shards.corpus.jsonl`: which lines pyarrow may read, and the
per-line path's record checks (``corpus._from_mapping`` + unknown labels) on its columns.

A line is *clean* when it is ``{...}`` with no control byte, within
``max_record_bytes`` and valid UTF-8.  In a run of clean lines an object cannot
span lines (after a ``}`` inside an object only ``,`` ``}`` or ``]`` may follow,
never a line's leading ``{``), so pyarrow giving one row per clean line means
each is exactly one object, as ``json.loads`` of the line sees it.  Other lines
(*suspect*: blank, truncated, CRLF, ...) are left to the per-line path.
"""
from __future__ import annotations

import json
import re
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

from shards.corpus.column_checks import (  # noqa: F401 - PY_WHITESPACE, LABEL_BAD_RE2: named here too
    LABEL_BAD_RE2,
    LABEL_TYPES,
    PY_WHITESPACE,
    LabelCodes,
    blank_texts,
    has_nul,
    int64_array,
    label_codes,
    scratch_mask,
    utf8_valid,
)
from shards.corpus.spec import CorpusSpec
from shards.lazy import compute as pc

PARSE_BLOCK = 1 << 20  # pyarrow's own block (one parallel task)
MAX_UTF8_ERRORS = 16  # invalid lines located one by one in a block; past that, the rest is suspect
# reason codes, in the order the per-line path checks them
OK, NO_TEXT, EMPTY, NUL, NO_LABEL, UNKNOWN, BAD_LABEL = range(7)
REASONS = {NO_TEXT: "missing_field", EMPTY: "empty_text", NUL: "nul_byte", NO_LABEL: "missing_field",
           BAD_LABEL: "bad_label", UNKNOWN: "unknown_label"}
# a \\uD800-\\uDFFF escape not in a high-low pair; a pair after a backslash too (it may be a "\\\\" then text)
LONE_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
                            rb"|(?<![uU][dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
                            rb"|(?<=\\)\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F]")


class Lines(NamedTuple):
    starts: np.ndarray  # offset of each line in the block
    ends: np.ndarray  # offset of its newline (or the block's end)
    suspect: np.ndarray  # bool: leave this line to the per-line path

    def offset(self, i: int) -> int:
        """Offset of line ``i`` (the block's length for one past the last)."""
        return int(self.starts[i]) if i < len(self.starts) else int(self.ends[-1]) + 1

    def runs(self) -> list[tuple[bool, int, int]]:
        """(suspect, first line, end line) of each run of equally suspect lines, in order."""
        edges = np.flatnonzero(np.diff(self.suspect.view(np.int8))) + 1
        bounds = [0, *edges.tolist(), len(self.suspect)]
        return [(bool(self.suspect[i]), i, j) for i, j in zip(bounds, bounds[1:])]


class Checked(NamedTuple):
    lines: Lines
    text: pa.ChunkedArray  # one row per clean line, in order
    label: pa.ChunkedArray | None  # label ids, or label strings for a scan
    reason: np.ndarray | None  # per clean row; None when every one is good


def line_shape(block: bytes, limit: int) -> Lines:
    a = np.frombuffer(block, np.uint8)
    # one pass finds every control byte; nearly always they are all line feeds (tab, CR, NUL, ...: suspect)
    controls = np.flatnonzero(np.less(a, 32, out=scratch_mask(len(a))))
    is_newline = a[controls] == 10
    others = None
    if is_newline.all():
        newlines = controls
    else:
        newlines, others = controls[is_newline], controls[~is_newline]
    starts = np.concatenate(([0], newlines + 1))
    if block.endswith(b"\n"):
        starts, ends = starts[:-1], newlines
    else:
        ends = np.concatenate((newlines, [len(a)]))
    lengths = ends - starts
    suspect = (lengths == 0) | (lengths > limit)
    suspect |= a[np.minimum(starts, len(a) - 1)] != ord("{")
    suspect |= a[np.maximum(ends - 1, 0)] != ord("}")
    if others is not None:
        suspect[np.searchsorted(starts, others, side="right") - 1] = True
    if not block.isascii():
        suspect |= invalid_utf8_lines(block, starts)
    return Lines(starts, ends, suspect)


def invalid_utf8_lines(block: bytes, starts: np.ndarray) -> np.ndarray:
    """Per line of ``block`` (lines start at ``starts``): True where it may hold invalid UTF-8.
    The first MAX_UTF8_ERRORS bad lines are located one by one; past that, the rest is marked."""
    marked = np.zeros(len(starts), dtype=bool)
    view, at = memoryview(block), 0
    for _ in range(MAX_UTF8_ERRORS):
        try:
            if not utf8_valid(view[at:]):
                str(view[at:], "utf-8")  # raises where the first invalid sequence is
            return marked
        except UnicodeDecodeError as exc:
            line = int(np.searchsorted(starts, at + exc.start, side="right")) - 1
            marked[line] = True
            if line + 1 >= len(starts):
                return marked
            at = int(starts[line + 1])
    marked[np.searchsorted(starts, at, side="right") - 1:] = True
    return marked


def refused_lines(block: bytes, lines: Lines, keys: list[bytes]) -> np.ndarray:
    """Lines pyarrow refuses and the per-line path counts: a lone surrogate escape (``"\\ud800"``), or
    one of ``keys`` (``b'"text"'``) twice (a duplicate key; or the name also as a value, left to the
    per-line path all the same).  Only looked for in a block pyarrow refused: nothing on the clean path."""
    at: list[int] = [m.start() for m in LONE_SURROGATE.finditer(block)] if b"\\u" in block else []
    refused = np.zeros(len(lines.starts), bool)
    for key in keys:
        found = [m.start() for m in re.finditer(re.escape(key), block)]
        if len(found) > 1:
            counts = np.bincount(np.searchsorted(lines.starts, found, side="right") - 1, minlength=len(refused))
            refused |= counts > 1
    if at:
        refused[np.searchsorted(lines.starts, at, side="right") - 1] = True
    return refused


class Checker:
    """Parses the clean lines of blocks with pyarrow and runs the record checks on them."""

    def __init__(self, spec: CorpusSpec, labels: list[str] | None):
        self.spec = spec
        self.label_set = pa.array(labels, pa.string()) if labels is not None else None
        self.label_type = None  # learnt from the first block; then other fields are not parsed at all
        names = (*spec.text_fields, *([spec.label_field] if spec.label_field is not None else []))
        self.keys = [json.dumps(n, ensure_ascii=False).encode() for n in dict.fromkeys(names)]

    def check(self, block: bytes, for_scan: bool = False, lines: Lines | None = None) -> Checked | None:
        """The block's clean lines checked, or None if pyarrow does not read them one row per line.

        When pyarrow refuses them, the lines it refuses for a known cause (a lone surrogate escape,
        a field the build reads named twice) are left to the per-line path and the rest parsed again.
        """
        lines = line_shape(block, self.spec.max_record_bytes) if lines is None else lines  # given: found ahead
        checked = self._check(block, lines, for_scan)
        if checked is None:
            refused = refused_lines(block, lines, self.keys) & ~lines.suspect
            if refused.any():
                checked = self._check(block, lines._replace(suspect=lines.suspect | refused), for_scan)
        return checked

    def _check(self, block: bytes, lines: Lines, for_scan: bool) -> Checked | None:
        clean = ~lines.suspect
        if not clean.any():
            return Checked(lines, pa.chunked_array([], pa.string()), None, None)
        data = block
        if lines.suspect.any():
            data = b"".join(block[lines.offset(i):lines.offset(j)] for bad, i, j in lines.runs() if not bad)
        longest = int((lines.ends - lines.starts)[clean].max())
        table = self._parse(data, int(clean.sum()), longest)
        if table is None:
            return None
        spec = self.spec
        cols = [table.column(f) for f in spec.text_fields]
        text = cols[0] if len(cols) == 1 else pc.binary_join_element_wise(*cols, "\n")
        masks = [(NO_TEXT, pc.is_null(c)) for c in cols if c.null_count]
        masks.append((EMPTY, blank_texts(text)))
        if has_nul(text):  # a \\u0000 escape (raw NUL bytes are in suspect lines)
            masks.append((NUL, pc.match_substring(text, "\x00")))
        label = None
        if spec.label_field is not None:
            codes = self._label_codes(table)
            if codes is None:
                return None
            masks += [(NO_LABEL, codes.missing()), (BAD_LABEL, codes.bad())]
            if for_scan:
                label = codes.strings()
            elif self.label_set is not None:
                ids = codes.ids(self.label_set)
                masks.append((UNKNOWN, ids < 0))
                label = int64_array(ids)
        return Checked(lines, text, label, _reasons(table.num_rows, masks))

    def _label_codes(self, table: pa.Table) -> LabelCodes | None:
        name = self.spec.label_field
        if name not in table.column_names:
            return label_codes(pa.nulls(table.num_rows))
        return label_codes(table.column(name))

    def _parse(self, data: bytes, lines: int, longest: int) -> pa.Table | None:
        """The lines as a table with the text and label fields, or None if pyarrow refuses them."""
        fields = dict.fromkeys(self.spec.text_fields, pa.string())
        label = self.spec.label_field
        known = label is None or label in fields or self.label_type is not None
        if label is not None and label not in fields and self.label_type is not None:
            fields[label] = self.label_type
        # unknown label type: infer it (and so parse every field) until one block shows it
        parse = pj.ParseOptions(explicit_schema=pa.schema(list(fields.items())),
                                unexpected_field_behavior="ignore" if known else "infer")
        read = pj.ReadOptions(block_size=max(PARSE_BLOCK, 2 * (longest + 1)))
        try:
            table = pj.read_json(pa.BufferReader(data), read_options=read, parse_options=parse)
        except (pa.ArrowInvalid, ValueError):
            if self.label_type is not None:
                self.label_type = None  # another block may show another type: infer again
                return self._parse(data, lines, longest)
            return None
        if table.num_rows != lines:  # two objects on one line: the per-line path calls that malformed
            return None
        if not known and label in table.column_names and table.column(label).type in LABEL_TYPES:
            self.label_type = table.column(label).type
        return table


def _reasons(n: int, masks: list) -> np.ndarray | None:
    """Per-record reason codes, the first failing check winning; None if every record is good.
    A mask is a numpy bool array or an Arrow boolean array (null: False)."""
    reason = None
    for code, mask in masks:
        if isinstance(mask, np.ndarray):
            if not mask.any():
                continue
            hit = mask
        else:
            if not pc.any(mask).as_py():
                continue
            hit = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        if reason is None:
            reason = np.zeros(n, np.int8)
        reason[hit & (reason == OK)] = code
    return reason


def bool_array(mask: np.ndarray) -> pa.BooleanArray:
    """A numpy bool mask as an Arrow one (``pa.array`` on numpy imports numpy.ma: 13 ms)."""
    bits = np.packbits(mask, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])
