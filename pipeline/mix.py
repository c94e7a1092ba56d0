"""Weighted mixing of several streams: each item comes from source i with probability ∝ weight_i.

    from pipeline import ShardStream
    from pipeline.mix import MixedStream, open_mixture, parse_mixture
    mixed = MixedStream([(ShardStream("a/"), 0.7), (ShardStream("b/"), 0.3)], seed=1, stop="first_exhausted")
    mixed = open_mixture("a/:0.7,b/:0.3", lambda url: ShardStream(url, tokenizer=tok), seed=1)

Stopping rules (``stop=``), for one epoch of one DataLoader worker:
- ``"first_exhausted"``: the stream ends at the first draw that picks a source with
  nothing left; proportions hold to the end, the other sources are cut short.
- ``"cycle"``: a source that runs out starts again (same epoch order) until every
  source has run out at least once; the stream ends at the draw that finds the last
  never-exhausted source empty.  Smaller sources repeat; the largest (relative to
  its weight) is seen once.  A source with no items at all in this worker is dropped
  (counted in ``stats["empty_sources"]``).
- ``"drain"``: a source that runs out is dropped and the others' weights renormalised;
  the stream ends when all are empty.  Every item exactly once; proportions hold only
  until the first source is out.

Dict items gain ``"source"``: the index of the stream they came from (for logging
the realised mixture and for audits, since sample ids repeat across shard sets).
``counters()`` sums the sources' counts; ``counts_mark()`` is a cheap value that moves whenever
they may have, so a packed mixture builds them only then, not after every item (pack/read.py).

Determinism and resume: draw k of an epoch is a fixed uniform number derived from
(seed, epoch, worker, k) (numpy PCG64 in chunks of 4096), so the position is just each
source's position, the draw count and which sources were cycled or dropped (plain
integers; the state around it is settings.py's one kind).  It also
records the seed, stop rule, weights, worker layout and each source's data identity,
and a mid-epoch state resumed under other values is refused (settings.py).

Equal steps per rank: the draws do not depend on the rank.  Sources that yield the
same number of items on every rank (ShardStream does, per worker too) therefore run
out at the same draw on every rank, and every rank takes the same number of steps.
Sources whose length differs per rank (PackedStream) need ``pack.lockstep``.
"""
from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from itertools import islice
from typing import Callable, Iterator

from torch.utils.data import IterableDataset

import shards
from pipeline import mix_elastic, settings, world
from pipeline.mix_draws import STOP_RULES, Draws, Table, choose, parse_mixture  # noqa: F401  (choose, parse_mixture: public here too)
from pipeline.pack.inner import check_item_position

log = logging.getLogger(__name__)
_END = object()


def open_mixture(text: str, make_stream: Callable[[str], object], *, seed: int = 0,
                 stop: str = "first_exhausted"):
    """One stream per source of ``text`` (see :func:`parse_mixture`); a single source is
    returned as it is, several as a :class:`MixedStream`."""
    sources = [(make_stream(url), weight) for url, weight in parse_mixture(text)]
    if len(sources) == 1:
        return sources[0][0]
    return MixedStream(sources, seed=seed, stop=stop)


class MixedStream(IterableDataset):
    """Items from several streams in proportion to weights; see the module docstring.

    ``sources``: ``[(stream, weight), ...]``; each stream has ``__iter__``,
    ``state_dict``/``load_state_dict`` and ``set_epoch`` (ShardStream, PackedStream, ...).
    """

    POSITION_COUNT = "items"  # the item count of a position (pack/inner.py)

    def __init__(self, sources, *, seed: int = 0, stop: str = "first_exhausted"):
        super().__init__()
        sources = list(sources)
        if not sources:
            raise ValueError("MixedStream needs at least one (stream, weight) source")
        if stop not in STOP_RULES:
            raise ValueError(f"stop={stop!r}; valid: {', '.join(STOP_RULES)}")
        if int(seed) < 0:
            raise ValueError(f"seed={seed}: must be >= 0")
        for i, (_, w) in enumerate(sources):
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
                raise ValueError(f"source {i}: weight {w!r}; weights must be positive finite numbers")
        self.streams = [s for s, _ in sources]
        self.weights = [float(w) for _, w in sources]
        self.seed, self.stop = int(seed), stop
        self.epoch = 0
        self.stats: Counter = Counter()
        self._check_compatible()
        self._resume: dict | None = None
        self._elastic: tuple[int, list] = (-1, [])  # (epoch, MixedSegments before this stretch)
        # counts_mark(): the sources drawn since its last call, their marks then, and how often one moved
        self._drawn, self._marks, self._counted = set(range(len(self.streams))), [None] * len(self.streams), 0
        self._reset()

    def _check_compatible(self) -> None:
        toks = [getattr(s, "tokenizer", None) for s in self.streams]
        prints = {shards.fingerprint(t) for t in toks if t is not None}
        if len(prints) > 1:
            raise ValueError("MixedStream sources use different tokenizers; give every source the same one")
        labels = {tuple(n) if n else None for n in (getattr(s, "label_names", None) for s in self.streams)}
        if len(labels) > 1:
            raise ValueError(f"MixedStream sources have different label names: {sorted(map(str, labels))}; "
                             f"rebuild them with the same --label-names")

    @property
    def tokenizer(self):
        return next((s.tokenizer for s in self.streams if getattr(s, "tokenizer", None) is not None), None)

    @property
    def label_names(self):
        return getattr(self.streams[0], "label_names", None)

    @property
    def world(self):
        return getattr(self.streams[0], "world", None)

    def collator(self):
        """The first source's collator (PackedStream: BlockCollator), else the padding Collator."""
        first = self.streams[0]
        if hasattr(first, "collator"):
            return first.collator()
        from pipeline.collate import Collator
        from shards import special_ids
        return Collator(pad_id=special_ids(self.tokenizer)["pad"] if self.tokenizer is not None else 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for s in self.streams:
            s.set_epoch(self.epoch)

    # -- positions and state (settings.py) --------------------------------------------------
    def _reset(self, position: dict | None = None) -> None:
        n = len(self.streams)
        self._draws = int(position["draws"]) if position else 0
        self._items = int(position.get("items", 0)) if position else 0
        self._ended = bool(position.get("ended", False)) if position else False
        self._passes = list(position["passes"]) if position else [0] * n
        self._dropped = list(position["dropped"]) if position else [False] * n
        sources = position["sources"] if position else [None] * n
        # A source's own position is stale until it yields in this pass: None until then.
        self._started = [s is not None for s in sources]
        # A resumed source's position until it yields again (a lazy source reports a stale one before).
        self._held = list(sources)
        if self._ended:  # nothing is read: a seek left pending would start the next epoch mid-source
            return
        for stream, sub in zip(self.streams, sources):
            if sub is not None:
                stream.seek(sub)

    def loader_settings(self) -> dict:
        """What decides the draws and which source each comes from, and each source's order."""
        out = {"seed": self.seed, "stop": self.stop, "weights": self.weights,
               "identities": [_identity(s) for s in self.streams]}
        for i, source in enumerate(self.streams):  # flat, so that a message names the one that changed
            found = getattr(source, "loader_settings", None)
            for key, value in (found() if callable(found) else {}).items():
                if key != "identity":  # in identities
                    out[f"sources[{i}].{key}"] = value
        return out

    def reset_stats(self) -> None:
        self.stats = Counter()
        self._drawn.update(range(len(self.streams)))  # their counts change here, not as they yield
        for s in self.streams:
            getattr(s, "reset_stats", lambda: None)()

    def counters(self) -> dict:
        stats = Counter(self.stats)
        for s in self.streams:
            found = getattr(s, "counters", None)
            stats.update(found() if callable(found) else getattr(s, "stats", {}))
        return dict(stats)

    def counts_mark(self) -> tuple | None:
        """A cheap value that moves whenever ``counters()`` may have since the last call (None: a source's counts
        cannot be watched), so that a reader needing them after every item (pack/read.py) builds them only then.
        A source counts as it yields, so only those drawn since the last call are looked at."""
        watched = self._watched
        if watched is None:
            return None
        for i in self._drawn:
            source = self.streams[i]
            mark = source.counts_mark() if watched[i] else _stats_mark(source.stats)
            if mark is None:
                return None
            if mark != self._marks[i]:
                self._marks[i], self._counted = mark, self._counted + 1
        self._drawn.clear()
        return shards.retry_count(), self._counted, *_stats_mark(self.stats)

    @functools.cached_property
    def _watched(self) -> tuple[bool, ...] | None:
        """Per source: True if it has ``counts_mark()``, False for a ShardStream (``read_chunks``), whose
        ``stats`` Counter is all it counts (skips as it yields them; retries, in every mark, when asked);
        None when a source is neither (its counts may be computed when asked: PackedStream)."""
        kinds = []
        for source in self.streams:
            if callable(getattr(source, "counts_mark", None)):
                kinds.append(True)
            elif callable(getattr(source, "read_chunks", None)) and isinstance(getattr(source, "__dict__", {}).get("stats"), Counter):
                kinds.append(False)
            else:
                return None
        return tuple(kinds)

    def position(self) -> dict:
        """After the last item: draws and items so far, each source's pass count, whether it was
        dropped, and its own position (None until it yields in this pass)."""
        sources = [held if held is not None else s.position() if started else None
                   for s, started, held in zip(self.streams, self._started, self._held)]
        return {"draws": self._draws, "items": self._items, "ended": self._ended, "passes": list(self._passes),
                "dropped": list(self._dropped), "sources": sources}

    def seek(self, position: dict | None) -> None:
        self._resume = dict(position) if position else None

    def check_position(self, what: str, position: dict, worker_id: int = 0, workers: int = 1,
                       batch_size: int = 1) -> None:
        """A position after ``position["batches"]`` batches (> 0) of ``batch_size`` items: counters,
        flags, and each source's own position checked by that source."""
        self.check_form(what, position, worker_id, batch_size)
        for i, (stream, sub) in enumerate(zip(self.streams, position["sources"])):
            if sub is not None:  # None: the source has not yielded in this pass (it starts afresh)
                check_item_position(stream, f"{what}: sources[{i}]", sub, worker_id, workers)

    def check_form(self, what: str, position: dict, worker_id: int = 0, batch_size: int = 1) -> None:
        """Counters, flags and one entry per source, whatever the topology."""
        draws = settings.count(what, "draws", position.get("draws"))
        self._check_items(what, position, draws, batch_size)
        n = len(self.streams)
        for key in ("passes", "dropped", "sources"):
            value = settings.entry(what, position, key)
            if not isinstance(value, list) or len(value) != n:
                raise settings.ResumeError(f"{what}: {key} must list one entry per source ({n}), got {value!r}; "
                                           f"pass the state saved by this mixture")
        for count in position["passes"]:
            settings.count(what, "passes", count)
        if not all(isinstance(d, bool) for d in position["dropped"]):
            raise settings.ResumeError(f"{what}: dropped={position['dropped']!r} must be true/false per source; "
                                       f"pass the state saved by this mixture")

    @staticmethod
    def _check_items(what: str, position: dict, draws: int, batch_size: int) -> None:
        """``ended`` a bool; ``items`` (absent in older states) a count of whole batches, one per draw at most."""
        ended = position.get("ended", False)
        if not isinstance(ended, bool):
            raise settings.ResumeError(f"{what}: ended={ended!r} must be true or false (whether the stopping rule "
                                       f"ended the epoch); the state is damaged: pass the state saved by this mixture")
        if "items" not in position:
            return
        items = settings.count(what, "items", position["items"], draws)
        batches = position.get("batches")
        if isinstance(batches, int) and not (batches - 1) * batch_size < items <= batches * batch_size:
            raise settings.ResumeError(f"{what}: items={items} in {batches} batches of {batch_size}; the state is "
                                       f"damaged: pass the state saved by this mixture")

    def state_dict(self) -> dict:
        """The per-item iterator's state: a one-worker state of batch size 1 (settings.py)."""
        worker_id, workers = world.worker()
        now = {**self.loader_settings(), "batch_size": 1, "worker": worker_id, "num_workers": workers}
        return settings.make_state(self.epoch, self._items, [{"batches": self._items, **self.position()}], 0, now,
                                   self.counters())

    def load_state_dict(self, state: dict) -> None:
        what = "mixed state"
        worker_id, workers = world.worker()
        now = {**self.loader_settings(), "batch_size": 1, "worker": worker_id, "num_workers": workers}
        epoch, items, positions, _ = settings.read_state(what, state, now)
        if items:
            self.check_position(what, positions[0], worker_id, workers)
        self.set_epoch(epoch)
        self.seek({k: v for k, v in positions[0].items() if k != "batches"} if items else None)

    # -- elastic resume (mix_elastic.py): a Segment per source ---------------------------
    @property
    def elastic_base(self):
        """Itself when every source can follow an elastic resume (ShardStreams), else None."""
        ok = all(callable(getattr(s, "read_chunks", None)) and callable(getattr(s, "set_segments", None))
                 for s in self.streams)
        return self if ok else None

    def elastic_segment(self, what: str, saved: dict, epoch: int, earlier: list, positions: list):
        return mix_elastic.mixed_segment(self, what, saved, epoch, earlier, positions)

    def segments(self) -> list:
        epoch, segments = self._elastic
        return segments if epoch == self.epoch else []

    def segments_json(self, epoch: int) -> list[dict]:
        epoch_of, segments = self._elastic
        return [s.to_json() for s in segments] if epoch_of == epoch else []

    def set_segments(self, epoch: int, segments: list) -> None:
        """Epoch ``epoch`` continues after ``segments``: each source reads what its segments left."""
        if segments and self.elastic_base is None:
            raise settings.ResumeError("MixedStream: an elastic resume needs ShardStream sources; resume with the "
                                       "saved world size, workers and batch size")
        mix_elastic.check_segments("MixedStream", segments, len(self.streams))
        for i, source in enumerate(self.streams):
            if callable(getattr(source, "set_segments", None)):
                source.set_segments(epoch, [m.sources[i] for m in segments])
        self._elastic = (int(epoch), list(segments))

    # -- iteration -------------------------------------------------------------
    def batches(self, batch_size: int, position: dict | None = None, *, items: bool = False, pad_id: int = 0,
                pad_to_multiple_of: int | None = None) -> Iterator[tuple]:
        """This worker's items in batches (the first source's collator: numpy, or tensors that
        cross the pipe as numpy), each with the position after it."""
        self.seek({k: v for k, v in position.items() if k != "batches"} if position and position["batches"] else None)
        collate = self._batch_collator(pad_id, pad_to_multiple_of)
        it = iter(self)
        while got := list(islice(it, batch_size)):
            yield (got if items else collate(got)), self.position()

    def _batch_collator(self, pad_id: int, multiple: int | None):
        first = self.streams[0]
        if hasattr(first, "collator"):
            return first.collator()
        from pipeline.collate import Collator
        return Collator(pad_id=pad_id, pad_to_multiple_of=multiple, as_numpy=True)

    def batch_options(self, pad_id: int, pad_to_multiple_of: int | None) -> dict:
        return {"pad_id": pad_id, "pad_to_multiple_of": pad_to_multiple_of}

    def __iter__(self) -> Iterator:
        # Not a generator itself, so that state_dict() is right before the first next().
        position, self._resume = self._resume, None
        self._reset(position)
        worker_id, _ = world.worker()
        return self._mix(Draws(self.seed, self.epoch, worker_id, self._draws))

    def _mix(self, draws: Draws) -> Iterator:
        if self._ended:  # the stopping rule ended this epoch before the position was taken
            return
        iters = [None if dropped else iter(s) for s, dropped in zip(self.streams, self._dropped)]
        table = None
        while True:
            live = tuple(not d for d in self._dropped)
            if not any(live):
                self._ended = True
                return
            if table is None or table.live != live:
                table = Table(self.weights, live)
            i = table.pick(draws.next())
            self._draws = draws.count
            self._drawn.add(i)
            item = next(iters[i], _END)
            if item is _END:
                item = self._exhausted(i, iters)
                if item is None:
                    self._ended = True
                    return
                if item is _END:
                    continue  # source dropped: draw again
            self._started[i], self._held[i] = True, None
            self._items += 1
            yield {**item, "source": i} if isinstance(item, dict) else item

    def _exhausted(self, i: int, iters: list):
        """Apply the stopping rule to source i, just found empty: an item, _END (draw again) or None (stop)."""
        self._passes[i] += 1
        self._started[i], self._held[i] = False, None
        if self.stop == "first_exhausted":
            return None
        if self.stop == "drain":
            self._dropped[i] = True
            return _END
        if all(p >= 1 for p in self._passes):  # cycle: every source has been through once
            return None
        iters[i] = iter(self.streams[i])
        item = next(iters[i], _END)
        if item is _END:
            log.warning("mixture source %d has no items in this worker; dropped from the cycle", i)
            self.stats["empty_sources"] += 1
            self._dropped[i] = True
        return item


def _stats_mark(stats: Counter) -> tuple:
    """Moves whenever ``stats`` does: counts only grow, a name counted 0 is a new key, a reset a new Counter."""
    return id(stats), len(stats), stats.total()


def _identity(stream) -> str | None:
    """The data a source reads (Manifest.identity), through a PackedStream too; None if unknown."""
    found = getattr(stream, "identity", None)
    return found if found is not None else getattr(getattr(stream, "stream", None), "identity", None)
