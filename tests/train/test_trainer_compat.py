"""pipeline as others drive it: ShardStream under ``transformers.Trainer`` (its own DataLoader, 2
workers) with ``pipeline.TrainerCollator``; loaders that print no third-party noise; an import
that names a shadowing ``shards/`` folder."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch

from pipeline import ShardStream, TrainerCollator
from tests.helpers.data import ROOT, build_set, minilm_path
from tests.helpers.trainkit import tiny_bert


@dataclass(frozen=True)
class RecordingCollator(TrainerCollator):
    """TrainerCollator that appends each sample id it collates to a file: it runs in the
    Trainer's DataLoader workers, whose memory the test cannot see."""

    log: str = ""

    def __call__(self, items):
        with open(self.log, "a", encoding="utf-8") as f:
            f.write("".join(f"{it['sample_id']}\n" for it in items))
        return super().__call__(items)


@pytest.mark.timeout(180)
def test_trainer_with_two_workers_sees_every_sample_once(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    train = build_set(tmp_path, n=24, max_records=5, name="train")  # 5 shards, uneven
    ds = ShardStream(train, tokenizer=minilm_path(), max_length=32, shuffle=True, seed=0)
    model = BertForSequenceClassification.from_pretrained(tiny_bert(tmp_path / "bert"), num_labels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    collate = RecordingCollator(pad_id=0, log=str(tmp_path / "seen.txt"))
    # 24 samples, 2 workers of 12, batches of 4: one epoch is exactly 6 steps
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                             learning_rate=1e-3, remove_unused_columns=False, report_to=[], use_cpu=True,
                             save_strategy="no", logging_steps=1, dataloader_num_workers=2, seed=0)
    result = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate).train()
    assert result.global_step == 6 and result.training_loss > 0
    assert any(not v.equal(before[k]) for k, v in model.state_dict().items()), "the weights did not move"
    seen = pathlib.Path(collate.log).read_text().split()
    expected = {f"{s:05d}:{r:06d}" for s, n in enumerate((5, 5, 5, 5, 4)) for r in range(n)}
    assert sorted(seen) == sorted(expected), "each sample exactly once in the epoch, across both workers"


def _items(pads):
    return [{"sample_id": f"00000:{i:06d}", "is_pad": pad, "label": i % 2,
             "input_ids": [101] + [7 + i] * (i + 1) + [102]} for i, pad in enumerate(pads)]


def test_pads_never_reach_the_loss(tmp_path):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tiny_bert(tmp_path / "bert"), num_labels=2).eval()
    items = _items([False, True, False, True])
    masked = TrainerCollator()(items)
    assert set(masked) == {"input_ids", "attention_mask", "labels"}
    assert masked["labels"].tolist() == [0, -100, 0, -100]
    dropped = TrainerCollator(pads="drop")(items)
    assert dropped["labels"].tolist() == [0, 0] and dropped["input_ids"].shape[0] == 2
    real = TrainerCollator()([it for it in items if not it["is_pad"]])
    with torch.no_grad():
        losses = [model(**b).loss.item() for b in (masked, dropped, real)]
    assert losses[0] == pytest.approx(losses[2], rel=1e-4) and losses[1] == pytest.approx(losses[2], rel=1e-4)


def test_lm_labels_ignore_padding_and_pad_samples():
    batch = TrainerCollator(pad_id=0, task="lm")(_items([False, True]))
    assert batch["labels"].tolist() == [[101, 7, 102, -100], [-100] * 4]
    assert batch["input_ids"].tolist()[0] == [101, 7, 102, 0]


def test_collator_refusals_name_the_fix(tiny_set):
    with pytest.raises(ValueError, match="pads='keep'.*valid: mask, drop"):
        TrainerCollator(pads="keep")
    with pytest.raises(ValueError, match="no input_ids; pass tokenizer="):
        TrainerCollator()([{"sample_id": "00000:000000", "is_pad": False, "text": "a", "label": 0}])
    with pytest.raises(ValueError, match="no label; build the shards with --label-field"):
        TrainerCollator()([{"sample_id": "00000:000000", "is_pad": False, "input_ids": [1]}])
    ds = ShardStream(tiny_set, tokenizer=minilm_path())
    assert TrainerCollator.for_stream(ds).task == "classify"


QUIET = """
import sys, warnings
from pipeline import Collator, ShardStream, make_loader
# torch reports a non-writable array once per process (a fresh one here), so 0 workers go first
warnings.filterwarnings("error", message=".*NumPy array is not writable", category=UserWarning)
warnings.filterwarnings("error", message=".*set_vital.* is deprecated", category=UserWarning)
url, tok = sys.argv[1], sys.argv[2]
for workers in (0, 2):
    for collate in (None, Collator()):  # the default collate, and a custom collate_fn through BatchLoader
        ds = ShardStream(url, tokenizer=tok, max_length=16)
        print(sum(len(b["sample_id"]) for b in make_loader(ds, 8, workers, collate_fn=collate)))
"""


def test_loaders_print_no_third_party_warnings(tmp_path):
    # one shard bigger than a batch: its labels reach torch as a read-only view of the Arrow buffer
    url = build_set(tmp_path, n=50, max_records=1000)
    out = subprocess.run([sys.executable, "-c", QUIET, url, minilm_path()], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["50"] * 4
    assert "Warning" not in out.stderr, out.stderr[-2000:]


def test_a_local_shards_folder_is_named_as_the_cause(tmp_path):
    (tmp_path / "shards").mkdir()  # a data folder, no __init__.py: a namespace package
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "pipeline").symlink_to(ROOT / "pipeline")
    # whatever the install mode, only the data folder may answer to "shards": drop path
    # entries holding the real package, then import pipeline as `python -m pipeline.train` would
    code = textwrap.dedent(f"""
        import os, sys
        sys.path[:] = [{str(tmp_path)!r}, {str(tmp_path / 'pkg')!r}] + [
            p for p in sys.path[1:] if not os.path.isfile(os.path.join(p or '.', 'shards', '__init__.py'))]
        import pipeline
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: 'shards' resolved to the folder ") and str(tmp_path / "shards") in last
    assert "rename that folder or run from another directory" in last
