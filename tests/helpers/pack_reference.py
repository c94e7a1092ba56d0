"""The packer as it was first written: one document, one piece, one block at a time.

Slow but plain; tests compare pipeline.pack.stream's chunked, vectorised packer with it
(every key of every block).  See pipeline/pack.py for the conventions.
"""
from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import numpy as np

from pipeline.pack.stream import IGNORE_INDEX, DocFormat


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
    tokens of the first document."""
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
    """One block's arrays and ``seqlens`` (runs incl. padding)."""
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


def reference_blocks(items: Iterable[dict], fmt: DocFormat, seq_len: int, split_documents: bool,
                     pad_id: int) -> list[dict]:
    """Every block of a whole pass over ``items`` (pads and empty documents left out)."""
    docs, names = [], []
    for item in items:
        if item.get("is_pad"):
            continue
        tokens = fmt.tokens(item["input_ids"])
        if tokens is not None:
            docs.append(tokens)
            names.append(item["sample_id"])
    out = []
    for pieces, _ in cut_blocks(docs, seq_len, split_documents):
        block = block_arrays(pieces, seq_len, pad_id)
        block["sample_ids"] = [names[p.doc] for p in pieces]
        out.append(block)
    return out
