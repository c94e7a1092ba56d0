"""``BatchLoader``: the one loader of every stream — whole batches made in the workers.

    loader = make_loader(ShardStream(url, tokenizer=tok, shuffle=True), batch_size=64, num_workers=2)
    for batch in loader: ...                       # dict of tensors
    state = loader.state_dict()                     # JSON: settings.STATE_KIND
    loader.load_state_dict(state)                   # next iter() continues exactly there
    loader.load_state_dict(state, all_ranks=states) # elastic: saved at another world size / workers /
                                                    # batch size (loader/elastic_state.py)

A stream (ShardStream, PackedStream, MixedStream) offers ``batches(batch_size,
position)``: this worker's numpy batches, each with the worker's position after it
(plain integers, see settings.py).  Workers send ``group`` batches per pipe message
(default ~2048 samples' worth), so both processes pay torch's per-request cost
(queues, wake-ups, pickling: ~0.5 ms) once per message, not per batch; tensors are
made here from the numpy arrays (widened from the narrow dtypes they travel in, message.py).  A custom ``collate_fn`` gets the batch's
items (dicts) in the worker instead and its result is passed on as it is.  In a fresh epoch each
worker's first batch travels alone and the loader puts the first round back in the order of whole
messages (``_FirstRound``), so the first batch waits for one batch, not ``group`` of them.

Order (order.py): each worker's batches delivered and the worker that delivered the
last one fix where torch's round robin continues, so the delivered sequence continues
the uninterrupted one exactly, whether or not the batch counts are known in advance
(packed and mixed streams: they are not).
"""
from __future__ import annotations

import gc
import inspect
import logging
from collections import Counter
from itertools import islice

from torch.utils.data import DataLoader, IterableDataset

from pipeline import settings, world
from pipeline.collate import to_tensors
from pipeline.loader import elastic_state, message, order

log = logging.getLogger(__name__)
STATE_KIND = settings.STATE_KIND
# Samples per worker message: each message costs both processes a fixed ~0.5 ms (queues, wake-ups,
# pickling); at ~2k samples it is noise, and the batches in flight stay a few MB.
SAMPLES_PER_MESSAGE = 2048


def default_group(batch_size: int) -> int:
    return max(1, min(64, round(SAMPLES_PER_MESSAGE / max(batch_size, 1))))


def batch_kwargs(stream, batch_kw: dict, items: bool) -> dict:
    """``stream.batches``'s options: ``batch_kw``, and ids unpadded (collate.RaggedIds: padded once, by
    to_tensors, so the workers neither pad nor pickle the padding) where its ``batches`` offers it."""
    if items or "ragged" not in inspect.signature(stream.batches).parameters:
        return batch_kw
    return {**batch_kw, "ragged": True}


def reset_stats(stream) -> None:
    reset = getattr(stream, "reset_stats", None)
    if callable(reset):
        reset()
    else:
        stream.stats = Counter()


def counters(stream) -> dict:
    found = getattr(stream, "counters", None)
    return found() if callable(found) else dict(getattr(stream, "stats", {}))


class _Messages(IterableDataset):
    """Runs in each DataLoader worker: that worker's batches, ``group`` per message."""

    def __init__(self, loader: "BatchLoader", positions: list[dict], lead: list[bool], lone: bool = False):
        super().__init__()
        self.stream, self.epoch, self.batch_size = loader.dataset, loader._epoch, loader.batch_size
        self.group, self.batch_kw, self.collate_fn = loader.group, loader.batch_kw, loader.collate_fn
        self.positions, self.lead, self.lone = positions, lead, lone

    def __iter__(self):
        worker_id, _ = world.worker()
        self.stream.set_epoch(self.epoch)
        reset_stats(self.stream)  # this worker's counts for this epoch, sent with every message
        start = self.positions[worker_id]
        items = self.collate_fn is not None
        batches = self.stream.batches(self.batch_size, start if start["batches"] else None, items=items,
                                      **batch_kwargs(self.stream, self.batch_kw, items))
        if self.lead[worker_id]:
            yield worker_id, [], [], []
        sizes = order.message_sizes(start["batches"], self.group)
        for k, size in enumerate(_first_alone(sizes) if self.lone else sizes):
            got, counts = [], []
            for pair in islice(batches, size):  # never next() in a generator: StopIteration would leak
                got.append(pair)
                counts.append(counters(self.stream))  # after each batch: a state after it holds exactly these
            if not got:
                if self.lone and k == 1:  # the loader holds this worker's lone first batch until this answer
                    yield worker_id, [], [], [counters(self.stream)]
                return
            if len(got) < size:  # the epoch's end: what was counted after its last batch (retries) too
                counts[-1] = counters(self.stream)
            if self.collate_fn is None:  # ours: big arrays narrowed for the pipe (message.py)
                made = message.pack([b for b, _ in got])
            else:
                made = [self.collate_fn(b) for b, _ in got]
            yield worker_id, made, [p for _, p in got], counts
            if len(got) < size:
                return


def _first_alone(sizes):
    """Message sizes with the first message cut in two: its first batch, then the rest (maybe none)."""
    first = next(sizes)
    yield 1
    yield first - 1
    yield from sizes


class _FirstRound:
    """The first round of a fresh epoch back in the order of whole messages.  torch asks the workers in
    turn, so it delivers every worker's lone first batch, then the rest of each first message; the
    first worker's lone batch goes out at once, any other's waits for the rest of its message (a
    worker that has no more answers with an empty message)."""

    def __init__(self):
        self.answers: Counter = Counter()
        self.held: dict[int, tuple] = {}

    def place(self, worker_id: int, answer: tuple) -> list[tuple]:
        """The answers to deliver now, in order, given this one of worker ``worker_id``."""
        self.answers[worker_id] += 1
        if self.answers[worker_id] > 2:
            return [answer]
        if self.answers[worker_id] == 1:
            if len(self.answers) == 1:
                return [answer]
            self.held[worker_id] = answer
            return []
        return [self.held.pop(worker_id), answer] if worker_id in self.held else [answer]


def _as_is(message):
    return message  # numpy stays numpy over the pipe (see collate.py)


class BatchLoader:
    """Batches of a stream as dicts of tensors; see the module docstring."""

    def __init__(self, stream, batch_size: int, num_workers: int = 0, *, collate_fn=None,
                 pin_memory: bool = False, prefetch_factor: int | None = None, group: int = 32,
                 multiprocessing_context: str | None = None, batch_kw: dict | None = None):
        if batch_size < 1 or num_workers < 0 or group < 1:
            raise ValueError(f"batch_size={batch_size}, num_workers={num_workers}, group={group}: "
                             f"need batch_size >= 1, num_workers >= 0, group >= 1")
        self.dataset, self.collate_fn = stream, collate_fn
        self.batch_size, self.num_workers, self.group = batch_size, num_workers, group
        self.pin_memory, self.prefetch_factor, self.mp_context = pin_memory, prefetch_factor, multiprocessing_context
        self.batch_kw = dict(batch_kw or {})
        self._epoch, self._delivered, self._last = stream.epoch, 0, 0
        self._generation = 0  # of the newest iterator: only its batches move the state
        self._positions = self._fresh()
        self._resume: dict | None = None
        self._stats_done: Counter = Counter()
        self._stats_now: dict[int, dict] = {}

    def _fresh(self) -> list[dict]:
        return [{"batches": 0} for _ in range(max(self.num_workers, 1))]

    # -- sizes -------------------------------------------------------------
    def _counts(self) -> list[int] | None:
        """Batches per worker (per epoch), when the stream knows them before reading."""
        counts = getattr(self.dataset, "batch_counts", None)
        return counts(max(self.num_workers, 1), self.batch_size) if callable(counts) else None

    def __len__(self) -> int:
        counts = self._counts()
        if counts is None:
            raise TypeError(f"{type(self.dataset).__name__}: the number of batches is known only once the epoch "
                            f"is read (packed or mixed streams); iterate the loader to count them")
        return sum(counts)

    # -- state -------------------------------------------------------------
    def _settings(self) -> dict:
        """What decides the batch sequence (see settings.py)."""
        return {"batch_size": self.batch_size, "num_workers": self.num_workers, "group": self.group,
                "collate": type(self.collate_fn).__name__ if self.collate_fn is not None else None,
                **self.batch_kw, **self.dataset.loader_settings()}

    def _segments_json(self, epoch: int) -> list[dict]:
        found = getattr(self.dataset, "segments_json", None)
        return found(epoch) if callable(found) else []

    def state_dict(self) -> dict:
        if self._resume is not None:
            return dict(self._resume)
        return settings.make_state(self._epoch, self._delivered, [dict(p) for p in self._positions], self._last,
                                   self._settings(), self.stats(), self._segments_json(self._epoch))

    def load_state_dict(self, state: dict, all_ranks: list[dict] | None = None) -> None:
        """Continue where ``state`` stopped.  A mid-epoch state saved at another world size, number of
        workers or batch size (a ShardStream only) needs ``all_ranks``: every old rank's state, in rank
        order (``state`` is any of them); the rest of the epoch is then spread over this topology.  With
        ``all_ranks`` at another world size the new ranks' stats sum to the old ranks' (elastic_state.stats_after)."""
        what = f"loader state for {getattr(self.dataset, 'where', type(self.dataset).__name__)}"
        now = self._settings()
        if elastic_state.topology_changed(state, now, all_ranks):
            elastic_state.refuse_other_changes(what, state, now, self.dataset)
            self._load_elastic(what, state, all_ranks, now)
            return
        before = (self.dataset.epoch, list(getattr(self.dataset, "segments", list)()))
        try:
            self._saved_segments(what, state)
            self._check_state(what, state, now)
            stats = elastic_state.stats_after(what, state, all_ranks, now)  # at an epoch boundary: another world
        except BaseException:  # a refused state leaves the stream as it was
            self.dataset.set_epoch(before[0])
            if callable(getattr(self.dataset, "set_segments", None)):
                self.dataset.set_segments(*before)
            raise
        self._resume = {**state, "stats": dict(stats)}
        self._stats_done = Counter(stats)
        self._stats_now = {}

    def resumes_elastically(self, state: dict, all_ranks: list[dict] | None = None) -> bool:
        """Whether ``load_state_dict(state, all_ranks)`` is an elastic resume (another topology mid-epoch)."""
        return elastic_state.topology_changed(state, self._settings(), all_ranks)

    def _saved_segments(self, what: str, state) -> None:
        """The elastic segments a state of this topology carries, set on the stream (its counts use them)."""
        entries = state.get("segments", []) if isinstance(state, dict) else []
        setter = getattr(self.dataset, "set_segments", None)
        if callable(setter) and isinstance(entries, list) and isinstance(state.get("epoch"), int):
            setter(state["epoch"], elastic_state.parse_segments(what, entries))

    def _check_state(self, what: str, state: dict, now: dict) -> None:
        self.dataset.set_epoch(state["epoch"] if isinstance(state, dict) and
                               isinstance(state.get("epoch"), int) else self.dataset.epoch)
        counts = self._counts()
        most = sum(counts) if counts is not None else None
        epoch, batches, positions, _ = settings.read_state(what, state, now, most)
        workers = max(self.num_workers, 1)
        for worker_id, position in enumerate(positions):
            if position["batches"]:  # a worker with none delivered starts at its beginning
                self.dataset.check_position(what, position, worker_id, workers, self.batch_size)
        self.dataset.set_epoch(epoch)

    def _load_elastic(self, what: str, state: dict, all_ranks, now: dict) -> None:
        segments = elastic_state.segments_after(what, state, all_ranks, self.dataset)
        epoch = int(state["epoch"])
        self.dataset.set_segments(epoch, segments)
        self.dataset.set_epoch(epoch)
        stats = elastic_state.stats_after(what, state, all_ranks, now)  # the old ranks' sum kept over the new
        self._resume = settings.make_state(epoch, 0, self._fresh(), 0, now, stats, [s.to_json() for s in segments])
        self._stats_done = Counter(stats)
        self._stats_now = {}

    def stats(self) -> dict:
        """Counters of the stream (retries, skipped_shards, skipped_samples, packing), summed over workers,
        as of the last batch the newest iterator delivered."""
        total = Counter(self._stats_done)
        for counts in self._stats_now.values():
            total.update(counts)
        return dict(total)

    # -- iteration ---------------------------------------------------------
    def __iter__(self):
        # Not a generator: the position is set when the iterator is made, so a state taken
        # right after iter() names this epoch, not the previous one.
        state, self._resume = self._resume, None
        if state is not None and int(state["epoch"]) != self.dataset.epoch:
            log.warning("loader state is for epoch %s but the stream was set to epoch %d after it was "
                        "loaded; epoch %d starts from its beginning", state["epoch"], self.dataset.epoch,
                        self.dataset.epoch)
            state = None
        pending = getattr(self.dataset, "refuse_own_state", None)
        if callable(pending):
            pending()
        self._fold_stats()
        self._generation += 1  # an older iterator still alive goes on, but moves nothing of this loader
        if self.num_workers == 0:
            reset_stats(self.dataset)
        self._epoch = self.dataset.epoch
        self._delivered = int(state["batches"]) if state is not None else 0
        self._positions = [dict(p) for p in state["workers"]] if state is not None and state["batches"] \
            else self._fresh()
        self._last = int(state.get("last", 0)) if state is not None else 0
        if self.num_workers == 0:
            return self._local(self._generation)
        return self._from_workers(self._generation)

    def _fold_stats(self) -> None:
        for counts in self._stats_now.values():
            self._stats_done.update(counts)
        self._stats_now = {}

    def _finish(self, batch):
        return to_tensors(batch, self.pin_memory) if self.collate_fn is None else batch

    def _delivered_one(self, generation: int, worker_id: int, position: dict, stats: dict) -> bool:
        """Move the state past one batch of iterator ``generation``; False (nothing moved) when a newer
        iterator has been made since: like torch's, each iterator runs on its own, and the state
        follows the newest one."""
        if generation != self._generation:
            return False
        self._positions[worker_id] = {"batches": self._positions[worker_id]["batches"] + 1, **position}
        self._last = worker_id
        self._delivered += 1
        self._stats_now[worker_id] = stats
        return True

    def _local(self, generation: int):
        stream = self.dataset
        items = self.collate_fn is not None
        start = self._positions[0] if self._positions[0]["batches"] else None
        batches = stream.batches(self.batch_size, start, items=items, **batch_kwargs(stream, self.batch_kw, items))
        mine: Counter = Counter()  # this iterator's counts: an older one alive shares the stream's
        while True:
            before = counters(stream)
            got = next(batches, None)
            after = counters(stream)
            mine.update({k: v - before.get(k, 0) for k, v in after.items()})
            if got is None:
                break
            self._delivered_one(generation, 0, got[1], dict(mine))
            yield self._finish(got[0] if not items else self.collate_fn(got[0]))
        if generation == self._generation:
            self._stats_now[0] = dict(mine)  # what the epoch's end counted (retries)
            self._check_end()

    def _check_end(self) -> None:
        counts = self._counts()
        if counts is not None and self._delivered != sum(counts):  # ranks must take equal steps
            raise RuntimeError(f"{getattr(self.dataset, 'where', '')}: the epoch ended after {self._delivered} of "
                               f"{sum(counts)} batches; report this bug")

    def _from_workers(self, generation: int):
        nxt = order.next_worker([p["batches"] for p in self._positions], self._last, self.group, self._delivered)
        lead = order.leads(self.num_workers, nxt)
        lone = self._delivered == 0 and self.group > 1  # a fresh epoch: see _FirstRound
        messages = _Messages(self, [dict(p) for p in self._positions], lead, lone)
        kwargs = {"prefetch_factor": self.prefetch_factor or 2, "multiprocessing_context": self.mp_context}
        loader = DataLoader(messages, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
                            **kwargs)
        # Objects inherited by forked workers stay shared until a worker's first full GC
        # touches them (copy-on-write); frozen while the workers fork, they stay untouched.
        gc.freeze()
        try:
            it = iter(loader)
        finally:
            gc.unfreeze()
        return self._deliver(it, generation, _FirstRound() if lone else None)

    def _deliver(self, it, generation: int, first_round: "_FirstRound | None"):
        for worker_id, *answer in it:
            for made, positions, stats in first_round.place(worker_id, answer) if first_round else [answer]:
                if not made and stats and generation == self._generation:  # a worker's end after a lone batch
                    self._stats_now[worker_id] = stats[-1]
                for batch, position, counts in zip(made, positions, stats):
                    self._delivered_one(generation, worker_id, position, counts)
                    yield self._finish(batch)
        if generation == self._generation:
            self._check_end()
