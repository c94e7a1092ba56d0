"""Cutting documents into LM blocks a chunk at a time, with numpy instead of a loop per document.

The conventions (separators, padding, positions, doc ids, what ``starts`` means)
are pack.py's; this module is its arithmetic.  Documents are laid on a *virtual
stream*: document ``i`` occupies positions ``[start_i, start_i + n_i)`` and block
``b`` is positions ``[b * seq_len, (b + 1) * seq_len)``.  With
``split_documents=True`` the starts are the running sum of the lengths; with
``False`` a document that does not fit in the space left in its block moves to the
next block start (the gap is padding), which is a sequential rule and the one
Python loop here (integers only).  Every other array of a chunk — pieces (a
document's part in one block), token destinations, positions, doc ids, the resume
cursor after each block and the tail carried to the next chunk — comes from
``cumsum``/``repeat``/``searchsorted`` over those starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

IGNORE_INDEX = -100  # the label value torch's cross-entropy and HF models skip
ARRAY_KEYS = ("input_ids", "labels", "position_ids", "doc_ids", "attention_mask")
_I64 = np.int64


def exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    """[0, v0, v0 + v1, ...] without the total: where each run starts."""
    out = np.zeros(len(values), dtype=_I64)
    if len(values) > 1:
        np.cumsum(values[:-1], out=out[1:])
    return out


# -- documents -----------------------------------------------------------------------
@dataclass(frozen=True)
class DocFormat:
    """How an item's ids become a document: strip the tokenizer's specials, append ``sep_id``."""

    sep_id: int
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()

    def tokens(self, ids) -> np.ndarray | None:
        """One document's tokens with the separator, or None when it has no tokens."""
        body = np.asarray(ids)
        p, s = len(self.prefix), len(self.suffix)
        if p and len(body) >= p and tuple(body[:p].tolist()) == self.prefix:
            body = body[p:]
        if s and len(body) >= s and tuple(body[len(body) - s:].tolist()) == self.suffix:
            body = body[:len(body) - s]
        if len(body) == 0:
            return None
        out = np.empty(len(body) + 1, dtype=_I64)
        out[:-1] = body
        out[-1] = self.sep_id
        return out

    def join(self, arrays: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``tokens`` of many documents at once: (their tokens end to end, their lengths,
        a mask of the inputs that had tokens; the empty ones are left out of the first two)."""
        raw = np.fromiter(map(len, arrays), dtype=_I64, count=len(arrays))
        flat = np.concatenate(arrays) if len(arrays) else np.zeros(0, _I64)
        return self.join_flat(flat, raw)

    def join_flat(self, flat: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``join`` of documents given end to end: ``flat`` ids, ``raw`` length of each
        (the form a columnar reader has them in, with no per-document arrays)."""
        lo = exclusive_cumsum(raw)
        hi = lo + raw
        lo = lo + len(self.prefix) * _has(flat, lo, hi - lo, self.prefix, at_end=False)
        hi = hi - len(self.suffix) * _has(flat, lo, hi - lo, self.suffix, at_end=True)
        body = hi - lo
        kept = body > 0
        if not kept.all():
            lo, body = lo[kept], body[kept]
        lengths = body + 1
        total = int(lengths.sum())
        out = np.empty(total, dtype=np.int32)  # token ids fit int32; a third less to move than int64
        seps = np.cumsum(lengths) - 1
        is_body = np.ones(total, dtype=bool)
        is_body[seps] = False
        n_body = total - len(seps)
        source = np.arange(n_body, dtype=_I64) + np.repeat(lo - exclusive_cumsum(body), body)
        out[is_body] = flat[source]
        out[seps] = self.sep_id
        return out, lengths, kept


def _has(flat: np.ndarray, lo: np.ndarray, n: np.ndarray, pattern: tuple[int, ...], at_end: bool) -> np.ndarray:
    """Per document [lo, lo + n) of ``flat``: 1 where it starts (ends) with ``pattern``, else 0."""
    k = len(pattern)
    if k == 0 or len(flat) == 0:
        return np.zeros(len(lo), dtype=_I64)
    ok = n >= k
    first = lo + n - k if at_end else lo
    for j, token in enumerate(pattern):
        at = np.clip(first + j, 0, len(flat) - 1)  # clipped reads are masked by ``n >= k``
        ok &= flat[at] == token
    return ok.astype(_I64)


def added_specials(tok) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(prefix, suffix) ids the tokenizer adds around a text, e.g. ([CLS],), ([SEP],) for BERT."""
    plain = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a", add_special_tokens=True).ids
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return tuple(full[:i]), tuple(full[i + len(plain):])
    return (), ()


@dataclass(frozen=True)
class Docs:
    """Documents (or the unemitted tails of documents) waiting to be cut, in stream order.

    ``offsets``: tokens of each document emitted before this part (0: it starts here);
    ``shard``/``record``/``source``: its name (source -1 outside a mixture), formatted only
    when a batch's ids are read; ``chunks``/``items``: where each came from (the chunk it
    was read in and its item index there), which is what a resume position names."""

    tokens: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    shard: np.ndarray
    record: np.ndarray
    source: np.ndarray
    chunks: np.ndarray
    items: np.ndarray

    @staticmethod
    def empty() -> "Docs":
        z = np.zeros(0, dtype=_I64)
        return Docs(np.zeros(0, np.int32), z, z, z, z, z, z, z)

    def __len__(self) -> int:
        return len(self.lengths)

    def __add__(self, other: "Docs") -> "Docs":
        if not len(self):
            return other
        if not len(other):
            return self
        return Docs(*(np.concatenate([a, b]) for a, b in zip(self._fields(), other._fields())))

    def _fields(self) -> tuple:
        return (self.tokens, self.lengths, self.offsets, self.shard, self.record, self.source, self.chunks,
                self.items)

    def part(self, first: int, tokens_from: int, done: np.ndarray) -> "Docs":
        """Documents ``first..`` with tokens from ``tokens_from`` on, ``done`` of each emitted."""
        return Docs(self.tokens[tokens_from:], self.lengths[first:] - done, self.offsets[first:] + done,
                    self.shard[first:], self.record[first:], self.source[first:], self.chunks[first:],
                    self.items[first:])

    def skip_first(self, n: int) -> "Docs":
        """Resumed ``n`` tokens into the first document (``n`` counted from the document's start,
        so tokens an elastic resume already skipped, ``offsets``, count too)."""
        if n <= 0 or not len(self):
            return self
        done, length = int(self.offsets[0]), int(self.offsets[0] + self.lengths[0])
        if not done <= n < length:
            raise ValueError(f"resume offset {n} is outside document {int(self.shard[0]):05d}:"
                             f"{int(self.record[0]):06d} ({length} tokens, {done} emitted before): the state "
                             f"belongs to other data")
        first = np.zeros(len(self), dtype=_I64)
        first[0] = n - done
        return self.part(0, n - done, first)

    def skip_begun(self, begun: dict[tuple[int, int], int]) -> "Docs":
        """Without the tokens already emitted of documents begun before an elastic resume:
        ``begun`` maps (shard, record) to those tokens (pack/stream.py)."""
        if not begun or not len(self):
            return self
        keys = self.shard * (1 << 32) + self.record
        wanted = np.array([s * (1 << 32) + r for s, r in begun], dtype=_I64)
        hit = np.flatnonzero(np.isin(keys, wanted) & (self.offsets == 0))
        if not len(hit):
            return self
        done = np.zeros(len(self), dtype=_I64)
        for i in hit.tolist():
            done[i] = begun[(int(self.shard[i]), int(self.record[i]))]
            if done[i] >= self.lengths[i]:
                raise ValueError(f"elastic resume: {int(done[i])} tokens of document {int(self.shard[i]):05d}:"
                                 f"{int(self.record[i]):06d} emitted, but it has {int(self.lengths[i])}: the state "
                                 f"belongs to other data")
        keep = np.ones(len(self.tokens), dtype=bool)
        for i, start in zip(hit.tolist(), exclusive_cumsum(self.lengths)[hit].tolist()):
            keep[start:start + int(done[i])] = False
        return Docs(self.tokens[keep], self.lengths - done, self.offsets + done, self.shard, self.record,
                    self.source, self.chunks, self.items)


# -- cutting ---------------------------------------------------------------------------
class Cut(NamedTuple):
    """The complete blocks of a chunk and what is left for the next one, as flat arrays.

    ``ids``/``positions``/``doc_ids``: [n_blocks, seq_len] of ``dtypes`` (doc_ids -1 on padding);
    ``num_tokens``: real tokens per block; ``runs``: every block's runs (its pieces, then
    its padding if any), block b's at ``run_bounds[b]:run_bounds[b + 1]``; pieces (a
    document's part in one block), block b's at ``piece_bounds[b]:...``: ``piece_doc``
    (index in the input) and ``piece_starts`` (the document starts there); ``cursors``:
    per block (document index in the input, tokens of it emitted) of the next token to
    emit, document == len(input) when every input token is out; ``carry``: the tokens not
    in a complete block."""

    ids: np.ndarray
    positions: np.ndarray
    doc_ids: np.ndarray
    num_tokens: np.ndarray
    runs: np.ndarray
    run_bounds: np.ndarray
    piece_doc: np.ndarray
    piece_starts: np.ndarray
    piece_bounds: np.ndarray
    cursors: tuple
    carry: Docs


def virtual_starts(lengths: np.ndarray, seq_len: int, split_documents: bool) -> np.ndarray:
    if split_documents:
        return exclusive_cumsum(lengths)
    starts, pos = [], 0
    for n in lengths.tolist():
        used = pos % seq_len
        if used and n > seq_len - used:  # does not fit: the rest of this block is padding
            pos += seq_len - used
        starts.append(pos)
        pos += n
    return np.array(starts, dtype=_I64)


def cut(docs: Docs, seq_len: int, split_documents: bool, pad_id: int, final: bool,
        dtypes: tuple = (_I64, _I64)) -> Cut:
    """The blocks ``docs`` complete (``final``: all of them, the last one padded); ``dtypes``:
    of the ids and of the positions/doc ids (narrow ones travel the worker pipe cheaper)."""
    S = seq_len
    vs = virtual_starts(docs.lengths, S, split_documents)
    ends = vs + docs.lengths
    total = int(ends[-1]) if len(ends) else 0
    n_blocks = -(-total // S) if final else total // S
    limit = n_blocks * S
    # pieces: document i's part in block b, for every block it touches before the limit
    n_in = int(np.searchsorted(vs, limit, "left"))
    first_block = vs[:n_in] // S
    count = (np.minimum(ends[:n_in], limit) - 1) // S - first_block + 1
    piece_doc = np.repeat(np.arange(n_in, dtype=_I64), count)
    n_pieces = len(piece_doc)
    piece_block = first_block[piece_doc] + np.arange(n_pieces, dtype=_I64) - np.repeat(exclusive_cumsum(count), count)
    block_lo = piece_block * S
    piece_start = np.maximum(vs[piece_doc], block_lo)
    piece_len = np.minimum(ends[piece_doc], block_lo + S) - piece_start
    n_real = int(piece_len.sum())
    bounds = np.searchsorted(piece_block, np.arange(n_blocks + 1, dtype=_I64))  # block b: pieces bounds[b]:bounds[b+1]
    real_per_block = np.bincount(piece_block, weights=piece_len, minlength=n_blocks).astype(_I64)
    ids, positions, doc_ids = _block_arrays(docs.tokens[:n_real], piece_start, piece_len, bounds, piece_block,
                                            real_per_block, n_blocks, S, pad_id, dtypes)
    starts = (piece_start == vs[piece_doc]) & (docs.offsets[piece_doc] == 0)
    padded = real_per_block < S  # a block's padding is one more run after its pieces
    runs = np.insert(piece_len, bounds[1:][padded], (S - real_per_block)[padded])
    run_bounds = bounds + np.concatenate([[0], np.cumsum(padded)])
    return Cut(ids, positions, doc_ids, real_per_block, runs, run_bounds, piece_doc, starts, bounds,
               _cursors(docs, vs, ends, n_blocks, S), _carry(docs, vs, ends, limit, n_real))


def _block_arrays(tokens, piece_start, piece_len, bounds, piece_block, real_per_block, n_blocks, S, pad_id,
                  dtypes) -> tuple:
    n_real = len(tokens)
    size = n_blocks * S
    ids_dtype, small = dtypes
    run_lo = np.repeat(exclusive_cumsum(piece_len), piece_len)
    within = (np.arange(n_real, dtype=_I64) - run_lo).astype(small, copy=False)  # index in the piece: < S
    local = (np.arange(len(piece_len), dtype=_I64) - bounds[piece_block]).astype(small)  # piece index in block
    contiguous = n_real == 0 or int(piece_start[-1] + piece_len[-1]) == n_real  # no gaps before the last token
    where = slice(0, n_real) if contiguous else np.repeat(piece_start, piece_len) + within
    ids = np.full(size, pad_id, dtype=ids_dtype)
    ids[where] = tokens
    doc_ids = np.full(size, -1, dtype=small)
    doc_ids[where] = np.repeat(local, piece_len)
    # padding is trailing in its block and its own run from 0
    positions = np.tile(np.arange(S, dtype=small), n_blocks) - np.repeat(real_per_block.astype(small), S)
    positions[where] = within
    shape = (n_blocks, S)
    return ids.reshape(shape), positions.reshape(shape), doc_ids.reshape(shape)


def _cursors(docs: Docs, vs, ends, n_blocks: int, S: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block: (document holding the next token, tokens of it emitted before that token)."""
    at = (np.arange(n_blocks, dtype=_I64) + 1) * S
    nxt = np.searchsorted(ends, at, "right")  # first document not finished by the block's end
    safe = np.minimum(nxt, max(len(docs) - 1, 0))
    if len(docs):
        emitted = docs.offsets[safe] + np.maximum(0, at - vs[safe])
    else:
        emitted = np.zeros(n_blocks, dtype=_I64)
    return nxt, np.where(nxt < len(docs), emitted, 0)


def _carry(docs: Docs, vs, ends, limit: int, n_real: int) -> Docs:
    first = int(np.searchsorted(ends, limit, "right"))
    if first >= len(docs):
        return Docs.empty()
    return docs.part(first, n_real, np.maximum(0, limit - vs[first:]))


def empty_block(seq_len: int, pad_id: int) -> dict:
    """A block with no tokens (all padding), in the form PackedStream yields."""
    return {"input_ids": np.full(seq_len, pad_id, dtype=_I64), "labels": np.full(seq_len, IGNORE_INDEX, dtype=_I64),
            "position_ids": np.arange(seq_len, dtype=_I64), "doc_ids": np.full(seq_len, -1, dtype=_I64),
            "attention_mask": np.zeros(seq_len, dtype=_I64), "seqlens": [seq_len], "num_tokens": 0,
            "is_pad": False, "starts": [], "sample_ids": []}
