"""Dynamic padding: a list of stream items → a dict of tensors.

Pads to the longest sequence in the batch (optionally rounded up to a
multiple, which tensor cores like).  ``is_pad`` flags the repeats that even
out ranks; the training loop leaves them out of the loss and the audit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Collator:
    pad_id: int = 0
    pad_to_multiple_of: int | None = None
    keep_text: bool = False

    def __call__(self, items: list[dict]) -> dict:
        batch: dict = {"sample_id": [it["sample_id"] for it in items],
                       "is_pad": torch.tensor([bool(it.get("is_pad", False)) for it in items])}
        if "input_ids" in items[0]:
            ids, mask = pad(items, self.pad_id, self.pad_to_multiple_of)
            batch["input_ids"], batch["attention_mask"] = ids, mask
        if "label" in items[0]:
            batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
        if self.keep_text and "text" in items[0]:
            batch["text"] = [it["text"] for it in items]
        return batch


def pad(items: list[dict], pad_id: int, multiple: int | None) -> tuple[torch.Tensor, torch.Tensor]:
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
    return torch.from_numpy(ids), torch.from_numpy(mask)
