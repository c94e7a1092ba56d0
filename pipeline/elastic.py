"""Elastic mid-epoch resume: the rest of an epoch under a new (world, workers, batch size).

Pure functions of integers, no I/O.  An epoch is the sequence of its N
positions (split.epoch_blocks laid end to end).  A *segment* is one stretch of
the epoch trained under one topology; it reads a *sequence* of epoch positions:

- the first segment reads ``arange(N)``, exactly as split.plan lays it out;
- every later segment reads the positions no earlier segment delivered, in
  epoch order (``remaining``).

Inside a segment the sequence of length M is split as split.py splits the
epoch: rank r takes sequence indices [r*P, (r+1)*P), P = ceil(M / world),
indices >= M wrap and are pads; worker w takes [lo, hi) of that
(split.worker_range).  The worker's stream (stream.py) cuts its part into
windows of ``window`` samples, permutes each with
shuffle.window_order(n, seed, epoch, rank, worker, k) when shuffling, and
delivers the first d samples of that order (pads included in d).

Why exactly once: a segment's (rank, worker) parts are disjoint and cover the
segment's sequence (pads aside), so its delivered set is a disjoint union of
sequence indices; ``remaining`` drops it, so the next sequence holds exactly
the positions not yet delivered, each once.  Pads repeat a position of the
same sequence and never count as delivered, so a padded position that its own
worker did not deliver stays in the next sequence.  By induction over the
chain, the delivered sets of all segments plus the final plan's non-pad
positions partition [0, N).  The final plan gives every rank P samples, with
P*world - M <= world-1 pads.

The ``segments`` list as a JSON state should record it (one entry per finished
stretch, oldest first; the counts of segment s refer to the plan segment s
read, i.e. ``plan_after(..., segments[:s], ...)``)::

    "segments": [
      {"world": 4, "workers": 2, "batch_size": 8, "window": 8192,
       "delivered": [[16, 16], [16, 16], [16, 16], [16, 9]]},
      {"world": 2, "workers": 3, "batch_size": 4, "window": 8192,
       "delivered": [[4, 8, 8], [4, 8, 8]]}
    ]

``delivered[rank][worker]`` = samples (pads included) of that worker's batches
the training loop received: whole batches, or the worker's whole part when its
last batch is short.  ``window`` is StreamConfig.shuffle_buffer (ignored when
not shuffling).

A PackedStream (pack/stream.py) delivers documents, and its blocks may stop inside
one: its segments count documents (``batch_size`` 1: every count is whole) and add
``partial``: ``[[epoch position, tokens emitted], ...]``, the documents a worker
had begun and not finished.  Such a document is not delivered, so it stays in the
next sequence; whoever reads it next skips the tokens already emitted
(``partials``).  group_by_length orders a window by token length, which no
function of integers knows: a segment cut inside such a window is not covered.

How the loader and stream use it: on a mid-epoch state whose world_size,
num_workers or batch_size differ (every other order setting still has to
match), the loader appends ``Segment(world_size, max(num_workers, 1),
batch_size, shuffle_buffer, [[w["samples"] for w in rank_state["workers"]] for
rank_state in every rank's state])`` to the state's ``segments`` and starts the
new stretch at sample 0 of every worker; the stream reads
``plan_after(...)`` instead of split.plan (its windows and window_order keys
unchanged, counted from the new plan's start) and sizes itself with
``worker_counts_after``.  Saves inside the new stretch record ``segments`` plus
the usual per-worker positions, which then refer to the new plan.  The next
epoch starts with ``segments == []``.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from pipeline.shuffle import window_order
from pipeline.split import Slice, epoch_blocks, per_rank, worker_counts, worker_range

_FIELDS = ("world", "workers", "batch_size", "window", "delivered")
_OPTIONAL = ("partial",)


@dataclass(frozen=True)
class Segment:
    """One stretch of an epoch: its topology and what each (rank, worker) delivered in it."""

    world: int
    workers: int
    batch_size: int
    window: int                              # StreamConfig.shuffle_buffer in effect (unused without shuffle)
    delivered: tuple[tuple[int, ...], ...]   # delivered[rank][worker]: samples received, pads included
    partial: tuple[tuple[int, int], ...] = ()  # (epoch position, tokens emitted): documents begun, not finished

    def __post_init__(self):
        for name in ("world", "workers", "batch_size", "window"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"Segment({name}={value!r}): must be an integer >= 1")
            object.__setattr__(self, name, int(value))  # numpy integers would fail json.dumps at save
        rows = _count_rows(self.delivered)
        if len(rows) != self.world or any(len(row) != self.workers for row in rows):
            raise ValueError(f"Segment.delivered: shape {[len(r) for r in rows]}, expected {self.world} rows "
                             f"(ranks) of {self.workers} counts (workers); record one count per (rank, worker)")
        object.__setattr__(self, "delivered", rows)
        object.__setattr__(self, "partial", _partial_pairs(self.partial))

    def to_json(self) -> dict:
        out = {**{name: getattr(self, name) for name in _FIELDS[:-1]},
               "delivered": [list(row) for row in self.delivered]}
        if self.partial:  # only a PackedStream's segments have any
            out["partial"] = [list(pair) for pair in self.partial]
        return out

    @classmethod
    def from_json(cls, entry: dict) -> Segment:
        if not isinstance(entry, dict):
            raise ValueError(f"elastic segment {entry!r:.80}: a {type(entry).__name__}, expected a dict with "
                             f"{', '.join(_FIELDS)}; pass the saved state's segments")
        missing = [name for name in _FIELDS if name not in entry]
        if missing:
            raise ValueError(f"elastic segment {entry!r}: missing {', '.join(missing)}; "
                             f"each entry needs {', '.join(_FIELDS)}")
        unknown = [name for name in entry if name not in _FIELDS + _OPTIONAL]
        if unknown:
            raise ValueError(f"elastic segment: unknown field(s) {', '.join(map(str, unknown))}; valid: "
                             f"{', '.join(_FIELDS + _OPTIONAL)}")
        return cls(**{name: entry[name] for name in _FIELDS + _OPTIONAL if name in entry})


@dataclass(frozen=True)
class MixedSegment:
    """One stretch of a MixedStream's epoch: a Segment per source (pipeline/mix_elastic.py)."""

    sources: tuple[Segment, ...]

    def to_json(self) -> dict:
        return {"sources": [s.to_json() for s in self.sources]}

    @classmethod
    def from_json(cls, entry: dict) -> MixedSegment:
        found = entry.get("sources") if isinstance(entry, dict) else None
        if not isinstance(found, list) or not found or set(entry) != {"sources"}:
            raise ValueError(f"elastic mixture segment {entry!r:.80}: expected {{'sources': [one segment per "
                             f"source]}}; pass the saved state's segments")
        return cls(tuple(Segment.from_json(s) for s in found))


def segment_from_json(entry) -> Segment | MixedSegment:
    """A saved ``segments`` entry: a mixture's (``{"sources": [...]}``) or one stream's."""
    return MixedSegment.from_json(entry) if isinstance(entry, dict) and "sources" in entry else \
        Segment.from_json(entry)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _count_rows(delivered) -> tuple[tuple[int, ...], ...]:
    """``delivered`` as rows of plain ints: lists (or tuples) of integers only, nothing coerced."""
    rows = delivered.tolist() if isinstance(delivered, np.ndarray) else delivered
    if not isinstance(rows, (list, tuple)) or not all(isinstance(row, (list, tuple, np.ndarray)) for row in rows):
        raise ValueError(f"Segment.delivered={delivered!r:.80}: must be a list (ranks) of lists (workers) of "
                         f"integer counts, e.g. [[16, 16], [16, 9]]")
    bad = [d for row in rows for d in row if not _is_int(d)]  # the range is checked per part (_check_count)
    if bad:
        raise ValueError(f"Segment.delivered: count {bad[0]!r} is not an integer; record whole samples "
                         f"delivered per (rank, worker)")
    return tuple(tuple(int(d) for d in row) for row in rows)


def _partial_pairs(partial) -> tuple[tuple[int, int], ...]:
    """``partial`` as (epoch position >= 0, tokens emitted >= 1) pairs of plain ints, nothing coerced."""
    pairs = partial.tolist() if isinstance(partial, np.ndarray) else partial
    ok = isinstance(pairs, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_int(v) for v in p) and p[0] >= 0 and p[1] >= 1
        for p in pairs)
    if not ok:
        raise ValueError(f"Segment.partial={partial!r:.80}: must be a list of [epoch position >= 0, tokens "
                         f"emitted >= 1] pairs; pass the saved state's segments")
    return tuple((int(p), int(t)) for p, t in pairs)


def _check_sizes(shard_sizes) -> None:
    if any(not _is_int(n) or n < 0 for n in shard_sizes):
        raise ValueError(f"shard_sizes={list(shard_sizes)!r:.80}: each must be an integer >= 0 (records per shard, "
                         f"from the manifest)")


def _check_topology(world: int, workers: int) -> None:
    if not _is_int(world) or world < 1 or not _is_int(workers) or workers < 1:
        raise ValueError(f"world={world!r}, workers={workers!r}: both must be integers >= 1")


def _parts(length: int, segment: Segment):
    """(rank, worker, first sequence index, count) of every part of a segment reading ``length``."""
    count = per_rank(length, segment.world)
    for rank in range(segment.world):
        for worker in range(segment.workers):
            lo, hi = worker_range(count, worker, segment.workers)
            yield rank, worker, rank * count + lo, hi - lo


def _check_count(segment: Segment, rank: int, worker: int, done: int, count: int) -> None:
    whole = done % segment.batch_size == 0 or done == count
    if not 0 <= done <= count or not whole:
        raise ValueError(f"elastic segment ({segment.world} ranks, {segment.workers} workers, batch "
                         f"{segment.batch_size}): rank {rank} worker {worker} delivered {done}; valid: a multiple "
                         f"of {segment.batch_size} up to {count}, or {count}; record whole batches per worker")


def _worker_delivered(done: int, count: int, window: int, key: tuple[int, int, int, int],
                      shuffle: bool) -> tuple[int, np.ndarray]:
    """The first ``done`` of a part of ``count`` samples as windows deliver them: a prefix of
    whole windows (its length) and the local indices taken from the window in progress."""
    if not shuffle:
        return done, np.empty(0, np.int64)
    full = done // window * window
    rest = done - full
    if rest == 0:
        return full, np.empty(0, np.int64)
    seed, epoch, rank, worker = key
    order = window_order(min(window, count - full), seed, epoch, rank, worker, full // window)
    return full, full + order[:rest].astype(np.int64)


def delivered_mask(length: int, segment: Segment, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Booleans over the segment's sequence of ``length``: True where a sample was delivered."""
    mask = np.zeros(length, bool)
    for rank, worker, first, count in _parts(length, segment):
        done = segment.delivered[rank][worker]
        _check_count(segment, rank, worker, done, count)
        prefix, taken = _worker_delivered(done, count, segment.window, (seed, epoch, rank, worker), shuffle)
        mask[first:min(first + prefix, length)] = True  # indices >= length are pads: never delivered
        taken = first + taken
        mask[taken[taken < length]] = True
    return mask


def delivered(length: int, segment: Segment, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Indices into the segment's sequence (of ``length``) it delivered, ascending; pads excluded."""
    return np.flatnonzero(delivered_mask(length, segment, seed, epoch, shuffle))


def remaining(total: int, segments: list[Segment], seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Epoch positions of [0, total) no segment delivered, in epoch order (int64)."""
    sequence = np.arange(total, dtype=np.int64)
    for segment in segments:
        sequence = sequence[~delivered_mask(len(sequence), segment, seed, epoch, shuffle)]
    return sequence


def worker_counts_after(total: int, segments: list[Segment], seed: int, epoch: int, shuffle: bool,
                        world: int, workers: int) -> list[int]:
    """Samples each worker of any rank reads in the rest of the epoch (pads included, equal on
    every rank): split.worker_counts over what ``segments`` left."""
    _check_topology(world, workers)
    return worker_counts(len(remaining(total, segments, seed, epoch, shuffle)), world, workers)


def plan_after(shard_sizes: list[int], block_size: int, seed: int, epoch: int, shuffle: bool,
               segments: list[Segment], rank: int, world: int, worker: int, workers: int) -> list[Slice]:
    """The slices (rank, worker) of the new topology reads for the rest of the epoch, in
    order; with ``segments == []`` exactly split.plan."""
    _check_sizes(shard_sizes)
    _check_topology(world, workers)
    if not (0 <= rank < world and 0 <= worker < workers):
        raise ValueError(f"rank {rank}/{world}, worker {worker}/{workers}: out of range")
    if block_size < 1:
        raise ValueError(f"block_size={block_size}: must be >= 1")
    sequence = remaining(sum(shard_sizes), segments, seed, epoch, shuffle)
    length = len(sequence)
    if length == 0:
        return []
    count = per_rank(length, world)
    lo, hi = worker_range(count, worker, workers)
    index = np.arange(rank * count + lo, rank * count + hi, dtype=np.int64)
    return _slices(epoch_blocks(shard_sizes, block_size, seed, epoch, shuffle), sequence[index % length],
                   index >= length)


def _slices(blocks: list[Slice], positions: np.ndarray, pads: np.ndarray) -> list[Slice]:
    """Epoch positions as Slices: one per run of consecutive positions inside one block with
    one pad flag (the cuts split.take makes, so an unchanged epoch gives split.plan's slices)."""
    if len(positions) == 0:
        return []
    starts = np.fromiter(accumulate((len(b) for b in blocks), initial=0), np.int64, len(blocks) + 1)
    block = np.searchsorted(starts, positions, side="right") - 1
    cut = (np.diff(positions) != 1) | (np.diff(block) != 0) | (np.diff(pads) != 0)
    bounds = [0, *(np.flatnonzero(cut) + 1).tolist(), len(positions)]
    out = []
    for begin, end in zip(bounds[:-1], bounds[1:]):
        b = blocks[int(block[begin])]
        first = b.start + int(positions[begin] - starts[block[begin]])
        out.append(Slice(b.shard, first, first + end - begin, bool(pads[begin])))
    return out



def position_at(total: int, earlier: list[Segment], segment: Segment, seed: int, epoch: int, shuffle: bool,
                rank: int, worker: int, index: int) -> int | None:
    """The epoch position of the ``index``-th sample (0-based, in delivery order) that (rank, worker)
    reads in ``segment``, which follows ``earlier``; None for a pad.  Where a PackedStream worker
    stopped inside a document: ``index`` = the documents (items) it finished."""
    return positions_at(total, earlier, segment, seed, epoch, shuffle, [(rank, worker, index)])[0]


def positions_at(total: int, earlier: list[Segment], segment: Segment, seed: int, epoch: int, shuffle: bool,
                 wanted: list[tuple[int, int, int]]) -> list[int | None]:
    """``position_at`` of each (rank, worker, index) in ``wanted``, the sequence computed once."""
    for rank, worker, _ in wanted:
        if not (0 <= rank < segment.world and 0 <= worker < segment.workers):
            raise ValueError(f"rank {rank}/{segment.world}, worker {worker}/{segment.workers}: out of range")
    sequence = remaining(total, earlier, seed, epoch, shuffle)
    parts = {(r, w): (first, count) for r, w, first, count in _parts(len(sequence), segment)}
    out = []
    for rank, worker, index in wanted:
        first, count = parts[(rank, worker)]
        if not 0 <= index < count:
            raise ValueError(f"elastic segment: rank {rank} worker {worker} reads {count} samples, no sample {index}")
        out.append(_sample_at(sequence, segment, (seed, epoch, rank, worker), first, count, index, shuffle))
    return out


def _sample_at(sequence: np.ndarray, segment: Segment, key: tuple, first: int, count: int, index: int,
               shuffle: bool) -> int | None:
    """The epoch position of a part's ``index``-th delivered sample (None: a pad)."""
    local = index
    if shuffle:
        k, rest = divmod(index, segment.window)
        start = k * segment.window
        local = start + int(window_order(min(segment.window, count - start), *key, k)[rest])
    at = first + local
    return int(sequence[at]) if at < len(sequence) else None


def _next_samples(sequence: np.ndarray, segment: Segment, seed: int, epoch: int, shuffle: bool) -> set[int]:
    """The epoch positions each (rank, worker) of ``segment`` was to deliver next (none once its
    part was done, or when that is a pad): the only documents it can have begun."""
    out = set()
    for r, w, first, count in _parts(len(sequence), segment):
        done = segment.delivered[r][w]
        if done < count:
            found = _sample_at(sequence, segment, (seed, epoch, r, w), first, count, done, shuffle)
            if found is not None:
                out.add(found)
    return out


def partials(total: int, segments: list[Segment], seed: int, epoch: int, shuffle: bool) -> dict[int, int]:
    """Epoch position -> tokens already emitted, for the documents begun and not finished by the end of
    ``segments`` (a later segment's count wins; one it finished is gone).  A pair that no worker of its
    segment can have begun (not the sample one of them was to deliver next), or named twice, is a
    ValueError (a damaged state)."""
    found: dict[int, int] = {}
    sequence = np.arange(total, dtype=np.int64)
    for segment in segments:
        begun = _next_samples(sequence, segment, seed, epoch, shuffle) if segment.partial else set()
        sequence = sequence[~delivered_mask(len(sequence), segment, seed, epoch, shuffle)]
        named = [position for position, _ in segment.partial]
        if len(set(named)) < len(named) or not set(named) <= begun:
            wrong = next((p for p in named if p not in begun), named[0])
            where = "is out of range" if not 0 <= wrong < total else "is not one a worker was in the middle of"
            raise ValueError(f"elastic segment: partial document at epoch position {wrong} {where} (epoch of "
                             f"{total}), or is named twice")
        found.update(segment.partial)
    left = set(sequence.tolist()) if found else set()
    return {p: t for p, t in found.items() if p in left}


def records_at(shard_sizes: list[int], block_size: int, seed: int, epoch: int, shuffle: bool,
               positions) -> tuple[np.ndarray, np.ndarray]:
    """(shard, record) of each epoch position: the inverse of the epoch's layout (split.epoch_blocks)."""
    _check_sizes(shard_sizes)
    positions = np.asarray(positions, dtype=np.int64)
    blocks = epoch_blocks(shard_sizes, block_size, seed, epoch, shuffle)
    starts = np.fromiter(accumulate((len(b) for b in blocks), initial=0), np.int64, len(blocks) + 1)
    if len(positions) and (positions.min() < 0 or positions.max() >= starts[-1]):
        raise ValueError(f"epoch positions {positions.tolist()!r:.80}: outside the epoch of {int(starts[-1])}")
    which = np.searchsorted(starts, positions, side="right") - 1
    shard = np.array([blocks[b].shard for b in which.tolist()], dtype=np.int64)
    first = np.array([blocks[b].start for b in which.tolist()], dtype=np.int64)
    return shard, first + positions - starts[which]
