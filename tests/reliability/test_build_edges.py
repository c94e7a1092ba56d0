"""The builder's output at its edges, with real processes: one builder per --out, a failed or
killed rebuild never damages the set already there, full or read-only output ends in one line
with nothing left behind, workers die with a SIGKILLed driver, duplicate inputs and label names
are refused.

    .venv/bin/python -m pytest tests/reliability/test_build_edges.py -q -s
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from shards import load_manifest
from shards.build import lock as lock_mod
from shards.build.driver import BuildConfig, build
from shards.build.lock import LockError
from shards.build.writer import Limits
from shards.corpus.read import CorpusSpec
from shards.reader import verify_shard
from tests.helpers.data import ROOT, labelled_records, write_jsonl


def corpus(tmp_path, n_files=4, n=3000, tag="") -> list[str]:
    recs = [{**r, "text": r["text"] + tag} for r in labelled_records(n_files * n)]
    return [write_jsonl(tmp_path / f"in{tag}" / f"f{k}.jsonl", recs[k * n:(k + 1) * n]) for k in range(n_files)]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shards", *args]


def build_cmd(inputs, out, *extra: str) -> list[str]:
    return cli("build", *map(str, inputs), "--out", str(out), "--format", "tar", "--label-field", "label",
               "--max-records", "40", "--split-bytes", "100KB", "--no-progress", *extra)


def snapshot(out: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def published(out: pathlib.Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(out).items() if not k.startswith(".staging")}


def verifies(out: pathlib.Path) -> int:
    """Records of the set at ``out``; fails unless every listed shard checks (size, sha256, records)."""
    m = load_manifest(str(out))
    assert sum(verify_shard(m, str(out), i) for i in range(len(m.shards))) == m.num_records
    return m.num_records


def one_line_error(run) -> str:
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


# --- one builder per output ------------------------------------------------------------------

def test_second_concurrent_builder_fails_fast_naming_the_holder(tmp_path):
    inputs = corpus(tmp_path)
    out = tmp_path / "out"
    first = subprocess.Popen(build_cmd(inputs, out), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 60
    while not (out / ".lock").exists():
        assert first.poll() is None and time.monotonic() < deadline, "the first build never took its lock"
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # holds the lock, mid-build, however slow the second one starts
    t0 = time.monotonic()
    try:
        second = subprocess.run(build_cmd(inputs, out, "--max-records", "7"), cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    line = one_line_error(second)
    assert f"pid {first.pid} on {socket.gethostname()}" in line and "remove" in line and ".lock" in line
    out_s, err_s = first.communicate(timeout=120)
    assert first.returncode == 0, err_s
    assert verifies(out) == 12_000 and not (out / ".lock").exists() and not (out / ".staging").exists()
    print(f"\nsecond builder refused after {time.monotonic() - t0:.1f} s: {line}")


def test_stale_lock_of_a_dead_process_is_taken_over_and_a_live_one_is_not(tmp_path):
    inputs = corpus(tmp_path, n_files=1, n=50)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = {"host": socket.gethostname(), "pid": dead.pid, "started": "2020-01-01T00:00:00Z", "token": "x"}
    (out / ".lock").write_text(json.dumps(lock))
    build(inputs, BuildConfig(out=str(out), spec=CorpusSpec(label_field="label")))
    assert verifies(out) == 50 and not (out / ".lock").exists()
    for holder in ({**lock, "pid": os.getpid()}, {**lock, "host": "elsewhere.example"}, "{half"):
        (out / ".lock").write_text(holder if isinstance(holder, str) else json.dumps(holder))
        with pytest.raises(LockError, match=r"\.lock: .*remove .*\.lock and build again"):
            build(inputs, BuildConfig(out=str(out), spec=CorpusSpec(label_field="label")))
        assert (out / ".lock").exists() and verifies(out) == 50  # not ours: neither removed nor touched


def test_sigterm_releases_the_lock_stops_workers_and_cleans_temp_files(tmp_path):
    inputs = corpus(tmp_path, n_files=4, n=4000)
    out = tmp_path / "out"
    proc = subprocess.Popen(build_cmd(inputs, out, "--workers", "2"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / ".staging").exists() or not any(".partial-" in p.name for p in (out / ".staging").iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the build never started a unit"
        time.sleep(0.02)
    workers = [p for p in children(proc.pid) if alive(p)]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.strip().splitlines() == [
        "shards build: stopped by SIGTERM; finished units are kept for a rerun"], err
    t0 = time.monotonic()
    while [p for p in workers if alive(p)] and time.monotonic() - t0 < 3:  # e.g. the resource tracker
        time.sleep(0.05)
    assert not (out / ".lock").exists() and not [p for p in workers if alive(p)]
    assert not [p for p in out.rglob("*") if ".partial-" in p.name or ".tmp-" in p.name]


# --- a failed rebuild never damages the previous set -----------------------------------------

def test_rebuild_failing_on_a_bad_record_keeps_the_old_set(tmp_path):
    inputs = corpus(tmp_path, n_files=2, n=500)
    out = tmp_path / "out"
    build(inputs, BuildConfig(out=str(out), format="tar", spec=CorpusSpec(label_field="label"),
                              limits=Limits(max_records=40)))
    before = published(out)
    pathlib.Path(inputs[1]).write_text(pathlib.Path(inputs[1]).read_text() + "{broken\n")
    line = one_line_error(subprocess.run(build_cmd(inputs, out, "--workers", "2", "--max-records", "33"),
                                         cwd=ROOT, capture_output=True, text=True, timeout=120))
    assert "f1.jsonl:501: malformed_json" in line
    assert published(out) == before
    assert verifies(out) == 1000
    assert not [p for p in out.rglob("*") if ".partial-" in p.name or ".tmp-" in p.name or p.name == ".lock"]


@pytest.mark.parametrize("crash_at", [0, 3, 11])
def test_rebuild_crashing_while_publishing_keeps_a_whole_set(tmp_path, monkeypatch, crash_at):
    """A crash after ``crash_at`` shards are published, before the commit, leaves the old set whole; the
    rerun commits the new one, under the same names a fresh build gives."""
    old, new = corpus(tmp_path, 2, 300, "-old"), corpus(tmp_path, 2, 300, "-new")
    cfg = BuildConfig(out=str(tmp_path / "out"), format="tar", spec=CorpusSpec(label_field="label"),
                      limits=Limits(max_records=40))
    build(old, cfg)
    before = published(tmp_path / "out")
    real_move, moves = lock_mod._move, []

    def crashing_move(*args, **kw):
        if len(moves) == crash_at:
            raise KeyboardInterrupt("simulated crash")
        moves.append(args[1:])
        return real_move(*args, **kw)

    monkeypatch.setattr(lock_mod, "_move", crashing_move)
    with pytest.raises(KeyboardInterrupt):
        build(new, cfg)
    assert {k: before[k] for k in before} == {k: published(tmp_path / "out")[k] for k in before}
    assert verifies(tmp_path / "out") == 600 and load_manifest(cfg.out).sources[0].endswith("in-old/f0.jsonl")
    monkeypatch.setattr(lock_mod, "_move", real_move)
    result = build(new, cfg)
    assert result.reused_units == 2 and verifies(tmp_path / "out") == 600
    build(new, dataclasses.replace(cfg, out=str(tmp_path / "fresh")))
    assert published(tmp_path / "out") == published(tmp_path / "fresh")


def test_crash_after_the_commit_leaves_the_new_set_whole(tmp_path, monkeypatch):
    old, new = corpus(tmp_path, 1, 300, "-old"), corpus(tmp_path, 1, 300, "-new")
    cfg = BuildConfig(out=str(tmp_path / "out"), spec=CorpusSpec(label_field="label"), limits=Limits(max_records=40))
    build(old, cfg)
    real_plain = lock_mod.plain_names
    monkeypatch.setattr(lock_mod, "plain_names", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        build(new, cfg)
    m = load_manifest(cfg.out)
    assert verifies(tmp_path / "out") == 300 and m.sources[0].endswith("in-new/f0.jsonl")
    assert all("-" in s.path[len("shard-"):] for s in m.shards)  # names of their own, until renamed
    monkeypatch.setattr(lock_mod, "plain_names", real_plain)
    build(new, cfg)
    assert [s.path for s in load_manifest(cfg.out).shards] == [f"shard-{i:05d}.arrow" for i in range(8)]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkilled_rebuilds_over_a_good_set_always_leave_a_whole_set(tmp_path):
    """A rebuild with other content is SIGKILLed at random points, again and again: after each kill
    the set on disk (old or new) verifies; the last rerun equals a fresh build of the new content."""
    old, new = corpus(tmp_path, 16, 500, "-old"), corpus(tmp_path, 16, 500, "-new")  # many short units
    out = tmp_path / "out"
    t0 = time.monotonic()
    subprocess.run(build_cmd(new, tmp_path / "ref"), cwd=ROOT, check=True, capture_output=True)
    full = time.monotonic() - t0
    subprocess.run(build_cmd(old, out), cwd=ROOT, check=True, capture_output=True)
    rng = random.Random(7)
    states = []
    for _ in range(10):
        proc = subprocess.Popen(build_cmd(new, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, full))  # a resumed run is shorter: some kills land after the commit
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert verifies(out) == 8000
        staging = out / ".staging"
        done = len(list(staging.glob("*.done.json"))) if staging.exists() else "-"
        finished = " (finished)" if proc.returncode == 0 else ""
        states.append(f"{load_manifest(str(out)).sources[0].split('/')[-2]}, units marked: {done}{finished}")
    subprocess.run(build_cmd(new, out), cwd=ROOT, check=True, capture_output=True)
    assert published(out) == snapshot(tmp_path / "ref")
    print(f"\nset on disk after each SIGKILLed rebuild (each verified), units marked in staging: {states}")


# --- full or read-only output ----------------------------------------------------------------

FAILING_DISK = """
import errno, sys, builtins, shards.formats.sink, shards.build.lock, os
from shards.cli import main
mode = sys.argv[1]
real_open = builtins.open
class Full:
    def __init__(self, f): self.f, self.n = f, 0
    def write(self, b):
        self.n += len(b)
        if self.n > 3000: raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(b)
    def __getattr__(self, k): return getattr(self.f, k)
if mode == "enospc":
    shards.formats.sink.open = lambda *a, **k: Full(real_open(*a, **k))
else:
    def ro(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", path)
    shards.build.lock.os = type("os", (), {**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")}, "open": ro})
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("mode", ["enospc", "erofs"])
def test_full_or_read_only_output_is_one_line_and_leaves_nothing(tmp_path, mode):
    inputs = corpus(tmp_path, n_files=1, n=2000)
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", FAILING_DISK, mode, *build_cmd(inputs, out)[3:]], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    line = one_line_error(run)
    want = "No space left|no space left.*ENOSPC" if mode == "enospc" else "read-only file system \\(EROFS\\)"
    assert __import__("re").search(want, line) and str(out) in line and "--out" in line, line
    assert not [p for p in out.rglob("*") if p.is_file()], sorted(out.rglob("*"))


def test_output_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    inputs = corpus(tmp_path, n_files=1, n=10)
    line = one_line_error(subprocess.run(build_cmd(inputs, tmp_path / "file" / "out"), cwd=ROOT,
                                         capture_output=True, text=True, timeout=120))
    assert str(tmp_path / "file") in line


# --- workers die with their driver -----------------------------------------------------------

def children(pid: int) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (pathlib.Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_driver_kills_its_workers(tmp_path):
    inputs = corpus(tmp_path, n_files=4, n=4000)
    proc = subprocess.Popen(build_cmd(inputs, tmp_path / "out", "--workers", "2"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    staging = tmp_path / "out" / ".staging"
    # both workers started and at work (a part being written), so their set-up has run
    while len(workers := [p for p in children(proc.pid) if alive(p)]) < 2 or not (
            staging.exists() and any(".partial-" in p.name for p in staging.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "the build never started its workers"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    while [p for p in workers if alive(p)] and time.monotonic() - t0 < 3:
        time.sleep(0.05)
    assert [p for p in workers if alive(p)] == [], "workers outlived their driver"
    print(f"\n{len(workers)} worker process(es) ended {time.monotonic() - t0:.2f} s after the driver's SIGKILL")


# --- duplicate inputs and label names --------------------------------------------------------

def test_duplicate_inputs_and_label_names_are_refused(tmp_path):
    a = write_jsonl(tmp_path / "in" / "a.jsonl", labelled_records(5))
    write_jsonl(tmp_path / "in" / "b.jsonl", labelled_records(5))
    (tmp_path / "link.jsonl").symlink_to(a)
    cases = {"twice": [a, a], "dotted": [a, str(tmp_path / "in" / "." / "a.jsonl")],
             "dir and file": [str(tmp_path / "in"), a], "two globs": [str(tmp_path / "in" / "*.jsonl"),
                                                                      str(tmp_path / "in" / "a*")],
             "symlink": [a, str(tmp_path / "link.jsonl")]}
    for name, inputs in cases.items():
        with pytest.raises(ValueError, match=r"a\.jsonl\)? is named twice, by .* and by .*name each file once"):
            build(inputs, BuildConfig(out=str(tmp_path / name)))
        assert not (tmp_path / name).exists()
    with pytest.raises(ValueError, match=r"'pos' listed more than once"):
        build([a], BuildConfig(out=str(tmp_path / "labels"), spec=CorpusSpec(label_field="label"),
                               label_names=("pos", "neg", "pos")))
    line = one_line_error(subprocess.run(cli("build", a, str(tmp_path / "in"), "--out", str(tmp_path / "cli")),
                                         cwd=ROOT, capture_output=True, text=True, timeout=120))
    assert "named twice" in line
