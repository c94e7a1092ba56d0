"""Labels found in the write pass: a labelled Arrow build of one unit reads its input once.

Label ids are the label values in sorted order (:func:`shards.build.driver.sort_labels`), so
they are known only once every record is read, and a labelled build used to finish a scan of
its input before it wrote the first shard: the parse and the write ran one after the other.
Here the unit is written in the same pass that finds the labels, under *provisional* ids (the
order each value is first met), and when the unit ends its shards' label column is rewritten
in place with the final ids (:func:`shards.formats.arrow_write.relabel`; an int64 column, so the
layout and every other byte are unchanged) and hashed again.  The shards are byte-identical
to a two-pass build's; the records, bad-record counts and errors are the scan reader's, which
are the write reader's (the scan reader only leaves out the unknown-label check, and a label
found in the input is never unknown).

Used when the build's own process runs the single unit of a local Arrow build whose labels
are not given (:func:`applies`); otherwise the scan runs first (:mod:`shards.build.spill`).
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from shards.build import spill
from shards.build.writer import Columns, Part
from shards.formats.arrow_write import relabel
from shards.storage import is_remote, sha256_file

IN_PASS = "found in the write pass"  # the labels of a unit key (and run_unit) when they are found so
# A smaller unit is one read block (shards.corpus.jsonl.BLOCK_BYTES): its parse has no write to overlap
# with, so the scan (its records kept in memory) costs nothing more and the relabel would.
MIN_UNIT_BYTES = 8 << 20


def applies(cfg, units: list, own_engine: bool) -> bool:
    """Whether the build finds its labels in the write pass (see the module docstring)."""
    return (cfg.spec.label_field is not None and cfg.label_names is None and cfg.label_map is None
            and cfg.format == "arrow" and cfg.tokenizer is None and own_engine and len(units) == 1
            and not is_remote(cfg.out) and spill.has_scan_reader(units[0], cfg.spec)
            and _unit_bytes(units[0]) >= MIN_UNIT_BYTES)


def _unit_bytes(unit) -> int:
    return unit.end - unit.start if unit.end is not None else os.path.getsize(unit.url)


class FoundLabels:
    """Label values in the order first met (their provisional ids), and the records of each."""

    def __init__(self):
        self.values: list[str] = []
        self.counts: list[int] = []
        self._ids: dict[str, int] = {}

    def ids(self, label: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Provisional ids of a scanned Columns' label strings (a dictionary array's: its used values only)."""
        if isinstance(label, pa.ChunkedArray):
            label = label.combine_chunks()
        if not isinstance(label, pa.DictionaryArray):
            label = label.dictionary_encode()
        index = label.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        used = np.bincount(index, minlength=len(label.dictionary))
        per_value = np.full(len(label.dictionary), -1, np.int64)
        for i in np.flatnonzero(used).tolist():
            per_value[i] = self._id(label.dictionary[i].as_py(), int(used[i]))
        return per_value[index]

    def _id(self, value: str, records: int) -> int:
        found = self._ids.get(value)
        if found is None:
            found = self._ids[value] = len(self.values)
            self.values.append(value)
            self.counts.append(0)
        self.counts[found] += records
        return found

    def columns(self, scanned: Iterable[Columns]) -> Iterator[Columns]:
        """The scan reader's Columns with provisional label ids."""
        for col in scanned:
            yield Columns(col.text, self.ids(col.label), col.text_chars)

    def finish(self, parts: list[Part], labels: list[str]) -> tuple[list[Part], list[int]]:
        """The parts with their label ids rewritten by ``labels`` (all the values, in id order),
        and the records per final id."""
        final = {value: i for i, value in enumerate(labels)}
        perm = np.array([final[v] for v in self.values], np.int64)
        counts = [0] * len(labels)
        for provisional, n in enumerate(self.counts):
            counts[perm[provisional]] += n
        if np.array_equal(perm, np.arange(len(perm))):
            return parts, counts
        out = []
        for p in parts:
            relabel(p.path, perm)
            digest, nbytes = sha256_file(p.path)
            out.append(Part(p.path, p.num_records, nbytes, digest))
        return out, counts


def unit_columns(cfg, unit, bad, found: FoundLabels):
    """The unit's Columns with provisional label ids, and its counter of text chars read."""
    text_chars = Counter()

    def counted():
        for col in found.columns(spill.scan_reader(unit, cfg.spec, bad, cfg.storage_options)):
            text_chars["n"] += col.text_chars
            yield col
    return counted(), text_chars
