"""JSONL read column-wise: blocks of whole lines parsed by pyarrow's C++ JSON reader.

Gives exactly what the per-line reader in :mod:`shards.corpus` gives: the same
records, the same bad-record reasons and counts, the same ``file:line`` errors.
A block is parsed by pyarrow only when every line in it is provably one JSON
object on one line (no blank line, no control byte, valid UTF-8, no line over
``max_record_bytes``, one row per line); then the checks of ``_from_mapping``
run vectorised.  A block the fast path cannot vouch for is retried in smaller
pieces, and a piece that still fails is read line by line by the per-line
code itself.  Under ``--on-bad-record error`` a block with any bad record is
read line by line too, so the error names the first bad line as before.

``SHARDS_FAST_JSONL=0`` turns this off (every block per line), for comparing.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from .corpus import (BadRecords, CorpusSpec, Unit, Where, _drain_line, _open_binary, block_lines,
                     jsonl_records, kind_of)
from .writer import Columns

BLOCK_BYTES = 8 << 20  # read from the file at a time
RETRY_BYTES = 256 << 10  # a block that cannot be parsed whole is retried in pieces of about this size
PARSE_BLOCK = 1 << 20  # pyarrow's own block (one parallel task)
# What Python's str.strip() strips (every c with c.isspace(); a test checks the list):
# "empty after strip" must mean the same here.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                 "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
LABEL_TYPES = (pa.string(), pa.int64(), pa.bool_())  # str() of these matches the per-line path
# reason codes, in the order the per-line path checks them
OK, NO_TEXT, EMPTY, NUL, NO_LABEL, UNKNOWN = range(6)
REASONS = {NO_TEXT: "missing_field", EMPTY: "empty_text", NUL: "nul_byte", NO_LABEL: "missing_field",
           UNKNOWN: "unknown_label"}


def enabled() -> bool:
    return os.environ.get("SHARDS_FAST_JSONL", "1") != "0"


def read_columns(unit: Unit, spec: CorpusSpec, bad: BadRecords, labels: list[str] | None,
                 storage_options: dict | None = None) -> Iterator[Columns]:
    """The unit's records as Columns (label ids by ``labels``), as the per-line path gives them."""
    reader = _Reader(unit, spec, bad, labels, storage_options)
    for block, first in reader.blocks():
        yield from reader.columns(block, first)


def scan_labels(unit: Unit, spec: CorpusSpec, storage_options: dict | None = None) -> set[str]:
    """The label values of the unit's good records (bad ones skipped whatever the policy)."""
    reader = _Reader(unit, spec, BadRecords("skip"), None, storage_options)
    found: set[str] = set()
    for block, first in reader.blocks():
        found |= reader.block_labels(block, first)
    return found


class _Reader:
    def __init__(self, unit: Unit, spec: CorpusSpec, bad: BadRecords, labels: list[str] | None,
                 storage_options: dict | None):
        self.unit, self.spec, self.bad, self.labels = unit, spec, bad, labels
        self.storage_options = storage_options
        self.where = Where(unit, storage_options)
        self.label_ids = pa.array(labels, pa.string()) if labels is not None else None
        self.label_type = None  # learnt from the first block; then other fields are not parsed at all

    # -- blocks of whole lines ------------------------------------------------------------
    def blocks(self) -> Iterator[tuple[bytes, int]]:
        """(block of whole lines, number of its first line) for the lines the unit owns.

        Same ownership as ``corpus._lines``: a range owns the lines that start
        inside it; a line over ``max_record_bytes`` is counted and drained, never held.
        """
        unit, limit = self.unit, self.spec.max_record_bytes
        with _open_binary(unit.url, kind_of(unit.url)[1], self.storage_options) as f:
            pos, line, carry = 0, 1, b""
            if unit.start > 0:
                f.seek(unit.start - 1)
                pos = unit.start - 1 + _drain_line(f)
            while unit.end is None or pos < unit.end:
                chunk = f.read(BLOCK_BYTES)
                if not chunk:
                    if carry:
                        yield carry, line  # the last line, without a newline
                    return
                buf = carry + chunk if carry else chunk
                cut = buf.rfind(b"\n") + 1
                if unit.end is not None and pos + cut > unit.end:
                    cut = buf.index(b"\n", unit.end - 1 - pos) + 1  # the last line starting before end
                    yield buf[:cut], line
                    return
                if cut:
                    yield buf[:cut], line
                    line += buf.count(b"\n", 0, cut)
                carry, pos = buf[cut:], pos + cut
                if len(carry) > limit:
                    self.bad.add("too_long", self.where(line), f"over {limit} bytes (--max-record-bytes)")
                    pos += len(carry) + _drain_line(f)
                    carry, line = b"", line + 1

    def _pieces(self, block: bytes, first: int) -> Iterator[tuple[bytes, int]]:
        start, line = 0, first
        while start < len(block):
            end = block.find(b"\n", min(start + RETRY_BYTES, len(block)) - 1)
            end = len(block) if end < 0 else end + 1
            piece = block[start:end]
            yield piece, line
            line += piece.count(b"\n")
            start = end

    # -- one block ---------------------------------------------------------------------
    def columns(self, block: bytes, first: int, retry: bool = True) -> Iterator[Columns]:
        checked = self._check(block)
        if checked is None:
            if retry and len(block) > RETRY_BYTES:
                for piece, line in self._pieces(block, first):
                    yield from self.columns(piece, line, retry=False)
            else:
                yield from self._per_line(block, first)
            return
        text, label_ids, reason = checked
        if reason is not None:
            counts = np.bincount(reason, minlength=len(REASONS) + 1)
            if self.bad.policy == "error" and counts[OK] < len(reason):
                yield from self._per_line(block, first)  # raises at the first bad line, as before
                return
            for code, name in REASONS.items():
                self.bad.add_many(name, int(counts[code]))
            read = _bool_array((reason == OK) | (reason == UNKNOWN))
            chars = pc.sum(pc.utf8_length(pc.filter(text, read))).as_py() or 0
            good = _bool_array(reason == OK)
            text = pc.filter(text, good)
            label_ids = pc.filter(label_ids, good) if label_ids is not None else None
        else:
            chars = pc.sum(pc.utf8_length(text)).as_py() or 0
        labels = label_ids.to_numpy().astype(np.int64) if label_ids is not None else None
        yield Columns(text, labels, chars)

    def block_labels(self, block: bytes, first: int, retry: bool = True) -> set[str]:
        checked = self._check(block, for_scan=True)
        if checked is None:
            if retry and len(block) > RETRY_BYTES:
                return set().union(*(self.block_labels(p, line, False) for p, line in self._pieces(block, first)))
            lines = block_lines(block, first, self.spec, self.bad, self.where)
            return {r.label for r in jsonl_records(lines, self.spec, self.bad, self.where)}
        _, label, reason = checked
        if reason is not None:
            label = pc.filter(label, _bool_array(reason == OK))
        return set(pc.unique(label).to_pylist())

    def _per_line(self, block: bytes, first: int) -> Iterator[Columns]:
        lines = block_lines(block, first, self.spec, self.bad, self.where)
        ids = {name: i for i, name in enumerate(self.labels)} if self.labels is not None else None
        texts, label_ids, chars = [], [], 0
        for raw in jsonl_records(lines, self.spec, self.bad, self.where):
            chars += len(raw.text)
            if ids is not None:
                if raw.label not in ids:
                    self.bad.add("unknown_label", self.where(raw.line),
                                 f"{raw.label!r} not in {self.labels} (--label-names)")
                    continue
                label_ids.append(ids[raw.label])
            texts.append(raw.text)
        yield Columns(pa.array(texts, pa.string()), np.array(label_ids, np.int64) if ids is not None else None,
                      chars)

    # -- vectorised checks ----------------------------------------------------------------
    def _check(self, block: bytes, for_scan: bool = False):
        """(text, label ids or, for a scan, label strings, reason codes or None if all good),
        or None when pyarrow's reading of the block cannot be vouched for."""
        shape = _vouch(block, self.spec.max_record_bytes)
        if shape is None:
            return None
        table = self._parse(block, *shape)
        if table is None:
            return None
        spec = self.spec
        cols = [table.column(f) for f in spec.text_fields]
        text = cols[0] if len(cols) == 1 else pc.binary_join_element_wise(*cols, "\n")
        masks = [(NO_TEXT, pc.is_null(c)) for c in cols if c.null_count]
        masks.append((EMPTY, pc.equal(pc.binary_length(pc.utf8_trim(text, PY_WHITESPACE)), 0)))
        if b"\\u0000" in block:  # raw NUL bytes never get here (_vouch)
            masks.append((NUL, pc.match_substring(text, "\x00")))
        label = ids = None
        if spec.label_field is not None:
            label = self._label_strings(table)
            if label is None:
                return None
            masks.append((NO_LABEL, pc.or_kleene(pc.is_null(label), pc.equal(pc.binary_length(label), 0))))
            if self.label_ids is not None and not for_scan:
                ids = pc.index_in(label, value_set=self.label_ids)
                masks.append((UNKNOWN, pc.is_null(ids)))
        return text, (label if for_scan else ids), _reasons(table.num_rows, masks)

    def _label_strings(self, table: pa.Table):
        name = self.spec.label_field
        if name not in table.column_names:
            return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
        col = table.column(name)
        if col.type == pa.null():
            return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
        if col.type not in LABEL_TYPES:
            return None  # a float, list, ...: the per-line path words these its own way
        return col if col.type == pa.string() else pc.cast(col, pa.string())

    def _parse(self, block: bytes, lines: int, longest: int) -> pa.Table | None:
        """The block as a table with the text and label fields, or None if pyarrow refuses it."""
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
            table = pj.read_json(pa.BufferReader(block), read_options=read, parse_options=parse)
        except (pa.ArrowInvalid, ValueError):
            if self.label_type is not None:
                self.label_type = None  # another block may show another type: infer again
                return self._parse(block, lines, longest)
            return None
        if table.num_rows != lines:  # two objects on one line: the per-line path calls that malformed
            return None
        if not known and label in table.column_names and table.column(label).type in LABEL_TYPES:
            self.label_type = table.column(label).type
        return table


def _vouch(block: bytes, limit: int) -> tuple[int, int] | None:
    """(lines, longest line) if every line of the block is ``{...}`` with no control
    byte, within ``limit`` and valid UTF-8; else None.

    With that, an object cannot span lines (after a ``}`` inside an object only
    ``,`` ``}`` or ``]`` may follow, never a line's leading ``{``), so pyarrow
    giving one row per line means every line is exactly one object.
    """
    a = np.frombuffer(block, np.uint8)
    newlines = np.flatnonzero(a == 10)
    if np.count_nonzero(a < 32) != len(newlines):  # tab, CR, NUL, ...: leave them to the per-line path
        return None
    ends_with_newline = block.endswith(b"\n")
    starts = np.concatenate(([0], newlines + 1))
    ends = newlines - 1  # last byte of each line
    if ends_with_newline:
        starts = starts[:-1]
    else:
        ends = np.concatenate((ends, [len(a) - 1]))
    if not len(starts) or np.any(ends < starts):  # a blank line
        return None
    if np.any(a[starts] != ord("{")) or np.any(a[ends] != ord("}")):
        return None
    longest = int((ends - starts).max()) + 1
    if longest > limit:
        return None
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return len(starts), longest


def _reasons(n: int, masks: list) -> np.ndarray | None:
    """Per-record reason codes, the first failing check winning; None if every record is good."""
    reason = None
    for code, mask in masks:
        if not pc.any(mask).as_py():
            continue
        hit = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        if reason is None:
            reason = np.zeros(n, np.int8)
        reason[hit & (reason == OK)] = code
    return reason


def _bool_array(mask: np.ndarray) -> pa.BooleanArray:
    """A numpy bool mask as an Arrow one (``pa.array`` on numpy imports numpy.ma: 13 ms)."""
    bits = np.packbits(mask, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, pa.py_buffer(bits)])
