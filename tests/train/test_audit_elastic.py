"""The audit across world-size changes: a run that goes 2 → 1 → 3 processes mid-epoch.

The logs are written through AuditLog as the ranks of each stretch would (each stretch
resumes from a checkpoint taken before the previous stretch stopped, so the steps
after it are undone); ``shards audit`` groups the counted lines by epoch over every
rank file and header, and checks exactly-once per complete epoch and equal steps per
stretch.
"""
from __future__ import annotations

import json
import math
import pathlib
import uuid

import pytest

from pipeline.train.audit_log import AuditLog
from shards import audit, load_manifest
from tests.conftest import build_set

N = 41
BATCH = 2


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    return build_set(tmp_path_factory.mktemp("elastic"), n=N, max_records=5, name="train")


def fields(train: str, world: int) -> dict:
    return {"train": str(pathlib.Path(train).resolve()), "identity": load_manifest(train).identity,
            "world_size": world, "seed": 0, "shuffle": True, "num_records": N,
            "samples_per_rank": math.ceil(N / world), "batch_size": BATCH}


class Run:
    """A simulated elastic run: what each stretch trains comes from one pool of the epoch's samples."""

    def __init__(self, out: str, train: str):
        self.out, self.train = out, train
        ids = [audit.sample_id(s, r) for s, n in enumerate(load_manifest(train).shard_sizes) for r in range(n)]
        self.epochs = {0: list(ids), 1: list(reversed(ids))}
        self.epoch, self.pool = 0, list(ids)

    def take(self, pool: list[str]) -> tuple[list[str], list[bool]]:
        got = [pool.pop(0) for _ in range(min(BATCH, len(pool)))]
        pads = [False] * len(got) + [True] * (BATCH - len(got))
        return got + [self.epochs[self.epoch][0]] * (BATCH - len(got)), pads

    def stretch(self, world: int, resume: int, steps: int, counted: int, edit=None) -> None:
        """``world`` ranks train ``steps`` steps after ``resume``; only the first ``counted`` of them
        are kept (the next stretch resumes from that checkpoint)."""
        logs = [AuditLog(self.out, r, fields(self.train, world), resume) for r in range(world)]
        undone = None
        for step in range(resume + 1, resume + steps + 1):
            if step == resume + counted + 1:
                undone = list(self.pool)  # past the checkpoint: trained, then undone by the resume
            pool = self.pool if undone is None else undone
            for rank, log in enumerate(logs):
                ids, pads = self.take(pool)
                if edit:
                    ids = edit(step, rank, ids)
                log.record(step, self.epoch, ids, pads)
            if undone is None and not self.pool:  # the epoch is spent on every rank: the next one starts
                self.epoch, self.pool = self.epoch + 1, list(self.epochs[self.epoch + 1])
        for log in logs:
            log.close()


def elastic_run(out: str, train: str, edit=None) -> str:
    run = Run(out, train)
    run.stretch(2, 0, 6, 4)          # steps 1-6 on 2 ranks; checkpoint at 4: 16 samples count
    run.stretch(1, 4, 5, 4)          # steps 5-9 on 1 rank; checkpoint at 8: 8 more
    run.stretch(3, 8, 5, 5, edit)    # steps 9-13 on 3 ranks: the last 17 (1 pad), then epoch 1
    return out


@pytest.fixture(params=["local", "memory"])
def out(request, tmp_path):
    return str(tmp_path / "run") if request.param == "local" else f"memory://elastic-{uuid.uuid4().hex}/run"


def audited(run: str, capsys) -> tuple[int, str]:
    rc = audit.main([run])
    return rc, capsys.readouterr().out


def test_two_one_three_processes_pass_exactly_once(train_set, out, capsys):
    rc, text = audited(elastic_run(out, train_set), capsys)
    assert rc == 0, text
    assert "world size 2 -> 1 -> 3 (stretches from steps 1, 5, 9)" in text, text
    assert "epoch 0 (complete): 41/41 samples trained (100.0%), 41 trained items" in text, text
    assert "0 duplicated, 0 unknown" in text and "epoch 1 (partial)" in text
    assert "OK: 1 complete epoch(s), 1 partial" in text


def test_logs_keep_old_ranks_and_open_a_header_per_stretch(train_set, tmp_path):
    run = elastic_run(str(tmp_path / "run"), train_set)
    read = {r: [json.loads(x) for x in (pathlib.Path(run) / "audit" / f"rank{r}.jsonl").read_text().splitlines()]
            for r in range(3)}
    headers = {r: [(x["world_size"], x["first_step"]) for x in lines if "audit" in x] for r, lines in read.items()}
    assert headers == {0: [(2, 1), (1, 5), (3, 9)], 1: [(2, 1), (3, 9)], 2: [(3, 9)]}
    # rank 1 left after stretch 1: its steps 5 and 6 (undone by the resume from step 4) are still there
    assert [x["step"] for x in read[1] if "step" in x] == [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13]
    assert [x["step"] for x in read[0] if "step" in x] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]


def test_duplicate_across_stretches_fails(train_set, out, capsys):
    first = audit.sample_id(0, 0)  # trained by rank 0 at step 1 (stretch 1)

    def again(step, rank, ids):
        return [first, *ids[1:]] if (step, rank) == (9, 2) else ids
    rc, text = audited(elastic_run(out, train_set, again), capsys)
    assert rc == 1, text
    assert f"FAIL epoch 0: 1 sample(s) trained more than once, e.g. {first} x2" in text
    assert "1 sample(s) never trained" in text


def test_missing_sample_fails(train_set, out, capsys):
    lost = []

    def drop(step, rank, ids):
        if (step, rank) == (10, 1):
            lost.append(ids[0])
            return ids[1:]
        return ids
    rc, text = audited(elastic_run(out, train_set, drop), capsys)
    assert rc == 1, text
    assert f"FAIL epoch 0: 1 sample(s) never trained, e.g. ['{lost[0]}']" in text


def test_a_missing_rank_of_a_stretch_fails(train_set, tmp_path, capsys):
    run = elastic_run(str(tmp_path / "run"), train_set)
    (pathlib.Path(run) / "audit" / "rank2.jsonl").unlink()
    rc, text = audited(run, capsys)
    assert rc == 1 and "no audit log for rank(s) [2] of world size 3 (the stretch from step 9)" in text, text


def test_unequal_steps_within_a_stretch_fail(train_set, tmp_path, capsys):
    run = elastic_run(str(tmp_path / "run"), train_set)
    path = pathlib.Path(run) / "audit" / "rank1.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")  # rank 1 lost its step 13
    rc, text = audited(run, capsys)
    assert rc == 1 and "ranks logged different steps in the stretch from step 9" in text, text


def test_same_topology_resume_adds_no_header(train_set, tmp_path):
    out = str(tmp_path / "run")
    log = AuditLog(out, 0, fields(train_set, 1))
    for step in (1, 2, 3):
        log.record(step, 0, [audit.sample_id(0, step)], [False])
    log.close()
    AuditLog(out, 0, fields(train_set, 1), 2).close()  # resumed from step 2, same world size
    lines = [json.loads(x) for x in (tmp_path / "run" / "audit" / "rank0.jsonl").read_text().splitlines()]
    assert [("audit" in x, x.get("step")) for x in lines] == [(True, None), (False, 1), (False, 2)]
