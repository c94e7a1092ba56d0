"""The vocabulary of the corpus readers: what to read (:class:`CorpusSpec`, :class:`Unit`),
what comes out (:class:`Raw`) and how bad input is counted (:class:`BadRecords`).

Every reader module imports these from here (not from :mod:`shards.corpus.read`, which
imports the readers), so there is no import cycle.

Accounting, for every line format (txt, jsonl, csv, tsv): each physical input line
(after a CSV header) is either part of a written record or counted, never both:

    input lines = records written + sum(bad counts) + ``BadRecords.continued``

where ``continued`` counts the 2nd, 3rd, ... lines of a written multi-line record
(a quoted CSV field holding line breaks, a txt paragraph or file under ``--text-unit``),
and a bad multi-line record counts each of its lines under its reason.  A damaged compressed
file counts one ``corrupt_file`` for its cut-off remainder (the partial last line, if any, and everything after it);
the whole lines before the damage are read as usual.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

from shards.storage import redact

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
ALL_SUFFIXES = tuple(s + c for s in TEXT_SUFFIXES for c in ("", *COMPRESSIONS))
BAD_POLICIES = ("error", "skip")
INPUT_FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet")  # --input-format: overrides the extension
TEXT_UNITS = ("line", "paragraph", "file")  # --text-unit: what one record of a txt file is

# Lines that are not records at all (a blank line in a .txt file) are counted
# under this reason but never stop a build.
BLANK = "blank_line"
# A compressed file that is truncated, corrupt or followed by garbage.
CORRUPT_FILE = "corrupt_file"


class BadRecordError(ValueError):
    """A record could not be read; carries ``file:line`` and the reason."""


class Raw(NamedTuple):
    text: str
    label: str | None
    line: int  # 1-based line (or row) number inside its unit


@dataclass(frozen=True)
class CorpusSpec:
    """How to pull text and label out of the input records."""

    text_fields: tuple[str, ...] = ("text",)
    label_field: str | None = None
    columns: tuple[str, ...] | None = None  # CSV/TSV without a header row
    on_bad_record: str = "error"
    max_record_bytes: int = 8 << 20
    block_parse: bool = True  # JSONL, CSV/TSV, txt lines: whole blocks column-wise (False: line by line; same output)
    text_unit: str = "line"  # txt: one record per line, per blank-line-separated paragraph, or per file
    input_format: str | None = None  # the reader for every input, whatever its extension (None: by extension)

    def __post_init__(self):
        for name, value, valid in (("on_bad_record", self.on_bad_record, BAD_POLICIES),
                                   ("text_unit", self.text_unit, TEXT_UNITS),
                                   ("input_format", self.input_format, (None, *INPUT_FORMATS))):
            if value not in valid:
                raise ValueError(f"{name}={value!r}; valid: {', '.join(v for v in valid if v)}")
        twice = [c for i, c in enumerate(self.columns or ()) if c in self.columns[:i]]
        if twice:
            raise ValueError(f"--columns {','.join(self.columns)}: names the column {twice[0]!r} twice; "
                             f"name each column once")


@dataclass(frozen=True)
class Unit:
    """One unit of work: a file, or the byte range [start, end) of one."""

    url: str
    start: int = 0
    end: int | None = None

    @property
    def name(self) -> str:
        return self.url if self.end is None else f"{self.url}[{self.start}:{self.end}]"


class BadRecords:
    """Counts of skipped input lines by reason; raises instead under ``error``."""

    def __init__(self, policy: str):
        self.policy = policy
        self.counts: Counter = Counter()
        self.continued = 0  # lines continuing a written multi-line record (see the module docstring)
        # a unit's block reader runs on a thread of its own (shards.build.prefetch): counts from both
        self._lock = threading.Lock()

    def add(self, reason: str, where: str, detail: str = "", lines: int = 1) -> None:
        """Count one bad record spanning ``lines`` input lines (or raise under ``error``)."""
        if reason != BLANK and self.policy == "error":
            # ``where`` comes redacted from its maker (corpus_open.Where): redacting here would eat
            # the ":line" after a presigned URL's query
            raise BadRecordError(f"{where}: {reason}{': ' + detail if detail else ''} "
                                 f"(pass --on-bad-record skip to skip and count such records)")
        with self._lock:
            self.counts[reason] += lines

    def add_many(self, reason: str, n: int) -> None:
        """Count ``n`` records skipped for one reason (found column-wise; skip policy only)."""
        if n and reason != BLANK and self.policy == "error":
            raise ValueError("add_many is for the skip policy; under error, report the first record with add()")
        if n:
            with self._lock:
                self.counts[reason] += n


def kind_of(url: str, input_format: str | None = None) -> tuple[str, str | None]:
    """(reader kind, compression) from the file name, or a clear error.

    ``input_format`` (``--input-format``) names the reader whatever the extension; the
    compression still comes from a ``.gz``/``.zst`` suffix.  A URL's query string (a
    presigned URL's signature) is not part of its name.
    """
    name = (url.split("?", 1)[0] if "://" in url else url).lower()
    compression = None
    for suffix, comp in COMPRESSIONS.items():
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], comp
    if input_format is not None:
        return input_format, compression
    for suffix in TEXT_SUFFIXES:
        if name.endswith(suffix):
            kind = "jsonl" if suffix == ".json" else suffix[1:]
            return kind, compression
    raise ValueError(f"input {redact(url)}: unknown file type; valid extensions: "
                     f"{', '.join(TEXT_SUFFIXES)} (optionally + .gz or .zst), or name the format "
                     f"with --input-format {'|'.join(INPUT_FORMATS)}")
