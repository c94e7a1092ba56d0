"""``ShardStream``: an IterableDataset over a shard set, exactly once per epoch.

    ds = ShardStream("s3://bucket/shards", tokenizer=tok_dir, max_length=128, shuffle=True, seed=1)
    ds.set_epoch(0)
    for item in ds: ...   # {"sample_id", "text", "label", "input_ids", "is_pad"}

Stages, each a generator: plan (split.py) → fetch + verify shards (with the
next one prefetched) → records → buffer shuffle → skip what a resumed state
already consumed → batched tokenization → items.  Resume replays the worker's
deterministic stream and skips, so the shuffle buffer's effect is exact.
"""
from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby, islice
from typing import Iterator

import numpy as np
from torch.utils.data import IterableDataset

import shards
from shards import storage

from . import split, world
from .shuffle import buffer_shuffle, rng_for

log = logging.getLogger(__name__)
STATE_VERSION = 1
CORRUPT_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class StreamConfig:
    """The rarer knobs of a ShardStream, each with one documented default."""

    shuffle_buffer: int = 8192      # items in the in-worker shuffle buffer (when shuffle=True)
    block_size: int = 1024          # records per block permuted inside a shard (when shuffle=True)
    tokenize_batch: int = 512       # texts per call to the fast tokenizer
    keep_text: bool = True          # include "text" in items
    on_corrupt: str = "error"       # "error" raises naming the shard; "skip" pads its records
    verify: str = "sha256"          # "sha256" | "size" | "none": checked before a shard is used
    prefetch: bool = True           # fetch the next shard in a background thread
    cache_dir: str | None = None    # local cache of remote shards, for repeated epochs
    cache_limit: int = 8 << 30      # bytes kept in cache_dir (least recently used evicted)
    add_special_tokens: bool = True

    def __post_init__(self):
        if self.on_corrupt not in CORRUPT_POLICIES:
            raise ValueError(f"on_corrupt={self.on_corrupt!r}; valid: {', '.join(CORRUPT_POLICIES)}")


def sample_id(shard: int, record: int) -> str:
    return f"{shard:05d}:{record:06d}"


class ShardStream(IterableDataset):
    """Streams a shard set written by ``shards build``; see the module docstring."""

    def __init__(self, url, *, tokenizer=None, max_length=None, shuffle=False, seed=0, rank=None,
                 world_size=None, storage_options=None, config: StreamConfig | None = None):
        super().__init__()
        self.url = str(url)
        self.storage_options = storage_options
        self.manifest = shards.load_manifest(self.url, storage_options)
        self.world = world.resolve(rank, world_size)
        self.shuffle, self.seed, self.max_length = shuffle, int(seed), max_length
        self.config = config or StreamConfig()
        self.tokenizer = shards.load_tokenizer(tokenizer) if tokenizer is not None else None
        self._check_tokenizer()
        shards.format_reader(self.manifest.format)  # import the reader here, not after fork in every worker
        self.epoch = 0
        self.stats: Counter = Counter()
        self._consumed = 0
        self._resume: dict | None = None
        self._cache = None
        self._skipped: set[int] = set()

    def _check_tokenizer(self) -> None:
        built = self.manifest.tokenizer
        if built is None or self.tokenizer is None:
            return
        have = shards.fingerprint(self.tokenizer)
        if have != built["fingerprint"]:
            raise shards.TokenizerError(
                f"{self.url}: shards were pre-tokenized with {built['name_or_path']} (fingerprint "
                f"{built['fingerprint'][:16]}), the tokenizer given has fingerprint {have[:16]}; pass the "
                f"same tokenizer, pass tokenizer=None to use the stored ids, or rebuild the shards")

    @property
    def pretokenized(self) -> bool:
        return "input_ids" in self.manifest.fields

    @property
    def label_names(self) -> list[str] | None:
        return self.manifest.label_names

    def __len__(self) -> int:
        """Samples this rank yields per epoch (pads included), equal on every rank."""
        return split.per_rank(self.manifest.num_records, self.world.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- state -------------------------------------------------------------
    def _update_retries(self) -> None:
        # Only this stream's retries since its iterator started, counted per process.
        now = storage.retry_count()
        self.stats["retries"] += now - getattr(self, "_retries_seen", now)
        self._retries_seen = now

    def state_dict(self) -> dict:
        self._update_retries()
        worker_id, workers = world.worker()
        return {"version": STATE_VERSION, "epoch": self.epoch, "seed": self.seed, "consumed": self._consumed,
                "rank": self.world.rank, "world_size": self.world.world_size, "worker": worker_id,
                "num_workers": workers, "stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"stream state version {state.get('version')!r}; this reader knows {STATE_VERSION}")
        self._resume = dict(state)
        self.epoch = int(state["epoch"])

    def _resume_offset(self, worker_id: int, workers: int) -> int:
        state, self._resume = self._resume, None
        if state is None or state["consumed"] == 0:
            return 0
        same = (state["world_size"], state["rank"], state["num_workers"], state["worker"], state["seed"]) == \
            (self.world.world_size, self.world.rank, workers, worker_id, self.seed)
        if not same:
            raise ValueError(
                f"cannot resume mid-epoch: state was saved by rank {state['rank']}/{state['world_size']}, "
                f"worker {state['worker']}/{state['num_workers']}, seed {state['seed']}; this is rank "
                f"{self.world.rank}/{self.world.world_size}, worker {worker_id}/{workers}, seed {self.seed}. "
                f"Resume with the same world size, num_workers and seed, or start at an epoch boundary")
        return int(state["consumed"])

    # -- the stream --------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        # Not a generator itself: the resume offset and the consumed count are set when the
        # iterator is made, because StatefulDataLoader snapshots state before the first next().
        worker_id, workers = world.worker()
        skip = self._resume_offset(worker_id, workers)
        self._consumed = skip
        self._retries_seen = storage.retry_count()
        return self._stream(worker_id, workers, skip)

    def _stream(self, worker_id: int, workers: int, skip: int) -> Iterator[dict]:
        plan = split.plan(self.manifest.shard_sizes, self.world.rank, self.world.world_size, worker_id,
                          workers, self.seed, self.epoch, self.shuffle, self.config.block_size)
        records = self._records(plan)
        if self.shuffle:
            rng = rng_for(self.seed, self.epoch, self.world.rank, worker_id)
            records = buffer_shuffle(records, self.config.shuffle_buffer, rng)
        for item in self._items(islice(records, skip, None)):
            self._consumed += 1
            yield item
        self._report_epoch()

    def _columns(self) -> tuple[str, ...]:
        cols = ["label", "input_ids"]
        if self.config.keep_text or not self.pretokenized:
            cols.append("text")
        return tuple(cols)

    def _fetch(self, shard: int) -> bytes | Exception:
        info = self.manifest.shards[shard]
        url = shards.shard_url(self.url, info)
        try:
            return shards.fetch_shard(url, info, self.storage_options, self.config.verify, self._get_cache())
        except (shards.CorruptShardError, storage.StorageError) as exc:
            if self.config.on_corrupt == "error":
                raise
            return exc

    def _get_cache(self):
        if self.config.cache_dir is None or not storage.is_remote(self.url):
            return None
        if self._cache is None:
            self._cache = shards.ShardCache(self.config.cache_dir, self.config.cache_limit)
        return self._cache

    def _records(self, plan: list[split.Slice]) -> Iterator[dict]:
        groups = [(shard, list(slices)) for shard, slices in groupby(plan, key=lambda s: s.shard)]
        if not groups:
            return
        pool = ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch")
        try:
            pending = pool.submit(self._fetch, groups[0][0])
            for i, (shard, slices) in enumerate(groups):
                data = pending.result()
                if i + 1 < len(groups):  # the next shard downloads while this one is consumed
                    nxt = groups[i + 1][0]
                    pending = pool.submit(self._fetch, nxt) if self.config.prefetch else _Done(self._fetch, nxt)
                if isinstance(data, Exception):
                    yield from self._skip_shard(shard, slices, data)
                else:
                    yield from self._shard_records(shard, slices, data)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _shard_records(self, shard: int, slices: list[split.Slice], data: bytes) -> Iterator[dict]:
        # Items are built a record batch at a time (one dict per record, no other per-record
        # objects): at ~13 tokens a sentence, per-sample Python work rivals the tokenizer's.
        url = shards.shard_url(self.url, self.manifest.shards[shard])
        columns = self._columns()
        for s in slices:
            for batch in shards.read_batches(self.manifest, url, data, s.start, s.stop, columns):
                rows = [{"sample_id": f"{shard:05d}:{r:06d}", "is_pad": s.pad}
                        for r in range(batch.start, batch.start + len(batch))]
                if batch.text is not None:
                    for row, text in zip(rows, batch.text):
                        row["text"] = text
                if batch.label is not None:
                    for row, label in zip(rows, batch.label.tolist()):
                        row["label"] = label
                if batch.input_ids is not None:
                    for row, ids in zip(rows, batch.input_ids):
                        row["input_ids"] = ids
                yield from rows

    def _skip_shard(self, shard: int, slices: list[split.Slice], exc: Exception) -> Iterator[dict]:
        """Keep the step count: the skipped shard's records become flagged pads."""
        n = sum(len(s) for s in slices)
        if shard not in self._skipped:  # logged once per shard
            log.warning("skipping corrupt shard (on_corrupt='skip'): %s", exc)
        self._skipped.add(shard)
        self.stats["skipped_shards"] += 1
        self.stats["skipped_samples"] += n
        for s in slices:
            for r in range(s.start, s.stop):
                row = {"sample_id": sample_id(shard, r), "is_pad": True, "text": ""}
                if self.label_names:
                    row["label"] = 0
                if self.pretokenized and self.tokenizer is None:
                    row["input_ids"] = np.zeros(1, dtype=np.int32)
                yield row

    def _items(self, records: Iterator[dict]) -> Iterator[dict]:
        """Tokenize in chunks of ``tokenize_batch`` texts; drop text unless kept."""
        batch = self.config.tokenize_batch
        tokenize = self.tokenizer is not None and not self.pretokenized
        keep_text = self.config.keep_text
        while True:
            chunk = list(islice(records, batch))
            if not chunk:
                return
            if tokenize:
                ids = shards.encode_batch(self.tokenizer, [r["text"] for r in chunk], self.max_length,
                                          self.config.add_special_tokens)
                for row, x in zip(chunk, ids):
                    row["input_ids"] = x
            elif self.pretokenized and self.max_length is not None:
                for row in chunk:
                    if len(row["input_ids"]) > self.max_length:
                        row["input_ids"] = _truncate(row["input_ids"], self.max_length)
            if not keep_text:
                for row in chunk:
                    row.pop("text", None)
            yield from chunk

    def _report_epoch(self) -> None:
        self._update_retries()
        if self.stats["skipped_shards"]:
            log.warning("epoch %d rank %d: skipped %d corrupt shard read(s), %d samples padded: %s",
                        self.epoch, self.world.rank, self.stats["skipped_shards"],
                        self.stats["skipped_samples"], sorted(self._skipped))


class _Done:
    """A future-like result computed on demand (prefetch disabled)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def result(self):
        return self.fn(*self.args)


def _truncate(ids: np.ndarray, max_length: int) -> np.ndarray:
    # Keep the closing special token (e.g. [SEP]) as the tokenizer's own truncation would.
    return np.concatenate([ids[: max_length - 1], ids[-1:]])
