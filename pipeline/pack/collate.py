"""Packed blocks → batches: BlockCollator (the per-block path and fillers) and lockstep (equal steps over ranks).

    collate = BlockCollator(seq_len=1024, pad_id=0)      # PackedStream.collator()
    for batch in lockstep(loader, collate.filler(8)): ...  # ranks stay in step when block counts differ
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import get_worker_info

from pipeline.pack.cut import ARRAY_KEYS, empty_block


@dataclass(frozen=True)
class BlockCollator:
    """Blocks → a batch: the arrays stacked to LongTensors [B, seq_len], ``is_pad`` [B],
    ``sample_ids`` (list per block), ``started_ids`` (flat list of the documents starting
    in the batch), ``num_tokens`` (real tokens, int) and the flash-attn varlen description
    of the flattened batch: ``cu_seqlens`` (int32) and ``max_seqlen``."""

    seq_len: int
    pad_id: int = 0

    def __call__(self, blocks: list[dict]) -> dict:
        batch = {k: np.array([b[k] for b in blocks]) for k in ARRAY_KEYS}  # rows of equal length: [B, seq_len]
        batch["is_pad"] = np.array([bool(b["is_pad"]) for b in blocks], dtype=bool)
        batch["sample_ids"] = [list(b["sample_ids"]) for b in blocks]
        mixed = "source" in blocks[0]
        batch["started_ids"] = [_qualified(b, sid) if mixed else sid for b in blocks
                                for sid, first in zip(b["sample_ids"], b["starts"]) if first]
        batch["num_tokens"] = sum(int(b["num_tokens"]) for b in blocks)
        seqlens = [n for b in blocks for n in b["seqlens"]]
        batch["cu_seqlens"] = np.array([0, *accumulate(seqlens)], dtype=np.int32)
        batch["max_seqlen"] = max(seqlens)
        if mixed:  # blocks drawn by a MixedStream
            batch["source"] = np.array([int(b.get("source", -1)) for b in blocks], dtype=np.int64)
        if get_worker_info() is not None:
            return _WorkerBatch(batch)
        return _as_tensors(batch)

    def filler(self, batch_size: int) -> dict:
        """A batch that trains nothing (labels all -100, ``is_pad`` True), for :func:`lockstep`.
        Its attention_mask is 1 so that any attention path stays finite (no all-masked rows)."""
        block = empty_block(self.seq_len, self.pad_id)
        block.update(attention_mask=np.ones(self.seq_len, dtype=np.int64), is_pad=True, sample_ids=[])
        return self([block] * batch_size)


class _WorkerBatch(dict):
    """A batch made in a DataLoader worker: its arrays go through the pipe as numpy (one
    message; a tensor would cost a shared-memory segment and a file-descriptor handshake
    each, which dominated the main process's time) and unpickle as tensors."""

    def __reduce__(self):
        return _as_tensors, (dict(self),)


def _as_tensors(batch: dict) -> dict:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def _qualified(block: dict, sample_id: str) -> str:
    """``SOURCE/SSSSS:RRRRRR`` for blocks drawn by a MixedStream (ids repeat across shard sets)."""
    return f"{block['source']}/{sample_id}" if "source" in block else sample_id


def lockstep(batches: Iterable[dict], filler: dict, *, device=None, group=None) -> Iterator[dict]:
    """Yield ``batches``, then ``filler`` until every rank of ``group`` has run out.

    One all-reduce (MAX of "I still have a batch") per step, so every rank takes the
    same number of steps even when block counts differ.  Without an initialised
    process group the batches pass through.  ``device``: where the flag lives (CUDA
    for NCCL; the default follows the backend).  Losses must be token sums divided by
    the global count of labels != -100 so filler steps add nothing (as pipeline.train.loop does).
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
