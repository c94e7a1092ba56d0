"""Readers of text corpora: txt, jsonl, csv, tsv, parquet (each plain, .gz or .zst).

Each reader is a generator of :class:`Raw` records (text, raw label, line) for
one unit of work: a whole file, or a byte range of a large uncompressed
txt/jsonl file.  Bad records are counted by reason in a :class:`BadRecords`,
or raise :class:`BadRecordError` naming ``file:line`` and the reason.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

from . import storage

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".tsv", ".parquet")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
ALL_SUFFIXES = tuple(s + c for s in TEXT_SUFFIXES for c in ("", *COMPRESSIONS))
BAD_POLICIES = ("error", "skip")

# Lines that are not records at all (a blank line in a .txt file) are counted
# under this reason but never stop a build.
BLANK = "blank_line"


class BadRecordError(ValueError):
    """A record could not be read; carries ``file:line`` and the reason."""


class Raw(NamedTuple):
    text: str
    label: str | None
    line: int  # 1-based line (or row) number inside its file


@dataclass(frozen=True)
class CorpusSpec:
    """How to pull text and label out of the input records."""

    text_fields: tuple[str, ...] = ("text",)
    label_field: str | None = None
    columns: tuple[str, ...] | None = None  # CSV/TSV without a header row
    on_bad_record: str = "error"
    max_record_bytes: int = 8 << 20
    block_parse: bool = True  # JSONL: pyarrow parses blocks of lines (False: line by line; same output)

    def __post_init__(self):
        if self.on_bad_record not in BAD_POLICIES:
            raise ValueError(f"on_bad_record={self.on_bad_record!r}; valid: {', '.join(BAD_POLICIES)}")


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
    """Counts of skipped records by reason; raises instead under ``error``."""

    def __init__(self, policy: str):
        self.policy = policy
        self.counts: Counter = Counter()

    def add(self, reason: str, where: str, detail: str = "") -> None:
        if reason != BLANK and self.policy == "error":
            raise BadRecordError(f"{where}: {reason}{': ' + detail if detail else ''} "
                                 f"(pass --on-bad-record skip to skip and count such records)")
        self.counts[reason] += 1

    def add_many(self, reason: str, n: int) -> None:
        """Count ``n`` records skipped for one reason (found column-wise; skip policy only)."""
        if n and reason != BLANK and self.policy == "error":
            raise ValueError("add_many is for the skip policy; under error, report the first record with add()")
        if n:
            self.counts[reason] += n


def kind_of(url: str) -> tuple[str, str | None]:
    """(reader kind, compression) from the file name, or a clear error."""
    name = url.lower()
    compression = None
    for suffix, comp in COMPRESSIONS.items():
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], comp
    for suffix in TEXT_SUFFIXES:
        if name.endswith(suffix):
            kind = "jsonl" if suffix == ".json" else suffix[1:]
            return kind, compression
    raise ValueError(f"input {url}: unknown file type; valid extensions: "
                     f"{', '.join(TEXT_SUFFIXES)} (optionally + .gz or .zst)")


def plan_units(urls: list[str], split_bytes: int, storage_options: dict | None = None) -> list[Unit]:
    """Units of work: large uncompressed txt/jsonl files become byte ranges.

    ``split_bytes`` is a build constant (not the worker count) so the units,
    and therefore the output, are the same however many workers run them.
    """
    units: list[Unit] = []
    for url in urls:
        kind, compression = kind_of(url)
        if kind in ("txt", "jsonl") and compression is None:
            n = storage.size(url, storage_options)
            if n > split_bytes:
                units.extend(Unit(url, s, min(s + split_bytes, n)) for s in range(0, n, split_bytes))
                continue
        units.append(Unit(url))
    return units


def scan_labels(unit: Unit, spec: CorpusSpec, storage_options: dict | None = None) -> set[str]:
    """The label values in a unit (first pass of a labelled build).

    Bad records are counted for real in the write pass, so here they are
    skipped whatever the policy.
    """
    if kind_of(unit.url)[0] == "jsonl":
        from . import corpus_jsonl  # imports this module

        if spec.block_parse:
            return corpus_jsonl.scan_labels(unit, spec, storage_options)
    return {r.label for r in read_unit(unit, spec, BadRecords("skip"), storage_options)}


def read_unit(unit: Unit, spec: CorpusSpec, bad: BadRecords,
              storage_options: dict | None = None) -> Iterator[Raw]:
    kind, compression = kind_of(unit.url)
    reader = {"txt": _read_txt, "jsonl": _read_jsonl, "csv": _read_csv,
              "tsv": _read_csv, "parquet": _read_parquet}[kind]
    yield from reader(unit, spec, bad, compression, storage_options)


def open_binary(url: str, compression: str | None, storage_options: dict | None):
    fs, path = storage.filesystem(url, storage_options)
    # a local file is opened plainly: fsspec's LocalFileOpener wraps every readline in Python
    raw = open(path, "rb", buffering=1 << 20) if not storage.is_remote(url) else fs.open(path, "rb")
    if compression == "gzip":
        import gzip
        return io.BufferedReader(gzip.GzipFile(fileobj=raw))
    if compression == "zstd":
        import zstandard
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return raw


def _lines(unit: Unit, spec: CorpusSpec, bad: BadRecords, where, compression, storage_options
           ) -> Iterator[tuple[bytes, int]]:
    """Raw lines (without the newline) of a unit, with their line numbers.

    A range owns the lines that start inside it; lines longer than
    ``max_record_bytes`` are drained in pieces and counted, never held whole.
    """
    limit = spec.max_record_bytes
    with open_binary(unit.url, compression, storage_options) as f:
        pos, line_no = 0, 0
        if unit.start > 0:
            f.seek(unit.start - 1)
            pos = unit.start - 1 + drain_line(f)  # finish the line owned by the previous range
        while unit.end is None or pos < unit.end:
            line = f.readline(limit + 1)
            if not line:
                return
            line_no += 1
            pos += len(line)
            if len(line) > limit and not line.endswith(b"\n"):
                pos += drain_line(f)
                bad.add("too_long", where(line_no), f"over {limit} bytes (--max-record-bytes)")
                continue
            yield line.rstrip(b"\r\n"), line_no


def drain_line(f) -> int:
    """Skip to just after the next newline in bounded pieces; returns the bytes skipped."""
    skipped = 0
    while True:
        rest = f.readline(1 << 20)
        skipped += len(rest)
        if not rest or rest.endswith(b"\n"):
            return skipped


def _line_offset(unit: Unit, storage_options) -> int:
    """Lines before a range's first line: counted only when an error must name a line.

    The range skips the line in progress at ``start - 1`` (it belongs to the
    previous range), so that line and every line ended before it come first.
    """
    if unit.start == 0:
        return 0
    fs, path = storage.filesystem(unit.url, storage_options)
    count, done, stop = 0, 0, unit.start - 1
    with fs.open(path, "rb") as f:
        while done < stop:
            block = f.read(min(1 << 22, stop - done))
            if not block:
                break
            count += block.count(b"\n")
            done += len(block)
    return count + 1


class Where:
    """file:line for messages, computing a range's line offset only if needed."""

    def __init__(self, unit: Unit, storage_options):
        self.unit, self.storage_options, self.base = unit, storage_options, None

    def __call__(self, line: int) -> str:
        if self.base is None:
            self.base = _line_offset(self.unit, self.storage_options)
        return f"{self.unit.url}:{self.base + line}"


def _decode(data: bytes, where, line: int, bad: BadRecords) -> str | None:
    if b"\x00" in data:
        bad.add("nul_byte", where(line))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad.add("invalid_utf8", where(line), f"byte {exc.start}")
        return None


def _read_txt(unit, spec, bad, compression, storage_options) -> Iterator[Raw]:
    where = Where(unit, storage_options)
    for data, line in _lines(unit, spec, bad, where, compression, storage_options):
        if not data.strip():
            bad.add(BLANK, where(line))
            continue
        text = _decode(data, where, line, bad)
        if text is not None:
            yield Raw(text, None, line)


def _read_jsonl(unit, spec, bad, compression, storage_options) -> Iterator[Raw]:
    where = Where(unit, storage_options)
    yield from jsonl_records(_lines(unit, spec, bad, where, compression, storage_options), spec, bad, where)


def jsonl_records(lines: Iterable[tuple[bytes, int]], spec: CorpusSpec, bad: BadRecords, where
                  ) -> Iterator[Raw]:
    """Records of JSONL lines, one JSON object per line."""
    for data, line in lines:
        if not data.strip():
            bad.add(BLANK, where(line))
            continue
        text = _decode(data, where, line, bad)
        if text is None:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            bad.add("malformed_json", where(line), str(exc))
            continue
        if not isinstance(obj, dict):
            bad.add("malformed_json", where(line), f"expected an object, got {type(obj).__name__}")
            continue
        record = _from_mapping(obj, spec, bad, where, line)
        if record is not None:
            yield record


def _from_mapping(obj: dict, spec: CorpusSpec, bad: BadRecords, where, line: int) -> Raw | None:
    parts = []
    for name in spec.text_fields:
        value = obj.get(name)
        if value is None:
            bad.add("missing_field", where(line), f"no field {name!r} (fields: {', '.join(map(str, obj))})")
            return None
        if isinstance(value, (dict, list)):
            bad.add("wrong_type", where(line), f"field {name!r} is a {type(value).__name__}, not text")
            return None
        parts.append(value if isinstance(value, str) else str(value))
    text = "\n".join(parts)
    if not text.strip():
        bad.add("empty_text", where(line))
        return None
    if "\x00" in text:
        bad.add("nul_byte", where(line))
        return None
    label = None
    if spec.label_field is not None:
        value = obj.get(spec.label_field)
        if value is None or value == "":
            bad.add("missing_field", where(line), f"no label field {spec.label_field!r}")
            return None
        if isinstance(value, (dict, list)):
            bad.add("wrong_type", where(line), f"label field {spec.label_field!r} is a {type(value).__name__}")
            return None
        label = str(value).lower() if isinstance(value, bool) else str(value)
    return Raw(text, label, line)


def _read_csv(unit, spec, bad, compression, storage_options) -> Iterator[Raw]:
    kind, _ = kind_of(unit.url)
    where = Where(unit, storage_options)
    with open_binary(unit.url, compression, storage_options) as raw:
        # surrogateescape keeps undecodable bytes visible so one bad row does
        # not abort the whole file; such rows are counted as invalid_utf8.
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        _raise_csv_field_limit(spec.max_record_bytes)
        rows = csv.reader(text, delimiter="\t" if kind == "tsv" else ",")
        header = list(spec.columns) if spec.columns else None
        for row, start in _csv_rows(rows, bad, where):
            if header is None:
                header = row
                continue
            record = _csv_record(row, header, spec, bad, where, start)
            if record is not None:
                yield record


def _raise_csv_field_limit(limit: int) -> None:
    # The csv module's limit is process-wide; only ever raise it, and check
    # the per-record limit ourselves in _csv_record.
    csv.field_size_limit(max(csv.field_size_limit(), limit + 1))


def _csv_rows(rows, bad: BadRecords, where) -> Iterator[tuple[list[str], int]]:
    """(row, first line) of a csv reader; a row it cannot parse is counted and skipped.

    A quoted field may span lines, so a row starts on the line after the
    previous row ended.
    """
    while True:
        start = rows.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            bad.add("malformed_csv", where(start), str(exc))
            continue
        yield row, start


def _csv_record(row: list[str], header: list[str], spec: CorpusSpec, bad: BadRecords, where,
                line: int) -> Raw | None:
    joined = "".join(row)
    if not joined.strip():
        bad.add(BLANK, where(line))
        return None
    try:
        size = len(joined) if joined.isascii() else len(joined.encode("utf-8"))
    except UnicodeEncodeError:  # surrogate-escaped bytes that were not UTF-8
        bad.add("invalid_utf8", where(line))
        return None
    if size > spec.max_record_bytes:
        bad.add("too_long", where(line), f"over {spec.max_record_bytes} bytes (--max-record-bytes)")
        return None
    if len(row) != len(header):
        bad.add("malformed_csv", where(line), f"{len(row)} fields, header has {len(header)}")
        return None
    return _from_mapping(dict(zip(header, row)), spec, bad, where, line)


def _read_parquet(unit, spec, bad, compression, storage_options) -> Iterator[Raw]:
    import pyarrow.parquet as pq

    with open_binary(unit.url, compression, storage_options) as raw:
        # Parquet needs random access: a compressed file is decompressed into memory.
        f = raw if compression is None else io.BytesIO(raw.read())
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        wanted = [*spec.text_fields] + ([spec.label_field] if spec.label_field else [])
        missing = [n for n in wanted if n not in names]
        if missing:
            raise BadRecordError(f"{unit.url}: no column(s) {', '.join(missing)}; columns: {', '.join(names)}")
        row = 0
        for batch in pf.iter_batches(columns=wanted, batch_size=4096):
            for obj in batch.to_pylist():
                row += 1
                record = _from_mapping(obj, spec, bad, lambda r: f"{unit.url}:row {r}", row)
                if record is not None:
                    yield record
