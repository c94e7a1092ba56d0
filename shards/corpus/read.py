"""Readers of text corpora: txt, jsonl, csv, tsv, parquet (each plain, .gz or .zst).

Each reader is a generator of :class:`Raw` records (text, raw label, line) for
one unit of work: a whole file, or a byte range of a large uncompressed
txt/jsonl file.  Bad records are counted by reason in a :class:`BadRecords`,
or raise :class:`BadRecordError` naming ``file:line`` and the reason.

The pieces: :mod:`shards.corpus.spec` (the types and the line accounting),
:mod:`shards.corpus.decode` (checked decompression, BOM, line breaks, byte ranges),
:mod:`shards.corpus.records` (the text and label rules), :mod:`shards.corpus.csv_rows`
and :mod:`shards.corpus.jsonl` (the column-wise JSONL path).
"""
from __future__ import annotations

import io
from typing import Iterator

from shards import storage
from shards.corpus import jsonl as corpus_jsonl
from shards.corpus.csv_rows import read_csv
from shards.corpus.decode import Where, read_all, unit_lines
from shards.corpus.records import from_mapping, jsonl_records, txt_records
from shards.corpus.spec import (
    ALL_SUFFIXES,
    BAD_POLICIES,
    BLANK,
    COMPRESSIONS,
    CORRUPT_FILE,
    INPUT_FORMATS,
    TEXT_SUFFIXES,
    TEXT_UNITS,
    BadRecordError,
    BadRecords,
    CorpusSpec,
    Raw,
    Unit,
    kind_of,
)
from shards.corpus.txt import txt_units
from shards.storage import redact

__all__ = ["ALL_SUFFIXES", "BAD_POLICIES", "BLANK", "COMPRESSIONS", "CORRUPT_FILE", "INPUT_FORMATS",
           "TEXT_SUFFIXES", "TEXT_UNITS", "BadRecordError", "BadRecords", "CorpusSpec", "Raw", "Unit", "Where",
           "kind_of", "plan_units", "read_unit", "scan_labels"]


def plan_units(urls: list[str], split_bytes: int, storage_options: dict | None = None,
               spec: CorpusSpec | None = None) -> list[Unit]:
    """Units of work: large uncompressed txt/jsonl files become byte ranges.

    ``split_bytes`` is a build constant (not the worker count) so the units,
    and therefore the output, are the same however many workers run them.
    A txt file read by paragraph or whole (``spec.text_unit``) is never split:
    a record could cross the cut.
    """
    spec = spec or CorpusSpec()
    units: list[Unit] = []
    for url in urls:
        kind, compression = kind_of(url, spec.input_format)
        splittable = kind == "jsonl" or (kind == "txt" and spec.text_unit == "line")
        if splittable and compression is None:
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
    if kind_of(unit.url, spec.input_format)[0] == "jsonl" and spec.block_parse:
        return corpus_jsonl.scan_labels(unit, spec, storage_options)
    kind = kind_of(unit.url, spec.input_format)[0]
    if kind in ("csv", "tsv") and spec.block_parse:
        from shards.corpus import csv_block  # imports pyarrow.csv: only for CSV inputs
        return csv_block.scan_labels(unit, spec, "\t" if kind == "tsv" else ",", storage_options)
    return {r.label for r in read_unit(unit, spec, BadRecords("skip"), storage_options)}


def read_unit(unit: Unit, spec: CorpusSpec, bad: BadRecords,
              storage_options: dict | None = None) -> Iterator[Raw]:
    kind, compression = kind_of(unit.url, spec.input_format)
    if kind in ("csv", "tsv"):
        yield from read_csv(unit, spec, bad, "\t" if kind == "tsv" else ",", compression, storage_options)
        return
    if kind == "parquet":
        yield from _read_parquet(unit, spec, bad, compression, storage_options)
        return
    where = Where(unit, storage_options)
    if kind == "txt" and spec.text_unit != "line":
        yield from txt_units(unit, spec, bad, where, compression, storage_options)
        return
    lines = unit_lines(unit, spec.max_record_bytes, bad, where, compression, storage_options)
    if kind == "txt":
        yield from txt_records(lines, bad, where)
    else:
        yield from jsonl_records(lines, spec, bad, where)


def _read_parquet(unit, spec, bad, compression, storage_options) -> Iterator[Raw]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Parquet needs random access: a compressed file is decompressed into memory.
    if compression is None:
        fs, path = storage.filesystem(unit.url, storage_options)
        f = open(path, "rb") if not storage.is_remote(unit.url) else fs.open(path, "rb")
    else:
        data, error = read_all(unit.url, compression, storage_options)
        if error is not None:
            bad.add(CORRUPT_FILE, redact(unit.url), f"{error}; no row of it is read (parquet needs the whole file)")
            return
        f = io.BytesIO(data)
    with f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            bad.add(CORRUPT_FILE, redact(unit.url), f"not a readable parquet file: {exc}")
            return
        names = pf.schema_arrow.names
        wanted = [*spec.text_fields] + ([spec.label_field] if spec.label_field else [])
        missing = [n for n in wanted if n not in names]
        if missing:
            raise BadRecordError(redact(f"{unit.url}: no column(s) {', '.join(missing)}; "
                                        f"columns: {', '.join(names)}"))
        row, name = 0, redact(unit.url)
        for batch in _batches(pf, wanted, bad, name):
            for obj in _rows(batch):
                row += 1
                if obj is None:
                    bad.add("invalid_utf8", f"{name}:row {row}", "a string in the row is not valid UTF-8")
                    continue
                record = from_mapping(obj, spec, bad, lambda r: f"{name}:row {r}", row)
                if record is not None:
                    yield record


def _rows(batch) -> list[dict | None]:
    """The batch's rows as dicts; None for a row holding a string that is not UTF-8 (parquet does not
    check: such bytes reach us as they were written)."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        pass
    rows: list[dict | None] = []
    for i in range(batch.num_rows):
        try:
            rows.append(batch.slice(i, 1).to_pylist()[0])
        except UnicodeDecodeError:
            rows.append(None)
    return rows


def _batches(pf, wanted: list[str], bad: BadRecords, url: str):
    """The file's record batches; damage found on the way ends the file as ``corrupt_file``."""
    import pyarrow as pa

    batches, rows = pf.iter_batches(columns=wanted, batch_size=4096), 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            bad.add(CORRUPT_FILE, url, f"unreadable parquet data after row {rows}: {exc}; the rows before are read")
            return
        rows += batch.num_rows
        yield batch
