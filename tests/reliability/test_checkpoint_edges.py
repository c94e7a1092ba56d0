"""Checkpoints at the edges: truncated and tampered files, an empty `latest`, another train set.

A damaged newest step falls back to the previous complete one (one line says so);
when no step verifies, or `latest` is empty over damaged steps, the run refuses with
one line naming the file and prunes nothing (under --resume auto, the default, too); a --train set of the same size but
other content is refused with and without --audit.  The fast tests call
``train.main`` in-process; the slow ones run ``python -m pipeline.train`` (and a
2-process torchrun) as real processes and check what the terminal shows.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from pipeline.train import loop as train
from pipeline.train.checkpoint_files import sha256_file, verify, write_file_list
from tests.helpers.data import ROOT, write_jsonl
from tests.helpers.trainkit import ENV, metrics, shard_sets, tiny_bert, torchrun, train_args

STEPS = ("step-0000002", "step-0000004")


def other_set_same_size(tmp: pathlib.Path, n: int) -> str:
    """``n`` labelled records of other text: same size and shard layout, other identity."""
    from shards.build.driver import BuildConfig, build
    from shards.build.writer import Limits
    from shards.corpus.read import CorpusSpec

    src = write_jsonl(tmp / "other-src" / "data.jsonl",
                      [{"text": f"a different sentence {i}", "label": ("neg", "pos")[i % 2]} for i in range(n)])
    build([src], BuildConfig(out=str(tmp / "other"), format="arrow", spec=CorpusSpec(label_field="label"),
                             limits=Limits(max_records=5)))
    return str(tmp / "other")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4 (both kept), with --audit."""
    tmp = tmp_path_factory.mktemp("ckpt")
    tr, _ = shard_sets(tmp, n_train=21, n_eval=5)
    kit = {"tmp": tmp, "train": tr, "other": other_set_same_size(tmp, 21), "bert": tiny_bert(tmp / "bert"),
           "out": tmp / "base"}
    assert train.main(args(kit, kit["out"], 4, "--checkpoint-every", "2", "--audit")) == 0
    return kit


def args(kit, out, steps: int, *extra: str, train_set: str | None = None) -> list[str]:
    return train_args(train_set or kit["train"], None, kit["bert"], out, steps, 4, "classify", *extra)


def copy_run(kit, tmp_path) -> pathlib.Path:
    out = tmp_path / "run"
    shutil.copytree(kit["out"], out)
    return out


def snapshot(out: pathlib.Path) -> dict:
    """Every file under OUT/checkpoint with its size: what 'prunes nothing' compares."""
    root = out / "checkpoint"
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def truncate(path: pathlib.Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def error_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    assert lines, "nothing printed"
    assert "Traceback" not in text, text[-2000:]
    return lines[-1]


# -- the step manifest ---------------------------------------------------------
def test_step_folder_lists_its_files_sizes_and_sha256_and_tampering_fails(base, tmp_path):
    out = copy_run(base, tmp_path)
    root = out / "checkpoint"
    assert sorted(p.name for p in root.iterdir()) == ["latest", *STEPS]
    step = root / "step-0000004"
    listed = json.loads((step / "files.json").read_text())
    assert listed["step"] == 4 and sorted(listed["files"]) == ["model.pt", "optim.pt", "state.json"]
    for name, entry in listed["files"].items():
        assert (entry["bytes"], entry["sha256"]) == sha256_file(str(step / name))
    assert verify(str(step), 4) is None

    good = (step / "optim.pt").read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    (step / "optim.pt").write_bytes(bytes(data))
    assert "optim.pt: sha256" in verify(str(step), 4) and "(modified)" in verify(str(step), 4)
    (step / "optim.pt").write_bytes(good)
    truncate(step / "state.json")
    assert "state.json" in verify(str(step), 4) and "truncated" in verify(str(step), 4)
    (root / "step-0000002" / "files.json").unlink()
    assert "files.json: missing" in verify(str(root / "step-0000002"), 2)
    assert "lists step 4" in verify(str(step), 5)  # a renamed folder does not pass as another step


# -- truncation ----------------------------------------------------------------
@pytest.mark.timeout(120)
def test_truncated_newest_step_falls_back_to_the_previous_one(base, tmp_path, capsys):
    out = copy_run(base, tmp_path)
    truncate(out / "checkpoint" / "step-0000004" / "model.pt")
    capsys.readouterr()
    assert train.main(args(base, out, 6, "--checkpoint-every", "2", "--audit", "--resume")) == 0
    printed = capsys.readouterr()
    notes = [x for x in (printed.out + printed.err).splitlines() if "falling back" in x]
    assert len(notes) == 1 and "step-0000004/model.pt" in notes[0] and "truncated" in notes[0], notes
    assert notes[0].endswith("falling back to step-0000002")
    assert metrics(out)["resumed_from"] == 2
    steps = [json.loads(line)["step"] for line in (out / "audit" / "rank0.jsonl").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 3-4 replayed from step 2, none counted twice
    root = out / "checkpoint"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000004", "step-0000006"]
    assert verify(str(root / "step-0000004"), 4) is None  # the damaged step was written anew


@pytest.mark.timeout(60)
@pytest.mark.parametrize("latest", ["keep", "", "garbage\x00\n../../etc"])
def test_no_step_verifies_refuses_naming_the_file_and_prunes_nothing(base, tmp_path, capsys, latest):
    out = copy_run(base, tmp_path)
    for name in STEPS:
        truncate(out / "checkpoint" / name / "model.pt")
    if latest != "keep":
        (out / "checkpoint" / "latest").write_text(latest)
    before = snapshot(out)
    capsys.readouterr()
    assert train.main(args(base, out, 6, "--checkpoint-every", "2", "--resume")) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("pipeline.train: error: ") and "no complete checkpoint verifies" in line
    assert "step-0000004/model.pt" in line and "step-0000002/model.pt" in line and "--resume never" in line
    assert snapshot(out) == before
    assert (out / "metrics.json").read_text() == (base["out"] / "metrics.json").read_text()  # no new run


# -- an empty `latest` ---------------------------------------------------------
@pytest.mark.timeout(120)
def test_empty_latest_without_flag_resumes_auto_from_the_newest_verified_step(base, tmp_path, capsys):
    """--resume auto (the default): OUT holds checkpoints, so the run continues them (never starts over)."""
    out = copy_run(base, tmp_path)
    (out / "checkpoint" / "latest").write_text("")
    capsys.readouterr()
    assert train.main(args(base, out, 6, "--checkpoint-every", "2", "--audit")) == 0
    printed = capsys.readouterr().out
    assert "--resume auto" in printed and "continuing from step-0000004" in printed
    assert metrics(out)["resumed_from"] == 4
    steps = [json.loads(line)["step"] for line in (out / "audit" / "rank0.jsonl").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.timeout(120)
def test_empty_latest_with_resume_continues_the_newest_verified_step(base, tmp_path, capsys):
    out = copy_run(base, tmp_path)
    (out / "checkpoint" / "latest").write_text("")
    capsys.readouterr()
    assert train.main(args(base, out, 6, "--checkpoint-every", "2", "--resume")) == 0
    printed = capsys.readouterr()
    assert "`latest` names None, not the newest complete step; resuming from step-0000004" in printed.out
    assert metrics(out)["resumed_from"] == 4
    assert (out / "checkpoint" / "latest").read_text() == "step-0000006"


@pytest.mark.timeout(120)
def test_resume_never_starts_over_and_says_what_it_deleted(base, tmp_path, capsys):
    out = copy_run(base, tmp_path)
    capsys.readouterr()
    assert train.main(args(base, out, 1, "--resume", "never")) == 0
    assert "--resume never: deleted 2 checkpoint(s)" in capsys.readouterr().out
    assert metrics(out)["resumed_from"] == 0
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["latest", "step-0000001"]


# -- another train set -----------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("audit", [[], ["--audit"]])
def test_other_train_set_of_the_same_size_is_refused(base, tmp_path, capsys, audit):
    from shards import load_manifest

    old, new = load_manifest(base["train"]), load_manifest(base["other"])
    assert old.num_records == new.num_records and old.shard_sizes == new.shard_sizes
    assert old.identity != new.identity
    out = copy_run(base, tmp_path)
    before = snapshot(out)
    capsys.readouterr()
    assert train.main(args(base, out, 6, "--resume", *audit, train_set=base["other"])) == 2
    line = error_line(capsys.readouterr().err)
    assert "--train changed" in line and base["train"] in line and base["other"] in line, line
    assert old.identity[:12] in line and new.identity[:12] in line
    assert snapshot(out) == before


# -- real processes ----------------------------------------------------------------
def run_train(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.train", *argv], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_processes_fall_back_refuse_and_print_one_line(base, tmp_path):
    out = copy_run(base, tmp_path)
    for name in STEPS:
        truncate(out / "checkpoint" / name / "optim.pt", 0.9)
    (out / "checkpoint" / "latest").write_text("")
    before = snapshot(out)
    for extra in (["--resume"], []):
        proc = run_train(args(base, out, 6, *extra))
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = error_line(proc.stderr)
        assert line.startswith("pipeline.train: error: "), line
        assert "step-0000002/optim.pt" in line and "no complete checkpoint verifies" in line  # auto refuses too
        assert snapshot(out) == before
    out = copy_run(base, tmp_path / "b")
    proc = run_train(args(base, out, 6, "--resume", train_set=base["other"]))
    assert proc.returncode == 2 and "--train changed" in error_line(proc.stderr)
    truncate(out / "checkpoint" / "step-0000004" / "state.json")
    proc = run_train(args(base, out, 6, "--checkpoint-every", "2", "--resume"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sum("falling back" in x for x in proc.stdout.splitlines()) == 1
    assert metrics(out)["resumed_from"] == 2


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.timeout(300)
def test_torchrun_refusal_is_the_last_line_on_the_terminal(base, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "latest").write_text("step-0000009")  # a pointer, and no step folder
    proc = subprocess.run(torchrun(2, args(base, out, 2, "--resume")), env=ENV, cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    message = lines[-1]
    assert message.startswith("pipeline.train: error (rank "), proc.stderr[-3000:]
    assert "no complete checkpoint verifies" in message and "--resume never" in message
    assert lines.count(message) == 1  # both ranks refused; the line is printed once
    assert "ChildFailedError" in proc.stderr  # torchrun's block came first ...
    assert f"traceback : {message}" in proc.stderr  # ... and names the message as the root cause
    assert "pipeline/train.py" not in proc.stderr  # no traceback of ours


# -- the audit log a resume cuts back ------------------------------------------------
@pytest.mark.timeout(60)
def test_damaged_audit_line_refuses_resume_naming_file_and_line(base, tmp_path, capsys):
    out = copy_run(base, tmp_path)
    log = out / "audit" / "rank0.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")  # a line in the middle: damage
    capsys.readouterr()
    assert train.main(args(base, out, 6, "--audit", "--resume")) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{log}:3: not an audit line" in line, line
    log.write_text("\n".join(lines) + '\n{"step": 5, "ids": ["torn')  # a torn last line: a killed write
    assert train.main(args(base, out, 5, "--audit", "--resume")) == 0
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()[1:]] == [1, 2, 3, 4, 5]


def test_bad_torchrun_variable_is_one_line(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert train.main(args(base, tmp_path / "run", 1)) == 2
    assert error_line(capsys.readouterr().err) == ("pipeline.train: error: environment variable WORLD_SIZE='two': "
                                                   "not an integer; torchrun sets it, unset it to run one process")


@pytest.mark.timeout(60)
def test_resume_past_steps_or_with_damaged_rank_states_is_refused(base, tmp_path, capsys):
    out = copy_run(base, tmp_path)
    assert train.main(args(base, out, 3, "--resume")) == 2  # the checkpoint is at step 4: nothing left to do
    assert "at step 4, past --steps 3" in error_line(capsys.readouterr().err)
    step = out / "checkpoint" / "step-0000004"
    state = json.loads((step / "state.json").read_text())
    state["ranks"] = []
    (step / "state.json").write_text(json.dumps(state))  # verification would catch this: re-list the files
    write_file_list(str(step), 4, lambda path, data: pathlib.Path(path).write_bytes(data))
    assert train.main(args(base, out, 6, "--resume")) == 2
    assert "state.json: needs one loader state per rank (1)" in error_line(capsys.readouterr().err)
