"""LM packing: a stream of documents → fixed-length blocks that keep document boundaries.

    from pipeline import ShardStream, StreamConfig, make_loader
    from pipeline.pack.stream import PackedStream, lockstep
    docs = ShardStream("shards/", tokenizer=tok_dir, shuffle=True, seed=1,
                       config=StreamConfig(keep_text=False))
    blocks = PackedStream(docs, seq_len=1024)
    collate = blocks.collator()
    loader = make_loader(blocks, batch_size=8, num_workers=2, collate_fn=collate)
    for batch in lockstep(loader, collate.filler(8)):         # equal steps on every rank
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                    labels=batch["labels"], use_cache=False)   # no attention_mask: see below

Conventions (each block is a dict of int64 arrays of length ``seq_len``):
- A document's tokens are its ``input_ids`` with the tokenizer's own special tokens
  stripped from the ends (BERT's leading [CLS] and trailing [SEP]; GPT-2 adds none),
  then one separator appended (EOS / SEP, ``shards.special_ids``).  The epoch is
  ``doc_1 + [sep] + doc_2 + [sep] + ...`` cut into blocks; every token lands in
  exactly one block and the last partial block is padded, never dropped.
- ``split_documents=True`` fills every block (a document may run on into the next).
  ``False`` starts a document that does not fit in the space left on a new block
  (the rest padded); a document longer than ``seq_len`` starts a new block and is
  split across ``ceil(n / seq_len)`` blocks anyway.
- ``labels`` == ``input_ids`` with padding = -100: the Hugging Face causal-LM
  convention, where the model shifts (position t predicts t+1).
- ``position_ids`` restart at 0 at every document start and at the block start (a
  document continued from the previous block restarts too); trailing padding is its
  own run from 0.  HF models given ``position_ids`` and ``attention_mask=None`` build
  a per-document causal mask from these restarts (masking_utils' packed-sequence
  detection); padding is trailing, so causal attention never lets a real token see it.
- ``doc_ids``: the document's index within the block (0, 1, ...), -1 on padding;
  ``attention_mask``: 1 on real tokens; ``sample_ids``: the documents in the block;
  ``starts``: per document, whether it starts in this block (False for the one
  continued from the previous block).  The collator adds ``started_ids`` (the
  documents that start in the batch: each document exactly once per epoch, what an
  audit records; ``SOURCE/`` prefixed under a MixedStream) and ``cu_seqlens``/``max_seqlen`` (flash-attn varlen form).
- Items with ``is_pad`` (repeats that even out ranks, corrupt-shard placeholders) and
  documents with no tokens are not packed; they are counted in ``stats``.

Speed: documents are read a chunk at a time (up to ``chunk_tokens`` tokens) and cut
with numpy (cut.py).  From a ShardStream they are read as columnar Chunks
(``read_chunks``: flat ids + offsets, read.py): no per-document Python at all, the
names stay (shard, record) int arrays; other streams (MixedStream) are read an item
dict at a time.  A chunk's blocks form a ``BlockSet`` (blocks.py) and batches are
slices of it; ``make_loader`` sends many per pipe message as int32 arrays and makes
the tensors (with ``labels``/``attention_mask`` derived) in the main process.

Position (settings.py): what the next block starts with is always a position inside
one document, kept as (the inner stream's position at the start of the chunk that
document was read in, items to skip from there, tokens of the document already
emitted, blocks so far), all integers: the inner position is taken once per chunk,
the size is constant however long the document, and a resume re-reads about a
chunk's items and skips them (none from a ShardStream: it starts at the document).

Equal steps per rank: ranks get equal document counts, not equal token counts, so
block counts differ by a few.  :func:`lockstep` all-reduces a "have a batch" flag
every step and gives a rank that ran out filler batches (labels all -100) until
every rank is done: no token is dropped and DDP collectives stay matched.
"""
from __future__ import annotations

import copy
import os
from collections import Counter
from typing import Iterator

import numpy as np
from torch.utils.data import IterableDataset

import shards
from pipeline import elastic, settings
from pipeline.pack.blocks import BlockSet, Positions, block_dtypes, rechunk
from pipeline.pack.collate import BlockCollator, lockstep  # noqa: F401  (lockstep: its public home is here too)
from pipeline.pack.counts import DeliveredStats, PassedCounts
from pipeline.pack.cut import ARRAY_KEYS, IGNORE_INDEX, DocFormat, Docs, added_specials, cut
from pipeline.pack.inner import check_item_position
from pipeline.pack.read import make_reader

__all__ = ["ARRAY_KEYS", "IGNORE_INDEX", "BlockCollator", "DocFormat", "PackedStream", "added_specials", "lockstep"]
START = {"inner": None, "skip": 0, "offset": 0, "blocks": 0}  # a worker's position before its first block
CHUNK_TOKENS = 1 << 15      # tokens read from the inner stream per chunk (at least 8 blocks)


# -- the stream --------------------------------------------------------------
class PackedStream(DeliveredStats, IterableDataset):
    """Blocks of ``seq_len`` tokens cut from a document stream; see the module docstring.

    ``stream``: a ShardStream (read as columnar Chunks, ``read_chunks``), or a MixedStream
    or anything with ``__iter__`` over dicts with ``input_ids``/``sample_id``/``is_pad``,
    ``position()``/``seek(position)`` and ``set_epoch``.  ``sep_id``/``pad_id`` default to the
    tokenizer's (``shards.special_ids``); the tokenizer is ``tokenizer``, else ``stream.tokenizer``,
    else the one named in the manifest of pre-tokenized shards when it is a local path with
    the same fingerprint.  ``chunk_tokens``: tokens read from ``stream`` and cut at once
    (default ``max(32768, 8 * seq_len)``); the worker holds ~40 bytes per token of a chunk.
    """

    POSITION_COUNT = "blocks"  # the item count of a position (pack/inner.py)

    def __init__(self, stream, seq_len: int, *, split_documents: bool = True, sep_id: int | None = None,
                 pad_id: int | None = None, tokenizer=None, chunk_tokens: int | None = None):
        super().__init__()
        if int(seq_len) < 2:
            raise ValueError(f"seq_len={seq_len}: a block needs at least 2 tokens (typical: 512-4096)")
        self.stream = stream
        self.seq_len, self.split_documents = int(seq_len), bool(split_documents)
        self.tokenizer = _resolve_tokenizer(stream, tokenizer)
        specials = shards.special_ids(self.tokenizer) if self.tokenizer is not None else {}
        sep = sep_id if sep_id is not None else specials.get("sep")
        if sep is None:
            raise ValueError("PackedStream: no separator id: the stream has no tokenizer with an EOS/SEP "
                             "token (<|endoftext|>, </s>, [SEP], <eos>); pass sep_id=... or tokenizer=...")
        prefix, suffix = added_specials(self.tokenizer) if self.tokenizer is not None else ((), ())
        self.format = DocFormat(int(sep), prefix, suffix)
        self.pad_id = int(pad_id if pad_id is not None else specials.get("pad", sep))
        self.chunk_tokens = max(1, int(chunk_tokens)) if chunk_tokens is not None else max(CHUNK_TOKENS, 8 * self.seq_len)
        self.epoch = int(getattr(stream, "epoch", 0))
        self._tokens = {"sep_id": self.format.sep_id, "pad_id": self.pad_id,
                        "max_length": getattr(stream, "max_length", None),
                        "tokenizer": shards.fingerprint(self.tokenizer) if self.tokenizer is not None else None}
        self.stats: Counter = Counter()
        self._dtypes = block_dtypes(self.tokenizer, self.seq_len, (self.pad_id, self.format.sep_id))
        self._seek: dict | None = None
        self._position: dict = dict(START)
        self._begun: tuple[int, dict] = (-1, {})  # (epoch, (shard, record) -> tokens emitted before an elastic resume)

    @property
    def where(self) -> str:
        return getattr(self.stream, "where", "packed stream")

    def collator(self) -> "BlockCollator":
        return BlockCollator(self.seq_len, self.pad_id)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.stream.set_epoch(self.epoch)

    # -- positions and state (settings.py) --------------------------------------------------
    def loader_settings(self) -> dict:
        """What decides the blocks from a position on: the inner stream's order and the tokens."""
        inner = getattr(self.stream, "loader_settings", None)
        return {**(inner() if callable(inner) else {}), "seq_len": self.seq_len,
                "split_documents": self.split_documents, **self._tokens}

    def reset_stats(self) -> None:
        self.stats = Counter()
        reset = getattr(self.stream, "reset_stats", None)
        if callable(reset):
            reset()

    def counters(self) -> dict:
        """The inner stream's counts and ours as of the last block delivered (counts.py): what a state saved
        there holds, so that a resume from it counts each document, block and skip once."""
        return dict(self.stats)

    def check_position(self, what: str, position: dict, worker_id: int, workers: int, batch_size: int) -> None:
        """A position after ``position["batches"]`` batches (> 0) of ``batch_size`` blocks: counters, and
        the inner position checked by the inner stream (a bad one would fail later, or resume elsewhere)."""
        self.check_form(what, position, worker_id, batch_size)
        self._check_inner(what, position.get("inner"), worker_id, workers)

    def check_form(self, what: str, position: dict, worker_id: int, batch_size: int) -> None:
        """Counters, and as many blocks as ``batches`` batches of ``batch_size`` hold (any topology)."""
        for key in ("skip", "offset", "blocks"):
            settings.count(what, f"workers[{worker_id}].{key}", position.get(key, 0))
        blocks, batches = position.get("blocks", 0), position["batches"]
        if not (batches - 1) * batch_size < blocks <= batches * batch_size:
            raise settings.ResumeError(f"{what}: worker {worker_id} has {blocks} blocks in {batches} batches of "
                                       f"{batch_size}; the state is damaged: pass the state saved with this loader")

    def _check_inner(self, what: str, inner, worker_id: int, workers: int) -> None:
        # None (the epoch start) after blocks: checked where it resumes (_check_epoch_start), in its worker
        if inner is not None:
            check_item_position(self.stream, f"{what}: workers[{worker_id}].inner", inner, worker_id, workers)

    def _check_epoch_start(self, position: dict) -> None:
        """A position counted from the epoch start (inner None) after blocks: only a reader that
        cannot name the start (a lazy item stream) saves one, in its first chunk.  Replay the epoch
        from its start (about a chunk) and refuse the position unless its next block is the one
        after that many blocks (positions that differ only by pads between documents are equal)."""
        blocks = position["blocks"]
        replayed = self._probe_block(None, blocks)
        if replayed is not _NO_BLOCK and _same_block(replayed, self._probe_block(position, 0)):
            return
        raise settings.ResumeError(f"packed state: inner=None (the epoch start) with skip={position['skip']}, "
                                   f"offset={position['offset']}, blocks={blocks}: the epoch read from its start "
                                   f"continues otherwise after {blocks} blocks; the state is damaged: pass the "
                                   f"state saved with this loader, or none")

    def _probe_block(self, position: dict | None, index: int):
        """Block ``index`` (0-based) from ``position`` on, read with counters of its own (not
        delivered); None after the epoch's last block, _NO_BLOCK when the epoch ends before."""
        probe = copy.copy(self)
        sets = probe._sets(position, self._counts(), checked=True)
        try:
            seen = 0
            for part in sets:
                if index < seen + len(part):
                    return part.blocks()[index - seen]
                seen += len(part)
        finally:
            sets.close()
        return None if seen == index else _NO_BLOCK

    def position(self) -> dict:
        """The position after the last block ``__iter__`` yielded."""
        return dict(self._position)

    def seek(self, position: dict | None) -> None:
        """The next iteration (this epoch) starts at ``position``."""
        self._seek = dict(position) if position else None

    def state_dict(self) -> dict:
        """The per-block iterator's state: a one-worker state of batch size 1 (settings.py)."""
        blocks = self._position["blocks"]
        return settings.make_state(self.epoch, blocks, [{"batches": blocks, **self._position}], 0,
                                   {**self.loader_settings(), "batch_size": 1}, self.counters())

    def load_state_dict(self, state: dict) -> None:
        what = "packed state"
        epoch, _, positions, _ = settings.read_state(what, state, {**self.loader_settings(), "batch_size": 1})
        if positions:
            self.check_position(what, positions[0], 0, 1, 1)
        self.set_epoch(epoch)
        self.seek({k: v for k, v in positions[0].items() if k != "batches"} if positions else None)

    # -- elastic resume (pipeline/elastic.py): documents are its unit ----------------------------
    @property
    def elastic_base(self):
        """The ShardStream whose samples (documents) elastic segments count; None for another inner stream."""
        inner = self.stream
        if callable(getattr(inner, "read_chunks", None)) and callable(getattr(inner, "set_segments", None)):
            return getattr(inner, "elastic_base", inner)
        return None

    def elastic_progress(self, what: str, position: dict) -> tuple[int, int]:
        """A worker's saved position as (documents finished, tokens of the next one emitted)."""
        inner = position.get("inner") or {}
        if not isinstance(inner, dict):
            raise settings.ResumeError(f"{what}: inner={inner!r:.60} is not a position; the state is damaged")
        done = settings.count(what, "inner.samples", inner.get("samples", 0))
        return done + settings.count(what, "skip", position.get("skip", 0)), \
            settings.count(what, "offset", position.get("offset", 0))

    def segments(self) -> list:
        return self.stream.segments() if self.elastic_base is not None else []

    def segments_json(self, epoch: int) -> list[dict]:
        return self.stream.segments_json(epoch) if self.elastic_base is not None else []

    def set_segments(self, epoch: int, segments: list) -> None:
        """Epoch ``epoch`` continues after ``segments``: the inner stream reads what they left, and the
        documents they left begun (``Segment.partial``) resume after the tokens already emitted."""
        base = self.elastic_base
        if base is None:
            if segments:
                raise settings.ResumeError(f"{self.where}: an elastic resume of a PackedStream needs a ShardStream "
                                           f"inside (this one reads a {type(self.stream).__name__}); resume with the "
                                           f"saved world size, workers and batch size")
            return
        self.stream.set_segments(epoch, segments)
        begun: dict = {}
        try:
            found = elastic.partials(base.manifest.num_records, segments, base.seed, int(epoch), base.shuffle) \
                if segments else {}
            if found:
                shard, record = elastic.records_at(base.manifest.shard_sizes, base.config.block_size, base.seed,
                                                   int(epoch), base.shuffle, list(found))
                begun = {(int(s), int(r)): t for s, r, t in zip(shard.tolist(), record.tolist(), found.values())}
        except ValueError as exc:
            raise settings.ResumeError(f"{self.where}: {exc}") from None
        self._begun = (int(epoch), begun)

    # -- iteration -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        """One dict per block (see the module docstring), from the sets of the loader's path."""
        # Not a generator itself: the seek is taken and position() is right at iter(), as a
        # ShardStream's; a MixedStream of PackedStreams reads a source's position before its next().
        position, self._seek = self._seek, None
        self._position = {**START, **(position or {})}
        return self._blocks(position)

    def _blocks(self, position: dict | None) -> Iterator[dict]:
        counts = self._counts()
        for part in self._sets(position, counts):
            for block, after in zip(part.blocks(), part.after):
                self._position = after
                counts.blocks += 1
                counts.tokens += block["num_tokens"]
                self._pending = (counts, after, counts.blocks, counts.tokens)  # counted when read (stats)
                yield block
            self._settle()  # once a set: the reads its blocks passed are let go (counts.at)
        self.stats = counts.done()

    def batches(self, batch_size: int, position: dict | None = None, *, items: bool = False) -> Iterator[tuple]:
        """This worker's blocks as numpy batches (blocks.py; ``items``: lists of block dicts),
        from ``position`` on, each with the position after it."""
        counts = self._counts()
        for part in rechunk(self._sets(position, counts), batch_size):
            after = part.after[-1]
            counts.deliver(part.num_tokens)
            self.stats = counts.at(after, counts.blocks, counts.tokens)
            yield (part.blocks() if items else part.batch()), after
        self.stats = counts.done()

    def _sets(self, position: dict | None, counts: PassedCounts, checked: bool = False) -> Iterator[BlockSet]:
        """Read a chunk of documents, cut every block it completes, carry the rest; repeat.

        A position is (inner position at the start of the chunk a document was read in,
        items to skip from there, tokens of the document already emitted, blocks so far):
        the inner position is taken once per chunk, not per document."""
        position = {**START, **(position or {})}
        if position["inner"] is None and position["blocks"] and not checked:
            self._check_epoch_start(position)
        inner, skip, offset, blocks = position["inner"], position["skip"], position["offset"], position["blocks"]
        reader = make_reader(self.stream, self.format, counts.read_ahead, inner, skip)
        # chunk number -> inner position before its first item; the epoch start as the inner stream
        # names it (None only for a stream of unknown form), so that None mid-epoch is refused
        states = {0: reader.start}
        begun = self._begun[1] if self._begun[0] == self.epoch else {}
        carry, chunk, first = Docs.empty(), 0, skip
        budget = min(self.chunk_tokens, max(2 * self.seq_len, 256))  # small first chunk: the first block comes soon
        while True:
            new, n_items, exhausted = counts.read(reader, chunk, first, budget, states[chunk])
            if exhausted:  # resume = re-read this chunk's items: a position taken after the end can
                after = (states[chunk], first + n_items, 0)  # be stale (MixedStream's sources restart)
            else:
                states[chunk + 1] = reader.position()
                counts.next_chunk(chunk + 1, states[chunk + 1])
                after = (states[chunk + 1], 0, 0)
            try:
                new = new.skip_begun(begun)
            except ValueError as exc:
                raise settings.ResumeError(f"{self.where}: {exc}") from None
            if offset and len(new):    # the resumed document: its first tokens were emitted before
                try:
                    new, offset = new.skip_first(offset), 0
                except ValueError as exc:
                    raise settings.ResumeError(f"{self.where}: {exc}") from None
            elif offset and exhausted:
                raise settings.ResumeError(f"packed state: offset={offset} tokens into a document, but the "
                                           f"stream has none left: the state belongs to other data")
            docs = carry + new
            result = cut(docs, self.seq_len, self.split_documents, self.pad_id, final=exhausted, dtypes=self._dtypes)
            part = self._block_set(result, docs, states, after, blocks)
            blocks += len(part)
            if len(part):
                yield part
            carry = result.carry
            if exhausted:
                return
            for old in [c for c in states if c <= chunk and (not len(carry) or c < int(carry.chunks[0]))]:
                del states[old]
            chunk, first = chunk + 1, 0
            budget = min(2 * budget, self.chunk_tokens)

    def _block_set(self, result, docs: Docs, states: dict, after: tuple, blocks: int) -> BlockSet:
        n = len(result.num_tokens)
        nxt, emitted = result.cursors
        read = nxt < len(docs)  # the next token is in a document already read, else: after this chunk
        safe = np.minimum(nxt, max(len(docs) - 1, 0))
        first = int(docs.chunks.min()) if len(docs) else 0
        chunk_of = docs.chunks[safe] - first if len(docs) else np.zeros(n, np.int64)
        inners = [states.get(c) for c in range(first, first + int(chunk_of.max(initial=0)) + 1)] + [after[0]]
        positions = Positions(inners, np.where(read, chunk_of, len(inners) - 1),
                              np.where(read, docs.items[safe] if len(docs) else 0, after[1]),
                              np.where(read, emitted, after[2]), np.arange(blocks + 1, blocks + n + 1))
        piece = result.piece_doc
        return BlockSet(result.ids, result.positions, result.doc_ids, result.num_tokens, result.runs,
                        result.run_bounds, docs.shard[piece], docs.record[piece], docs.source[piece],
                        result.piece_starts, result.piece_bounds, positions)


_NO_BLOCK = object()


def _same_block(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return np.array_equal(a["input_ids"], b["input_ids"]) and list(a["sample_ids"]) == list(b["sample_ids"]) \
        and np.array_equal(a["starts"], b["starts"])


def _resolve_tokenizer(stream, tokenizer):
    if tokenizer is not None:
        return shards.load_tokenizer(tokenizer)
    if getattr(stream, "tokenizer", None) is not None:
        return stream.tokenizer
    manifest = getattr(stream, "manifest", None)
    built = getattr(manifest, "tokenizer", None)
    if built and os.path.exists(built["name_or_path"]):  # pre-tokenized shards, tokenizer still local
        tok = shards.load_tokenizer(built["name_or_path"])
        if shards.fingerprint(tok) == built["fingerprint"]:
            return tok
    return None
