"""tools.make_corpus and tools.demo: a learnable generated corpus, the hold-out split, the whole job."""
from __future__ import annotations

import json

import pytest

from tools import demo, make_corpus


def test_generated_corpus_is_deterministic_balanced_and_has_signal(tmp_path):
    a = make_corpus.make(str(tmp_path / "a"), train=400, dev=50, seed=3)
    b = make_corpus.make(str(tmp_path / "b"), train=400, dev=50, seed=3)
    assert [open(p).read() for p in a] == [open(p).read() for p in b]
    rows = [line.split("\t") for line in open(a[0]).read().splitlines()[1:]]
    assert len(rows) == 400
    labels = [label for _, label in rows]
    assert 0.4 < labels.count("positive") / len(labels) < 0.6
    # signal: a bag-of-opinion-words rule (ignoring negation) already beats chance clearly
    pos, neg = set(make_corpus.POSITIVE), set(make_corpus.NEGATIVE)
    hits = sum((sum(w in pos for w in t.split()) > sum(w in neg for w in t.split())) == (lab == "positive")
               for t, lab in rows)
    assert hits / len(rows) > 0.6
    assert open(a[1]).read() != open(a[0]).read()[: len(open(a[1]).read())]  # dev is not a copy of train


def test_jsonl_format(tmp_path):
    train, _ = make_corpus.make(str(tmp_path), train=5, dev=2, fmt="jsonl")
    assert set(json.loads(open(train).readline())) == {"sentence", "label"}


def test_hold_out_keeps_the_header_and_every_record_once(tmp_path):
    src = tmp_path / "data.tsv"
    src.write_text("text\tlabel\n" + "".join(f"line {i}\t{i % 2}\n" for i in range(25)))
    train, dev = demo.hold_out(str(src), str(tmp_path / "split"))
    t, d = open(train).read().splitlines(), open(dev).read().splitlines()
    assert t[0] == d[0] == "text\tlabel"
    assert len(t) - 1 == 22 and len(d) - 1 == 3
    assert sorted(t[1:] + d[1:]) == sorted(src.read_text().splitlines()[1:])
    assert demo.fields(str(src), None) == "text"
    other = tmp_path / "other.tsv"
    other.write_text("body\tlabel\nx\t0\n")
    with pytest.raises(SystemExit, match="--text-field"):
        demo.fields(str(other), None)


@pytest.mark.slow
@pytest.mark.dist
@pytest.mark.timeout(400)
def test_demo_end_to_end_few_steps(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "demo"), "--nproc", "2", "--steps", "4", "--min-accuracy", "0"]) == 0
    out = capsys.readouterr().out
    assert "== demo summary ==" in out and "audit         OK" in out
    assert json.loads((tmp_path / "demo" / "run" / "metrics.json").read_text())["world_size"] == 2
