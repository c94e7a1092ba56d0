"""tools.gpu_check: the CPU smoke run end to end (table + JSON), and its corpus fallbacks.

Never judges speed: the figures are checked for presence and range only.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tools import gpu_check

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 4 short training runs with loader workers: ~60 s on the shared, busy 2-core machine
@pytest.mark.timeout(600)
def test_cpu_smoke_prints_the_table_and_writes_every_case(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--device", "cpu", "--smoke", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "data-wait" in text and "target < 1 %" in text and "corpus classify:" in text and "corpus lm:" in text
    for case in gpu_check.CASES:
        line = next((ln for ln in text.splitlines() if ln.startswith(case + " ")), None)
        assert line is not None, f"{case} missing from the table:\n{text}"
        assert line.rstrip().endswith(("met", "missed")) and "%" in line
        assert ("tokens/s" if case.startswith("lm/") else "samples/s") in line
    res = json.loads(out.read_text())
    assert res["meta"]["device"] == "cpu" and res["meta"]["smoke"] is True
    assert set(res["meta"]["corpora"]) == {"classify", "lm"}
    rows = {r["case"]: r for r in res["cases"]}
    assert set(rows) == set(gpu_check.CASES)
    for r in rows.values():
        assert 0.0 <= r["data_wait_fraction"] <= 1.0, r
        assert r["target_met"] == (r["data_wait_fraction"] < gpu_check.TARGET)
        assert r["steps"] == res["meta"]["steps"] and r["wall_s"] > 0 and r["step_ms"] > 0
        assert r["samples"] > 0 and r["tokens"] > 0 and r["samples_per_s"] > 0 and r["tokens_per_s"] > 0
        assert r["gpu_step_ms"] is None and r["gpu_idle_fraction"] is None  # no CUDA events on CPU
    # LM blocks are full (documents split across blocks) but for the last one
    for case in ("lm/on-the-fly", "lm/pre-tokenized"):
        r = rows[case]
        assert r["tokens"] <= r["samples"] * r["seq_len"]


def test_corpus_fallbacks_without_real_corpora(tmp_path):
    """No ../shared/corpora: a generated corpus, named as such, with enough data for the steps."""
    args = gpu_check.parse_args(["--smoke", "--corpora", str(tmp_path / "absent")])
    work = tmp_path / "work"
    work.mkdir()
    path, note = gpu_check.classify_corpus(args, work)
    assert "generated" in note
    rows = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    assert rows[0] == "sentence\tlabel" and len(rows) - 1 >= (args.warmup + args.steps) * args.cls_batch
    paths, note = gpu_check.lm_corpus(args, work)
    assert "generated" in note
    chars = sum(len(pathlib.Path(p).read_text(encoding="utf-8")) for p in paths)
    assert chars / 6 >= (args.warmup + args.steps) * args.lm_batch * args.seq_len


def test_real_corpora_are_named(tmp_path, corpora):
    args = gpu_check.parse_args(["--smoke", "--corpora", str(corpora)])
    _, note = gpu_check.classify_corpus(args, tmp_path)
    assert "SST-2" in note
    _, note = gpu_check.lm_corpus(args, tmp_path)
    assert "WikiText-2" in note


def test_table_and_options():
    row = {"case": "lm/on-the-fly", "task": "lm", "tokens_per_s": 1234567.0, "samples_per_s": 10.0, "step_ms": 12.5,
           "gpu_step_ms": 11.0, "data_wait_fraction": 0.004, "target_met": True}
    text = gpu_check.table([row, {**row, "case": "classify/pre-tokenized", "task": "classify",
                                  "data_wait_fraction": 0.25, "target_met": False, "gpu_step_ms": None}])
    assert "1,234,567 tokens/s" in text and "0.40%" in text and "met" in text
    assert "10 samples/s" in text and "25.00%" in text and "missed" in text
    args = gpu_check.parse_args([])
    assert (args.cls_batch, args.max_length, args.seq_len, args.lm_batch) == (256, 128, 1024, 16)
    assert args.cases == list(gpu_check.CASES)
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--cases", "classify/nope"])
