"""tools.bench.main: a tiny end-to-end run (project only), missing/failing peers reported, report maths.

Never times anything: the figures are checked for presence and consistency,
not speed.  Does not need the peer venv (.venv-bench).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tools.bench import main as bench
from tools.bench import report as bench_report
from tools.bench.corpus import generated_records, make_corpus
from tools.bench.memory import run_measured
from tools.bench.run import Job, run_once, summary


@pytest.mark.slow  # ~11 subprocesses that import torch: ~50 s on the shared 2-core machine
@pytest.mark.timeout(600)
def test_tiny_run_writes_every_section(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = bench.main(["--peers", "webdataset", "--peer-python", str(tmp_path / "no-venv" / "python"),
                     "--scale", "0.01", "--reps", "1", "--no-memory", "--no-lm",
                     "--work", str(tmp_path / "work"), "--out", str(out), "--plot", str(png)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert {"meta", "build", "ceiling", "stream", "ratios", "targets", "mismatches"} <= set(res)
    assert res["meta"]["versions"]["project_venv"]["torch"]
    n = res["meta"]["corpus"]["records"]
    for name in ("ours-arrow", "ours-tar", "ours-pretok-arrow", "pyarrow-floor"):
        assert res["build"][name]["status"] == "ok", res["build"][name]
        assert res["build"][name]["mb_per_s"] > 0
    for name in ("ours-otf", "ours-otf-tar", "ours-pretok", "map-style"):
        row = res["stream"][name]
        assert row["status"] == "ok", row
        assert row["samples"] == n and row["tokens"] > n and row["ttfb_s"] > 0 and row["peak_pss_mb"] > 0
    # every pipeline tokenizes the same way: identical token counts
    assert len({res["stream"][k]["tokens"] for k in ("ours-otf", "ours-otf-tar", "map-style")}) == 1
    # the missing peer is in the table as not installed, not dropped
    for section in ("build", "stream"):
        assert res[section]["webdataset"]["status"].startswith("not installed: no peer python")
    assert res["ratios"]["otf_vs_ceiling_2proc"] > 0
    assert res["mismatches"] == []
    assert png.stat().st_size > 1000
    table = bench_report.render(res)
    assert "not installed" in table and "ours-otf" in table


def test_failing_task_is_reported(tmp_path):
    job = Job("build", "broken", "build_pyarrow", {"corpus": str(tmp_path / "missing.jsonl"),
                                                     "out": str(tmp_path / "o")})
    log = open(tmp_path / "runs.jsonl", "w")
    run_once(job, 120, log)
    assert job.status.startswith("failed: ")
    assert summary(job)["status"] == job.status
    assert (tmp_path / "build-broken.stderr.txt").exists()


def test_pss_counts_children():
    code = ("import subprocess,sys;"
            "subprocess.run([sys.executable,'-c','import time;b=bytearray(80<<20);b[::4096]=b\"x\"*len(b[::4096]);"
            "time.sleep(1)'])")
    m = run_measured([sys.executable, "-c", code], interval=0.02)
    assert m.returncode == 0
    assert m.peak_pss > 80 << 20 and m.peak_processes == 2
    assert 80 << 20 < m.peak_pss_data <= m.peak_pss


def test_corpus_scales_and_reuses(tmp_path):
    base = (generated_records(100), "generated")
    c = make_corpus(str(tmp_path), 2.5, base)
    assert c.records == 250 and c.source == "generated"
    lines = (tmp_path / "corpus-x2.5.jsonl").read_text().splitlines()
    assert len(lines) == 250 and json.loads(lines[100]) == json.loads(lines[0])
    assert make_corpus(str(tmp_path), 2.5, base) == c
    with pytest.raises(ValueError, match="scale"):
        make_corpus(str(tmp_path), 0, base)


def _row(**kw):
    return {"status": "ok", **kw}


def test_ratios_and_targets():
    res = {"meta": {}, "build": {"ours-arrow": _row(mb_per_s=10), "webdataset": _row(mb_per_s=4),
                                 "mosaic": _row(mb_per_s=8), "litdata": {"status": "failed: x"}},
           "ceiling": {"tokenizers-2proc": _row(samples_per_s=100), "tokenizers-1proc": _row(samples_per_s=60)},
           "stream": {"ours-otf": _row(samples_per_s=95, ttfb_s=0.5, samples=10, expected_samples=10),
                      "ours-pretok": _row(samples_per_s=300, samples=10, expected_samples=10),
                      "webdataset": _row(samples_per_s=50, samples=9, expected_samples=10),
                      "map-style": _row(samples_per_s=40)},
           "memory": {"ours-otf": {"status": "ok", "ratio": 1.02}}}
    r = bench_report.ratios(res)
    assert r["otf_vs_ceiling_2proc"] == pytest.approx(0.95)
    assert r["otf_vs_best_peer"] == pytest.approx(1.9) and r["best_peer_stream"] == "webdataset"
    assert r["build_vs_fastest_peer"] == pytest.approx(1.25) and r["fastest_peer_writer"] == "mosaic"
    assert r["pretok_vs_best_peer"] == pytest.approx(6.0)
    met = {t["key"]: t["met"] for t in bench_report.targets(res, r)}
    assert met["otf_vs_ceiling_2proc"] and met["otf_vs_best_peer"] and met["memory_10x_vs_1x_ours"]
    assert met["pretok_vs_otf"] is True and met["ttfb_ours_s"] is True
    assert bench_report.mismatches(res) == ["stream/webdataset: 9 samples per epoch, expected 10"]


def test_unknown_peer_is_refused():
    with pytest.raises(SystemExit, match="valid"):
        bench.selected_peers("webdataset,ray")


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "tools.bench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--peers" in out.stdout


def test_report_of_saved_json(tmp_path, capsys):
    assert bench.main(["--report", str(_saved(tmp_path))]) == 0
    assert "Targets" in capsys.readouterr().out


def _saved(tmp_path):
    res = {"meta": {"corpus": {"records": 1, "source": "generated", "bytes": 10}, "scale": 1, "reps": 1,
                    "settings": {"batch": 64, "workers": 2, "max_length": 128}, "machine": {"summary": "m"}},
           "build": {}, "ceiling": {}, "stream": {}, "ratios": {}, "targets": [], "mismatches": []}
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(res))
    return path

