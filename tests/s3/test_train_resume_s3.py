"""Two "nodes" with no shared local folder (each its own cwd and TMPDIR; torchrun --nnodes 2 on loopback)
train with --out on the local S3 server, are SIGKILLed after a checkpoint, start again (--resume auto
continues from S3) and finish: ``shards audit s3://...`` passes, the checkpoints verify, no credential is
written anywhere."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import fsspec
import pytest

from pipeline.train import checkpoint
from pipeline.train.checkpoint_files import verify
from tests.helpers import trainkit
from tests.helpers.data import ROOT

pytestmark = pytest.mark.s3
STEPS, EVERY, KILL_AT = 24, 4, 8


def start_nodes(args: list[str], tmp_path, env: dict, tag: str) -> list[subprocess.Popen]:
    port = trainkit.free_port()
    procs = []
    for node in (0, 1):
        home = tmp_path / f"node{node}"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        launch = ["--nnodes", "2", "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port)]
        log = open(tmp_path / f"node{node}-{tag}.log", "w")
        procs.append(subprocess.Popen(trainkit.torchrun(1, args, launch), cwd=home, stdout=log, stderr=subprocess.STDOUT,
                                      env={**env, "TMPDIR": str(home / "tmp")}))
    return procs


def committed_step(out: str, options: dict) -> int:
    try:
        return int(fsspec.filesystem("s3", **options).cat(f"{out}/checkpoint/latest").decode()[5:])
    except FileNotFoundError:
        return 0


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.timeout(600)
def test_two_nodes_checkpoint_to_s3_killed_resume_from_s3_and_audit(s3_build_set, s3_env, s3_canary, s3_url,
                                                                     s3_options, tmp_path):
    train = s3_build_set(n=41, max_records=5, name="train")
    model = trainkit.tiny_bert(tmp_path / "bert")
    out = f"{s3_url}/run"
    env = {**trainkit.ENV, **s3_env}
    args = trainkit.train_args(train, None, model, out, STEPS, 4, "classify", "--checkpoint-every", str(EVERY),
                               "--audit", "--seed", "5")
    procs = start_nodes(args, tmp_path, env, "first")
    deadline = time.monotonic() + 300
    try:
        while committed_step(out, s3_options) < KILL_AT:
            assert all(p.poll() is None for p in procs), (tmp_path / "node0-first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint on S3 in 300 s"
            time.sleep(0.2)
    finally:
        for p in procs:
            trainkit.kill_tree(p)
    killed = committed_step(out, s3_options)
    assert KILL_AT <= killed < STEPS

    procs = start_nodes(args, tmp_path, env, "second")  # the same command: resumes from S3 by itself
    codes = [p.wait(timeout=400) for p in procs]
    logs = [(tmp_path / f"node{n}-{t}.log").read_text() for n in (0, 1) for t in ("first", "second")]
    assert codes == [0, 0], logs[1][-3000:] + logs[3][-3000:]
    assert "--resume auto" in logs[1] and "continuing from step-" in logs[1]

    fs = fsspec.filesystem("s3", **s3_options)
    metrics = json.loads(fs.cat(f"{out}/metrics.json"))
    assert metrics["resumed_from"] >= killed and metrics["steps"] == STEPS
    assert checkpoint.choose(out) == f"step-{STEPS:07d}" and verify(f"{out}/checkpoint/step-{STEPS:07d}", STEPS) is None
    assert fs.exists(f"{out}/checkpoint/step-{STEPS:07d}/rank-00001.json")  # written by node 1 itself
    audit = subprocess.run([sys.executable, "-m", "shards", "audit", out], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "each sample trained exactly once per complete epoch" in audit.stdout
    assert not any((tmp_path / f"node{n}" / "checkpoint").exists() for n in (0, 1))  # nothing local
    written = b"".join(fs.cat(p) for p in fs.find(out) if not p.endswith(".pt"))
    assert s3_canary.encode() not in written and s3_canary not in "".join(logs) + audit.stdout
    print(f"\n[s3 two nodes] killed with step {killed} committed on S3; resumed from "
              f"{metrics['resumed_from']}; {audit.stdout.strip().splitlines()[-1]}")
