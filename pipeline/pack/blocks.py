"""``BlockSet``: consecutive LM blocks as flat arrays, cut into batches by slicing.

A chunk's ``Cut`` (cut.py) becomes one BlockSet; batches are slices of it (and
joins of a chunk's tail with the next chunk's head), so a batch costs a few numpy
slices whatever its size: no per-block dict, no per-document string.  The
document names travel as int arrays and are formatted only when read
(``BlockIds``, ``chunk.SampleIds``).  ``collate.to_tensors`` derives ``labels`` and
``attention_mask`` from ``doc_ids`` in the main process, so they never cross the
worker pipe (where the ids travel narrowed, loader/message.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from pipeline.chunk import SampleIds
from pipeline.chunk import rechunk as chunk_rechunk
from pipeline.pack.cut import IGNORE_INDEX


@dataclass(frozen=True)
class BlockSet:
    ids: np.ndarray            # [n, seq_len], uint16 or int64 (PackedStream: what the vocabulary needs)
    positions: np.ndarray      # [n, seq_len], int16 or int64
    doc_ids: np.ndarray        # [n, seq_len], int16 or int64, -1 on padding
    num_tokens: np.ndarray     # int64 [n]
    runs: np.ndarray           # every block's runs (pieces, then padding), block b's at run_bounds[b]:[b+1]
    run_bounds: np.ndarray
    shard: np.ndarray          # per piece (a document's part in a block), block b's at piece_bounds[b]:[b+1]
    record: np.ndarray
    source: np.ndarray         # per piece: the mixture source of its document, -1 outside a mixture
    starts: np.ndarray         # per piece: the document starts in this block
    piece_bounds: np.ndarray
    after: "Positions"         # per block: the position after it (see PackedStream)

    def __len__(self) -> int:
        return len(self.num_tokens)

    def slice(self, lo: int, hi: int) -> "BlockSet":
        if lo == 0 and hi >= len(self):
            return self
        r0, r1 = int(self.run_bounds[lo]), int(self.run_bounds[hi])
        p0, p1 = int(self.piece_bounds[lo]), int(self.piece_bounds[hi])
        return BlockSet(self.ids[lo:hi], self.positions[lo:hi], self.doc_ids[lo:hi], self.num_tokens[lo:hi],
                        self.runs[r0:r1], self.run_bounds[lo:hi + 1] - r0, self.shard[p0:p1], self.record[p0:p1],
                        self.source[p0:p1], self.starts[p0:p1], self.piece_bounds[lo:hi + 1] - p0,
                        self.after.slice(lo, hi))

    def batch(self) -> dict:
        """The numpy batch the loader sends (see the module docstring)."""
        started = self.starts
        cu = np.zeros(len(self.runs) + 1, dtype=np.int32)
        np.cumsum(self.runs, out=cu[1:])
        return {"input_ids": self.ids, "position_ids": self.positions, "doc_ids": self.doc_ids,
                "is_pad": np.zeros(len(self), dtype=bool),
                "sample_ids": BlockIds(self.shard, self.record, self.source, self.piece_bounds),
                "started_ids": SampleIds(self.shard[started], self.record[started], self.source[started]),
                "num_tokens": int(self.num_tokens.sum()), "cu_seqlens": cu,
                "max_seqlen": int(self.runs.max()) if len(self.runs) else 0}

    def blocks(self) -> list[dict]:
        """One dict per block (the per-block API and custom collate functions)."""
        mask = (self.doc_ids >= 0).astype(np.int64)
        ids = self.ids.astype(np.int64)
        labels = np.where(mask == 1, ids, IGNORE_INDEX)
        names = BlockIds(self.shard, self.record, self.source, self.piece_bounds)
        runs, rb, pb = self.runs.tolist(), self.run_bounds.tolist(), self.piece_bounds.tolist()
        starts = self.starts.tolist()
        return [{"input_ids": ids[b], "labels": labels[b], "position_ids": self.positions[b].astype(np.int64),
                 "doc_ids": self.doc_ids[b].astype(np.int64), "attention_mask": mask[b],
                 "seqlens": runs[rb[b]:rb[b + 1]], "num_tokens": int(self.num_tokens[b]), "is_pad": False,
                 "starts": starts[pb[b]:pb[b + 1]], "sample_ids": names[b]} for b in range(len(self))]


def concat(sets: list[BlockSet]) -> BlockSet:
    if len(sets) == 1:
        return sets[0]
    cat = np.concatenate

    def bounds(name: str) -> np.ndarray:
        shift = np.cumsum([0] + [int(getattr(s, name)[-1]) for s in sets[:-1]])
        return cat([getattr(sets[0], name)[:1]] + [getattr(s, name)[1:] + k for s, k in zip(sets, shift)])

    return BlockSet(cat([s.ids for s in sets]), cat([s.positions for s in sets]), cat([s.doc_ids for s in sets]),
                    cat([s.num_tokens for s in sets]), cat([s.runs for s in sets]), bounds("run_bounds"),
                    cat([s.shard for s in sets]), cat([s.record for s in sets]), cat([s.source for s in sets]),
                    cat([s.starts for s in sets]), bounds("piece_bounds"), Positions.concat([s.after for s in sets]))


class Positions:
    """Per block, the position after it as integer arrays (``inners[which]``: the inner
    stream's position it counts from); a dict is made only for the blocks asked for."""

    __slots__ = ("inners", "which", "skip", "offset", "blocks")

    def __init__(self, inners: list, which: np.ndarray, skip: np.ndarray, offset: np.ndarray, blocks: np.ndarray):
        self.inners, self.which, self.skip, self.offset, self.blocks = inners, which, skip, offset, blocks

    def __len__(self) -> int:
        return len(self.which)

    def __getitem__(self, i: int) -> dict:
        return {"inner": self.inners[int(self.which[i])], "skip": int(self.skip[i]), "offset": int(self.offset[i]),
                "blocks": int(self.blocks[i])}

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def slice(self, lo: int, hi: int) -> "Positions":
        return Positions(self.inners, self.which[lo:hi], self.skip[lo:hi], self.offset[lo:hi], self.blocks[lo:hi])

    @staticmethod
    def concat(parts: list["Positions"]) -> "Positions":
        shift = np.cumsum([0] + [len(p.inners) for p in parts[:-1]])
        cat = np.concatenate
        return Positions([x for p in parts for x in p.inners], cat([p.which + k for p, k in zip(parts, shift)]),
                         cat([p.skip for p in parts]), cat([p.offset for p in parts]), cat([p.blocks for p in parts]))


def rechunk(sets: Iterable[BlockSet], size: int) -> Iterator[BlockSet]:
    """The same blocks in sets of exactly ``size`` (the last may be shorter)."""
    return chunk_rechunk(sets, size, concat)


class BlockIds:
    """Per block, the ids of its documents ("SSSSS:RRRRRR", ``SOURCE/`` prefixed in a
    mixture), formatted when first read: they cross the pipe as int arrays."""

    __slots__ = ("ids", "bounds", "_lists")

    def __init__(self, shard: np.ndarray, record: np.ndarray, source: np.ndarray, bounds: np.ndarray):
        self.ids, self.bounds, self._lists = SampleIds(shard, record, source), bounds, None

    def _all(self) -> list[list[str]]:
        if self._lists is None:
            flat, cuts = self.ids.tolist(), self.bounds.tolist()
            self._lists = [flat[a:z] for a, z in zip(cuts[:-1], cuts[1:])]
        return self._lists

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, i):
        return self._all()[i]

    def __iter__(self):
        return iter(self._all())

    def __eq__(self, other) -> bool:
        return self._all() == [list(x) for x in other] if isinstance(other, (list, tuple, BlockIds)) else NotImplemented

    def __repr__(self) -> str:
        return f"BlockIds({self._all()!r})"

    def __reduce__(self):
        return BlockIds, (self.ids.shard, self.ids.record, self.ids.source, self.bounds)

    def tolist(self) -> list[list[str]]:
        return [list(x) for x in self._all()]


def block_dtypes(tokenizer, seq_len: int, specials: tuple[int, ...]) -> tuple:
    """(ids, positions/doc ids) dtypes of the blocks: 16 bits where every value fits (a
    vocabulary known to be under 65536, blocks under 32768 tokens), else 32 / 64; the
    loader widens them to LongTensors in the main process (they cross the pipe narrow)."""
    vocab = tokenizer.get_vocab_size(with_added_tokens=True) if tokenizer is not None else None
    fits16 = vocab is not None and max(vocab - 1, *specials) < 1 << 16 and min(specials) >= 0
    return (np.uint16 if fits16 else np.int64), (np.int16 if seq_len < 1 << 15 else np.int64)
