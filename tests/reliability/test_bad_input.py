"""Bad input lines: exact counts per reason, input lines == written + skipped, and
``--on-bad-record error`` naming file:line and the reason.  Run with ``-s`` to see the figures.

    .venv/bin/python -m pytest tests/reliability/test_bad_input.py -s -q
"""
from __future__ import annotations

import json
import random

import pytest

from shards import load_manifest
from shards.cli import main

pytestmark = pytest.mark.timeout(120)

GOOD = b'{"text": "a fine record %d", "label": "%s"}'
# reason -> a line that is bad for that reason alone
BAD_LINES = {
    "invalid_utf8": b'{"text": "caf\xe9 in latin-1", "label": "pos"}',
    "nul_byte": b'{"text": "raw \x00 nul", "label": "pos"}',
    "nul_byte (escaped)": b'{"text": "escaped \\u0000 nul", "label": "pos"}',
    "blank_line": b"   ",
    "empty_text": b'{"text": "  ", "label": "pos"}',
    "too_long": b'{"text": "' + b"x" * 3000 + b'", "label": "pos"}',
    "malformed_json": b'{"text": "no closing brace", "label": "pos"',
    "missing_field": b'{"body": "no text field", "label": "pos"}',
    "missing_field (label)": b'{"text": "no label"}',
    "unknown_label": b'{"text": "label not in --label-names", "label": "neutral"}',
}
ARGS = ["--label-field", "label", "--label-names", "neg,pos", "--max-record-bytes", "1KiB", "--no-progress"]


def reason_of(kind: str) -> str:
    return kind.split(" ")[0]


def make_corpus(path, n_good=2000, per_kind=17, seed=0):
    rng = random.Random(seed)
    lines = [GOOD % (i, rng.choice([b"neg", b"pos"])) for i in range(n_good)]
    expected: dict[str, int] = {}
    for kind, line in BAD_LINES.items():
        for _ in range(per_kind):
            lines.insert(rng.randrange(len(lines) + 1), line)
        expected[reason_of(kind)] = expected.get(reason_of(kind), 0) + per_kind
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(lines), n_good, expected


@pytest.mark.parametrize("workers,split", [(1, "256MiB"), (2, "20KB")])
def test_every_reason_counted_exactly(tmp_path, capsys, workers, split):
    src = tmp_path / "mixed.jsonl"
    n_lines, n_good, expected = make_corpus(src)
    out = tmp_path / "out"
    code = main(["build", str(src), "--out", str(out), "--on-bad-record", "skip", "--workers", str(workers),
                 "--split-bytes", split, "--max-records", "300", *ARGS])
    summary = capsys.readouterr().out
    assert code == 0
    m = load_manifest(str(out))
    assert m.bad_records == dict(sorted(expected.items()))
    assert m.num_records == n_good
    assert n_lines == m.num_records + sum(m.bad_records.values())
    for reason, count in expected.items():
        assert f"'{reason}': {count}" in summary
    with capsys.disabled():
        print(f"\nbad input (workers={workers}, split={split}): {n_lines} lines = {m.num_records} written + "
              f"{sum(m.bad_records.values())} skipped {m.bad_records}")


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_error_mode_names_file_line_and_reason(tmp_path, capsys, kind):
    src = tmp_path / "one-bad.jsonl"
    lines = [GOOD % (i, b"pos") for i in range(10)]
    lines.insert(6, BAD_LINES[kind])  # line 7
    src.write_bytes(b"\n".join(lines) + b"\n")
    code = main(["build", str(src), "--out", str(tmp_path / "out"), *ARGS])
    err = capsys.readouterr().err
    if reason_of(kind) == "blank_line":  # a blank line is not a record: counted, never fatal
        assert code == 0 and load_manifest(str(tmp_path / "out")).bad_records == {"blank_line": 1}
        return
    assert code == 2
    assert f"one-bad.jsonl:7: {reason_of(kind)}" in err and "--on-bad-record skip" in err
    assert not (tmp_path / "out" / "index.json").exists()


def test_txt_nul_empty_and_overlong_lines(tmp_path):
    src = tmp_path / "lines.txt"
    lines = [b"plain line %d" % i for i in range(100)]
    lines[10] = b""
    lines[20] = b"  \t "
    lines[30] = b"with \x00 nul"
    lines[40] = b"y" * 5000
    lines[50] = b"\xff\xfe not utf-8"
    src.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["build", str(src), "--out", str(tmp_path / "o"), "--on-bad-record", "skip",
                 "--max-record-bytes", "4KiB", "--no-progress"]) == 0
    m = load_manifest(str(tmp_path / "o"))
    assert m.bad_records == {"blank_line": 2, "invalid_utf8": 1, "nul_byte": 1, "too_long": 1}
    assert m.num_records == 95


@pytest.mark.corpora
def test_rt_polarity_original_bytes(tmp_path, corpora, capsys):
    """The CP1252 copy of rt-polarity: 101 non-UTF-8 lines in each file, counted exactly."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("rt-polarity.pos", "rt-polarity.neg"):  # the reader goes by extension
        (src / f"{name}.txt").symlink_to(corpora / "rt-polarity" / "original-bytes" / name)
    n_lines = sum((src / p).read_bytes().count(b"\n") for p in ("rt-polarity.pos.txt", "rt-polarity.neg.txt"))
    out = tmp_path / "out"
    assert main(["build", str(src), "--out", str(out), "--on-bad-record", "skip", "--no-progress"]) == 0
    summary = capsys.readouterr().out
    m = load_manifest(str(out))
    assert n_lines == 10_662
    assert m.bad_records == {"invalid_utf8": 202}
    assert m.num_records == 10_460 == n_lines - 202
    assert "skipped: {'invalid_utf8': 202}" in summary
    assert main(["build", str(src), "--out", str(tmp_path / "strict"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "rt-polarity.neg.txt:32: invalid_utf8: byte 16" in err  # inputs are read in sorted order
    with capsys.disabled():
        print(f"\nrt-polarity original-bytes: {n_lines} lines = {m.num_records} written + "
              f"{sum(m.bad_records.values())} skipped {m.bad_records}; strict mode stops at "
              f"{err.split(': ', 1)[1].split(' (pass')[0].rsplit('/', 1)[-1]}")


def test_skip_counts_survive_json_roundtrip(tmp_path):
    src = tmp_path / "a.jsonl"
    make_corpus(src, n_good=50, per_kind=2)
    assert main(["build", str(src), "--out", str(tmp_path / "o"), "--on-bad-record", "skip", *ARGS]) == 0
    data = json.loads((tmp_path / "o" / "index.json").read_text())
    assert data["bad_records"]["unknown_label"] == 2 and data["bad_records"]["missing_field"] == 4


CSV_BAD = {  # reason -> (row, input lines it takes)
    "malformed_csv": ('"text after" the quote,pos', 1),
    "malformed_csv (fields)": ("one,two,pos", 1),
    "blank_line": (",", 1),
    "invalid_utf8": ("caf\xe9 latin-1,pos", 1),
    "nul_byte": ("raw \x00 nul,pos", 1),
    "empty_text": ("   ,pos", 1),
    "missing_field": ("no label,   ", 1),
    "bad_label": ('"label with, newline","po\ns"', 2),
    "unknown_label": ('"two\nline record",neutral', 2),  # counted per record by build.py (1 + 1 continued)
}


@pytest.mark.parametrize("workers", [1, 2])
def test_csv_every_reason_counted_in_lines(tmp_path, capsys, workers):
    """CSV: lines after the header = written + counted (+ the extra lines of written multi-line rows)."""
    rng = random.Random(1)
    rows = [(f"good {i}," + rng.choice(["neg", "pos"]), 1) for i in range(500)]
    rows += [(f'"good\nmulti {i}",pos', 2) for i in range(20)]
    expected: dict[str, int] = {}
    for kind, (row, lines) in CSV_BAD.items():
        for _ in range(7):
            rows.insert(rng.randrange(len(rows) + 1), (row, lines))
        expected[reason_of(kind)] = expected.get(reason_of(kind), 0) + 7 * (lines if kind != "unknown_label" else 1)
    rows.append(('"unclosed at the end,pos', 1))
    rows.append(("good but swallowed,pos", 1))
    expected["malformed_csv"] += 2
    src = tmp_path / "mixed.csv"
    src.write_bytes(("text,label\n" + "\n".join(r for r, _ in rows) + "\n").encode("latin-1"))
    out = tmp_path / "out"
    code = main(["build", str(src), "--out", str(out), "--on-bad-record", "skip", "--workers", str(workers),
                 "--label-field", "label", "--label-names", "neg,pos", "--no-progress"])
    assert code == 0
    m = load_manifest(str(out))
    assert m.bad_records == dict(sorted(expected.items()))
    assert m.num_records == 520
    n_lines = sum(lines for _, lines in rows)
    # continued lines: 20 written two-line rows, 7 two-line rows read and then refused as unknown_label
    assert n_lines == m.num_records + sum(m.bad_records.values()) + 27
    with capsys.disabled():
        print(f"\ncsv bad input: {n_lines} lines = {m.num_records} written + 27 continued + "
              f"{sum(m.bad_records.values())} counted {m.bad_records}")
