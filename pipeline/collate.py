"""Dynamic padding: a list of stream items → a dict of arrays (tensors in the main process).

Pads to the longest sequence in the batch (optionally rounded up to a
multiple, which tensor cores like).  ``is_pad`` flags the repeats that even
out ranks; the training loop leaves them out of the loss and the audit.

Inside DataLoader workers the batch stays numpy: a few small arrays pickle
through the worker pipe about 3x faster than tensors, each of which costs a
shared-memory segment and a file-descriptor handshake.  ``to_tensors`` turns
it into tensors in the main process (zero-copy).  The loader's batches carry
their ids unpadded (``RaggedIds``: the rows end to end and their lengths, a
quarter of the padded bytes for SST-2), padded once, by ``to_tensors``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.chunk import SampleIds

# LongTensors, whatever width travelled
LONG_KEYS = ("input_ids", "attention_mask", "labels", "position_ids", "doc_ids")
IGNORE_INDEX = -100  # the label value torch's cross-entropy and HF models skip


@dataclass(frozen=True)
class Collator:
    pad_id: int = 0
    pad_to_multiple_of: int | None = None
    keep_text: bool = False
    as_numpy: bool = False  # True inside loader workers; make_loader converts in the main process

    def __call__(self, items: list[dict]) -> dict:
        batch: dict = {"sample_id": [it["sample_id"] for it in items],
                       "is_pad": np.fromiter((bool(it.get("is_pad", False)) for it in items), bool, len(items))}
        if "input_ids" in items[0]:
            batch["input_ids"], batch["attention_mask"] = pad(items, self.pad_id, self.pad_to_multiple_of)
        if "label" in items[0]:
            batch["labels"] = np.fromiter((it["label"] for it in items), np.int64, len(items))
        if "source" in items[0]:  # MixedStream: sample ids repeat across its sources
            batch["source"] = np.fromiter((it["source"] for it in items), np.int64, len(items))
        if "text" in items[0] and (self.keep_text or "input_ids" not in items[0]):  # text-only: the texts
            batch["text"] = [it["text"] for it in items]
        return batch if self.as_numpy else to_tensors(batch)


class RaggedIds:
    """A batch's token ids unpadded: ``values`` (the rows end to end), ``lengths`` (one per row),
    the ``width`` and ``pad_id`` to pad them to.  ``to_tensors`` makes ``input_ids`` and
    ``attention_mask`` of it; over the worker pipe it moves a quarter of the padded bytes."""

    __slots__ = ("values", "lengths", "width", "pad_id")

    def __init__(self, values: np.ndarray, lengths: np.ndarray, width: int, pad_id: int):
        self.values, self.lengths, self.width, self.pad_id = values, lengths, width, pad_id

    def __reduce__(self):
        return RaggedIds, (self.values, self.lengths, self.width, self.pad_id)

    def __len__(self) -> int:
        return len(self.lengths)

    def padded(self, dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
        """``[rows, width]`` ids (``pad_id`` past each row) and the 0/1 attention mask."""
        mask = np.arange(self.width) < self.lengths[:, None]
        ids = np.full(mask.shape, self.pad_id, dtype=dtype)
        ids[mask] = self.values
        return ids, mask.astype(dtype)


def collate_chunk(chunk, pad_id: int, multiple: int | None = None, keep_text: bool = False,
                  ragged: bool = False) -> dict:
    """``Collator``'s batch, as numpy, from a columnar Chunk in a few array operations; with
    ``ragged`` its ids are one ``RaggedIds`` under ``input_ids`` (to_tensors pads them)."""
    batch: dict = {"sample_id": SampleIds(chunk.shard, chunk.record), "is_pad": chunk.is_pad}
    if chunk.ids is not None:
        lengths = chunk.ids.lengths
        width = int(lengths.max()) if len(chunk) else 0
        if multiple:
            width = -(-width // multiple) * multiple
        if ragged:
            batch["input_ids"] = RaggedIds(chunk.ids.values, lengths, width, pad_id)
        else:  # int32: to_tensors widens them
            batch["input_ids"], batch["attention_mask"] = chunk.ids.padded(width, pad_id, np.int32)
    if chunk.label is not None:
        batch["labels"] = chunk.label.astype(np.int64, copy=False)
    if keep_text and chunk.text is not None:
        batch["text"] = list(chunk.text)
    return batch


def pad(items: list[dict], pad_id: int, multiple: int | None) -> tuple[np.ndarray, np.ndarray]:
    lengths = [len(it["input_ids"]) for it in items]
    width = max(lengths) if lengths else 0
    if multiple:
        width = -(-width // multiple) * multiple
    ids = np.full((len(items), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    for i, it in enumerate(items):
        n = lengths[i]
        ids[i, :n] = it["input_ids"]
        mask[i, :n] = 1
    return ids, mask


def to_tensors(batch: dict, pin_memory: bool = False) -> dict:
    if "doc_ids" in batch and "attention_mask" not in batch:
        batch = with_lm_targets(batch)
    out = {}
    for key, value in batch.items():
        if isinstance(value, RaggedIds):  # padded here, once, straight to int64
            ids, mask = value.padded()
            out["input_ids"], out["attention_mask"] = _tensor(ids, pin_memory), _tensor(mask, pin_memory)
            continue
        if isinstance(value, torch.Tensor):  # a view of a worker message's shared memory (loader/message.py)
            value = value.long() if key in LONG_KEYS and value.dtype != torch.int64 else value
            if pin_memory:
                value = value.pin_memory()
        elif isinstance(value, np.ndarray):
            if key in LONG_KEYS and value.dtype != np.int64:
                value = value.astype(np.int64)
            elif not value.flags.writeable:
                # a zero-copy view of a shard's Arrow buffer (labels read in the main process,
                # num_workers=0): torch wants to own writable memory, so copy this one array
                value = value.copy()
            value = torch.from_numpy(value)
            if pin_memory:
                value = value.pin_memory()
        out[key] = value
    return out


def _tensor(array: np.ndarray, pin_memory: bool) -> torch.Tensor:
    value = torch.from_numpy(array)
    return value.pin_memory() if pin_memory else value


def with_lm_targets(batch: dict) -> dict:
    """An LM block batch (pack/blocks.py) with ``attention_mask`` (1 on real tokens) and
    ``labels`` (the ids, -100 on padding), derived from ``doc_ids`` (-1 on padding): they
    are not sent over the worker pipe."""
    real = batch["doc_ids"] >= 0
    ids = batch["input_ids"].astype(np.int64, copy=False)
    return {**batch, "input_ids": ids, "labels": np.where(real, ids, IGNORE_INDEX),
            "attention_mask": real.astype(np.int64)}
