"""OUT/model is a complete Hugging Face model folder: weights, named labels, the run's tokenizer.

User-level commands: ``python -m pipeline.train`` → ``from_pretrained(OUT/model)`` →
``python -m pipeline.train --model OUT/model`` (no ``--tokenizer``) trains on with the same ids.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.data import ROOT, minilm_path, write_jsonl
from tests.helpers.trainkit import ENV, tiny_bert, tiny_gpt2

NAMES = ["Business", "Sci/Tech", "Sports", "World"]  # label ids follow the sorted names
SAMPLE = "Stocks rallied after the central bank's surprise rate cut, unlike the Lakers."


def train_cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline.train", "--steps", "5", "--batch-size", "4", "--max-length", "24",
           "--log-every", "5", *args]
    return subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def news(tmp_path_factory):
    """A 4-label shard set built with ``shards build`` (labels named by the data)."""
    tmp = tmp_path_factory.mktemp("news")
    src = write_jsonl(tmp / "news.jsonl", [{"text": f"headline {i} about {NAMES[i % 4].lower()}",
                                           "label": NAMES[i % 4]} for i in range(32)])
    out = tmp / "shards"
    subprocess.run([sys.executable, "-m", "shards", "build", src, "--out", str(out), "--label-field", "label",
                    "--max-records", "8", "--no-progress"], env=ENV, cwd=ROOT, check=True, capture_output=True)
    return {"shards": str(out), "bert": tiny_bert(tmp / "bert"), "tmp": tmp}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_model_folder_round_trip(news, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    first = tmp_path / "first"
    proc = train_cli("--train", news["shards"], "--model", news["bert"], "--tokenizer", minilm_path(),
                     "--out", str(first))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the tiny model's 2-label head is replaced, said in one line of ours
    assert "classifier head initialised for 4 labels (Business, Sci/Tech, Sports, World)" in proc.stdout
    folder = first / "model"
    expected = AutoTokenizer.from_pretrained(minilm_path())(SAMPLE)["input_ids"]
    assert AutoTokenizer.from_pretrained(folder)(SAMPLE)["input_ids"] == expected
    model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert model.config.id2label == dict(enumerate(NAMES))
    assert model.config.label2id == {n: i for i, n in enumerate(NAMES)}

    second = tmp_path / "second"  # no --tokenizer: the folder's own
    proc = train_cli("--train", news["shards"], "--model", str(folder), "--out", str(second))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "initialised" not in proc.stdout  # the head came from the folder
    assert AutoTokenizer.from_pretrained(second / "model")(SAMPLE)["input_ids"] == expected
    assert json.loads((second / "model" / "config.json").read_text())["id2label"]["3"] == "World"


@pytest.mark.timeout(120)
def test_model_folder_without_tokenizer_is_a_one_line_error(tmp_path):
    bare = tiny_gpt2(tmp_path / "gpt2")  # weights and config only; refused before any data is read
    proc = train_cli("--train", str(tmp_path / "shards"), "--task", "lm", "--model", bare, "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "has no tokenizer" in lines[0] and "--tokenizer" in lines[0] and bare in lines[0]
    assert not (tmp_path / "x" / "metrics.json").exists()
