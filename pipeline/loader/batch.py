"""``BatchLoader``: the fast loader of a ShardStream — whole batches made in the workers.

    loader = make_loader(ShardStream(url, tokenizer=tok, shuffle=True), batch_size=64, num_workers=2)
    for batch in loader: ...                       # dict of tensors + sample_id list
    state = loader.state_dict()                     # {"epoch", "batches", ...}: JSON
    loader.load_state_dict(state)                   # next iter() continues exactly there

Workers run ``ShardStream.batches`` (columnar: read, permute, tokenize and pad
a few hundred samples per numpy call) and send ``group`` batches per pipe
message (default ~2048 samples' worth), so both processes pay torch's
per-request cost (queues, wake-ups, pickling: ~0.5 ms) once per message, not
per batch; tensors are made here, zero-copy from the numpy arrays.  The state is the count of batches
delivered: with the per-worker batch counts (split.py) and the message order
(order.py) it fixes where every worker resumes — no replay, nothing read
before the resume point.  The state also records every setting that decides
the batches (settings.py); a mid-epoch state under other values, or a count
out of range, is refused in ``load_state_dict``.  A set with texts only
(no labels, no token ids) gives batches of ``text``, ``sample_id``, ``is_pad``.
"""
from __future__ import annotations

import gc
import logging
from collections import Counter
from itertools import islice

from torch.utils.data import DataLoader, IterableDataset

from pipeline import settings, split, world
from pipeline.collate import to_tensors
from pipeline.loader import order

log = logging.getLogger(__name__)
STATE_KIND = "shardstream.batches/1"
# Samples per worker message: each message costs both processes a fixed ~0.5 ms (queues, wake-ups,
# pickling); at ~2k samples it is noise, and the batches in flight stay a few MB.
SAMPLES_PER_MESSAGE = 2048


def default_group(batch_size: int) -> int:
    return max(1, min(64, round(SAMPLES_PER_MESSAGE / max(batch_size, 1))))


class _Messages(IterableDataset):
    """Runs in each DataLoader worker: that worker's batches, ``group`` per message."""

    def __init__(self, stream, epoch: int, batch_size: int, counts: list[int], starts: list[int],
                 lead: list[bool], group: int, batch_kw: dict):
        super().__init__()
        self.stream, self.epoch, self.batch_size = stream, epoch, batch_size
        self.counts, self.starts, self.lead, self.group, self.batch_kw = counts, starts, lead, group, batch_kw

    def __iter__(self):
        worker_id, _ = world.worker()
        self.stream.set_epoch(self.epoch)
        self.stream.stats = Counter()  # this worker's counts for this epoch, sent with every message
        start = self.starts[worker_id]
        batches = self.stream.batches(self.batch_size, start, **self.batch_kw)
        for size in order.messages(start, self.counts[worker_id], self.group, self.lead[worker_id]):
            group = list(islice(batches, size))  # never next() in a generator: StopIteration would leak
            if len(group) < size:
                raise RuntimeError(f"worker {worker_id}: the stream ended {size - len(group)} batch(es) short of "
                                   f"the {self.counts[worker_id]} planned; report this bug")
            yield worker_id, group, self.stream.state_dict()["stats"]
        for _ in batches:  # runs the stream's end-of-epoch report; yields nothing
            raise RuntimeError(f"worker {worker_id}: more batches than planned; report this bug")


def _as_is(message):
    return message  # numpy stays numpy over the pipe (see collate.py)


class BatchLoader:
    """Padded batches of a ShardStream as dicts of tensors; see the module docstring."""

    def __init__(self, stream, batch_size: int, num_workers: int = 0, *, pad_id: int = 0,
                 pad_to_multiple_of: int | None = None, pin_memory: bool = False,
                 prefetch_factor: int | None = None, group: int = 32,
                 multiprocessing_context: str | None = None):
        if batch_size < 1 or num_workers < 0 or group < 1:
            raise ValueError(f"batch_size={batch_size}, num_workers={num_workers}, group={group}: "
                             f"need batch_size >= 1, num_workers >= 0, group >= 1")
        self.dataset = stream
        self.batch_size, self.num_workers, self.group = batch_size, num_workers, group
        self.pin_memory, self.prefetch_factor, self.mp_context = pin_memory, prefetch_factor, multiprocessing_context
        self.batch_kw = {"pad_id": pad_id, "pad_to_multiple_of": pad_to_multiple_of}
        self._epoch, self._delivered = stream.epoch, 0
        self._resume: dict | None = None
        self._stats_done: Counter = Counter()
        self._stats_now: dict[int, dict] = {}

    # -- sizes -------------------------------------------------------------
    def _counts(self) -> list[int]:
        """Batches per worker (per epoch, identical on every rank)."""
        workers = max(self.num_workers, 1)
        samples = split.worker_counts(self.dataset.manifest.num_records, self.dataset.world.world_size, workers)
        return [-(-n // self.batch_size) for n in samples]

    def __len__(self) -> int:
        return sum(self._counts())

    # -- state -------------------------------------------------------------
    def _settings(self) -> dict:
        """What decides the batch sequence (see settings.py); ``num_records`` is written for readers only."""
        return {"batch_size": self.batch_size, "num_workers": self.num_workers, "group": self.group,
                **self.dataset.order_settings()}

    def state_dict(self) -> dict:
        if self._resume is not None:
            return dict(self._resume)
        return {"kind": STATE_KIND, "epoch": self._epoch, "batches": self._delivered, **self._settings(),
                "num_records": self.dataset.manifest.num_records, "stats": self.stats()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
            kind = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise settings.ResumeError(f"loader state of kind {kind!r}; this loader reads {STATE_KIND!r} "
                                       f"(saved by make_loader over a ShardStream)")
        what = f"loader state for {self.dataset.where}"
        epoch = settings.count(what, "epoch", settings.entry(what, state, "epoch"))
        batches = settings.count(what, "batches", settings.entry(what, state, "batches"))
        settings.check(what, state, self._settings(), mid_epoch=batches > 0)
        settings.count(what, "batches", batches, len(self))  # same settings: the same epoch length
        stats = state.get("stats", {})
        if not isinstance(stats, dict):
            raise settings.ResumeError(f"{what}: stats={stats!r} is not a dict of counts; pass loader.state_dict()")
        self._resume = dict(state)
        self.dataset.set_epoch(epoch)
        self._stats_done = Counter(stats)
        self._stats_now = {}

    def stats(self) -> dict:
        """Counters of the stream (retries, skipped_shards, skipped_samples), summed over workers."""
        if self.num_workers == 0:
            return dict(self._stats_done + Counter(self.dataset.stats))
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
        self.dataset.drop_sample_state()
        self._fold_stats()
        self._epoch = self.dataset.epoch
        self._delivered = int(state["batches"]) if state is not None else 0
        if self.num_workers == 0:
            return self._local()
        return self._from_workers()

    def _fold_stats(self) -> None:
        for counts in self._stats_now.values():
            self._stats_done.update(counts)
        self._stats_now = {}

    def _local(self):
        stream = self.dataset
        for batch in stream.batches(self.batch_size, self._delivered, **self.batch_kw):
            self._delivered += 1
            yield to_tensors(batch, self.pin_memory)
        if self._delivered != len(self):  # ranks must take equal steps: never end short unnoticed
            raise RuntimeError(f"{stream.where}: the epoch ended after {self._delivered} of {len(self)} batches; "
                               f"report this bug")

    def _from_workers(self):
        counts = self._counts()
        starts, lead = order.resume_point(counts, self.group, self._delivered)
        messages = _Messages(self.dataset, self._epoch, self.batch_size, counts, starts, lead, self.group,
                             self.batch_kw)
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
        return self._deliver(it)

    def _deliver(self, it):
        for worker_id, group, stats in it:
            self._stats_now[worker_id] = stats
            for batch in group:
                self._delivered += 1
                yield to_tensors(batch, self.pin_memory)
