"""CSV/TSV records, checked against the physical lines they come from.

The ``csv`` module (``strict=True``) is fed one physical line at a time (lines end at
``\\n``, ``\\r\\n`` or a lone ``\\r``; a BOM is dropped), so the reader knows exactly which
lines each row took.  Every line after the header is written or counted, never merged,
split or invented (see :mod:`shards.corpus.spec` for the accounting):

* a row the parser refuses (text after a closing quote, ...) counts all its lines as
  ``malformed_csv``; an unclosed quote counts every line from the row's first to the end
  of the file, and ``--on-bad-record error`` names the row's first line;
* a row over ``--max-record-bytes`` (a quoted field running on and on) is cut off when
  it passes the limit, never held; the rest of the quoted field is drained by counting
  quote characters (a field closes when the row's ``"`` count turns even), and every
  line is counted ``too_long``; the csv module's own field limit is never reached;
* a header naming a column twice is refused (a row would keep only the last column's value);
* a written row of k lines adds k - 1 to ``BadRecords.continued``; a bad row of k lines
  counts k under its reason.
"""
from __future__ import annotations

import csv
from typing import Iterator

from shards.corpus.decode import Where, content_length, line_blocks
from shards.corpus.records import from_mapping
from shards.corpus.spec import BLANK, BadRecordError, BadRecords, CorpusSpec, Raw, Unit


class _Cut(Exception):
    """The row being parsed passed the byte limit or met a drained line: stop the parser."""


class _Feed:
    """Physical lines as ``str`` (with their line breaks) for ``csv.reader``; remembers what each row took."""

    def __init__(self, lines: Iterator[tuple[bytes, int]], dropped: dict[int, int], limit: int):
        self.lines, self.dropped, self.limit = lines, dropped, limit
        self.expect = 1  # number of the next line; a gap is a line drained as too_long
        # the current row's lines: (number, the line's bytes or a drained line's '"' count, counted already)
        self.row: list[tuple[int, bytes | int, bool]] = []
        self.size = 0
        self.held: tuple[bytes, int] | None = None
        self.ended = False

    def __iter__(self):
        return self

    def start_row(self) -> None:
        self.row, self.size = [], 0

    def next_line(self) -> tuple[bytes, int] | None:
        if self.held is not None:
            item, self.held = self.held, None
            return item
        item = next(self.lines, None)
        self.ended = item is None
        return item

    def more(self) -> bool:
        """Whether a line follows (held for the next read).  A drained line is known as soon as the
        block reader passes it, which a reader on its own thread does early: whether it is the file's
        last must not depend on that timing."""
        item = self.next_line()
        self.held = item
        return item is not None

    def __next__(self) -> str:
        while True:
            if self.dropped and self.expect in self.dropped:  # drained by line_blocks (too_long, counted there)
                if not self.more():
                    raise StopIteration  # drained last lines end the data as the end of the file does
                self.row.append((self.expect, self.dropped.pop(self.expect), True))
                self.expect += 1
                raise _Cut
            item = self.next_line()
            if item is None:
                raise StopIteration
            data, line = item
            if line == self.expect:
                break
            # line numbers skip only lines drained as too_long, which line_blocks
            # reports when it reads past them: look again
            self.held = item
            if self.expect not in self.dropped:
                self.held, self.expect = None, line
                break
        self.size += len(data)
        self.row.append((line, data, False))
        self.expect += 1
        if self.size > self.limit and (content_length(data) > self.limit or len(self.row) > 1
                                       and self.size - len(data) + content_length(data) > self.limit):
            raise _Cut
        return data.decode("utf-8", "surrogateescape")


def quotes(entry: bytes | int) -> int:
    return entry if isinstance(entry, int) else entry.count(b'"')


def _lines(blocks, limit: int, bad: BadRecords, where, dropped: dict[int, int]) -> Iterator[tuple[bytes, int]]:
    """Physical lines with their breaks; one over ``limit`` is counted and left out, as line_blocks
    does with one longer than a read, so the same file gives the same counts and messages."""
    for block, first in blocks:
        for k, data in enumerate(block.splitlines(keepends=True)):
            if len(data) > limit and content_length(data) > limit:
                bad.add("too_long", where(first + k), f"over {limit} bytes (--max-record-bytes)")
                dropped[first + k] = data.count(b'"')
                continue
            yield data, first + k


def read_csv(unit: Unit, spec: CorpusSpec, bad: BadRecords, delimiter: str, compression: str | None,
             storage_options: dict | None) -> Iterator[Raw]:
    where = Where(unit, storage_options)
    dropped: dict[int, int] = {}
    limit = spec.max_record_bytes
    blocks = line_blocks(unit, limit, bad, where, compression, storage_options, dropped=dropped)
    rows = Rows(_lines(blocks, limit, bad, where, dropped), dropped, spec, bad, where, delimiter)
    while True:
        record = rows.next_row()
        if record is END:
            return
        if record is not None:
            yield record


END = object()  # Rows.next_row: no line left


class Rows:
    """The strict CSV reader, one row at a time over physical lines ``(bytes with break, number)``."""

    def __init__(self, lines: Iterator[tuple[bytes, int]], dropped: dict[int, int], spec: CorpusSpec,
                 bad: BadRecords, where, delimiter: str):
        self.spec, self.bad, self.where = spec, bad, where
        self.limit = spec.max_record_bytes
        self.feed = _Feed(lines, dropped, self.limit)
        _raise_csv_field_limit(self.limit)
        self.rows = csv.reader(self.feed, delimiter=delimiter, strict=True)
        self.header = list(spec.columns) if spec.columns else None

    def next_row(self):
        """The next row's record, None (a header, or a bad row, counted) or END."""
        feed, bad, where = self.feed, self.bad, self.where
        feed.start_row()
        try:
            row = next(self.rows)
        except StopIteration:
            return END
        except _Cut:
            _drain_too_long(feed, bad, where, self.limit, self.header is None)
            return None
        except csv.Error as exc:
            _malformed(feed, bad, where, exc, self.header is None)
            return None
        lines, start = len(feed.row), feed.row[0][0]
        if self.header is None:
            if row and "".join(row).strip():
                self.header = _checked_header(row, where, start)
            elif lines:
                bad.add(BLANK, where(start), lines=lines)  # blank lines before the header
            return None
        record = _record(row, self.header, self.spec, bad, where, start, lines)
        if record is not None:
            bad.continued += lines - 1
        return record


def _raise_csv_field_limit(limit: int) -> None:
    # The csv module's limit is process-wide; only ever raise it.  _Feed cuts a row
    # at ``limit`` bytes first, so the module never stops mid-field itself.
    csv.field_size_limit(max(csv.field_size_limit(), limit + 1))


def _header_error(where, line: int, detail: str):
    return BadRecordError(f"{where(line)}: malformed_csv: the header row {detail}; fix the file "
                          f"or name the columns with --columns and drop the header")


def _checked_header(row: list[str], where, line: int) -> list[str]:
    """The header row, refused when a name repeats (a row would keep only its last column's value)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(row, 1):
        if name in seen:
            raise _header_error(where, line, f"names the column {name!r} twice (columns {seen[name]} and {i}), "
                                             f"so one of them would be dropped unseen")
        seen[name] = i
    return row


def _malformed(feed: _Feed, bad: BadRecords, where, exc: csv.Error, in_header: bool) -> None:
    start, lines = feed.row[0][0], len(feed.row)
    if feed.ended and "unexpected end of data" in str(exc):
        detail = (f"unclosed quote: the row starting here runs to the end of the file ({lines} lines); "
                  f"close the quote, or write a literal quote inside a quoted field as \"\"")
    else:
        detail = (f"{exc} (row of {lines} line(s) ending on line {feed.row[-1][0]}); a field with a quote "
                  f"must be quoted whole, with inner quotes doubled: \"say \"\"hi\"\"\"")
    if in_header:
        raise _header_error(where, start, detail)
    bad.add("malformed_csv", where(start), detail, lines)


def _drain_too_long(feed: _Feed, bad: BadRecords, where, limit: int, in_header: bool) -> None:
    """Count the cut-off row and the rest of its quoted field (to where its '"' count turns even)."""
    start = feed.row[0][0]
    if in_header:
        raise _header_error(where, start, f"is over {limit} bytes (--max-record-bytes)")
    count = sum(quotes(q) for _, q, _ in feed.row)
    while count % 2:
        if feed.expect in feed.dropped:
            if not feed.more():
                break
            count += feed.dropped.pop(feed.expect)
            feed.row.append((feed.expect, 0, True))
            feed.expect += 1
            continue
        item = feed.next_line()
        if item is None:
            break
        data, line = item
        if line != feed.expect:
            feed.held = item
            continue
        count += data.count(b'"')
        feed.row.append((line, 0, False))
        feed.expect += 1
    uncounted = sum(1 for *_, counted in feed.row if not counted)
    if uncounted:
        bad.add("too_long", where(start), f"row of {len(feed.row)} line(s) over {limit} bytes "
                                          f"(--max-record-bytes)", uncounted)


def _record(row: list[str], header: list[str], spec: CorpusSpec, bad: BadRecords, where, line: int,
            lines: int) -> Raw | None:
    joined = "".join(row)
    if not joined.strip():
        bad.add(BLANK, where(line), lines=lines)
        return None
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError as exc:  # surrogate-escaped bytes that were not UTF-8
        bad.add("invalid_utf8", where(line), f"character {exc.start} of the row", lines)
        return None
    if len(row) != len(header):
        bad.add("malformed_csv", where(line), f"{len(row)} fields, header has {len(header)}", lines)
        return None
    return from_mapping(dict(zip(header, row)), spec, bad, where, line, lines)
