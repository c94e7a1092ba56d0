"""``ShardStream``: an IterableDataset over a shard set, exactly once per epoch.

    ds = ShardStream("s3://bucket/shards", tokenizer=tok_dir, max_length=128, shuffle=True, seed=1)
    ds.set_epoch(0)
    for item in ds: ...   # {"sample_id", "text", "label", "input_ids", "is_pad"}

Stages, each a generator of columnar Chunks: plan (split.py) → fetch + verify
shards (with the next one prefetched, corrupt ones raised or skipped: fetch.py) → record
batches → windows of ``shuffle_buffer`` samples, each permuted (shuffle.py) → batched
tokenization (tokenize.py) → padded batches (``batches``, the loader's path, each with the worker's position after it;
with ``group_by_length`` each window's sub-windows of ``group.GROUP_BATCHES`` batches are sorted by token
length first, group.py), or
items (``__iter__``, built on the same chunks).
Every step is a function of integers (seed, epoch, rank, worker, window), so a
resumed stream starts at the window holding its position and reads nothing
before it.  The state (settings.py: one kind for loaders and streams) records those settings and the data's identity
(``Manifest.identity``); a mid-epoch state resumed under other ones, or with a
position outside this worker's part, is refused (settings.py).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from torch.utils.data import IterableDataset

import shards
from pipeline import elastic, fetch, group, settings, split, tokenize, world
from pipeline.chunk import Chunk, concat, rechunk
from pipeline.collate import collate_chunk
from pipeline.fetch import CORRUPT_POLICIES
from pipeline.shuffle import window_order

__all__ = ["CORRUPT_POLICIES", "ShardStream", "StreamConfig"]


@dataclass(frozen=True)
class StreamConfig:
    """The rarer knobs of a ShardStream, each with one documented default."""

    shuffle_buffer: int = 8192      # consecutive samples of a worker's stream permuted together (shuffle=True)
    block_size: int = 1024          # records per block permuted inside a shard (when shuffle=True)
    tokenize_batch: int = 512       # texts per call to the fast tokenizer
    keep_text: bool = True          # include "text" in items
    on_corrupt: str = "error"       # "error" raises naming the shard; "skip" pads its records
    verify: str = "sha256"          # "sha256" | "size" | "none": checked before a shard is used
    prefetch: bool = True           # fetch the next shard in a background thread
    cache_dir: str | None = None    # local cache of remote shards, for repeated epochs
    cache_limit: int = 8 << 30      # bytes kept in cache_dir (least recently used evicted)
    add_special_tokens: bool = True
    group_by_length: bool = False   # batches of similar token length, cut from sorted windows (group.py)

    def __post_init__(self):
        if self.on_corrupt not in CORRUPT_POLICIES:
            raise ValueError(f"on_corrupt={self.on_corrupt!r}; valid: {', '.join(CORRUPT_POLICIES)}")
        if not isinstance(self.group_by_length, bool):
            raise ValueError(f"StreamConfig(group_by_length={self.group_by_length!r}): valid: True or False")
        for name in ("shuffle_buffer", "block_size", "tokenize_batch", "cache_limit"):
            value = getattr(self, name)  # a window or batch of 0 would cut the stream into empty pieces forever
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"StreamConfig({name}={value!r}): must be an integer >= 1 "
                                 f"(default {getattr(StreamConfig, name)})")


class ShardStream(IterableDataset):
    """Streams a shard set written by ``shards build``; see the module docstring."""

    def __init__(self, url, *, tokenizer=None, max_length=None, shuffle=False, seed=0, rank=None,
                 world_size=None, storage_options=None, config: StreamConfig | None = None):
        super().__init__()
        self.url = str(url)
        self.where = shards.redact(self.url)  # the URL as messages name it: no credentials
        self.storage_options = storage_options
        self.manifest = shards.load_manifest(self.url, storage_options)
        self.world = world.resolve(rank, world_size)
        self.shuffle, self.seed, self.max_length = shuffle, int(seed), max_length
        self.config = config or StreamConfig()
        self.tokenizer = shards.load_tokenizer(tokenizer) if tokenizer is not None else None
        self._check_tokenizer()
        shards.format_reader(self.manifest.format)  # an unknown format fails here, not in every worker
        if self.config.group_by_length and self.text_only:
            raise ValueError(f"{self.where}: StreamConfig(group_by_length=True) sorts by token length, and this set "
                             f"has no token ids; pass tokenizer=... or use shards built with --tokenizer")
        self.epoch = 0
        self.stats: Counter = Counter()
        self._consumed = 0
        self._resume: dict | None = None
        self._seek: int | None = None
        self._cache = None
        self._skipped: set[int] = set()
        self._identity: str | None = None
        self._elastic: tuple[int, list] = (-1, [])  # (epoch, elastic.Segments before this stretch)
        self._counts_cache: dict = {}

    def _check_tokenizer(self) -> None:
        built = self.manifest.tokenizer
        if built is None or self.tokenizer is None:
            return
        have = shards.fingerprint(self.tokenizer)
        if have != built["fingerprint"]:
            raise shards.TokenizerError(
                f"{self.where}: shards were pre-tokenized with {built['name_or_path']} (fingerprint "
                f"{built['fingerprint'][:16]}), the tokenizer given has fingerprint {have[:16]}; pass the "
                f"same tokenizer, pass tokenizer=None to use the stored ids, or rebuild the shards")

    @property
    def pretokenized(self) -> bool:
        return "input_ids" in self.manifest.fields

    @property
    def label_names(self) -> list[str] | None:
        return self.manifest.label_names

    @property
    def text_only(self) -> bool:
        """No token ids (no tokenizer, not pre-tokenized): batches carry the texts."""
        return self.tokenizer is None and not self.pretokenized

    @property
    def identity(self) -> str:
        """The data's fingerprint (Manifest.identity), computed once per stream."""
        if self._identity is None:
            self._identity = self.manifest.identity
        return self._identity

    def order_settings(self) -> dict:
        """What decides this rank's order of samples, the same in every worker (see settings.py)."""
        c = self.config
        return {"seed": self.seed, "shuffle": self.shuffle, "shuffle_buffer": c.shuffle_buffer,
                "block_size": c.block_size, "group_by_length": c.group_by_length, "rank": self.world.rank,
                "world_size": self.world.world_size, "identity": self.identity}

    def worker_samples(self, worker_id: int, workers: int) -> int:
        """Samples worker ``worker_id`` of ``workers`` yields per epoch (pads included); after an
        elastic resume, in the rest of the epoch (elastic.worker_counts_after)."""
        segments = self.segments()
        if not segments:
            return split.worker_counts(self.manifest.num_records, self.world.world_size, workers)[worker_id]
        key = (self.epoch, workers, len(segments))
        if key not in self._counts_cache:  # remaining() is O(records): once per epoch and layout
            self._counts_cache = {key: elastic.worker_counts_after(
                self.manifest.num_records, segments, self.seed, self.epoch, self.shuffle,
                self.world.world_size, workers)}
        return self._counts_cache[key][worker_id]

    # -- elastic resume (pipeline/elastic.py; the loader builds the segments, loader/elastic_state.py) --
    def segments(self) -> list:
        """The elastic segments of the current epoch ([] when it started under this topology)."""
        epoch, segments = self._elastic
        return segments if epoch == self.epoch else []

    def set_segments(self, epoch: int, segments: list) -> None:
        """Epoch ``epoch`` continues after ``segments`` (elastic.Segment, oldest first): this rank's
        workers read elastic.plan_after instead of split.plan; later epochs start whole."""
        if segments and self.config.group_by_length:
            raise settings.ResumeError(f"{self.where}: an elastic resume (world size, workers or batch size "
                                       f"changed mid-epoch) cannot follow group_by_length windows (sorted by "
                                       f"token length); resume with the saved ones, or at an epoch boundary")
        try:  # counts no run of this set delivers would fail mid-epoch, in a worker
            if not all(isinstance(s, elastic.Segment) for s in segments):
                raise ValueError("an entry is not one stream's segment (a mixture's?)")
            if segments:
                elastic.remaining(self.manifest.num_records, segments, self.seed, int(epoch), self.shuffle)
        except ValueError as exc:
            raise settings.ResumeError(f"{self.where}: elastic segments of epoch {epoch}: {exc}; the state is damaged "
                                       f"or from another run") from None
        self._elastic = (int(epoch), list(segments))
        self._counts_cache = {}

    def segments_json(self, epoch: int) -> list[dict]:
        epoch_of, segments = self._elastic
        return [s.to_json() for s in segments] if epoch_of == epoch else []

    def __len__(self) -> int:
        """Samples this rank yields per epoch (pads included), equal on every rank."""
        return split.per_rank(self.manifest.num_records, self.world.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- state: the one kind (settings.py); positions are samples of this worker's epoch ----------
    def _update_retries(self) -> None:
        # Only this stream's retries since its iterator started, counted per process.
        now = shards.retry_count()
        self.stats["retries"] += now - getattr(self, "_retries_seen", now)
        self._retries_seen = now

    def reset_stats(self) -> None:
        self.stats = Counter()

    def counters(self) -> dict:
        self._update_retries()
        return dict(self.stats)

    def loader_settings(self) -> dict:
        return self.order_settings()

    def batch_options(self, pad_id: int, pad_to_multiple_of: int | None) -> dict:
        return {"pad_id": pad_id, "pad_to_multiple_of": pad_to_multiple_of}

    def batch_counts(self, workers: int, batch_size: int) -> list[int]:
        """Batches per worker per epoch (identical on every rank)."""
        return [-(-self.worker_samples(w, workers) // batch_size) for w in range(workers)]

    def check_position(self, what: str, position: dict, worker_id: int, workers: int, batch_size: int) -> None:
        """A loader position of worker ``worker_id``: samples at a batch start (or the end), batches matching."""
        total = self.worker_samples(worker_id, workers)
        samples = settings.count(what, f"workers[{worker_id}].samples", position.get("samples", 0), total)
        if samples != total and samples % batch_size or position["batches"] != -(-samples // batch_size):
            raise settings.ResumeError(f"{what}: worker {worker_id} at samples={samples}, batches="
                                       f"{position['batches']}: not a batch boundary of batch_size {batch_size}; "
                                       f"the state is damaged or from another loader")

    def check_form(self, what: str, position: dict, worker_id: int, batch_size: int) -> None:
        """A position's form, whatever the topology: samples a count, batches the whole batches holding them."""
        samples = settings.count(what, f"workers[{worker_id}].samples", position.get("samples", 0))
        if position["batches"] != -(-samples // batch_size):
            raise settings.ResumeError(f"{what}: worker {worker_id} at samples={samples}, batches="
                                       f"{position['batches']}: not {batch_size} samples a batch; the state is damaged")

    def state_dict(self) -> dict:
        """The per-sample iterator's state (``__iter__``): a one-worker state of batch size 1."""
        self._update_retries()
        worker_id, workers = world.worker()
        now = {**self.order_settings(), "batch_size": 1, "worker": worker_id, "num_workers": workers}
        position = {"batches": self._consumed, "samples": self._consumed}
        return settings.make_state(self.epoch, self._consumed, [position], 0, now, self.stats)

    def load_state_dict(self, state: dict) -> None:
        what = f"stream state for {self.where}"
        epoch, consumed, positions, _ = settings.read_state(what, state, {**self.order_settings(), "batch_size": 1})
        if consumed:  # which worker it was, and how far it can be, are checked where it resumes
            saved = state["settings"]
            workers = settings.count(what, "num_workers", saved.get("num_workers"), low=1)
            settings.count(what, "worker", saved.get("worker"), workers - 1)
            settings.count(what, "samples", positions[0].get("samples"))
        self._resume = dict(state)
        self.epoch = epoch

    def _resume_offset(self, worker_id: int, workers: int) -> int:
        state, self._resume = self._resume, None
        if state is None or state["batches"] == 0:
            return 0
        what = f"stream state for {self.where}"
        settings.check(what, state["settings"], {"worker": worker_id, "num_workers": workers}, mid_epoch=True)
        return settings.count(what, "samples", state["workers"][0]["samples"], self.worker_samples(worker_id, workers))

    def position(self) -> dict:
        """After the last sample ``__iter__`` yielded: samples of this worker's epoch."""
        return {"samples": self._consumed}

    def seek(self, position: dict | None) -> None:
        """The next iteration (this epoch, this worker) starts at ``position``."""
        self._seek = None if not position else int(position["samples"])

    def refuse_own_state(self) -> None:
        """The loader resumes from its own state; refuse to drop a mid-epoch per-sample state
        loaded with ``load_state_dict`` without a word."""
        state, self._resume = self._resume, None
        if state is not None and state.get("batches"):
            raise ValueError(f"{self.where}: this ShardStream holds a mid-epoch per-sample state "
                             "(ShardStream.load_state_dict); make_loader resumes from its own state: "
                             "save loader.state_dict() and pass it to "
                             "loader.load_state_dict(), or iterate the stream itself")

    # -- the stream: one read path (chunks), and its thin wrappers ----------------------------
    def __iter__(self) -> Iterator[dict]:
        """One dict per sample, the samples of ``read_chunks``; ``state_dict()`` after any is exact."""
        return self._items(self._open(None))  # not a generator itself: refusals come at iter()

    def _items(self, chunks: Iterator[Chunk]) -> Iterator[dict]:
        for chunk in chunks:
            marks = [0] * len(chunk) if chunk.skipped is None else chunk.skipped.tolist()
            for item, mark in zip(chunk.items(), marks):
                self._consumed += 1
                if mark:  # counted as it is delivered: a state after it holds it, a resume after it does not
                    self._count_skips({"skipped_shards": int(mark == 2), "skipped_samples": 1})
                yield item
        self._report_epoch()

    def read_chunks(self, skip: int | None = None) -> Iterator[Chunk]:
        """This worker's samples from ``skip`` (default: a loaded state's position) as Chunks of at
        most ``tokenize_batch`` samples, with text when ``keep_text``; skips counted as each is yielded."""
        return self._counted(self._open(skip))

    def _counted(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        for chunk in chunks:
            self._count_skips(chunk.skip_counts())
            yield chunk
        self._report_epoch()

    def _count_skips(self, counts: dict) -> None:
        if counts:
            self.stats.update(counts)

    def _open(self, skip: int | None) -> Iterator[Chunk]:
        worker_id, workers = world.worker()
        self._per_sample_only()
        if skip is None and self._seek is not None:
            skip, self._seek = self._seek, None
        start = self._resume_offset(worker_id, workers) if skip is None else skip
        settings.count(f"{self.where} worker {worker_id}/{workers}", "samples", start,
                       self.worker_samples(worker_id, workers))
        self._begin(start)
        return self.chunks(worker_id, workers, start, self.config.keep_text)

    def _per_sample_only(self) -> None:
        if self.config.group_by_length:
            raise ValueError(f"{self.where}: StreamConfig(group_by_length=True) groups samples into batches, so the "
                             f"stream cannot be read a sample at a time (per-sample iteration, packed or mixed "
                             f"streams, a custom collate_fn); use make_loader(ds, batch_size) with its default "
                             f"collate, or group_by_length=False")

    def _begin(self, skip: int) -> int:
        self._consumed = skip
        self._retries_seen = shards.retry_count()
        return skip

    def batches(self, batch_size: int, position: dict | None = None, *, items: bool = False, pad_id: int = 0,
                pad_to_multiple_of: int | None = None, keep_text: bool = False,
                ragged: bool = False) -> Iterator[tuple]:
        """This worker's samples as padded numpy batches (collate.collate_chunk; ``items``: lists
        of item dicts; ``ragged``: ids unpadded, collate.RaggedIds), from ``position`` on, each
        with the position after it."""
        worker_id, workers = world.worker()
        if items:
            self._per_sample_only()
        samples = self.worker_samples(worker_id, workers)
        skip = self._begin(min(int((position or {}).get("samples", 0)), samples))
        keep_text = keep_text or self.text_only or (items and self.config.keep_text)
        chunks = self._grouped(worker_id, workers, batch_size, skip, keep_text) \
            if self.config.group_by_length else self.chunks(worker_id, workers, skip, keep_text, lead=batch_size)
        consumed = skip  # this generator's own count: another live one over this stream has its own
        for chunk in rechunk(chunks, batch_size):
            consumed += len(chunk)
            self._consumed = consumed
            self._count_skips(chunk.skip_counts())  # per delivered batch: a state holds exactly its skips
            batch = chunk.items() if items else collate_chunk(chunk, pad_id, pad_to_multiple_of, keep_text, ragged)
            yield batch, {"samples": consumed}
        self._report_epoch()

    def chunks(self, worker_id: int, workers: int, skip: int = 0, keep_text: bool = True,
               lead: int | None = None) -> Iterator[Chunk]:
        """This (rank, worker)'s samples of the epoch from position ``skip`` on, in order, as
        tokenized Chunks of at most ``tokenize_batch`` samples (whole windows when the ids are
        read, not made: nothing to batch for a tokenizer); ``lead``: the first Chunk holds at most
        that many (the first batch's), so the first batch waits for its own texts alone."""
        window = self.config.shuffle_buffer if self.shuffle else self.config.tokenize_batch
        first = skip // max(window, 1)
        piece = self.config.tokenize_batch if self.tokenizer is not None and not self.pretokenized else window
        for k, chunk in self._windows(worker_id, workers, first, window, keep_text):
            if self.shuffle:
                chunk = chunk.take(window_order(len(chunk), self.seed, self.epoch, self.world.rank, worker_id, k))
            if k == first:
                chunk = chunk.slice(skip - first * window, len(chunk))
                if lead is not None and 0 < lead < min(piece, len(chunk)):
                    yield tokenize.tokenized(self, chunk.slice(0, lead), keep_text)
                    chunk = chunk.slice(lead, len(chunk))
            for part in rechunk([chunk], piece):
                yield tokenize.tokenized(self, part, keep_text)

    def _grouped(self, worker_id: int, workers: int, batch_size: int, skip: int,
                 keep_text: bool) -> Iterator[Chunk]:
        """This worker's batches (Chunks of ``batch_size``) from position ``skip`` (a batch start)
        on, each window sorted by token length and its batches shuffled (group.py)."""
        window = group.window_size(self.config.shuffle_buffer, batch_size)
        first = skip // window
        for k, chunk in self._windows(worker_id, workers, first, window, keep_text):
            chunk = concat([tokenize.tokenized(self, part, keep_text) for part in rechunk([chunk], self.config.tokenize_batch)])
            key = (self.seed, self.epoch, self.world.rank, worker_id, k)
            chunk = chunk.take(group.window_index(chunk.ids.lengths, batch_size, self.shuffle, key))
            if k == first:
                chunk = chunk.slice(skip - first * window, len(chunk))
            yield from rechunk([chunk], batch_size)

    def _windows(self, worker_id: int, workers: int, first: int, window: int,
                 keep_text: bool) -> Iterator[tuple[int, Chunk]]:
        """(index, samples) of this worker's windows of ``window`` samples, from window ``first`` on."""
        segments = self.segments()
        if segments:
            plan = elastic.plan_after(self.manifest.shard_sizes, self.config.block_size, self.seed, self.epoch,
                                      self.shuffle, segments, self.world.rank, self.world.world_size, worker_id,
                                      workers)
        else:
            plan = split.plan(self.manifest.shard_sizes, self.world.rank, self.world.world_size, worker_id,
                              workers, self.seed, self.epoch, self.shuffle, self.config.block_size)
        want_text = keep_text or (self.tokenizer is not None and not self.pretokenized)
        pieces = fetch.read(self, split.skip(plan, first * window), want_text, fetch.continues(plan, first * window))
        return enumerate(rechunk(pieces, window), start=first)

    def _report_epoch(self) -> None:
        self._update_retries()
        fetch.report_epoch(self)
