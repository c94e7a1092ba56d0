"""One parse per labelled JSONL/CSV unit: the label scan keeps what it read for the write pass.

A labelled build needs every label value before it writes the first id, so it used to read
(and parse) each input twice.  When the scan runs in the build's own process, it now writes
the good records it parsed (text and label string) to a local Arrow IPC *spill* file, with
its bad-record counts; the write pass of the same unit reads that back (memory-mapped, no
parse) and maps the label strings to ids.  The records, counts and order are the reader's
own, so the shards are byte-identical to a build that parses twice.

A spill is used only when it can stand for the write pass exactly: under
``--on-bad-record error`` a scan that met a bad record (which the write pass must raise,
naming it) keeps no spill; a unit over :data:`MAX_SPILL_BYTES` is not spilled (the scan
just collects labels, as before).  A spill of up to :data:`MEMORY_SPILL_BYTES` of text stays in
memory (the batches the scan made; no write and read back of the whole unit), a larger one goes
to a file.  Spill files live in a local output's staging folder (else the
system temp folder) and are removed when the build ends; a SIGKILLed build's are removed with
the staging folder when the next build of that output commits.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa

from shards.build.writer import Columns
from shards.corpus import jsonl as corpus_jsonl
from shards.corpus.read import BLANK, BadRecords, CorpusSpec, Unit, kind_of, scan_labels
from shards.lazy import compute as pc
from shards.storage import is_remote

MAX_SPILL_BYTES = 2 << 30  # spilled text beyond this: give up the spill (the unit is parsed twice)
MEMORY_SPILL_BYTES = 512 << 20  # spilled text up to this stays in memory; beyond it, the spill goes to a file
SCHEMA = pa.schema([("text", pa.string()), ("label", pa.string())])


@dataclass
class Spill:
    path: str  # the spill file; unused while ``batches`` holds the spill in memory
    chars: list[int] = field(default_factory=list)  # text_chars of each spilled Columns, in order
    bad: dict[str, int] = field(default_factory=dict)
    continued: int = 0
    batches: list | None = field(default_factory=list)  # in memory; None once written to ``path``


_SPILLS: dict[tuple, Spill] = {}  # (unit, spec) -> spill of this process's scans
_DIR: list[str] = []
_FOLDER: list[str] = []  # where spills go (a local build's staging folder), else the system temp folder
_NUMBERS = itertools.count()


def _key(unit: Unit, spec: CorpusSpec, storage_options) -> tuple:
    return unit, spec, repr(sorted((storage_options or {}).items()))


def has_scan_reader(unit: Unit, spec: CorpusSpec) -> bool:
    """Whether the unit's labels can be scanned by a block reader that keeps its records (JSONL, CSV/TSV)."""
    kind = kind_of(unit.url, spec.input_format)[0]
    return spec.block_parse and spec.label_field is not None and not is_remote(unit.url) and kind in ("jsonl", "csv", "tsv")


def scan_reader(unit: Unit, spec: CorpusSpec, bad: BadRecords, storage_options) -> Iterator[Columns]:
    """The good records of a unit that :func:`has_scan_reader`, as Columns whose label is an Arrow
    array of their label strings."""
    kind = kind_of(unit.url, spec.input_format)[0]
    if kind == "jsonl":
        return corpus_jsonl.scan_columns(unit, spec, bad, storage_options)
    from shards.corpus import csv_block
    return csv_block.read_columns(unit, spec, bad, None, "\t" if kind == "tsv" else ",", storage_options, for_scan=True)


def _columns(unit: Unit, spec: CorpusSpec, bad: BadRecords, storage_options) -> Iterator[Columns] | None:
    """The scan reader of a unit that may be spilled, else None."""
    if not has_scan_reader(unit, spec):
        return None
    if kind_of(unit.url, spec.input_format)[1] is None and unit.end is None and os.path.getsize(unit.url) > MAX_SPILL_BYTES:
        return None
    return scan_reader(unit, spec, bad, storage_options)


def scan(unit: Unit, spec: CorpusSpec, storage_options: dict | None = None) -> set[str]:
    """The unit's label values (as :func:`shards.corpus.read.scan_labels`), spilling what it read."""
    bad = BadRecords("skip")
    columns = _columns(unit, spec, bad, storage_options)
    if columns is None:
        return scan_labels(unit, spec, storage_options)
    if not _DIR:
        if _FOLDER:
            os.makedirs(_FOLDER[0], exist_ok=True)
        _DIR.append(tempfile.mkdtemp(prefix="spill-" if _FOLDER else "shards-spill-", dir=_FOLDER[0] if _FOLDER else None))
    spill = Spill(os.path.join(_DIR[0], f"{next(_NUMBERS)}.arrows"))
    found: set[str] = set()
    size, keep = 0, True
    with _SpillWriter(spill) as writer:
        for col in columns:
            label = col.label.combine_chunks() if isinstance(col.label, pa.ChunkedArray) else col.label
            found.update(_distinct(label))
            if not keep:
                continue
            size += col.text.nbytes
            keep = size <= MAX_SPILL_BYTES
            if keep:
                writer.write((col.text, label), size)
                spill.chars.append(col.text_chars)
    spill.bad, spill.continued = dict(bad.counts), bad.continued
    if keep:
        _SPILLS[_key(unit, spec, storage_options)] = spill
    elif spill.batches is None:
        os.remove(spill.path)
    return found


def _distinct(label: pa.Array) -> list[str]:
    """The label strings of a scanned Columns (a dictionary array's: the values its rows use)."""
    if isinstance(label, pa.DictionaryArray):
        used = np.flatnonzero(np.bincount(label.indices.to_numpy(zero_copy_only=False), minlength=len(label.dictionary)))
        values = label.dictionary.to_pylist()  # a few values; a take would import pyarrow.compute (0.1 s)
        return [values[i] for i in used.tolist()]
    return pc.unique(label).to_pylist()


class _SpillWriter:
    """Keeps a spill's (text, label) columns in memory, as the reader made them, up to
    MEMORY_SPILL_BYTES of text; then writes them all to its file (an Arrow IPC stream of plain
    string columns, a batch per Columns) and the rest after them."""

    def __init__(self, spill: Spill):
        self.spill = spill
        self._sink = self._writer = None

    def write(self, item: tuple, size: int) -> None:
        """Keep ``item`` (a Columns' text and label columns); ``size``: the spill's text bytes so far."""
        if self.spill.batches is not None and size > MEMORY_SPILL_BYTES:
            self._sink = pa.OSFile(self.spill.path, "wb")
            self._writer = pa.ipc.new_stream(self._sink, SCHEMA)
            for kept in self.spill.batches:
                self._writer.write_batch(_record_batch(*kept))
            self.spill.batches = None
        if self.spill.batches is not None:
            self.spill.batches.append(item)
        else:
            self._writer.write_batch(_record_batch(*item))

    def __enter__(self) -> "_SpillWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()


def _record_batch(text, label: pa.Array) -> pa.RecordBatch:
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    label = label.dictionary_decode() if isinstance(label, pa.DictionaryArray) else label
    return pa.RecordBatch.from_arrays([text, label], schema=SCHEMA)


def take(unit: Unit, spec: CorpusSpec, storage_options, bad: BadRecords, labels: list[str]
         ) -> Iterator[Columns] | None:
    """The write pass's Columns of a spilled unit (label ids by ``labels``), counting its bad
    records into ``bad``; None when there is no spill that stands for it."""
    spill = _SPILLS.pop(_key(unit, spec, storage_options), None)
    if spill is None:
        return None
    if bad.policy == "error" and any(reason != BLANK for reason in spill.bad):
        if spill.batches is None:
            os.remove(spill.path)
        return None  # the write pass reads again and stops at the first bad record, naming it
    for reason, n in spill.bad.items():
        bad.add_many(reason, n)
    bad.continued += spill.continued
    return _read(spill, pa.array(labels, pa.string()))


def _batches(spill: Spill) -> Iterator[tuple]:
    """The spill's (text, label) columns, in order."""
    if spill.batches is not None:
        batches, spill.batches = spill.batches, []  # handed over: each goes once the writer is done with it
        while batches:
            yield batches.pop(0)
        return
    # not closed here: the writer may still hold slices of the last batches; the map goes with them
    source = pa.memory_map(spill.path)
    os.remove(spill.path)  # the map keeps the data; nothing is left behind whatever happens next
    for batch in pa.ipc.open_stream(source):
        yield batch.column(0), batch.column(1)


def _read(spill: Spill, label_set: pa.Array) -> Iterator[Columns]:
    id_of = {name: i for i, name in enumerate(label_set.to_pylist())}
    for (text, label), chars in zip(_batches(spill), spill.chars):
        yield Columns(text, _label_ids(label, label_set, id_of, spill.path), chars)


def _label_ids(label: pa.Array, label_set: pa.Array, id_of: dict[str, int], path: str) -> np.ndarray:
    """Label ids by ``label_set`` (``id_of``: name -> id) of the spilled label strings (a dictionary
    array: looked up per value, in Python: a few values, and no import of pyarrow.compute)."""
    if isinstance(label, pa.DictionaryArray):
        per_value = np.array([id_of.get(v, -1) for v in label.dictionary.to_pylist()], np.int64)
        ids = per_value[label.indices.to_numpy(zero_copy_only=False)]
    else:
        ids = pc.fill_null(pc.index_in(label, value_set=label_set), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(ids) and ids.min() < 0:
        raise RuntimeError(f"spill {path}: a label outside the scanned set (a bug)")
    return ids


def use_folder(folder: str | None) -> None:
    """Spill into ``folder`` (a local output's staging folder: a killed build's spills go with it
    when the next build commits) instead of the system temp folder."""
    _FOLDER[:] = [folder] if folder else []


def discard_all() -> None:
    """Remove every spill of this process (the build is over)."""
    _SPILLS.clear()
    _FOLDER.clear()
    while _DIR:
        shutil.rmtree(_DIR.pop(), ignore_errors=True)
