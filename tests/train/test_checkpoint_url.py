"""Checkpoints, audit logs and outputs on an fsspec URL (``memory://``, in-process): per-rank parts,
the file list, ``latest`` written last, verification and fallback, audit parts cut back on resume."""
from __future__ import annotations

import json
import logging
import uuid

import fsspec
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import shards
from pipeline.train import audit_log, checkpoint
from pipeline.train import loop as train
from pipeline.train.checkpoint_files import CheckpointError, verify
from shards import audit
from tests.helpers.trainkit import shard_sets, tiny_bert, train_args

MEM = fsspec.filesystem("memory")


def url() -> str:
    return f"memory://ckpt-{uuid.uuid4().hex[:10]}/run"


def tiny_parts():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def save_step(out: str, step: int, world: int = 3, keep: int = 2) -> str:
    """What the loop does for ``world`` ranks: begin, each rank > 0 its part, rank 0 lists and commits."""
    model, opt, sched = tiny_parts()
    checkpoint.begin(out, step)
    parts = [checkpoint.write_part(out, step, r, {"loader": {"r": r}, "rng": {}, "epoch": 0}) for r in range(1, world)]
    return checkpoint.save(out, step, model, opt, sched, [{"loader": {"r": 0}, "rng": {}, "epoch": 0}],
                           {"epoch": 0}, keep=keep, parts=parts)


def step_url(out: str, step: int, name: str = "") -> str:
    return f"{out}/checkpoint/step-{step:07d}" + (f"/{name}" if name else "")


def test_ranks_write_parts_rank0_lists_them_and_writes_latest_last(monkeypatch):
    out, written = url(), []
    real = shards.write_bytes_atomic
    monkeypatch.setattr(shards, "write_bytes_atomic", lambda u, d, o=None: (written.append(u.rsplit("/", 1)[-1]),
                                                                             real(u, d, o)))
    save_step(out, 3)
    assert written == ["rank-00001.json", "rank-00002.json", "model.pt", "optim.pt", "state.json", "files.json",
                       "latest"]  # the pointer is the commit: last
    listed = json.loads(MEM.cat(step_url(out, 3, "files.json")))["files"]
    assert sorted(listed) == ["model.pt", "optim.pt", "rank-00001.json", "rank-00002.json", "state.json"]
    assert verify(step_url(out, 3), 3) is None
    ckpt = checkpoint.load(out, checkpoint.choose(out))
    assert ckpt.step == 3 and [r["loader"]["r"] for r in ckpt.state["ranks"]] == [0, 1, 2]


@pytest.mark.parametrize("damage", ["model.pt", "rank-00002.json", "files.json", "state.json"])
def test_damaged_newest_step_is_never_loaded_falls_back_with_one_line(damage, caplog):
    out = url()
    save_step(out, 2)
    save_step(out, 4)
    target = step_url(out, 4, damage)
    data = bytearray(MEM.cat(target))
    if damage == "files.json":
        MEM.rm(target)  # a save killed before its list: incomplete
    elif damage == "state.json":
        MEM.pipe(target, bytes(data[:len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF
        MEM.pipe(target, bytes(data))
    with caplog.at_level(logging.WARNING, logger="pipeline.train.checkpoint"):
        assert checkpoint.choose(out) == "step-0000002"
    notes = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(notes) == 1 and damage in notes[0] and notes[0].endswith("falling back to step-0000002")
    assert checkpoint.load(out, "step-0000002").step == 2
    MEM.pipe(step_url(out, 2, "model.pt"), b"tampered")
    with pytest.raises(CheckpointError, match="no complete checkpoint verifies"):
        checkpoint.choose(out)


def test_load_rechecks_what_it_reads():
    """A file replaced after ``choose`` (another writer) still fails at ``load``, naming it."""
    out = url()
    save_step(out, 1, world=2)
    name = checkpoint.choose(out)
    MEM.pipe(step_url(out, 1, "rank-00001.json"), b'{"loader": {}, "rng": {}, "epoch": 9}')
    with pytest.raises(CheckpointError, match="rank-00001.json: .*(truncated|modified)"):
        checkpoint.load(out, name)


def test_prune_keeps_the_newest_complete_steps_and_begin_clears_a_stale_step():
    out = url()
    for step in (1, 2, 3):
        save_step(out, step, world=2)
    assert [n for _, n in checkpoint.steps(f"{out}/checkpoint")] == ["step-0000003", "step-0000002"]
    MEM.pipe(step_url(out, 5, "rank-00001.json"), b"stale")  # a crashed save of step 5
    checkpoint.begin(out, 5)
    assert not MEM.exists(step_url(out, 5))
    assert checkpoint.clear(out) == ["step-0000003", "step-0000002"] and not checkpoint.exists(out)


# -- audit parts ---------------------------------------------------------------------
HEADER = {"train": "memory://x", "world_size": 1, "seed": 0}


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 12), cuts=st.sets(st.integers(1, 12)), resume=st.integers(0, 12))
def test_audit_parts_cut_back_to_any_resume_step(steps, cuts, resume):
    """Parts flushed at any steps; a resume at any step keeps exactly the lines of steps <= it."""
    out = url()
    log = audit_log.AuditLog(out, 0, HEADER)
    for step in range(1, steps + 1):
        log.record(step, 0, [f"00000:{step:06d}"], [False])
        if step in cuts:
            log.sync()
    log.close()
    again = audit_log.AuditLog(out, 0, HEADER, resume)
    again.close()
    folder = f"{out}/audit"
    kept = []
    for name in shards.list_names(folder):
        lines = MEM.cat(f"{folder}/{name}").decode().splitlines()
        assert json.loads(lines[0])["first_step"] == 1
        kept += [json.loads(x)["step"] for x in lines[1:]]
        assert int(name.split("-")[1].split(".")[0]) == json.loads(lines[-1])["step"]  # named by its last step
    assert sorted(kept) == list(range(1, min(steps, resume) + 1))


# -- a whole run on a URL ------------------------------------------------------------------
@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("url-run")
    tr, _ = shard_sets(tmp, n_train=21, n_eval=5)
    return {"train": tr, "bert": tiny_bert(tmp / "bert")}


class Stop(RuntimeError):
    pass


@pytest.mark.timeout(180)
def test_run_on_a_url_killed_then_resumed_by_default_audits_clean(kit, monkeypatch, capsys):
    out = url()
    argv = train_args(kit["train"], None, kit["bert"], out, 8, 4, "classify", "--checkpoint-every", "3", "--audit")
    real, seen = train.metrics.Meter.step, {"n": 0}

    def step_then_stop(self, *a):
        real(self, *a)
        seen["n"] += 1
        if seen["n"] == 5:
            raise Stop(5)  # after the step-3 checkpoint, before step 6's
    monkeypatch.setattr(train.metrics.Meter, "step", step_then_stop)
    with pytest.raises(Stop):
        train.main(argv)
    monkeypatch.undo()
    assert checkpoint.choose(out) == "step-0000003"
    assert train.main(argv) == 0  # no --resume: auto continues
    assert "--resume auto" in capsys.readouterr().out
    assert json.loads(MEM.cat(f"{out}/metrics.json"))["resumed_from"] == 3
    assert MEM.exists(f"{out}/model/config.json") and MEM.exists(f"{out}/train.png")
    steps = []
    for name in shards.list_names(f"{out}/audit"):
        steps += [json.loads(x)["step"] for x in MEM.cat(f"{out}/audit/{name}").decode().splitlines()[1:]]
    assert sorted(steps) == list(range(1, 9))  # steps 4-5 replayed once, not counted twice
    result = audit.audit(out)
    assert result.ok, result.lines
    assert verify(step_url(out, 8), 8) is None


def test_tensorboard_needs_a_local_out(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--train", "x", "--steps", "1", "--batch-size", "1", "--out", "s3://b/run",
                          "--report-to", "tensorboard"])
    assert "give a local --out" in capsys.readouterr().err
