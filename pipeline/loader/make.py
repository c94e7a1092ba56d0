"""``make_loader``: a resumable DataLoader over a ShardStream (or a stream built on one).

A plain ``ShardStream`` with the default collate gets ``BatchLoader``
(batch_loader.py): whole padded batches made in the workers, several per
pipe message, state = batches delivered.  Anything else (packed or mixed
streams, a custom ``collate_fn``) gets ``ShardLoader``, torchdata's
``StatefulDataLoader``: ``loader.state_dict()`` holds every worker's stream
state and which worker is next.  Either way ``load_state_dict`` in a fresh
process continues the exact batch sequence, with ``num_workers`` 0 or more,
and refuses a mid-epoch state taken under other settings (settings.py).
"""
from __future__ import annotations

import gc
import warnings
from collections import Counter

from torchdata.stateful_dataloader import StatefulDataLoader

from pipeline import settings
from pipeline.collate import Collator, to_tensors
from pipeline.loader.batch import BatchLoader, default_group
from pipeline.stream import ShardStream
from shards import special_ids

SETTINGS_KEY = "shardstream_settings"  # our part of a StatefulDataLoader state (torchdata ignores it)


class ShardLoader(StatefulDataLoader):
    """A StatefulDataLoader whose workers send numpy batches, made tensors here (see collate.py)."""

    def __init__(self, *args, tensors_in_main: bool = False, pin_arrays: bool = False, **kwargs):
        # torchdata 0.11 calls torch.set_vital, a no-op that torch >= 2.9 flags as deprecated on
        # every loader; the user can do nothing about it, so only that warning of this call is
        # silenced (any other warning of the constructor still shows).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
            super().__init__(*args, **kwargs)
        self._tensors_in_main, self._pin_arrays = tensors_in_main, pin_arrays

    def __iter__(self):
        # Objects inherited by forked workers stay shared until a worker's first full GC
        # touches them (copy-on-write); frozen while the workers fork, they stay untouched
        # there.  The parent unfreezes at once, so its own garbage is still collected.
        if self.num_workers > 0:
            gc.freeze()
        try:
            batches = super().__iter__()
        finally:
            if self.num_workers > 0:
                gc.unfreeze()
        if not self._tensors_in_main:
            return batches
        return (to_tensors(b, self._pin_arrays) if isinstance(b, dict) else b for b in batches)

    # -- state: torchdata's, plus the settings it does not check (see settings.py) --------------
    def resume_settings(self) -> dict:
        return {"batch_size": self.batch_size, "num_workers": self.num_workers,
                "identity": data_identity(self.dataset)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), SETTINGS_KEY: self.resume_settings()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise settings.ResumeError(f"loader state is a {type(state).__name__}; pass loader.state_dict() output")
        state = dict(state)
        saved = state.pop(SETTINGS_KEY, {})
        if not state:  # torchdata's "nothing to resume"
            return super().load_state_dict(state)
        yielded = _yielded(state)
        settings.check("loader state", saved, self.resume_settings(), mid_epoch=yielded > 0)
        if yielded == 0 and saved.get("num_workers") != self.num_workers:
            # an epoch boundary under another worker layout: that epoch starts afresh
            epoch = next((s["epoch"] for s in _dataset_states(state) if isinstance(s.get("epoch"), int)), None)
            if epoch is not None and hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(settings.count("loader state", "epoch", epoch))
            return super().load_state_dict({})
        if self.num_workers:
            _check_workers(state, self.num_workers)
        super().load_state_dict(state)


def make_loader(dataset, batch_size: int, num_workers: int = 0, *, collate_fn=None,
                pin_memory: bool = False, prefetch_factor: int | None = None,
                persistent_workers: bool = False, pad_to_multiple_of: int | None = None,
                multiprocessing_context: str | None = None, batches_per_message: int | None = None):
    """Batches of dicts of tensors: input_ids, attention_mask, labels, is_pad, sample_id.

    For a ShardStream (default collate) workers start with each epoch's iterator, so
    ``persistent_workers`` does not apply; ``batches_per_message`` batches travel per
    worker message (default: ~2048 samples' worth; 1 gives torch's one batch per request)."""
    if collate_fn is None and isinstance(dataset, ShardStream):
        return BatchLoader(dataset, batch_size, num_workers, pad_id=pad_id(dataset),
                           pad_to_multiple_of=pad_to_multiple_of, pin_memory=pin_memory,
                           prefetch_factor=prefetch_factor, group=batches_per_message or default_group(batch_size),
                           multiprocessing_context=multiprocessing_context)
    if collate_fn is None and hasattr(dataset, "collator"):
        collate_fn = dataset.collator()  # packed / mixed streams know their own batch layout
    ours = collate_fn is None
    if ours:
        collate_fn = Collator(pad_id=pad_id(dataset), pad_to_multiple_of=pad_to_multiple_of,
                              as_numpy=num_workers > 0)
    kwargs = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor or 2
        kwargs["persistent_workers"] = persistent_workers
        kwargs["multiprocessing_context"] = multiprocessing_context
    numpy_batches = ours and num_workers > 0
    return ShardLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                       pin_memory=pin_memory and not numpy_batches, tensors_in_main=numpy_batches,
                       pin_arrays=pin_memory and numpy_batches, **kwargs)


def pad_id(dataset) -> int:
    tok = getattr(dataset, "tokenizer", None)
    if tok is None:
        return 0
    return special_ids(tok)["pad"]


def data_identity(dataset):
    """Manifest.identity of what ``dataset`` reads (a list for a mixture; None if unknown)."""
    found = getattr(dataset, "identity", None)
    if isinstance(found, str):
        return found
    if isinstance(getattr(dataset, "streams", None), list):
        return [data_identity(s) for s in dataset.streams]
    inner = getattr(dataset, "stream", None)
    return data_identity(inner) if inner is not None else None


def _yielded(state: dict) -> int:
    """Batches a StatefulDataLoader state has delivered (both of torchdata's layouts)."""
    what = "loader state"
    if "_snapshot" not in state:
        return settings.count(what, "_num_yielded", settings.entry(what, state, "_num_yielded"))
    snap = state["_snapshot"]
    step = settings.count(what, "_snapshot_step", settings.entry(what, snap, "_snapshot_step"))
    return step + settings.count(what, "_steps_since_snapshot", settings.entry(what, state, "_steps_since_snapshot"))


def _check_workers(state: dict, workers: int) -> None:
    """Worker snapshots for exactly this loader's workers, the last one served among them."""
    what = "loader state"
    snap = settings.entry(what, state, "_snapshot")
    keys = set(settings.entry(what, snap, "_worker_snapshots") or {})
    want = {f"worker_{i}" for i in range(workers)}
    if keys != want:
        raise settings.ResumeError(f"{what}: worker snapshots {sorted(keys)}, this loader has {sorted(want)}; "
                                   f"resume with the num_workers it was saved with")
    settings.count(what, "_last_yielded_worker_id", snap.get("_last_yielded_worker_id"), workers - 1)


def loader_stats(loader) -> dict:
    """Sums of the workers' counters (retries, skipped shards/samples) from the loader state."""
    if isinstance(loader, BatchLoader):
        return loader.stats()
    totals: Counter = Counter()
    for state in _dataset_states(loader.state_dict()):
        totals.update(state.get("stats", {}))
    return dict(totals)


def _dataset_states(state: dict):
    if "dataset_state" in state and state["dataset_state"]:
        yield state["dataset_state"]
    for worker in (state.get("_snapshot", {}).get("_worker_snapshots", {}) or {}).values():
        ds = worker.get("dataset_state")
        if ds:
            yield ds
