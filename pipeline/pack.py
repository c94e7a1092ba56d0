"""LM packing: a stream of documents → fixed-length blocks that keep document boundaries.

    from pipeline import ShardStream, StreamConfig, make_loader
    from pipeline.pack import PackedStream, lockstep
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

State: blocks are cut in the DataLoader worker, so ``state_dict()`` is the worker's.
The leftover between blocks is always the tail of one document, so it is kept as
(the inner stream's state before that document, tokens of it already emitted):
constant size however long the document; resume re-reads the document and skips.

Equal steps per rank: ranks get equal document counts, not equal token counts, so
block counts differ by a few.  :func:`lockstep` all-reduces a "have a batch" flag
every step and gives a rank that ran out filler batches (labels all -100) until
every rank is done: no token is dropped and DDP collectives stay matched.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset

import shards

IGNORE_INDEX = -100  # the label value torch's cross-entropy and HF models skip
STATE_VERSION = 1
ARRAY_KEYS = ("input_ids", "labels", "position_ids", "doc_ids", "attention_mask")


# -- pure cutting logic ------------------------------------------------------
class Piece(NamedTuple):
    """Tokens [start, start + len(tokens)) of document ``doc`` (0 = first document fed)."""

    doc: int
    start: int
    tokens: np.ndarray


class Cursor(NamedTuple):
    """Where the stream stands after a block: next token is token ``offset`` of document ``doc``."""

    doc: int
    offset: int


def cut_blocks(docs: Iterable[np.ndarray], seq_len: int, split_documents: bool = True,
               skip: int = 0) -> Iterator[tuple[list[Piece], Cursor]]:
    """Greedy blocks of at most ``seq_len`` tokens; only the last one (or, with
    ``split_documents=False``, one closed early) is short.  ``skip`` drops the first
    tokens of the first document (already emitted before a resume).  Documents are
    pulled lazily, one at a time, so a block is yielded before the next one is read."""
    pieces: list[Piece] = []
    used = 0
    index = -1
    for index, tokens in enumerate(docs):
        start = skip if index == 0 else 0
        n = len(tokens)
        if not split_documents and used and n - start > seq_len - used:
            yield pieces, Cursor(index, start)  # does not fit: close this block, start anew
            pieces, used = [], 0
        while start < n:
            take = min(n - start, seq_len - used)
            pieces.append(Piece(index, start, tokens[start:start + take]))
            used += take
            start += take
            if used == seq_len:
                yield pieces, (Cursor(index, start) if start < n else Cursor(index + 1, 0))
                pieces, used = [], 0
    if pieces:
        yield pieces, Cursor(index + 1, 0)


def block_arrays(pieces: list[Piece], seq_len: int, pad_id: int) -> dict:
    """One block's arrays (see the module docstring) and ``seqlens`` (runs incl. padding)."""
    ids = np.full(seq_len, pad_id, dtype=np.int64)
    labels = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros(seq_len, dtype=np.int64)
    doc_ids = np.full(seq_len, -1, dtype=np.int64)
    mask = np.zeros(seq_len, dtype=np.int64)
    seqlens: list[int] = []
    at = 0
    for k, piece in enumerate(pieces):
        n = len(piece.tokens)
        end = at + n
        ids[at:end] = piece.tokens
        labels[at:end] = piece.tokens
        positions[at:end] = np.arange(n)
        doc_ids[at:end] = k
        mask[at:end] = 1
        seqlens.append(n)
        at = end
    if at < seq_len:
        positions[at:] = np.arange(seq_len - at)
        seqlens.append(seq_len - at)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "doc_ids": doc_ids,
            "attention_mask": mask, "seqlens": seqlens, "num_tokens": at, "is_pad": False,
            "starts": [p.start == 0 for p in pieces]}


@dataclass(frozen=True)
class DocFormat:
    """How an item's ids become a document: strip the tokenizer's specials, append ``sep_id``."""

    sep_id: int
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    def tokens(self, ids) -> np.ndarray | None:
        """The document's tokens with the separator, or None when it has no tokens."""
        body = np.asarray(ids)
        p, s = len(self.prefix), len(self.suffix)
        if p and len(body) >= p and tuple(body[:p].tolist()) == self.prefix:
            body = body[p:]
        if s and len(body) >= s and tuple(body[len(body) - s:].tolist()) == self.suffix:
            body = body[:len(body) - s]
        if len(body) == 0:
            return None
        out = np.empty(len(body) + 1, dtype=np.int64)
        out[:-1] = body
        out[-1] = self.sep_id
        return out


def added_specials(tok) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(prefix, suffix) ids the tokenizer adds around a text, e.g. ([CLS],), ([SEP],) for BERT."""
    plain = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a", add_special_tokens=True).ids
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return tuple(full[:i]), tuple(full[i + len(plain):])
    return (), ()


# -- the stream --------------------------------------------------------------
class _Tracker:
    """Inner-stream states around the last document pulled (what a snapshot needs)."""

    def __init__(self, start_state: dict | None):
        self.last = -1               # index of the last document pulled
        self.before = start_state    # inner state just before it (None = start of the pass)
        self.current = start_state   # inner state after the last item pulled
        self.names: dict[int, str] = {}


class PackedStream(IterableDataset):
    """Blocks of ``seq_len`` tokens cut from a document stream; see the module docstring.

    ``stream``: a ShardStream (or MixedStream, or anything with ``__iter__`` over dicts
    with ``input_ids``/``sample_id``/``is_pad``, ``state_dict``/``load_state_dict`` and
    ``set_epoch``).  ``sep_id``/``pad_id`` default to the tokenizer's (``shards.special_ids``);
    the tokenizer is ``tokenizer``, else ``stream.tokenizer``, else the one named in the
    manifest of pre-tokenized shards when it is a local path with the same fingerprint.
    """

    def __init__(self, stream, seq_len: int, *, split_documents: bool = True, sep_id: int | None = None,
                 pad_id: int | None = None, tokenizer=None):
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
        self.epoch = int(getattr(stream, "epoch", 0))
        self.stats: Counter = Counter()
        self._resume: dict | None = None
        self._snapshot: tuple[dict | None, int] = (None, 0)

    def collator(self) -> "BlockCollator":
        return BlockCollator(self.seq_len, self.pad_id)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.stream.set_epoch(self.epoch)

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        inner, offset = self._snapshot
        stats = Counter(getattr(self.stream, "stats", {}))
        stats.update(self.stats)
        return {"version": STATE_VERSION, "epoch": self.epoch, "seq_len": self.seq_len,
                "split_documents": self.split_documents, "inner": inner, "offset": offset,
                "stats": dict(stats)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"packed state version {state.get('version')!r}; this reader knows {STATE_VERSION}")
        saved = (state["seq_len"], state["split_documents"])
        if saved != (self.seq_len, self.split_documents):
            raise ValueError(f"state was saved with seq_len={saved[0]}, split_documents={saved[1]}; this stream "
                             f"has seq_len={self.seq_len}, split_documents={self.split_documents}: the blocks "
                             f"would differ. Resume with the same settings, or start at an epoch boundary")
        self.set_epoch(state["epoch"])
        self._resume = dict(state)

    # -- iteration -------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        # Not a generator itself: the snapshot must be right before the first next(),
        # since StatefulDataLoader asks for state as soon as the iterator exists.
        state, self._resume = self._resume, None
        inner, offset = (state["inner"], int(state["offset"])) if state else (None, 0)
        if inner is not None:
            self.stream.load_state_dict(inner)
        self._snapshot = (inner, offset)
        return self._blocks(inner, offset)

    def _blocks(self, start_state: dict | None, skip: int) -> Iterator[dict]:
        tracker = _Tracker(start_state)
        docs = self._documents(iter(self.stream), tracker)
        for pieces, cursor in cut_blocks(docs, self.seq_len, self.split_documents, skip):
            block = block_arrays(pieces, self.seq_len, self.pad_id)
            block["sample_ids"] = [tracker.names[p.doc] for p in pieces]
            for done in [d for d in tracker.names if d < cursor.doc]:
                del tracker.names[done]
            if cursor.doc == tracker.last:   # mid-document (or it did not fit): resume before it
                self._snapshot = (tracker.before, cursor.offset)
            else:                            # between documents
                self._snapshot = (tracker.current, 0)
            self.stats["blocks"] += 1
            self.stats["tokens"] += block["num_tokens"]
            self.stats["pad_tokens"] += self.seq_len - block["num_tokens"]
            yield block

    def _documents(self, items: Iterator[dict], tracker: _Tracker) -> Iterator[np.ndarray]:
        for item in items:
            state = self.stream.state_dict()
            if item.get("is_pad"):
                self.stats["pad_documents"] += 1
                tracker.current = state
                continue
            if "input_ids" not in item:
                raise ValueError("PackedStream needs token ids: give the inner ShardStream a tokenizer= or "
                                 "build the shards with --tokenizer")
            tokens = self.format.tokens(item["input_ids"])
            if tokens is None:
                self.stats["empty_documents"] += 1
                tracker.current = state
                continue
            tracker.before, tracker.current = tracker.current, state
            tracker.last += 1
            tracker.names[tracker.last] = item["sample_id"]
            self.stats["documents"] += 1
            yield tokens


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


# -- batches -------------------------------------------------------------------
@dataclass(frozen=True)
class BlockCollator:
    """Blocks → a batch: the arrays stacked to LongTensors [B, seq_len], ``is_pad`` [B],
    ``sample_ids`` (list per block), ``started_ids`` (flat list of the documents starting
    in the batch), ``num_tokens`` (real tokens, int) and the flash-attn varlen description
    of the flattened batch: ``cu_seqlens`` (int32) and ``max_seqlen``."""

    seq_len: int
    pad_id: int = 0

    def __call__(self, blocks: list[dict]) -> dict:
        batch = {k: torch.from_numpy(np.stack([b[k] for b in blocks])) for k in ARRAY_KEYS}
        batch["is_pad"] = torch.tensor([bool(b["is_pad"]) for b in blocks])
        batch["sample_ids"] = [list(b["sample_ids"]) for b in blocks]
        batch["started_ids"] = [_qualified(b, sid) for b in blocks
                                for sid, first in zip(b["sample_ids"], b["starts"]) if first]
        batch["num_tokens"] = sum(int(b["num_tokens"]) for b in blocks)
        seqlens = [n for b in blocks for n in b["seqlens"]]
        batch["cu_seqlens"] = torch.tensor([0, *accumulate(seqlens)], dtype=torch.int32)
        batch["max_seqlen"] = max(seqlens)
        if "source" in blocks[0]:  # blocks drawn by a MixedStream
            batch["source"] = torch.tensor([int(b.get("source", -1)) for b in blocks])
        return batch

    def filler(self, batch_size: int) -> dict:
        """A batch that trains nothing (labels all -100, ``is_pad`` True), for :func:`lockstep`.
        Its attention_mask is 1 so that any attention path stays finite (no all-masked rows)."""
        block = block_arrays([], self.seq_len, self.pad_id)
        block.update(attention_mask=np.ones(self.seq_len, dtype=np.int64), is_pad=True, sample_ids=[])
        return self([block] * batch_size)


def _qualified(block: dict, sample_id: str) -> str:
    """``SOURCE/SSSSS:RRRRRR`` for blocks drawn by a MixedStream (ids repeat across shard sets)."""
    return f"{block['source']}/{sample_id}" if "source" in block else sample_id


def lockstep(batches: Iterable[dict], filler: dict, *, device=None, group=None) -> Iterator[dict]:
    """Yield ``batches``, then ``filler`` until every rank of ``group`` has run out.

    One all-reduce (MAX of "I still have a batch") per step, so every rank takes the
    same number of steps even when block counts differ.  Without an initialised
    process group the batches pass through.  ``device``: where the flag lives (CUDA
    for NCCL; the default follows the backend).  Losses must be token sums divided by
    the global count of labels != -100 so filler steps add nothing (as pipeline.train does).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        yield from batches
        return
    if device is None:
        nccl = dist.get_backend(group) == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    it = iter(batches)
    done = False
    while True:
        batch = None if done else next(it, None)
        done = batch is None  # never call next() on a finished loader again
        flag = torch.tensor([0 if batch is None else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        if int(flag.item()) == 0:
            return
        yield filler if batch is None else batch
