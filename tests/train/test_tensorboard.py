"""``--report-to tensorboard``: the event file in OUT/tb holds the tags at the steps promised; train.png optional."""
from __future__ import annotations

import ast
import json
import math
import sys

import pytest

from pipeline.train import loop as train
from pipeline.train import metrics
from pipeline.train.tensorboard import INSTALL, check_available
from tests.helpers.data import build_set, minilm_path
from tests.helpers.trainkit import tiny_gpt2

TRAIN_TAGS = {"train/loss", "train/lr", "train/samples_per_s", "train/tokens_per_s", "train/data_wait_fraction"}


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.timeout(240)
def test_lm_run_writes_train_and_eval_scalars_read_back(tmp_path, capsys):
    data = build_set(tmp_path, n=24, max_records=8)
    out = tmp_path / "run"
    assert train.main(["--train", data, "--eval", data, "--task", "lm", "--model", tiny_gpt2(tmp_path / "gpt2"),
                       "--tokenizer", minilm_path(),
                       "--steps", "4", "--batch-size", "4", "--max-length", "16", "--log-every", "2",
                       "--report-to", "tensorboard", "--out", str(out)]) == 0
    assert "before training: eval loss" in capsys.readouterr().out
    scalars = read_scalars(out / "tb")
    for tag in TRAIN_TAGS:
        assert [s for s, _ in scalars[tag]] == [2, 4], tag
    # perplexity before training (step 0) and at the final eval, and it falls
    ppl = dict(scalars["eval/perplexity"])
    assert sorted(ppl) == [0, 4] and ppl[4] < ppl[0]
    assert [s for s, _ in scalars["eval/loss"]] == [0, 4]
    assert math.isclose(ppl[4], math.exp(dict(scalars["eval/loss"])[4]), rel_tol=1e-4)
    assert scalars["train/lr"][0][1] > 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["initial_perplexity"] == pytest.approx(ppl[0], rel=1e-4)


def test_missing_tensorboard_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match=r"pip install shardstream\[tensorboard\]") as err:
        check_available("tensorboard")
    assert "\n" not in str(err.value) and INSTALL in str(err.value)
    check_available("none")  # not asked for: nothing to check


def test_plot_is_skipped_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    point = {"step": 1, "loss": 1.0, "samples_per_s": 1.0, "data_wait_fraction": 0.0}
    assert metrics.plot(str(tmp_path / "train.png"), [point]) == metrics.NO_MATPLOTLIB
    assert not (tmp_path / "train.png").exists()
    tree = ast.parse(open(metrics.__file__, encoding="utf-8").read())
    top = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    top += [n.module for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert not [m for m in top if m and m.startswith("matplotlib")]  # imported only when plotting
