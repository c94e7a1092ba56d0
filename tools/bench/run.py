"""Run benchmark jobs as subprocesses (project or peer python), repeat them round-robin, aggregate.

A job is one task of ``tools.bench.task`` with its parameters and the python
to run it with.  Repetitions are interleaved (rep 1 of every job, then rep 2
...) so a burst of load from other users of the machine hits every pipeline
alike.  A job whose python is missing or whose library does not import is
"not installed"; one that raises or times out is "failed: <why>"; neither is
ever dropped from the results.
"""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
from dataclasses import dataclass, field

from tools.bench.common import RESULT_MARK
from tools.bench.memory import run_measured

ROOT = pathlib.Path(__file__).resolve().parents[2]
OK = "ok"
COUNTS = {"samples", "tokens", "records", "batches", "shards", "expected_samples"}


@dataclass
class Job:
    section: str           # build | ceiling | stream | memory | lm
    name: str              # row label, e.g. "webdataset"
    task: str              # a tools.bench.task name
    params: dict
    python: str | None = sys.executable   # None: the peer venv is missing
    missing_reason: str = ""
    runs: list = field(default_factory=list)
    pss: list = field(default_factory=list)       # peak PSS per run, bytes
    pss_data: list = field(default_factory=list)  # peak anon + shmem PSS per run, bytes
    status: str = OK

    @property
    def done(self) -> bool:
        return self.status != OK


def task_env() -> dict:
    env = dict(os.environ)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    env.pop("VIRTUAL_ENV", None)
    return env


def parse_result(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    return None


def run_once(job: Job, timeout: float, log) -> None:
    """One repetition of ``job``; appends to ``job.runs``/``job.pss`` or sets its failure status."""
    if job.done:
        return
    if job.python is None:
        job.status = f"not installed: {job.missing_reason}"
        return
    cmd = [job.python, "-m", "tools.bench.task", job.task, "--params", json.dumps(job.params)]
    measured = run_measured(cmd, env=task_env(), cwd=str(ROOT), timeout=timeout)
    result = parse_result(measured.stdout)
    if measured.timed_out:
        job.status = f"failed: timed out after {timeout:.0f} s"
    elif result is None:
        tail = (measured.stderr.strip().splitlines() or ["no output"])[-1]
        job.status = f"failed: exit {measured.returncode}: {tail[:300]}"
    elif "error" in result:
        job.status = result["error"][:500]
    else:
        job.runs.append(result)
        job.pss.append(measured.peak_pss)
        job.pss_data.append(measured.peak_pss_data)
    if job.done:
        (pathlib.Path(log.name).parent / f"{job.section}-{job.name}.stderr.txt").write_text(measured.stderr)
    log.write(json.dumps({"section": job.section, "name": job.name, "status": job.status,
                          "seconds": round(measured.seconds, 2), "peak_pss": measured.peak_pss,
                          "peak_pss_data": measured.peak_pss_data,
                          "result": result}) + "\n")
    log.flush()


def run_round_robin(jobs: list[Job], reps: int, timeout: float, log, progress=print) -> None:
    for rep in range(reps):
        for job in jobs:
            if job.done:
                continue
            progress(f"  [{job.section}] {job.name} rep {rep + 1}/{reps}")
            run_once(job, timeout, log)
            if job.done:
                progress(f"    -> {job.status}")


def summary(job: Job) -> dict:
    """Median figures over the runs, the spread of the main rate, the peak PSS, every run."""
    out: dict = {"status": job.status, "task": job.task, "python": job.python}
    if not job.runs:
        if job.status == OK:
            out["status"] = "failed: no run"
        return out
    keys = [k for k, v in job.runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key in keys:
        values = [r[key] for r in job.runs if isinstance(r.get(key), (int, float))]
        if all(isinstance(v, int) for v in values) and (len(set(values)) == 1 or key in COUNTS):
            out[key] = values[0] if len(set(values)) == 1 else values  # counts that differ: a finding, keep all
        else:
            out[key] = statistics.median(values)
    for key, value in job.runs[0].items():
        if key not in out and key not in keys:
            out[key] = value
    rate = next((k for k in ("samples_per_s", "tokens_per_s", "mb_per_s") if k in keys), None)
    if rate and len(job.runs) > 1:
        values = [r[rate] for r in job.runs]
        out["spread"] = {"key": rate, "min": min(values), "max": max(values)}
    if job.pss:
        out["peak_pss_mb"] = max(job.pss) / 2**20
        out["peak_pss_data_mb"] = max(job.pss_data) / 2**20
    out["reps"] = len(job.runs)
    out["runs"] = job.runs
    return out
