"""SIGKILL a 2-rank torchrun training run between checkpoints, three times; each restart resumes (--resume auto).

The continued run must train on exactly the batches of an uninterrupted run
(audit logs equal, rank by rank, micro-batch by micro-batch: no lost sample, no
repeat beyond the replayed steps since the last checkpoint) and end with the
same weights, bit for bit (fixed seeds, fp32, CPU), with 0 and 2 loader workers.
"""
from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from shards import audit
from tests.helpers.data import ROOT, build_set
from tests.helpers.trainkit import (
    ENV,
    audit_lines,
    final_weights,
    kill_tree,
    run_torchrun,
    same_weights,
    tiny_bert,
    torchrun,
    train_args,
    wait_for_step,
)

STEPS, EVERY = 60, 10
KILL_AT = (14, 33, 52)  # steps (per rank 0's audit log) after which the whole job is killed


def run_until_killed(args: list[str], run: pathlib.Path, target: int) -> int:
    """Start the job, SIGKILL it once rank 0 has logged step ``target``; returns the step seen."""
    log = open(run.parent / f"{run.name}-to-{target}.log", "w")
    proc = subprocess.Popen(torchrun(2, args), env=ENV, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        seen = wait_for_step(proc, run, target, log.name)
    finally:
        kill_tree(proc)
        log.close()
    return seen


def latest_checkpoint(run: pathlib.Path) -> int:
    name = (run / "checkpoint" / "latest").read_text().strip()
    return json.loads((run / "checkpoint" / name / "state.json").read_text())["step"]


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.timeout(900)
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_between_checkpoints_then_resume_matches_uninterrupted(tmp_path, workers, capsys):
    train = build_set(tmp_path, n=41, max_records=5, name="train")
    model = tiny_bert(tmp_path / "bert")
    extra = ["--checkpoint-every", str(EVERY), "--audit", "--num-workers", str(workers), "--seed", "7"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_torchrun(2, train_args(train, None, model, ref, STEPS, 4, "classify", *extra), timeout=400)

    figures = []
    for target in KILL_AT:
        # the first run starts fresh; the later ones resume by default (--resume auto), the last says --resume
        args = train_args(train, None, model, run, STEPS, 4, "classify", *extra)
        killed = run_until_killed(args, run, target)
        ckpt = latest_checkpoint(run)
        assert ckpt <= killed, (ckpt, killed)
        assert ckpt < STEPS  # the job really was cut short
        figures.append((killed, ckpt))
    run_torchrun(2, train_args(train, None, model, run, STEPS, 4, "classify", *extra, "--resume"), timeout=400)

    for rank in (0, 1):
        assert audit_lines(run, rank) == audit_lines(ref, rank), f"rank {rank}: batches differ"
    assert same_weights(final_weights(ref), final_weights(run)) == []
    assert audit.main([str(run)]) == 0
    report = capsys.readouterr().out.strip().splitlines()[-1]
    with capsys.disabled():
        kills = ", ".join(f"killed after step {k} (checkpoint {c}, {k - c} step(s) replayed)" for k, c in figures)
        print(f"\n[train kill] workers={workers}: {kills}; resumed batches == uninterrupted batches on both "
              f"ranks ({len(audit_lines(ref, 0))} micro-batches each), final weights identical; audit: {report}")
