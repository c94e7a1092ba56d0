"""Elastic resume with real torchrun on gloo: a classify run stopped mid-epoch goes 2 -> 1 -> 3 processes,
workers 2 -> 0 -> 2, batch 4 -> 6 -> 4; the step follows samples seen (one mapping line per change) and
``shards audit`` proves every sample of the completed epoch trained exactly once across the changes."""
from __future__ import annotations

import json
import re

import pytest

from pipeline.train import checkpoint
from shards import audit
from tests.helpers.data import build_set, minilm_path
from tests.helpers.trainkit import run_torchrun, tiny_bert, tiny_gpt2, train_args

N = 41  # records: 2 ranks need a pad, 3 ranks two
# (processes, workers, batch, --steps): each stretch but the last stops mid-epoch 0; the last finishes it
# and trains into epoch 1, so the audit counts epoch 0 as complete
STRETCHES = [(2, 2, 4, 2), (1, 0, 6, 4), (3, 2, 4, 6)]


def mapping_lines(text: str) -> list[str]:
    return [line.split("global batch", 1)[1].strip() for line in text.splitlines() if "global batch" in line
            and "continues as step" in line]


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.timeout(900)
def test_two_one_three_processes_train_every_sample_once(tmp_path, capsys):
    train = build_set(tmp_path, n=N, max_records=5, name="train")
    model = tiny_bert(tmp_path / "model")
    out = tmp_path / "run"
    lines = []
    for i, (nproc, workers, batch, steps) in enumerate(STRETCHES):
        extra = ["--num-workers", str(workers), "--audit", "--seed", "3", "--log-every", "1"]
        extra += ["--resume"] if i == 1 else (["--resume", "auto"] if i == 2 else [])
        proc = run_torchrun(nproc, train_args(train, None, model, out, steps, batch, "classify", *extra), timeout=400)
        lines += mapping_lines(proc.stdout + proc.stderr)
        state = json.loads((out / "checkpoint" / (out / "checkpoint" / "latest").read_text().strip()
                            / "state.json").read_text())
        assert (state["step"], state["world_size"], state["batch_size"]) == (steps, nproc, batch)
    # samples seen: 2 steps x 8, then 2 x 6, then 4 x 12; step 16 // 6 = 2, then 28 // 12 = 2
    assert lines == ["8 -> 6 (world x batch x grad_accum: 2 x 4 x 1 -> 1 x 6 x 1): step 2 (16 samples seen) "
                     "continues as step 2",
                     "6 -> 12 (world x batch x grad_accum: 1 x 6 x 1 -> 3 x 4 x 1): step 4 (28 samples seen) "
                     "continues as step 2"]
    assert state["samples_seen"] == 28 + 4 * 12 and state["updates"] == 2 + 2 + 4
    ranks = checkpoint.load(str(out), checkpoint.step_name(6)).state["ranks"]  # rank 0's + the parts
    assert len(ranks) == 3 and all(len(r["loader"]["workers"]) == 2 for r in ranks)
    status = audit.main([str(out)])
    report = capsys.readouterr().out
    assert status == 0, report[-3000:]
    assert "1 complete epoch(s)" in report and "each sample trained exactly once per complete epoch" in report
    assert f"epoch 0 (complete): {N}/{N} samples trained" in report and " 1 duplicated" not in report, report[-3000:]
    assert re.search(r"epoch 0 \(complete\): .* 0 duplicated, 0 unknown", report), report[-3000:]
    with capsys.disabled():
        print(f"\n[elastic train] 2 -> 1 -> 3 processes; mappings: {lines}\n{report.strip()}")


# packed LM: (processes, workers, blocks per batch, --steps); 41 documents of ~8 tokens make ~28 blocks of 12
LM_STRETCHES = [(2, 2, 2, 2), (1, 0, 3, 4), (3, 2, 2, 8)]


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.timeout(900)
def test_packed_lm_two_one_three_trains_every_token_once(tmp_path, capsys):
    train = build_set(tmp_path, n=N, max_records=5, name="train", labels=False, tokenizer=minilm_path())
    model = tiny_gpt2(tmp_path / "model")
    out = tmp_path / "run"
    begun = 0
    for i, (nproc, workers, batch, steps) in enumerate(LM_STRETCHES):
        extra = ["--num-workers", str(workers), "--audit", "--seed", "3", "--log-every", "1", "--pack", "12"]
        extra += ["--resume"] if i else []
        run_torchrun(nproc, train_args(train, None, model, out, steps, batch, "lm", *extra), timeout=400)
        ckpt = checkpoint.load(str(out), checkpoint.step_name(steps)).state
        assert (ckpt["step"], ckpt["world_size"], len(ckpt["ranks"])) == (steps, nproc, nproc)
        segments = ckpt["ranks"][0]["loader"].get("segments", [])
        assert len(segments) == min(i, 2) or ckpt["ranks"][0]["loader"]["epoch"] > 0
        begun += sum(len(s.get("partial", [])) for s in segments)
    status = audit.main([str(out)])
    report = capsys.readouterr().out
    assert status == 0, report[-3000:]
    assert "1 complete epoch(s)" in report, report[-3000:]
    assert f"epoch 0 (complete): {N}/{N} documents whole" in report, report[-3000:]
    assert re.search(r"epoch 0 \(complete\): .* 0 duplicated, 0 overlapping, 0 unknown", report), report[-3000:]
    assert "each token of each document trained exactly once per complete epoch" in report, report[-3000:]
    assert begun > 0, "no change fell inside a document: the run proves nothing about partial documents"
    with capsys.disabled():
        print(f"\n[elastic train, packed LM] 2 -> 1 -> 3 processes, {begun} document(s) begun across a change\n"
              f"{report.strip()}")
