"""``TrainerCollator``: a ShardStream as ``train_dataset`` of ``transformers.Trainer``.

    collate = TrainerCollator.for_stream(ds)          # pad id from the stream's tokenizer
    Trainer(model=model, args=TrainingArguments(..., max_steps=500, remove_unused_columns=False,
                                                dataloader_num_workers=2),
            train_dataset=ds, data_collator=collate).train()

Trainer builds its own DataLoader; a ShardStream splits itself over that
loader's workers (``torch.utils.data.get_worker_info``) and over the ranks it
was built for, so every sample is read once per epoch with any worker count.

Batches hold only what a Hugging Face model's ``forward`` takes:
``input_ids``, ``attention_mask`` and ``labels``.  The bookkeeping fields
(``sample_id``, ``source``, ``text``) are left out.  Pad samples (``is_pad``:
repeats that even out ranks, records of a skipped corrupt shard) are weighted
out, not dropped: their labels become -100, the index every HF loss ignores
(and that Trainer leaves out of ``num_items_in_batch``), so batch shapes stay
fixed.  ``pads="drop"`` removes their rows instead, for a model whose loss
does not honour -100.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.collate import Collator
from pipeline.loader.make import pad_id

IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss's default ignore_index, used by every HF head
TASKS = ("classify", "lm")
PAD_POLICIES = ("mask", "drop")
MODEL_KEYS = ("input_ids", "attention_mask", "labels")


@dataclass(frozen=True)
class TrainerCollator:
    """``data_collator`` for Trainer over a ShardStream's items (see the module docstring).

    task: ``"classify"`` (labels = the shard's label ids) or ``"lm"`` (labels = the input ids,
    padding positions -100: the model shifts them).  pads: ``"mask"`` or ``"drop"``."""

    pad_id: int = 0
    task: str = "classify"
    pads: str = "mask"
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"TrainerCollator task={self.task!r}; valid: {', '.join(TASKS)}")
        if self.pads not in PAD_POLICIES:
            raise ValueError(f"TrainerCollator pads={self.pads!r}; valid: {', '.join(PAD_POLICIES)} "
                             f"(mask: labels -100, drop: rows removed)")

    @classmethod
    def for_stream(cls, stream, **kwargs) -> "TrainerCollator":
        """The collator for ``stream``: its tokenizer's pad id; ``task`` from whether it has labels."""
        kwargs.setdefault("task", "classify" if getattr(stream, "label_names", None) else "lm")
        return cls(pad_id=pad_id(stream), **kwargs)

    def __call__(self, items: list[dict]) -> dict:
        if not items:
            raise ValueError("TrainerCollator got an empty list of items; Trainer passes at least one")
        if "input_ids" not in items[0]:
            raise ValueError("TrainerCollator: the items carry no input_ids; pass tokenizer= to ShardStream "
                             "or build the shards with `shards build --tokenizer DIR`")
        batch = Collator(pad_id=self.pad_id, pad_to_multiple_of=self.pad_to_multiple_of)(items)
        pad = torch.as_tensor(batch["is_pad"], dtype=torch.bool)
        labels = self._labels(batch)
        out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
        if self.pads == "drop":
            return {key: value[~pad] for key, value in out.items()}
        labels[pad] = IGNORE_INDEX
        return out

    def _labels(self, batch: dict) -> torch.Tensor:
        if self.task == "lm":
            return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        if "labels" not in batch:
            raise ValueError("TrainerCollator task='classify': the items carry no label; build the shards "
                             "with --label-field, or use task='lm'")
        return batch["labels"]
