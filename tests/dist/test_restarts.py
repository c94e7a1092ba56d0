"""``torchrun --max-restarts 1``: a rank SIGKILLed mid-run makes torchrun restart the group, which continues
from the newest complete checkpoint by itself (``--resume auto``, the default) and trains exactly the
batches of an uninterrupted run: audit logs equal rank by rank, final weights equal bit for bit, audit passes."""
from __future__ import annotations

import subprocess

import pytest

from shards import audit
from tests.helpers.data import ROOT, build_set
from tests.helpers.trainkit import (
    ENV,
    audit_lines,
    final_weights,
    kill_tree,
    logged_step,
    rank_process,
    run_torchrun,
    same_weights,
    tiny_bert,
    torchrun,
    train_args,
    wait_for_step,
)

STEPS, EVERY, KILL_AFTER = 30, 5, 12


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.timeout(900)
def test_sigkilled_rank_is_restarted_by_torchrun_and_continues_from_the_checkpoint(tmp_path, capsys):
    train = build_set(tmp_path, n=41, max_records=5, name="train")
    model = tiny_bert(tmp_path / "bert")
    extra = ["--checkpoint-every", str(EVERY), "--audit", "--seed", "3"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    run_torchrun(2, train_args(train, None, model, ref, STEPS, 4, "classify", *extra), timeout=400)

    log_path = tmp_path / "elastic.log"
    with open(log_path, "w") as log:
        launch = ["--standalone", "--max-restarts", "1", "--monitor-interval", "0.5"]
        proc = subprocess.Popen(torchrun(2, train_args(train, None, model, run, STEPS, 4, "classify", *extra), launch),
                                env=ENV, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_step(proc, run, KILL_AFTER, log_path, 300)
            victim = rank_process(proc, 1)
            killed_at = logged_step(run)
            victim.kill()  # SIGKILL: no handler, no cleanup
            status = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
    text = log_path.read_text()
    assert status == 0, text[-4000:]
    restarts = [x for x in text.splitlines() if "--resume auto (torchrun restart 1): continuing from" in x]
    assert restarts and "step-0000010" in restarts[0], text[-4000:]
    assert killed_at < STEPS
    for rank in (0, 1):
        assert audit_lines(run, rank) == audit_lines(ref, rank), f"rank {rank}: batches differ"
    assert same_weights(final_weights(ref), final_weights(run)) == []
    assert audit.main([str(run)]) == 0
    report = capsys.readouterr().out.strip().splitlines()[-1]
    with capsys.disabled():
        print(f"\n[restarts] rank 1 SIGKILLed after step {killed_at}; torchrun restarted the group, which resumed "
              f"from step 10 by itself; batches and final weights == uninterrupted run; audit: {report}")
