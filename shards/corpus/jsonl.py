"""JSONL read column-wise: blocks of whole lines parsed by pyarrow's C++ JSON reader.

Gives exactly what the per-line reader in :mod:`shards.corpus.read` gives: the same
records, the same bad-record reasons and counts, the same ``file:line`` errors.
pyarrow reads only the lines that are provably one JSON object each
(:mod:`shards.corpus.jsonl_check`), and the checks of ``_from_mapping`` run
vectorised on its columns; every other line (blank, truncated, CRLF, control
bytes, invalid UTF-8, too long) is read by the per-line code itself, in place.
When pyarrow refuses a block's clean lines (malformed inside the braces, a text
that is a number, ...) the block is retried in smaller pieces, and a small piece
that still fails is read line by line.  Under ``--on-bad-record error`` a run
of lines with any bad record is read line by line, so the error names the first
bad line as before.

``CorpusSpec(block_parse=False)`` turns this off (every line by the per-line reader).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa

from shards.build.prefetch import prefetch
from shards.build.writer import Columns
from shards.corpus.column_checks import text_chars
from shards.corpus.decode import Where, count_lines, shaped_line_blocks, split_lines
from shards.corpus.jsonl_check import OK, REASONS, UNKNOWN, Checked, Checker, Lines, bool_array, line_shape
from shards.corpus.records import jsonl_records
from shards.corpus.spec import BadRecords, CorpusSpec, Unit, kind_of
from shards.lazy import compute as pc

BLOCK_BYTES = 8 << 20  # read from the file at a time
# A block whose clean lines pyarrow refuses is retried as RETRY_PIECES pieces, recursively,
# down to MIN_PIECE_BYTES read line by line: one odd line costs a few small parses.
RETRY_PIECES = 8
MIN_PIECE_BYTES = 16 << 10


def read_columns(unit: Unit, spec: CorpusSpec, bad: BadRecords, labels: list[str] | None,
                 storage_options: dict | None = None) -> Iterator[Columns]:
    """The unit's records as Columns (label ids by ``labels``), as the per-line path gives them."""
    reader = _Reader(unit, spec, bad, labels, storage_options)
    for block, first, lines in reader.blocks():
        yield from reader.columns(block, first, lines)


def scan_columns(unit: Unit, spec: CorpusSpec, bad: BadRecords, storage_options: dict | None = None
                 ) -> Iterator[Columns]:
    """The unit's good records as Columns whose ``label`` is the Arrow array of their label strings
    (the first pass of a labelled build, kept for the second: :mod:`shards.build.spill`)."""
    reader = _Reader(unit, spec, bad, None, storage_options, scan=True)
    for block, first, lines in reader.blocks():
        yield from reader.columns(block, first, lines)


def scan_labels(unit: Unit, spec: CorpusSpec, storage_options: dict | None = None) -> set[str]:
    """The label values of the unit's good records (bad ones skipped whatever the policy)."""
    reader = _Reader(unit, spec, BadRecords("skip"), None, storage_options)
    found: set[str] = set()
    for block, first, lines in reader.blocks():
        found |= reader.block_labels(block, first, lines)
    return found


class _Reader:
    def __init__(self, unit: Unit, spec: CorpusSpec, bad: BadRecords, labels: list[str] | None,
                 storage_options: dict | None, scan: bool = False):
        self.unit, self.spec, self.bad, self.labels = unit, spec, bad, labels
        self.scan = scan  # label strings instead of ids
        self.storage_options = storage_options
        self.where = Where(unit, storage_options)
        self.checker = Checker(spec, labels)

    # -- blocks of whole lines ------------------------------------------------------------
    def blocks(self) -> Iterator[tuple[bytes, int, Lines | None]]:
        """(block of whole lines, number of its first line, its Lines) for the lines the unit owns, as the
        per-line path reads them (:func:`shards.corpus.decode.line_blocks`: ranges, BOM, too_long, damage)."""
        compression = kind_of(self.unit.url, self.spec.input_format)[1]
        blocks = shaped_line_blocks(self.unit, self.spec.max_record_bytes, self.bad, self.where, compression,
                                    self.storage_options, BLOCK_BYTES, self._shape)
        # read, cut and shaped (numpy, GIL released) on a thread of its own, a block or two ahead of the parser
        return prefetch(blocks, depth=2)

    def _shape(self, block: bytes, first: int) -> tuple[int | None, Lines | None]:
        """(lines the block ends, its Lines); (None, None) for a block with a CR (its lines are cut apart)."""
        if b"\r" in block:
            return None, None
        lines = line_shape(block, self.spec.max_record_bytes)
        return len(lines.starts) - (not block.endswith(b"\n")), lines

    def _pieces(self, block: bytes, first: int) -> list[tuple[bytes, int]]:
        """The block cut at line ends into about RETRY_PIECES pieces of MIN_PIECE_BYTES or more
        (one piece: the block cannot be cut, so it is read line by line)."""
        if len(block) <= MIN_PIECE_BYTES:
            return [(block, first)]
        size = max(len(block) // RETRY_PIECES, MIN_PIECE_BYTES)
        pieces, start, line = [], 0, first
        while start < len(block):
            end = block.find(b"\n", min(start + size, len(block)) - 1)
            end = len(block) if end < 0 else end + 1
            piece = block[start:end]
            pieces.append((piece, line))
            line += piece.count(b"\n")
            start = end
        return pieces

    # -- one block ---------------------------------------------------------------------
    def columns(self, block: bytes, first: int, lines: Lines | None = None) -> Iterator[Columns]:
        """The block's records; ``lines``, when given, are its Lines (then it holds no CR)."""
        if lines is None and b"\r" in block:  # CRLF or lone-CR line breaks: those lines are numbered by the per-line path
            for piece, line, has_cr in cr_runs(block, first):
                yield from self._per_line(piece, line) if has_cr else self.columns(piece, line)
            return
        checked = self.checker.check(block, for_scan=self.scan, lines=lines)
        if checked is None:
            pieces = self._pieces(block, first)
            if len(pieces) == 1:
                yield from self._per_line(block, first)
            else:
                for piece, line in pieces:
                    yield from self.columns(piece, line)
            return
        row = 0
        for suspect, i, j in checked.lines.runs():
            piece = block[checked.lines.offset(i):checked.lines.offset(j)]
            if suspect:
                yield from self._per_line(piece, first + i)
            else:
                yield from self._clean_run(checked, row, row + j - i, piece, first + i)
                row += j - i

    def _clean_run(self, checked: Checked, lo: int, hi: int, piece: bytes, first: int) -> Iterator[Columns]:
        """Rows [lo, hi) of a checked block: the lines of ``piece``, all clean."""
        text = checked.text.slice(lo, hi - lo)
        label_ids = checked.label.slice(lo, hi - lo) if checked.label is not None else None
        reason = checked.reason[lo:hi] if checked.reason is not None else None
        if reason is not None and reason.any():
            counts = np.bincount(reason, minlength=len(REASONS) + 1)
            if self.bad.policy == "error":
                yield from self._per_line(piece, first)  # raises at the first bad line, as before
                return
            for code, name in REASONS.items():
                self.bad.add_many(name, int(counts[code]))
            read = bool_array((reason == OK) | (reason == UNKNOWN))
            chars = pc.sum(pc.utf8_length(pc.filter(text, read))).as_py() or 0
            good = bool_array(reason == OK)
            text = pc.filter(text, good)
            label_ids = pc.filter(label_ids, good) if label_ids is not None else None
        else:
            chars = text_chars(text)
        if self.scan:
            yield Columns(text, label_ids, chars)
            return
        labels = label_ids.to_numpy().astype(np.int64) if label_ids is not None else None
        yield Columns(text, labels, chars)

    def block_labels(self, block: bytes, first: int, lines: Lines | None = None) -> set[str]:
        if lines is None and b"\r" in block:
            return set().union(*(self._per_line_labels(piece, line) if has_cr else self.block_labels(piece, line)
                                 for piece, line, has_cr in cr_runs(block, first)))
        checked = self.checker.check(block, for_scan=True, lines=lines)
        if checked is None:
            pieces = self._pieces(block, first)
            if len(pieces) > 1:
                return set().union(*(self.block_labels(p, line) for p, line in pieces))
            return self._per_line_labels(block, first)
        found, row = set(), 0
        for suspect, i, j in checked.lines.runs():
            if suspect:
                found |= self._per_line_labels(block[checked.lines.offset(i):checked.lines.offset(j)], first + i)
                continue
            label = checked.label.slice(row, j - i)
            if checked.reason is not None:
                label = pc.filter(label, bool_array(checked.reason[row:row + j - i] == OK))
            found |= set(pc.unique(label).to_pylist())
            row += j - i
        return found

    def _per_line_labels(self, block: bytes, first: int) -> set[str]:
        lines = block_lines(block, first, self.spec, self.bad, self.where)
        return {r.label for r in jsonl_records(lines, self.spec, self.bad, self.where)}

    def _per_line(self, block: bytes, first: int) -> Iterator[Columns]:
        lines = block_lines(block, first, self.spec, self.bad, self.where)
        ids = {name: i for i, name in enumerate(self.labels)} if self.labels is not None else None
        texts, label_ids, chars = [], [], 0
        for raw in jsonl_records(lines, self.spec, self.bad, self.where):
            chars += len(raw.text)
            if self.scan:
                label_ids.append(raw.label)
            elif ids is not None:
                if raw.label not in ids:
                    self.bad.add("unknown_label", self.where(raw.line),
                                 f"{raw.label!r} not in {self.labels} (--label-names or --label-map)")
                    continue
                label_ids.append(ids[raw.label])
            texts.append(raw.text)
        if self.scan:
            labels = pa.array(label_ids, pa.string()) if self.spec.label_field is not None else None
        else:
            labels = np.array(label_ids, np.int64) if ids is not None else None
        yield Columns(pa.array(texts, pa.string()), labels, chars)


def cr_runs(block: bytes, first: int) -> list[tuple[bytes, int, bool]]:
    """The block of whole lines cut into runs (piece, number of its first line, holds a CR): runs of
    lines with a CR (numbered as the per-line path numbers a CRLF or a lone CR) and runs without."""
    runs, pos, line = [], 0, first
    while pos < len(block):
        r = block.find(b"\r", pos)
        if r < 0:
            runs.append((block[pos:], line, False))
            break
        start = block.rfind(b"\n", pos, r) + 1 or pos
        if start > pos:
            runs.append((block[pos:start], line, False))
            line += block.count(b"\n", pos, start)
        end = _line_end(block, r)
        while end < len(block):  # the run goes on while the next line holds a CR too
            cr, lf = block.find(b"\r", end), block.find(b"\n", end)
            if cr < 0 or 0 <= lf < cr:
                break
            end = _line_end(block, cr)
        runs.append((block[start:end], line, True))
        line += count_lines(block[start:end])
        pos = end
    return runs


def _line_end(block: bytes, i: int) -> int:
    """Offset after the LF ending the line that holds ``block[i]`` (the block's end without one)."""
    return block.find(b"\n", i) + 1 or len(block)


def block_lines(block: bytes, first_line: int, spec: CorpusSpec, bad: BadRecords, where
                ) -> Iterator[tuple[bytes, int]]:
    """The lines of a block of whole lines as the per-line path gives them (same numbers, same too_long)."""
    return split_lines(block, first_line, spec.max_record_bytes, bad, where)
