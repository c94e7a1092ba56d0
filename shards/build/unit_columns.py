"""A unit's records as a stream of :class:`~shards.build.writer.Columns` with label ids.

Column-wise where a reader can (JSONL, CSV/TSV, txt lines; or the label scan's spill, see
:mod:`shards.build.spill`), else the per-record readers of :mod:`shards.corpus.read`; every
path gives the same records, counts and errors.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from shards.build import spill
from shards.build.writer import columns_of
from shards.corpus import jsonl as corpus_jsonl
from shards.corpus import txt_block
from shards.corpus.read import BadRecords, Unit, Where, kind_of, read_unit


def counting(columns, counts: list[int] | None):
    """The Columns stream as it is, adding each record's label id to ``counts``."""
    for col in columns:
        if counts is not None and col.label is not None and len(col.label):
            for i, n in enumerate(np.bincount(col.label, minlength=len(counts)).tolist()):
                counts[i] += n
        yield col


def unit_columns(cfg, unit: Unit, labels: list[str] | None, bad: BadRecords):
    """(generator of :class:`Columns` with label ids, counter of text chars read) for one unit.

    JSONL, CSV/TSV and txt lines are read column-wise (pyarrow's JSON and CSV readers, numpy
    checks), which gives the same records, counts and errors as the per-record path below.
    """
    text_chars = Counter()
    # a unit whose label scan ran here was parsed once already: its records are read back
    fast = spill.take(unit, cfg.spec, cfg.storage_options, bad, labels) if labels is not None else None
    if fast is None and cfg.spec.block_parse:
        fast = _column_reader(cfg, unit, labels, bad)
    if fast is not None:
        def counted():
            for col in fast:
                text_chars["n"] += col.text_chars
                yield col
        return counted(), text_chars
    label_ids = {name: i for i, name in enumerate(labels)} if labels is not None else None
    where = Where(unit, cfg.storage_options)

    def records():
        for raw in read_unit(unit, cfg.spec, bad, cfg.storage_options):
            text_chars["n"] += len(raw.text)
            if label_ids is None:
                yield raw.text, None
            elif raw.label in label_ids:
                yield raw.text, label_ids[raw.label]
            else:
                bad.add("unknown_label", where(raw.line),
                        f"{raw.label!r} not in {labels} (--label-names or --label-map)")

    return columns_of(records(), labels is not None), text_chars


def _column_reader(cfg, unit: Unit, labels: list[str] | None, bad: BadRecords):
    """The unit's column-wise reader (jsonl, csv/tsv, txt lines), or None for the per-record path."""
    kind, _ = kind_of(unit.url, cfg.spec.input_format)
    if kind == "jsonl":
        return corpus_jsonl.read_columns(unit, cfg.spec, bad, labels, cfg.storage_options)
    if kind in ("csv", "tsv"):
        from shards.corpus import csv_block  # imports pyarrow.csv: only for CSV inputs
        return csv_block.read_columns(unit, cfg.spec, bad, labels, "\t" if kind == "tsv" else ",", cfg.storage_options)
    if kind == "txt" and cfg.spec.text_unit == "line":
        return txt_block.read_columns(unit, cfg.spec, bad, cfg.storage_options)
    return None
