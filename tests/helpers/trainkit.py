"""Helpers shared by the training tests: tiny models, torchrun commands, audit logs, final weights."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import psutil
import torch

from tests.helpers.data import ROOT, build_set, minilm_path

ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT)}


def tiny_bert(path: pathlib.Path) -> str:
    """A 1-layer, 32-wide BERT classifier with the MiniLM tokenizer (fast to train)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if not (path / "config.json").exists():
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)
        BertForSequenceClassification(cfg).save_pretrained(path)
        AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return str(path)


def tiny_gpt2(path: pathlib.Path) -> str:
    """A 1-layer, 32-wide GPT-2 over the MiniLM vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if not (path / "config.json").exists():
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(vocab_size=30522, n_positions=128, n_embd=32, n_layer=1, n_head=2)) \
            .save_pretrained(path)
    return str(path)


def shard_sets(tmp: pathlib.Path, n_train: int = 41, n_eval: int = 13) -> tuple[str, str]:
    """Train and eval sets with many small shards; odd sizes so 2 ranks need a pad."""
    return (build_set(tmp, n=n_train, max_records=5, name="train"),
            build_set(tmp, n=n_eval, max_records=5, name="eval"))


def train_args(train: str, evalset: str | None, model: str, out, steps: int = 6, batch: int = 4,
               task: str = "classify", *extra: str) -> list[str]:
    args = ["--train", train, "--task", task, "--model", model, "--steps", str(steps),
            "--batch-size", str(batch), "--out", str(out), "--max-length", "32", "--log-every", "2",
            "--tokenizer", minilm_path()]
    if evalset:
        args += ["--eval", evalset]
    return args + list(extra)


def torchrun(nproc: int, args: list[str], launch: list[str] | None = None) -> list[str]:
    """The torchrun command line; ``launch`` replaces ``--standalone`` (e.g. ``--nnodes 2 --node_rank 0 ...``)."""
    return [sys.executable, "-m", "torch.distributed.run", *(launch or ["--standalone"]), "--nproc_per_node",
            str(nproc), "-m", "pipeline.train", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_step(run: pathlib.Path) -> int:
    """The last step rank 0 logged in its local audit log (0 before the first)."""
    path = pathlib.Path(run) / "audit" / "rank0.jsonl"
    if not path.exists():
        return 0
    last = 0
    for line in path.read_text().splitlines()[1:]:
        try:
            last = json.loads(line)["step"]
        except json.JSONDecodeError:
            break  # a line being written right now
    return last


def wait_for_step(proc: subprocess.Popen, run: pathlib.Path, target: int, log_path, seconds: float = 240) -> int:
    """Wait until rank 0 of the job ``proc`` has logged step ``target``; returns the step then seen.  The
    run ending first, or ``seconds`` passing, fails the test with the tail of its log."""
    deadline = time.monotonic() + seconds
    while logged_step(run) < target:
        if proc.poll() is not None:
            tail = pathlib.Path(log_path).read_text()[-3000:]
            raise AssertionError(f"the run ended (status {proc.returncode}) before step {target}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"step {target} not reached in {seconds:.0f} s")
        time.sleep(0.01)
    return logged_step(run)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun, its ranks (own sessions) and their loader workers, by pid."""
    try:
        victims = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # it already ended
        victims = []
    for pid in victims:
        try:
            psutil.Process(pid).send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    for pid in victims:  # the ranks are not torchrun's direct children: wait until they are gone
        try:
            psutil.Process(pid).wait(timeout=30)
        except psutil.NoSuchProcess:
            pass


def rank_process(proc: subprocess.Popen, rank: int) -> psutil.Process:
    """The training process of ``rank`` under the torchrun ``proc`` (not a loader worker: that one's parent
    is a rank, whose environment holds the same RANK)."""
    found = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and child.parent().environ().get("RANK") is None:
                found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    if len(found) != 1:
        raise AssertionError(f"expected one process of rank {rank} under torchrun, found {found}")
    return found[0]


def run_torchrun(nproc: int, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(torchrun(nproc, args), env=ENV, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def audit_lines(out, rank: int) -> list[dict]:
    """The per-micro-batch lines of a rank's audit log (header dropped)."""
    with open(pathlib.Path(out) / "audit" / f"rank{rank}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().splitlines()[1:] if line.strip()]


def final_weights(out) -> dict:
    ckpt = pathlib.Path(out) / "checkpoint"
    name = (ckpt / "latest").read_text().strip()
    return torch.load(ckpt / name / "model.pt", weights_only=True)


def same_weights(a: dict, b: dict) -> list[str]:
    """Names of the tensors that differ (empty when identical)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def metrics(out) -> dict:
    with open(pathlib.Path(out) / "metrics.json", encoding="utf-8") as f:
        return json.load(f)
