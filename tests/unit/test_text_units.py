"""``--text-unit line|paragraph|file`` for txt inputs and ``--input-format`` over the extension."""
from __future__ import annotations

import gzip
import pathlib
import random
import subprocess
import sys

import pytest

from shards.cli import main
from shards.corpus.read import BadRecordError, BadRecords, CorpusSpec, Unit, kind_of, plan_units, read_unit
from shards.manifest import load_manifest
from shards.reader import iter_shard

pytestmark = pytest.mark.timeout(180)
ROOT = pathlib.Path(__file__).resolve().parents[2]
SHAKESPEARE = ROOT.parent / "shared" / "corpora" / "tinyshakespeare" / "input.txt"

# A hard-wrapped "book": a BOM, a title, paragraphs of several lines, runs of blank lines, CRLF, indentation.
BOOK = ("\ufeffTHE TITLE\n\n\nIt was the best of times, it was\n  the worst of times, it was the age\n"
        "of wisdom.\n\nThere were a king with a large jaw\r\nand a queen with a plain face.\n\n"
        "   \nTHE END\n\n")
PARAGRAPHS = ["THE TITLE", "It was the best of times, it was the worst of times, it was the age of wisdom.",
              "There were a king with a large jaw and a queen with a plain face.", "THE END"]
WHOLE = ("THE TITLE\n\n\nIt was the best of times, it was\n  the worst of times, it was the age\nof wisdom.\n\n"
         "There were a king with a large jaw\nand a queen with a plain face.\n\n   \nTHE END")


def shards_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shards", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=150)


def texts(out) -> list[str]:
    m = load_manifest(str(out))
    return [t for i in range(len(m.shards)) for b in iter_shard(m, str(out), i, None, verify="none") for t in b.text]


def n_lines(data: bytes) -> int:
    return len(data.splitlines())


def accounted(out) -> int:
    m = load_manifest(str(out))
    return m.num_records + m.continued_lines + sum(m.bad_records.values())


@pytest.mark.parametrize("unit,expected", [("paragraph", PARAGRAPHS), ("file", [WHOLE]),
                                           ("line", None)])
def test_text_units_on_a_book_through_the_command(tmp_path, unit, expected):
    src = tmp_path / "book.txt"
    src.write_bytes(BOOK.encode())
    out = tmp_path / unit
    run = shards_cmd("build", str(src), "--out", str(out), "--text-unit", unit, "--no-progress")
    assert run.returncode == 0, run.stderr
    got = texts(out)
    if expected is None:  # the default: one record per non-blank line, the BOM dropped
        expected = [x for x in BOOK.lstrip("\ufeff").splitlines() if x.strip()]
    assert got == expected
    assert accounted(out) == n_lines(BOOK.encode())  # input lines = written + continued + counted


def test_line_unit_output_is_byte_identical_to_the_default(tmp_path):
    src = tmp_path / "book.txt"
    src.write_bytes(BOOK.encode())
    for name, extra in (("default", []), ("line", ["--text-unit", "line"])):
        assert main(["build", str(src), "--out", str(tmp_path / name), *extra, "--no-progress"]) == 0
    for f in ("index.json", "shard-00000.arrow"):
        assert (tmp_path / "default" / f).read_bytes() == (tmp_path / "line" / f).read_bytes()


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"{SHAKESPEARE} not present (shared corpora not mounted)")
def test_text_units_on_tinyshakespeare(tmp_path):
    data = SHAKESPEARE.read_bytes()
    blocks = [b for b in data.decode().split("\n\n") if b.strip()]
    for unit in ("paragraph", "file"):
        out = tmp_path / unit
        run = shards_cmd("build", str(SHAKESPEARE), "--out", str(out), "--text-unit", unit, "--no-progress")
        assert run.returncode == 0, run.stderr
        got = texts(out)
        if unit == "paragraph":  # a speaker's speech: its lines joined with one space
            assert len(got) == len(blocks)
            assert got[0] == "First Citizen: Before we proceed any further, hear me speak."
        else:
            assert got == [data.decode().strip("\n")]
        assert accounted(out) == n_lines(data)
        print(f"tinyshakespeare --text-unit {unit}: {len(got)} record(s), {run.stdout.strip()}")


def test_input_format_reads_a_neg_file_and_an_unknown_extension_is_one_line(tmp_path):
    neg = tmp_path / "rt-polarity.neg"
    neg.write_text("simplistic , silly and tedious .\n\nit's so laddish and juvenile .\n")
    out = tmp_path / "out"
    refused = shards_cmd("build", str(neg), "--out", str(out), "--no-progress")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and str(neg) in refused.stderr and "--input-format" in refused.stderr
    run = shards_cmd("build", str(neg), "--out", str(out), "--input-format", "txt", "--no-progress")
    assert run.returncode == 0, run.stderr
    assert texts(out) == ["simplistic , silly and tedious .", "it's so laddish and juvenile ."]


def test_input_format_keeps_compression_and_takes_every_file_of_a_folder(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "a.neg").write_text('{"text": "one"}\n')
    (folder / "b.data.gz").write_bytes(gzip.compress(b'{"text": "two"}\n'))
    assert kind_of(str(folder / "b.data.gz"), "jsonl") == ("jsonl", "gzip")
    assert main(["build", str(folder), "--out", str(tmp_path / "o"), "--input-format", "jsonl",
                 "--no-progress"]) == 0
    assert texts(tmp_path / "o") == ["one", "two"]


def read(path, unit: str, policy: str = "skip", limit: int = 8 << 20):
    bad = BadRecords(policy)
    spec = CorpusSpec(text_unit=unit, on_bad_record=policy, max_record_bytes=limit)
    return list(read_unit(Unit(str(path)), spec, bad)), bad


def test_a_bad_line_makes_its_paragraph_bad_and_errors_name_its_first_line(tmp_path):
    src = tmp_path / "b.txt"
    src.write_bytes(b"good one\nstill good\n\nfirst line\nbad \xff byte\nlast line\n\nfine\n")
    with pytest.raises(BadRecordError, match=r"b\.txt:4: invalid_utf8: a paragraph of 3 line\(s\): line 5"):
        read(src, "paragraph", "error")
    records, bad = read(src, "paragraph")
    assert [r.text for r in records] == ["good one still good", "fine"] and [r.line for r in records] == [1, 8]
    assert dict(bad.counts) == {"blank_line": 2, "invalid_utf8": 3} and bad.continued == 1
    records, bad = read(src, "file")
    assert records == [] and dict(bad.counts) == {"invalid_utf8": 8}


def test_records_over_the_limit_are_too_long_as_a_whole(tmp_path):
    src = tmp_path / "b.txt"
    src.write_bytes(b"short\npara\n\n" + b"x" * 30 + b"\nmore\n\nend\n")
    records, bad = read(src, "paragraph", limit=20)
    assert [r.text for r in records] == ["short para", "end"]
    assert dict(bad.counts) == {"blank_line": 2, "too_long": 2} and bad.continued == 1
    records, bad = read(src, "file", limit=20)
    assert records == [] and sum(bad.counts.values()) == 7


@pytest.mark.parametrize("seed", range(30))
def test_every_line_is_written_continued_or_counted(tmp_path, seed):
    """Random lines (blank, whitespace, text, over-long, invalid UTF-8, NUL; LF/CRLF/CR): the invariant holds."""
    rng = random.Random(seed)
    pieces = [b"", b"  ", b"word", b"two words", b"y" * 40, b"\xff", b"a\x00b"]
    lines = [rng.choice(pieces) for _ in range(rng.randrange(1, 30))]
    data = b"".join(line + rng.choice([b"\n", b"\r\n", b"\r"]) for line in lines)
    if rng.random() < 0.3:
        data = data.rstrip(b"\r\n")  # no final line break
    src = tmp_path / "r.txt"
    src.write_bytes(data)
    for unit in ("line", "paragraph", "file"):
        records, bad = read(src, unit, limit=32)
        assert len(records) + bad.continued + sum(bad.counts.values()) == n_lines(data), unit


def test_paragraph_and_file_txt_are_never_cut_into_byte_ranges(tmp_path):
    src = tmp_path / "big.txt"
    src.write_text("a line\n" * 100)
    assert len(plan_units([str(src)], 100)) > 1
    for unit in ("paragraph", "file"):
        assert plan_units([str(src)], 100, spec=CorpusSpec(text_unit=unit)) == [Unit(str(src))]
