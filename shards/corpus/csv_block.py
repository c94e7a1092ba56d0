"""CSV/TSV read column-wise where a block's lines are provably simple rows, strictly elsewhere.

A line is *clean* when it is one whole row that the strict reader
(:mod:`shards.corpus.csv_rows`, ``csv`` with ``strict=True``) and pyarrow's CSV parser read
alike: LF-ended, no other control byte than a tab, valid UTF-8, within
``--max-record-bytes``, every field either unquoted without a ``"`` or quoted whole with inner
quotes doubled (:data:`SIMPLE_FIELD`), the header's number of fields, and some ASCII byte that
is not whitespace, a quote or a delimiter (so it is not a blank row).  At a row boundary a run
of clean lines is parsed by ``pyarrow.csv`` and checked column-wise with the per-row rules
(empty text, labels); everything else (the header, multi-line quoted fields, CR line breaks,
malformed, blank or over-long rows) goes one row at a time through the strict reader, which
counts and names it exactly as before.  Under ``--on-bad-record error`` a run holding a bad
record is read by the strict reader too, so the error names its first bad line.  Which lines are
clean is found on the block reader's thread (:mod:`shards.corpus.csv_shape`); pyarrow does not check
UTF-8 again (a clean line is valid UTF-8, so is each of its fields).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from shards.build.prefetch import prefetch
from shards.build.writer import Columns
from shards.corpus.column_checks import blank_texts, int64_array, label_codes, text_chars
from shards.corpus.csv_rows import END, Rows, _lines
from shards.corpus.csv_shape import Masks, Shape, block_shape, line_fields
from shards.corpus.decode import Where, line_blocks
from shards.corpus.jsonl_check import BAD_LABEL, EMPTY, NO_LABEL, OK, REASONS, UNKNOWN, _reasons, bool_array
from shards.corpus.spec import BadRecords, CorpusSpec, Unit, kind_of
from shards.lazy import compute as pc

BLOCK_BYTES = 8 << 20
PARSE_BLOCK = 1 << 20


class _Source:
    """Physical lines of the unit, block by block, with which of them are clean."""

    def __init__(self, blocks, fields: int, delimiter: str):
        self.blocks, self.delimiter = blocks, delimiter  # (block, number of its first line, Shape | None)
        self.fields = fields  # the header's; 0 while unknown (nothing is clean)
        self.block, self.first, self.i, self.n = b"", 1, 0, 0
        self.strict_lines: list[bytes] | None = None
        self.shape: Shape | None = None
        self.run_end = np.zeros(0, np.int64)
        self.ended = False

    def set_fields(self, fields: int) -> None:
        """The header is known: find the clean lines of the block being read."""
        self.fields = fields
        self._runs()

    def _load(self) -> bool:
        item = next(self.blocks, None)
        if item is None:
            self.ended = True
            return False
        self.block, self.first, self.shape = item
        self.i = 0
        self.strict_lines = self.block.splitlines(keepends=True) if self.shape is None else None
        self.n = len(self.strict_lines) if self.shape is None else len(self.shape.starts)
        self._runs()
        return True

    def _runs(self) -> None:
        if self.shape is None:
            return
        clean = self.shape.clean
        if self.shape.fields is not None:
            clean = clean & (self.shape.fields == self.fields)
        # run_end[i]: the first unclean line at or after i (n if none)
        idx = np.where(clean, self.n, np.arange(self.n))
        self.run_end = np.minimum.accumulate(idx[::-1])[::-1]
        self.starts, self.ends = self.shape.starts, self.shape.ends

    def next_line(self) -> tuple[bytes, int] | None:
        while self.i >= self.n:
            if self.ended or not self._load():
                return None
        i, self.i = self.i, self.i + 1
        if self.strict_lines is not None:
            return self.strict_lines[i], self.first + i
        end = int(self.ends[i]) + 1 if i + 1 < self.n else len(self.block)
        return self.block[int(self.starts[i]):end], self.first + i

    def line_number(self) -> int | None:
        """Number of the next line (None at the end), loading the next block if needed."""
        while self.i >= self.n:
            if self.ended or not self._load():
                return None
        return self.first + self.i

    def count_fields(self, first: int) -> bool:
        """After pyarrow refused the run from line ``first`` on: count the block's fields (if not yet),
        cut its runs before the lines with another number of fields and go back to ``first``.
        False when they were counted already (the run goes to the strict reader)."""
        if self.shape is None or self.shape.fields is not None:
            return False
        self.shape = self.shape._replace(fields=line_fields(self.block, self.shape.starts, self.delimiter))
        self._runs()
        self.i = first - self.first
        return True

    def clean_run(self) -> tuple[bytes, int, int] | None:
        """(the clean lines from the next one on, in this block; number of the first; how many), if it is clean."""
        if self.line_number() is None or self.strict_lines is not None or self.run_end[self.i] == self.i:
            return None
        i, j = self.i, int(self.run_end[self.i])
        self.i = j
        end = int(self.starts[j]) if j < self.n else len(self.block)
        return self.block[int(self.starts[i]):end], self.first + i, j - i


def scan_labels(unit: Unit, spec: CorpusSpec, delimiter: str, storage_options: dict | None = None) -> set[str]:
    """The label values of the unit's good records (bad ones skipped whatever the policy)."""
    found: set[str] = set()
    for col in read_columns(unit, spec, BadRecords("skip"), None, delimiter, storage_options, for_scan=True):
        found.update(pc.unique(col.label).to_pylist())
    return found


def read_columns(unit: Unit, spec: CorpusSpec, bad: BadRecords, labels: list[str] | None, delimiter: str,
                 storage_options: dict | None = None, for_scan: bool = False) -> Iterator[Columns]:
    """The unit's records as Columns with label ids by ``labels`` (``for_scan``: an Arrow array of the
    label strings, and unknown labels are not looked for)."""
    where = Where(unit, storage_options)
    compression = kind_of(unit.url, spec.input_format)[1]
    limit = spec.max_record_bytes
    dropped: dict[int, int] = {}
    # read, cut and shaped a block or two ahead, on a thread (``dropped`` only ever gains lines not reached yet)
    blocks = line_blocks(unit, limit, bad, where, compression, storage_options, BLOCK_BYTES, dropped)
    masks = Masks()  # used on the reader's thread only
    source = _Source(prefetch(((block, first, block_shape(block, limit, delimiter, masks)) for block, first in blocks),
                              depth=2), 0, delimiter)
    rows = Rows(_strict_lines(source, limit, bad, where, dropped), dropped, spec, bad, where, delimiter)
    parser = _Parser(spec, labels, delimiter, for_scan)
    pending = _Pending(labels, where, bad, for_scan)
    header_seen = False
    while True:
        if not header_seen and rows.header is not None:
            header_seen = True
            if parser.usable(rows.header):
                source.set_fields(len(rows.header))
        feed = rows.feed
        run = None
        if source.fields and feed.held is None and feed.expect not in dropped and source.line_number() == feed.expect:
            run = source.clean_run()
        if run is not None:
            block, first, n = run
            table = parser.parse(block, n)
            if table is None and source.count_fields(first):
                continue  # the run again, cut before its rows of another number of fields
            yield from pending.flush()
            yield from parser.columns(block, first, n, rows, pending, table)
            feed.expect = first + n
            continue
        record = rows.next_row()
        if record is END:
            yield from pending.flush()
            return
        if record is not None:
            pending.add(record)


def _strict_lines(source: _Source, limit: int, bad: BadRecords, where, dropped: dict):
    """The source's lines one at a time, a line over the limit counted and left out (as ``_lines``)."""
    def blocks():
        while (item := source.next_line()) is not None:
            yield item
    return _lines(blocks(), limit, bad, where, dropped)


class _Pending:
    """Records read by the strict reader, collected into Columns."""

    def __init__(self, labels, where, bad: BadRecords, for_scan: bool):
        self.ids = {name: i for i, name in enumerate(labels)} if labels is not None else None
        self.labels, self.where, self.bad, self.for_scan = labels, where, bad, for_scan
        self.texts: list[str] = []
        self.label_ids: list = []
        self.chars = 0

    def add(self, raw) -> None:
        self.chars += len(raw.text)
        if self.for_scan:
            self.label_ids.append(raw.label)
        elif self.ids is not None:
            if raw.label not in self.ids:
                self.bad.add("unknown_label", self.where(raw.line),
                             f"{raw.label!r} not in {self.labels} (--label-names or --label-map)")
                return
            self.label_ids.append(self.ids[raw.label])
        self.texts.append(raw.text)

    def flush(self) -> Iterator[Columns]:
        if not self.texts and not self.chars:
            return
        labels = None
        if self.for_scan:
            labels = pa.array(self.label_ids, pa.string())
        elif self.ids is not None:
            labels = np.array(self.label_ids, np.int64)
        yield Columns(pa.array(self.texts, pa.string()), labels, self.chars)
        self.texts, self.label_ids, self.chars = [], [], 0


class _Parser:
    """pyarrow.csv over runs of clean lines, with the per-row checks done on its columns."""

    def __init__(self, spec: CorpusSpec, labels, delimiter: str, for_scan: bool):
        self.spec, self.delimiter, self.for_scan = spec, delimiter, for_scan
        self.label_set = pa.array(labels, pa.string()) if labels is not None else None

    def usable(self, header: list[str]) -> bool:
        """Whether the header holds every field the build reads (else every row is missing_field)."""
        wanted = [*self.spec.text_fields, *([self.spec.label_field] if self.spec.label_field else [])]
        self.header = header
        return all(name in header for name in wanted)

    def parse(self, block: bytes, n: int) -> pa.Table | None:
        """The ``n`` clean lines of ``block`` as a table, or None if pyarrow refuses them (or reads
        another number of rows)."""
        spec = self.spec
        wanted = list(dict.fromkeys([*spec.text_fields, *([spec.label_field] if spec.label_field else [])]))
        read = pcsv.ReadOptions(column_names=self.header, block_size=max(PARSE_BLOCK, 2 * spec.max_record_bytes + 2))
        parse = pcsv.ParseOptions(delimiter=self.delimiter, quote_char='"', double_quote=True, escape_char=False,
                                  newlines_in_values=False, ignore_empty_lines=False)
        convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in wanted}, include_columns=wanted,
                                      strings_can_be_null=False, quoted_strings_can_be_null=False,
                                      check_utf8=False)  # block_shape found every clean line valid UTF-8
        try:
            table = pcsv.read_csv(pa.BufferReader(block), read_options=read, parse_options=parse,
                                  convert_options=convert)
        except (pa.ArrowInvalid, ValueError):
            return None
        return table if table.num_rows == n else None

    def columns(self, block: bytes, first: int, n: int, rows: Rows, pending: _Pending,
                table: pa.Table | None) -> Iterator[Columns]:
        """The ``n`` clean lines of ``block`` (the first numbered ``first``) as Columns, from their
        :meth:`parse` (None: refused)."""
        if table is None:
            yield from self._strict(block, first, rows, pending)
            return
        spec = self.spec
        cols = [table.column(f) for f in spec.text_fields]
        text = cols[0] if len(cols) == 1 else pc.binary_join_element_wise(*cols, "\n")
        masks = [(EMPTY, blank_texts(text))]
        label = ids = None
        if spec.label_field is not None:
            codes = label_codes(table.column(spec.label_field))
            masks += [(NO_LABEL, codes.missing()), (BAD_LABEL, codes.bad())]
            if self.for_scan:
                label = codes.strings()
            elif self.label_set is not None:
                label_ids = codes.ids(self.label_set)
                masks.append((UNKNOWN, label_ids < 0))
                ids = int64_array(label_ids)
        reason = _reasons(n, masks)
        bad = rows.bad
        chars_of = text
        if reason is not None:
            if bad.policy == "error":
                yield from self._strict(block, first, rows, pending)  # raises at the first bad row
                return
            counts = np.bincount(reason, minlength=len(REASONS) + 1)
            for code, name in REASONS.items():
                bad.add_many(name, int(counts[code]))
            chars_of = pc.filter(text, bool_array((reason == OK) | (reason == UNKNOWN)))
            good = bool_array(reason == OK)
            text = pc.filter(text, good)
            label = pc.filter(label, good) if label is not None else None
            ids = pc.filter(ids, good) if ids is not None else None
        chars = text_chars(chars_of, is_ascii=block.isascii())  # a field's characters are the block's own
        if self.for_scan:
            yield Columns(text, label, chars)
        else:
            labels = ids.to_numpy().astype(np.int64) if ids is not None else None
            yield Columns(text, labels, chars)

    def _strict(self, block: bytes, first: int, rows: Rows, pending: _Pending) -> Iterator[Columns]:
        """The clean lines of ``block`` through the strict reader (each is one whole row)."""
        saved = rows.feed.lines
        rows.feed.lines = iter([(line, first + k) for k, line in enumerate(block.splitlines(keepends=True))])
        try:
            while (record := rows.next_row()) is not END:
                if record is not None:
                    pending.add(record)
        finally:
            rows.feed.lines, rows.feed.ended = saved, False
        yield from pending.flush()
