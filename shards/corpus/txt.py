"""Text units of a txt file (``--text-unit``): one record per paragraph, or the whole file.

``line`` (the default) is :func:`shards.corpus.records.txt_records`: one record per non-blank line.

* ``paragraph``: a record is a run of non-blank lines; blank lines separate records and
  are counted ``blank_line``.  Hard-wrapped prose reads as prose: each line is stripped of
  surrounding whitespace and the lines are joined with ONE SPACE (layout is not kept; use
  ``file`` to keep it).
* ``file``: the whole file is one record, from its first to its last non-blank line, lines
  joined with ``\\n`` (so ``\\r\\n`` and ``\\r`` become ``\\n``; blank lines inside are kept).
  Blank lines before and after it are counted ``blank_line``.

A record is numbered by its first line, and errors about it name that line.  A record of
k lines adds k - 1 to ``BadRecords.continued``, so ``input lines = records + continued +
sum(bad counts)`` holds as for every reader.  A record with a NUL byte or invalid UTF-8 on any
line, or more than ``--max-record-bytes`` in all, is bad as a whole: each of its lines is
counted under the reason (a single line over the limit is drained and counted as it is read,
as in line mode).  Such a txt file is one unit of work (never cut into byte ranges: a record
could cross the cut).
"""
from __future__ import annotations

from typing import Iterator

from shards.corpus.decode import Where, line_blocks
from shards.corpus.spec import BLANK, BadRecords, CorpusSpec, Raw, Unit


class _Record:
    """The lines of the record being read: what is kept, and why it is bad, if it is."""

    def __init__(self, first: int):
        self.first = first
        self.pieces: list[str] = []
        self.blank_tail: list[tuple[int, str]] = []  # file unit: (number, text) of blank lines after the last text
        self.lines = 0  # lines held (a drained too_long line is counted where it is read, not here)
        self.size = 0
        self.bad: tuple[str, str] | None = None  # (reason, detail)

    def taint(self, reason: str, detail: str) -> None:
        if self.bad is None:
            self.bad = (reason, detail)
        self.pieces, self.blank_tail = [], []  # nothing of a bad record is kept


def txt_units(unit: Unit, spec: CorpusSpec, bad: BadRecords, where: Where, compression: str | None,
              storage_options: dict | None) -> Iterator[Raw]:
    """Records of a txt unit read by ``spec.text_unit`` (``paragraph`` or ``file``)."""
    limit = spec.max_record_bytes
    whole_file = spec.text_unit == "file"
    rec: _Record | None = None
    expect = 1  # the next line's number; a gap is a line drained as too_long (counted already)
    dropped: dict[int, int] = {}  # lines drained as too_long, filled as line_blocks reads them
    for block, first in line_blocks(unit, limit, bad, where, compression, storage_options, dropped=dropped):
        for k, data in enumerate(block.splitlines()):
            line = first + k
            if line != expect:
                rec = rec or _Record(expect)
                rec.taint("too_long", f"line {expect} is over {limit} bytes (--max-record-bytes)")
            expect = line + 1
            if len(data) > limit:  # over the limit inside a read block: counted as line mode does
                bad.add("too_long", where(line), f"over {limit} bytes (--max-record-bytes)")
                if rec is None:
                    rec = _Record(line)
                rec.taint("too_long", f"line {line} is over {limit} bytes (--max-record-bytes)")
                continue
            if not data.strip():
                if rec is not None and whole_file:
                    rec.blank_tail.append((line, data.decode("ascii")))  # kept as they are
                    rec.lines += 1
                    continue
                if rec is not None:
                    yield from _close(rec, whole_file, bad, where)
                    rec = None
                bad.add(BLANK, where(line))
                continue
            if rec is None:
                rec = _Record(line)
            _add_line(rec, data, line, limit)
    if any(n >= expect for n in dropped):  # the unit's last line(s) drained: part of the open record
        rec = rec or _Record(expect)
        rec.taint("too_long", f"line {expect} is over {limit} bytes (--max-record-bytes)")
    if rec is not None:
        yield from _close(rec, whole_file, bad, where)


def _add_line(rec: _Record, data: bytes, line: int, limit: int) -> None:
    rec.lines += 1
    if rec.bad is not None:
        rec.blank_tail = []  # blank lines followed by text are inside the (bad) record
        return
    rec.size += len(data) + 1
    if rec.size > limit:
        rec.taint("too_long", f"over {limit} bytes (--max-record-bytes) by line {line}")
        return
    if b"\x00" in data:
        rec.taint("nul_byte", f"line {line}")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        rec.taint("invalid_utf8", f"line {line}, byte {exc.start}")
        return
    rec.pieces.extend(text for _, text in rec.blank_tail)
    rec.blank_tail = []
    rec.pieces.append(text)


def _close(rec: _Record, whole_file: bool, bad: BadRecords, where: Where) -> Iterator[Raw]:
    """Yield the record, or count its lines under why it is bad."""
    trailing = len(rec.blank_tail)  # file unit: blank lines after the text are not part of it
    lines = rec.lines - trailing
    if rec.bad is None:
        text = "\n".join(rec.pieces) if whole_file else " ".join(p.strip() for p in rec.pieces if p.strip())
        if text.strip():
            bad.continued += lines - 1
            yield Raw(text, None, rec.first)
        elif lines:
            bad.add("empty_text", where(rec.first), lines=lines)
    elif lines:
        reason, detail = rec.bad
        bad.add(reason, where(rec.first), f"a {'file' if whole_file else 'paragraph'} of {lines} line(s): "
                                          f"{detail}", lines)
    for line, _ in rec.blank_tail:
        bad.add(BLANK, where(line))
