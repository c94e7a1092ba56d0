"""ShardStream as ``train_dataset`` of ``transformers.Trainer`` (the tutorials' way), with max_steps."""
from __future__ import annotations

import pytest

from pipeline import Collator, ShardStream
from tests.conftest import build_set, minilm_path
from tests.trainkit import tiny_bert


class TrainerCollator:
    """pipeline.Collator, minus the bookkeeping fields the model's forward() does not take."""

    def __init__(self):
        self.inner = Collator(pad_id=0)
        self.seen: list[str] = []

    def __call__(self, items):
        batch = self.inner(items)
        self.seen += [s for s, pad in zip(batch.pop("sample_id"), batch.pop("is_pad").tolist()) if not pad]
        return batch


@pytest.mark.timeout(180)
def test_trainer_trains_on_a_shard_stream(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    train = build_set(tmp_path, n=30, max_records=4, name="train")
    ds = ShardStream(train, tokenizer=minilm_path(), max_length=32, shuffle=True, seed=0)
    model = BertForSequenceClassification.from_pretrained(tiny_bert(tmp_path / "bert"), num_labels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    collate = TrainerCollator()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=5, per_device_train_batch_size=4,
                             learning_rate=1e-3, remove_unused_columns=False, report_to=[], use_cpu=True,
                             save_strategy="no", logging_steps=1, dataloader_num_workers=0, seed=0)
    result = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate).train()
    assert result.global_step == 5
    assert result.training_loss > 0
    changed = [k for k, v in model.state_dict().items() if not v.equal(before[k])]
    assert changed, "the weights did not move"
    # 5 steps x 4 samples (the Trainer's loader may collate one batch ahead), 30 samples per
    # epoch: no sample repeated within the epoch
    assert 20 <= len(collate.seen) <= 28 and len(set(collate.seen)) == len(collate.seen)
