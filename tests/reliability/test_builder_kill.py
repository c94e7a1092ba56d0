"""20 SIGKILLs of ``shards build`` at random points: after each, ``index.json`` is absent
or lists only complete shards (size, sha256, record counts all check); a final rerun
gives output byte-identical to an uninterrupted build.  Prints where each kill landed.

    .venv/bin/python -m pytest tests/reliability/test_builder_kill.py -s -q
"""
from __future__ import annotations

import pathlib
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from shards import load_manifest
from shards.corpus.read import plan_units
from shards.reader import verify_shard
from tests.helpers.data import labelled_records, write_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[2]
KILLS = 20


def command(inputs, out) -> list[str]:
    # many small tar shards and byte-range units: long unit and finalize phases to land in
    return [sys.executable, "-m", "shards", "build", *inputs, "--out", str(out), "--format", "tar",
            "--label-field", "label", "--max-records", "40", "--split-bytes", "150KB", "--no-progress"]


def snapshot(out: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def phase(out: pathlib.Path, n_units: int) -> str:
    """Where the killed build was, judged from what it left."""
    staging = out / ".staging"
    if (out / "index.json").exists():
        return "after index.json"
    if not staging.exists():
        return "before any unit"
    done = len(list(staging.glob("*.done.json")))
    return "publishing shards" if done == n_units else f"writing units ({done}/{n_units} done)"


def check_consistent(out: pathlib.Path) -> str:
    """index.json absent, or every shard it lists is complete."""
    if not (out / "index.json").exists():
        return "absent"
    m = load_manifest(str(out))
    assert sum(verify_shard(m, str(out), i) for i in range(len(m.shards))) == m.num_records
    return "valid"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_random_sigkills_never_publish_a_partial_set(tmp_path):
    recs = labelled_records(16_000)
    inputs = [write_jsonl(tmp_path / "in" / f"f{k}.jsonl", recs[k * 4000:(k + 1) * 4000]) for k in range(4)]
    t0 = time.monotonic()
    subprocess.run(command(inputs, tmp_path / "ref"), cwd=ROOT, check=True, capture_output=True)
    full = time.monotonic() - t0
    reference = snapshot(tmp_path / "ref")

    n_units = len(plan_units(inputs, 150_000))
    out = tmp_path / "out"
    rng = random.Random(2024)
    phases, states = Counter(), Counter()
    for _ in range(KILLS):
        proc = subprocess.Popen(command(inputs, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, full * 0.9))  # a resumed run is shorter than a full one
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        phases["finished before the kill" if proc.returncode == 0 else phase(out, n_units)] += 1
        states[check_consistent(out)] += 1

    run = subprocess.run(command(inputs, out), cwd=ROOT, check=True, capture_output=True, text=True)
    final = snapshot(out)
    assert sorted(final) == sorted(reference)
    assert [k for k in final if final[k] != reference[k]] == []
    print(f"\n{KILLS} SIGKILLs over a {full:.1f} s build ({len(reference) - 1} shards): "
          f"index.json after kill {dict(states)}; kill points {dict(sorted(phases.items()))}; "
          f"final rerun: {run.stdout.strip().rsplit('; ', 1)[-1]}, output identical to an uninterrupted build")


def test_a_lock_temp_file_of_a_killed_builder_is_removed_by_the_next_build(tmp_path):
    """A builder SIGKILLed between writing its lock's temp file and removing it leaves ``.lock.PID-TOKEN``;
    the next build removes it (its pid is dead) and leaves a live builder's alone."""
    inputs = [write_jsonl(tmp_path / "in.jsonl", labelled_records(30))]
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out.mkdir()
    stale, live = out / f".lock.{dead.pid}-{'a' * 32}", out / f".lock.{1}-{'b' * 32}"  # pid 1 is alive
    stale.write_text("{}")
    live.write_text("{}")
    subprocess.run(command(inputs, out), cwd=ROOT, check=True, capture_output=True)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".lock")) == [live.name]
