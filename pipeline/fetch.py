"""The fetch stage of a ShardStream: its shards fetched and verified (``shards.fetch_shard``,
through the local cache of remote shards), the next one prefetched on a thread, each read in one
pass but the plan's first window (a run of adjacent slices at a time, each slice yielded as it is
read, from sha256-verified bytes only: shard_chunks), and the corrupt-shard policy
(``StreamConfig.on_corrupt``: raise, or skip the shard's records as flagged pads, marked
``Chunk.skipped`` and counted where they are delivered).

Functions of the stream (``ds``): it holds the manifest, the settings, the cache and the set of
shards skipped, so that they travel with it to the DataLoader workers.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from itertools import groupby
from typing import Iterator

import numpy as np
import pyarrow.compute  # noqa: F401 - the shard readers call it: imported before DataLoader workers fork

import shards
from pipeline import split
from pipeline.chunk import Chunk, concat, from_rows
from shards import Ragged

log = logging.getLogger("pipeline.stream")  # the name these messages have always had
CORRUPT_POLICIES = ("error", "skip")


def read(ds, plan: list[split.Slice], want_text: bool, continues: bool = False) -> Iterator[Chunk]:
    """The plan's records, shard by shard; ``continues``: its first shard read began before the plan
    (a resume inside it), so a skipped one was counted there already."""
    groups = [(shard, list(slices)) for shard, slices in groupby(plan, key=lambda s: s.shard)]
    if not groups:
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch")
    try:
        window = window_of(ds)
        pending = pool.submit(fetch, ds, groups[0][0])
        for i, (shard, slices) in enumerate(groups):
            data = pending.result()
            pending, sent = None, 0
            if isinstance(data, Exception):
                chunks = skip_shard(ds, shard, slices, data, want_text, counted=continues and i == 0)
            else:
                chunks = shard_chunks(ds, shard, slices, data, want_text, window if i == 0 else 0)
            for chunk in chunks:
                # the next shard downloads while this one is consumed, but only once a first window
                # has gone out: fetching and hashing it would compete with the first batch for the CPU
                if pending is None and i + 1 < len(groups) and sent >= window:
                    pending = _prefetch(ds, pool, groups[i + 1][0])
                sent += len(chunk)
                yield chunk
            if pending is None and i + 1 < len(groups):
                pending = _prefetch(ds, pool, groups[i + 1][0])
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def continues(plan: list[split.Slice], n: int) -> bool:
    """Whether position ``n`` of ``plan`` lies inside one shard read (consecutive slices of a shard):
    that read's first sample comes before ``n``."""
    pos, prev = 0, None
    for s in plan:
        if pos + len(s) > n:
            return pos < n or (prev is not None and prev.shard == s.shard)
        pos, prev = pos + len(s), s
    return False


def fetch(ds, shard: int) -> bytes | Exception:
    """The shard's verified bytes; under on_corrupt='skip' the error instead of raising it."""
    info = ds.manifest.shards[shard]
    url = shards.shard_url(ds.url, info)
    try:
        return shards.fetch_shard(url, info, ds.storage_options, ds.config.verify, cache_of(ds),
                                  manifest=ds.manifest)
    except (shards.CorruptShardError, shards.StorageError) as exc:
        if ds.config.on_corrupt == "error":
            raise
        return exc


def cache_of(ds):
    """The stream's ShardCache (made on first use, in the process that reads), or None."""
    if ds.config.cache_dir is None or not shards.is_remote(ds.url):
        return None
    if ds._cache is None:
        ds._cache = shards.ShardCache(ds.config.cache_dir, ds.config.cache_limit)
    return ds._cache


def _prefetch(ds, pool: ThreadPoolExecutor, shard: int):
    return pool.submit(fetch, ds, shard) if ds.config.prefetch else _Done(fetch, ds, shard)


def columns(ds, want_text: bool) -> tuple[str, ...]:
    # The rows are counted from the columns read: a set with only texts reads them always.
    other = tuple(c for c in ("label", "input_ids") if c in ds.manifest.fields)
    return (*other, "text") if want_text or not other else other


def window_of(ds) -> int:
    """Samples the stream gathers before its first piece goes out: a shuffle window, or a tokenizer batch."""
    return ds.config.shuffle_buffer if ds.shuffle else ds.config.tokenize_batch


def shard_chunks(ds, shard: int, slices: list[split.Slice], data: bytes, want_text: bool,
                 lead: int | None = None) -> Iterator[Chunk]:
    """The slices' records, in the plan's order.  The slices holding the first ``lead`` samples (default:
    the stream's first window; ``read`` asks it of the plan's first shard only) are read a run of adjacent
    ones at a time, each going out as soon as it is read: the first window does not wait for the rest of
    the shard.  The rest are read in one pass, as the whole shard was before (an Arrow reader call walks
    the file from its first record batch: a call per block of a shuffled plan would cost O(blocks x record
    batches)).  Slices go out as read only from sha256-verified bytes, the built shard's, whose records
    the build checked; under verify='size' or 'none' only reading finds a damaged record, so the whole
    shard is read before any slice goes out: a damaged shard is refused before any of its records is
    delivered."""
    lead = window_of(ds) if lead is None else lead
    chunks = _slice_chunks(ds, shard, [s for s in slices if len(s)], data, want_text, lead)
    yield from chunks if ds.config.verify == "sha256" else list(chunks)


def _slice_chunks(ds, shard: int, slices: list[split.Slice], data: bytes, want_text: bool,
                  lead: int) -> Iterator[Chunk]:
    first = _lead_count(slices, lead)
    for run in _adjacent_runs(slices[:first]):
        yield from _read_run(ds, shard, data, want_text, run)
    rest = slices[first:]
    if rest:  # one pass over the records between them (the first window's read again: cheaper than a walk each)
        lo, hi = min(s.start for s in rest), max(s.stop for s in rest)
        whole = next(_read_run(ds, shard, data, want_text, [split.Slice(shard, lo, hi)]))
        for s in rest:
            yield _marked(whole.slice(s.start - lo, s.stop - lo), s)


def _read_run(ds, shard: int, data: bytes, want_text: bool, run: list[split.Slice]) -> Iterator[Chunk]:
    """Each slice of ``run`` (adjacent slices) as soon as the one pass over them has read it."""
    url = shards.shard_url(ds.url, ds.manifest.shards[shard])
    lo, hi = run[0].start, run[-1].stop
    parts = (from_rows(shard, b.start, len(b), False, b.text, b.label, b.ids)
             for b in shards.read_batches(ds.manifest, url, data, lo, hi, columns(ds, want_text)))
    pieces, got = _cut(parts, [len(s) for s in run]), 0
    for s in run:
        part = next(pieces, None)
        got += 0 if part is None else len(part)
        if part is None or len(part) != len(s):  # never fewer samples than planned: unequal steps
            raise shards.CorruptShardError(
                f"shard {shards.redact(url)}: records {lo}..{hi - 1} gave {got} of {hi - lo} (manifest "
                f"says {ds.manifest.shards[shard].num_records} records); rebuild it or fix index.json")
        yield _marked(part, s)


def _marked(part: Chunk, s: split.Slice) -> Chunk:
    return replace(part, is_pad=np.full(len(part), s.pad)) if s.pad else part


def _lead_count(slices: list[split.Slice], lead: int) -> int:
    """How many of the first slices hold the first ``lead`` samples."""
    total = 0
    for k, s in enumerate(slices):
        if total >= lead:
            return k
        total += len(s)
    return len(slices)


def _adjacent_runs(slices: list[split.Slice]) -> Iterator[list[split.Slice]]:
    """The slices in order, grouped where each starts at the record the one before it stops."""
    run: list[split.Slice] = []
    for s in slices:
        if run and s.start != run[-1].stop:
            yield run
            run = []
        run.append(s)
    if run:
        yield run


def _cut(parts: Iterator[Chunk], sizes: list[int]) -> Iterator[Chunk]:
    """Consecutive pieces of ``sizes`` samples cut from ``parts``, each as soon as it is read
    (the last one short when the parts run out, then none)."""
    held: list[Chunk] = []
    count = 0
    for size in sizes:
        while count < size:
            part = next(parts, None)
            if part is None:
                break
            held.append(part)
            count += len(part)
        if not held:
            return
        whole = concat(held)
        if count <= size:
            yield whole
            held, count = [], 0
        else:
            yield whole.slice(0, size)
            held, count = [whole.slice(size, count)], count - size


def skip_shard(ds, shard: int, slices: list[split.Slice], exc: Exception, want_text: bool,
               counted: bool = False) -> Iterator[Chunk]:
    """Keep the step count: the skipped shard's records become flagged pads, marked ``skipped``
    (counted when delivered, Chunk.skip_counts, not here: reading runs ahead of delivery)."""
    if shard not in ds._skipped:  # logged once per shard
        log.warning("skipping corrupt shard (on_corrupt='skip'): %s", exc)
    ds._skipped.add(shard)
    first = not counted
    for s in slices:
        k = len(s)
        ids = Ragged.from_lengths(np.zeros(k, np.int32), np.ones(k, np.int64)) if ds.pretokenized else None
        marks = np.ones(k, np.int8)
        if first and k:  # the read's first sample counts the shard once
            marks[0], first = 2, False
        chunk = from_rows(shard, s.start, k, True, [""] * k if want_text else None,
                          np.zeros(k, np.int64) if ds.label_names else None, ids)
        yield replace(chunk, skipped=marks)


def report_epoch(ds) -> None:
    """One warning per epoch end naming the shards skipped, when any was."""
    if ds.stats["skipped_shards"]:
        log.warning("epoch %d rank %d: skipped %d corrupt shard read(s), %d samples padded: %s",
                    ds.epoch, ds.world.rank, ds.stats["skipped_shards"], ds.stats["skipped_samples"],
                    sorted(ds._skipped))


class _Done:
    """A future-like result computed on demand (prefetch disabled)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def result(self):
        return self.fn(*self.args)
