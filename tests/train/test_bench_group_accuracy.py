"""tools.bench.group_accuracy: the Rotten Tomatoes split, the summary maths, skips, and a tiny end-to-end run.

Tiny generated corpora on the CPU; never times anything (the figures are checked
for presence and consistency, not speed).  The real corpora are not needed.
"""
from __future__ import annotations

import json

import pytest

from pipeline.group import GROUP_BATCHES as GB
from tools.bench import group
from tools.bench import group_accuracy as ga

WORDS = "good bad fine dull great awful fun slow warm cold".split()


def sentence(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 9))  # 1..9 words: lengths vary


def write_corpora(root, n_train=48, n_dev=16):
    """sst2/{train,dev}.tsv and rt-polarity/rt-polarity.{pos,neg} in the layout of ../shared/corpora."""
    (root / "sst2").mkdir(parents=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        rows = [f"{sentence(i)} \t{i % 2}" for i in range(n)]
        (root / "sst2" / f"{name}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (root / "rt-polarity").mkdir()
    for label, offset in (("pos", 0), ("neg", 1000)):
        lines = [f"{sentence(i)} {offset + i}" for i in range(60)]
        (root / "rt-polarity" / f"rt-polarity.{label}").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_rt_split_is_deterministic_disjoint_and_about_a_tenth(tmp_path):
    write_corpora(tmp_path / "c")
    for out in ("a", "b"):
        (tmp_path / out).mkdir()
    first = [p.read_text() for p in ga.split_rt(tmp_path / "c" / "rt-polarity", tmp_path / "a")]
    second = [p.read_text() for p in ga.split_rt(tmp_path / "c" / "rt-polarity", tmp_path / "b")]
    assert first == second
    train, dev = ([json.loads(line) for line in text.splitlines()] for text in first)
    assert len(train) + len(dev) == 120
    assert not {r["text"] for r in train} & {r["text"] for r in dev}
    assert 0 < len(dev) < 30  # crc32 % 10 == 0: about 12 of 120
    assert {r["label"] for r in train} == {"pos", "neg"}


def test_summary_pairs_seeds_and_takes_sample_sd():
    runs = [{"seed": s, "setting": name, "pad_fraction": pad, "train_samples_per_s": speed, "dev_accuracy": acc}
            for s, (a_random, a_grouped, a_whole) in enumerate([(0.80, 0.78, 0.79), (0.82, 0.82, 0.80),
                                                                 (0.81, 0.83, 0.78)])
            for name, pad, speed, acc in (("random", 0.6, 2.0, a_random), ("grouped/50", 0.1, 4.0, a_grouped),
                                          ("grouped/0", 0.01, 5.0, a_whole))]
    out = ga.summarize(runs)
    assert out["settings"] == ["random", "grouped/50", "grouped/0"]
    assert out["random"]["dev_accuracy"] == pytest.approx(0.81)
    assert out["random"]["dev_accuracy_sd"] == pytest.approx(0.01)
    paired = out["paired"]["grouped/50"]
    assert paired["by_seed"] == pytest.approx([-0.02, 0.0, 0.02])
    assert paired["mean"] == pytest.approx(0.0) and paired["t"] == pytest.approx(0.0) and paired["p"] == pytest.approx(1.0)
    assert paired["speed_ratio"] == pytest.approx(2.0) and paired["wins"] == 1 and paired["n"] == 3
    assert out["grouped/50"]["pad_fraction"] == pytest.approx(0.1)
    whole = out["paired"]["grouped/0"]
    assert whole["by_seed"] == pytest.approx([-0.01, -0.02, -0.03]) and whole["speed_ratio"] == pytest.approx(2.5)
    assert whole["t"] == pytest.approx(-3.4641, abs=1e-3) and whole["p"] == pytest.approx(0.0742, abs=1e-3)  # scipy's
    part = ga.summarize(runs[:-2])  # saved part way: seed 2 has random only, so only seeds 0 and 1 pair
    assert part["paired"]["grouped/50"]["seeds"] == [0, 1] and "grouped/0" in part["paired"]
    assert ga.summarize(runs[:1])["paired"] == {}


def test_t_test_p_matches_the_student_t_table():
    t, p = ga.t_test([1.0, 2.0, 3.5])  # t = 2.982 on 2 degrees of freedom
    assert t == pytest.approx(2.9824, abs=1e-3) and p == pytest.approx(0.0964, abs=1e-3)
    assert ga.t_test([0.5]) == (0.0, 1.0) and ga.t_test([0.2, 0.2]) == (0.0, 1.0)  # undefined: no evidence


def test_missing_corpora_are_skipped_saying_so(tmp_path, capsys):
    assert group.main(["--accuracy", "--corpora-dir", str(tmp_path / "none"), "--seeds", "1"]) == 0
    captured = capsys.readouterr()
    assert "skipped sst2: not found" in captured.err and "skipped rt: not found" in captured.err
    assert "no corpus found; nothing measured" in captured.out


@pytest.mark.parametrize(("option", "value"), [("--seeds", "0"), ("--steps", "0"), ("--threads", "0"),
                                               ("--first-seed", "-1"), ("--group-batches", "-1")])
def test_counts_out_of_range_are_refused(option, value, capsys):
    with pytest.raises(SystemExit):
        ga.parse_args([option, value])
    assert f"{option} {value}: " in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_tiny_run_trains_both_settings_per_seed(tmp_path, capsys):
    write_corpora(tmp_path / "c")
    out = tmp_path / "acc.json"
    assert ga.main(["--corpora-dir", str(tmp_path / "c"), "--corpora", "sst2", "--seeds", "2", "--steps", "2",
                    "--batch", "4", "--max-length", "16", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["SST-2"]
    assert [(r["seed"], r["setting"]) for r in res["runs"]] == [(0, "random"), (0, f"grouped/{GB}"),
                                                                (1, f"grouped/{GB}"), (1, "random")]
    for r in res["runs"]:
        assert 0.0 <= r["dev_accuracy"] <= 1.0 and r["dev_samples"] == 16 and r["train_samples_per_s"] > 0
    summary = res["summary"]
    assert summary[f"grouped/{GB}"]["pad_fraction"] <= summary["random"]["pad_fraction"]
    assert len(summary["paired"][f"grouped/{GB}"]["by_seed"]) == 2
    assert f"grouped/{GB} - random, paired by seed" in capsys.readouterr().out


@pytest.mark.timeout(600)
def test_group_bench_interleaves_rounds_and_reports_ratios_to_random(tmp_path, capsys):
    write_corpora(tmp_path / "c", n_train=96)
    out = tmp_path / "group.json"
    assert group.main(["--corpus", str(tmp_path / "c" / "sst2" / "train.tsv"), "--batch", "4", "--max-length", "16",
                       "--workers", "0", "--train-batches", "2", "--rounds", "2", "--group-batches", "2", "0",
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [k for k in res if k != "args"] == ["random", "grouped/2", "grouped/0"]
    assert res["grouped/0"]["pad_fraction"] <= res["grouped/2"]["pad_fraction"] < res["random"]["pad_fraction"]
    for name in ("grouped/2", "grouped/0"):
        row = res[name]
        assert len(row["train_samples_per_s_by_round"]) == 2 and len(row["train_samples_per_cpu_s_by_round"]) == 2
        ratios = [a / b for a, b in zip(row["train_samples_per_cpu_s_by_round"],
                                         res["random"]["train_samples_per_cpu_s_by_round"])]
        assert row["train_samples_per_cpu_s_ratio"] == pytest.approx(sorted(ratios)[0] / 2 + sorted(ratios)[1] / 2)
    assert "x random" in capsys.readouterr().out
