"""Issue 14, item 1: inputs never silently become data.  Each bug seen on main, as a real
file through the public build path (``shards build`` in-process, and once as a subprocess).

    .venv/bin/python -m pytest tests/reliability/test_input_edges.py -q -s
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
import zstandard

from shards import load_manifest
from shards.build.driver import BuildConfig, build
from shards.cli import main
from shards.corpus.read import BadRecordError, CorpusSpec

pytestmark = pytest.mark.timeout(120)
ROWS = 200


def jsonl(n=ROWS) -> bytes:
    return b"".join(json.dumps({"text": f"record {i} " + "words " * (i % 7), "label": "pos"}).encode() + b"\n"
                    for i in range(n))


def texts(out) -> list[str]:
    """The texts of an Arrow shard set, read with pyarrow alone."""
    import pyarrow as pa
    m = load_manifest(str(out))
    return [t for s in m.shards for t in pa.ipc.open_file(str(out / s.path)).read_all().column("text").to_pylist()]


def run(tmp_path, src, *args, name="out"):
    """(exit code, manifest or None, stderr) of ``shards build``."""
    out = tmp_path / name
    code = main(["build", str(src), "--out", str(out), "--no-progress", *args])
    return code, (load_manifest(str(out)) if code == 0 else None), out


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


# -- compressed inputs: truncated, corrupt, trailing garbage ---------------------------------------------
DAMAGE = {
    "zst_truncated": ("a.jsonl.zst", lambda d: zst(d)[: len(zst(d)) * 2 // 3]),
    "gz_truncated": ("a.jsonl.gz", lambda d: gzip.compress(d, mtime=0)[: len(gzip.compress(d, mtime=0)) // 2]),
    "gz_corrupt": ("a.jsonl.gz", lambda d: (lambda c: c[:60] + bytes(b ^ 0x5A for b in c[60:90]) + c[90:])(
        gzip.compress(d, mtime=0))),
    "zst_corrupt": ("a.jsonl.zst", lambda d: (lambda c: c[:40] + b"\xff" * 30 + c[70:])(zst(d))),
    "gz_trailing_garbage": ("a.jsonl.gz", lambda d: gzip.compress(d, mtime=0) + b"this is not gzip"),
    "zst_trailing_garbage": ("a.jsonl.zst", lambda d: zst(d) + b"garbage after the frame"),
    "txt_zst_truncated": ("a.txt.zst", lambda d: zst(d)[: len(zst(d)) // 2]),
    "csv_gz_truncated": ("a.csv.gz", lambda d: gzip.compress(b"text,label\n" + d, mtime=0)[:-30]),
}


def _plain(kind: str, data: bytes) -> bytes:
    if kind.startswith("txt") or kind.startswith("csv"):  # one text per line, no commas or quotes
        return b"".join(json.loads(line)["text"].encode() + b",pos\n" * kind.startswith("csv")
                        + b"\n" * kind.startswith("txt") for line in data.splitlines())
    return data


@pytest.mark.parametrize("kind", sorted(DAMAGE))
@pytest.mark.parametrize("fast", [True, False])
def test_damaged_compressed_input(tmp_path, kind, fast):
    name, damage = DAMAGE[kind]
    plain = _plain(kind, jsonl())
    src = tmp_path / name
    src.write_bytes(damage(plain))
    spec = dict(label_field=None if kind.startswith("txt") else "label", block_parse=fast)
    with pytest.raises(BadRecordError) as info:  # default policy: stop, naming the file, line and byte
        build([str(src)], BuildConfig(out=str(tmp_path / "strict"), spec=CorpusSpec(**spec), progress=False))
    message = str(info.value)
    assert f"{src}:" in message and "corrupt_file" in message and "compressed byte" in message
    assert not (tmp_path / "strict" / "index.json").exists()
    result = build([str(src)], BuildConfig(out=str(tmp_path / "skip"), progress=False,
                                           spec=CorpusSpec(on_bad_record="skip", **spec)))
    m = result.manifest
    assert m.bad_records["corrupt_file"] == 1 and set(m.bad_records) <= {"corrupt_file"}
    got = texts(tmp_path / "skip")
    whole = [json.loads(line)["text"] for line in jsonl().splitlines()]
    assert got == whole[: len(got)]  # a prefix of whole records: nothing cut, merged or invented
    if "garbage" in kind:
        assert len(got) == ROWS  # the stream itself was whole
    # the reader's count of lines before the damage is the records written: no partial last line
    decoded = _decoded_prefix(src.read_bytes(), name)
    assert len(got) == decoded.count(b"\n") - (1 if kind.startswith("csv") else 0)
    print(f"\n{kind}: stops with {message.split(': ', 1)[1][:110]}...; skip writes {len(got)}/{ROWS} records")


def _decoded_prefix(data: bytes, name: str) -> bytes:
    """What an independent decoder (zlib / zstandard, fed everything at once) gets before the damage."""
    import zlib
    if name.endswith(".gz"):
        d = zlib.decompressobj(31)
        try:
            return d.decompress(data)
        except zlib.error:
            return zlib.decompressobj(31).decompress(data[:60])
    d = zstandard.ZstdDecompressor().decompressobj()
    try:
        return d.decompress(data)
    except zstandard.ZstdError:
        return b""


def test_concatenated_members_and_frames_are_whole(tmp_path):
    """Several gzip members / zstd frames (pigz, pzstd, cat a.gz b.gz) are one stream, not a cut one."""
    a, b = jsonl(50), jsonl(80)
    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress(a, mtime=0) + gzip.compress(b, mtime=0) + b"\0" * 64)
    (tmp_path / "f.jsonl.zst").write_bytes(zst(a) + zst(b))
    for name in ("m.jsonl.gz", "f.jsonl.zst"):
        code, m, _ = run(tmp_path, tmp_path / name, name=f"out-{name}")
        assert code == 0 and m.num_records == 130 and m.bad_records == {}


def test_truncated_zst_via_cli_subprocess(tmp_path):
    src = tmp_path / "cut.jsonl.zst"
    src.write_bytes(zst(jsonl())[:-25])
    proc = subprocess.run([sys.executable, "-m", "shards", "build", str(src), "--out", str(tmp_path / "o"),
                           "--no-progress"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{src}:" in proc.stderr and "truncated zstd data" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "shards", "build", str(src), "--out", str(tmp_path / "o"),
                           "--no-progress", "--on-bad-record", "skip"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "'corrupt_file': 1" in proc.stdout


# -- CSV quoting ----------------------------------------------------------------------------------------
def csv_rows(n=100) -> list[str]:
    return [f"row {i} text,{'pos' if i % 2 else 'neg'}" for i in range(n)]


def test_unclosed_quote_in_label_stops_with_file_line(tmp_path):
    rows = csv_rows()
    rows[10] = 'row 10 text,"pos'  # line 12 (after the header)
    src = tmp_path / "a.csv"
    src.write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(BadRecordError, match=r"a\.csv:12: malformed_csv: unclosed quote.*90 lines"):
        build([str(src)], BuildConfig(out=str(tmp_path / "o"), spec=CorpusSpec(label_field="label"), progress=False))
    # closed again further down by a quoted row: still refused, never one record of 20 rows
    rows[30] = '"row 30, quoted",neg'
    src.write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(BadRecordError, match=r"a\.csv:12: malformed_csv: .*ending on line 32"):
        build([str(src)], BuildConfig(out=str(tmp_path / "o"), spec=CorpusSpec(label_field="label"), progress=False))
    r = build([str(src)], BuildConfig(out=str(tmp_path / "s"), progress=False,
                                      spec=CorpusSpec(label_field="label", on_bad_record="skip")))
    assert r.manifest.bad_records == {"malformed_csv": 21} and r.manifest.num_records == 79
    assert r.manifest.label_names == ["neg", "pos"]


def test_unclosed_quote_at_row_start_counts_every_line(tmp_path):
    rows = csv_rows(101)
    rows[0] = '"row 0 text,pos'
    src = tmp_path / "a.csv"
    src.write_text("text,label\n" + "\n".join(rows) + "\n")
    code, m, _ = run(tmp_path, src, "--label-field", "label", "--on-bad-record", "skip")
    assert code == 0 and m.bad_records == {"malformed_csv": 101} and m.num_records == 0


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_quoted_field_over_the_limit_is_one_counted_record(tmp_path, policy):
    inner = "\n".join(f"inside {i},neg" for i in range(5000))  # looks like 5000 rows, is one field
    rows = ["text,label", "before,pos", f'"{inner}",pos', "after,neg"]
    src = tmp_path / "big.csv"
    src.write_text("\n".join(rows) + "\n")
    args = ["--label-field", "label", "--max-record-bytes", "20KB", "--on-bad-record", policy]
    code, m, out = run(tmp_path, src, *args)
    if policy == "error":
        assert code == 2
        return
    assert code == 0 and m.bad_records == {"too_long": 5000} and texts(out) == ["before", "after"]


def test_csv_lines_written_plus_counted(tmp_path):
    """Multi-line quoted records, blank lines, bad rows: input lines = written lines + counted."""
    data = ('text,label\n"two\nlines",pos\n\nplain,neg\n"x"y,pos\na,b,c\n"three\r\nline\rrecord",neg\n'
            'last,pos')
    src = tmp_path / "a.csv"
    src.write_bytes(data.encode())
    from shards.corpus.read import BadRecords, Unit, read_unit
    bad = BadRecords("skip")
    records = list(read_unit(Unit(str(src)), CorpusSpec(label_field="label"), bad))
    assert [r.text for r in records] == ["two\nlines", "plain", "three\r\nline\rrecord", "last"]
    assert [r.line for r in records] == [2, 5, 8, 11]
    assert dict(bad.counts) == {"blank_line": 1, "malformed_csv": 2} and bad.continued == 3
    physical = len(data.encode().splitlines()) - 1  # after the header
    assert physical == len(records) + bad.continued + sum(bad.counts.values()) == 10


# -- BOM, line endings, types, labels -------------------------------------------------------------------
BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("name,data", [
    ("a.txt", BOM + b"first\nsecond\n"),
    ("a.jsonl", BOM + b'{"text": "first"}\n{"text": "second"}\n'),
    ("a.csv", BOM + b"text\nfirst\nsecond\n"),
    ("a.tsv", BOM + b"text\tx\nfirst\t1\nsecond\t2\n"),
    ("a.txt.gz", gzip.compress(BOM + b"first\r\nsecond\r\n")),
    ("b.txt", b"first\rsecond\r"),
    ("b.jsonl", b'{"text": "first"}\r{"text": "second"}'),
    ("b.csv", b"text\rfirst\rsecond"),
    ("c.jsonl.zst", zst(BOM + b'{"text": "first"}\r\n{"text": "second"}\r\n')),
])
def test_bom_and_line_endings(tmp_path, name, data):
    src = tmp_path / name
    src.write_bytes(data)
    code, m, out = run(tmp_path, src)
    assert code == 0 and texts(out) == ["first", "second"] and m.bad_records == {}


def test_labels_one_rule_in_every_reader(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.0}\n'
                                             '{"text": "c", "label": "1 "}\n{"text": "d", "label": 0}\n')
    (tmp_path / "in" / "b.csv").write_text('text,label\ne, 1\nf,0\n')
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["g", "h"], "label": [1.0, 0.0]}), tmp_path / "in" / "c.parquet")
    code, m, out = run(tmp_path, tmp_path / "in", "--label-field", "label")
    assert code == 0 and m.label_names == ["0", "1"] and m.num_records == 8 and m.bad_records == {}
    (tmp_path / "in" / "d.jsonl").write_text('{"text": "x", "label": true}\n')
    code, _, _ = run(tmp_path, tmp_path / "in", "--label-field", "label", name="o2")
    assert code == 2
    code, m, _ = run(tmp_path, tmp_path / "in", "--label-field", "label", "--on-bad-record", "skip", name="o3")
    assert code == 0 and m.bad_records == {"wrong_type": 1} and m.label_names == ["0", "1"]


def test_numbers_and_booleans_are_not_text(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": 12}\n{"text": false}\n{"text": "ok"}\n{"text": null}\n')
    code, m, out = run(tmp_path, src, "--on-bad-record", "skip")
    assert code == 0 and texts(out) == ["ok"] and m.bad_records == {"wrong_type": 2, "missing_field": 1}
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    code, m, _ = run(tmp_path, tmp_path / "n.parquet", "--on-bad-record", "skip", name="p")
    assert code == 0 and m.bad_records == {"wrong_type": 2} and m.num_records == 0


@pytest.mark.parametrize("comp", ["", ".zst"])
def test_damaged_parquet(tmp_path, comp):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(500)]}), path, row_group_size=100)
    data = path.read_bytes()
    src = tmp_path / f"cut.parquet{comp}"
    src.write_bytes(zst(data)[:-20] if comp else data[:-100])
    code, _, _ = run(tmp_path, src)
    assert code == 2
    code, m, out = run(tmp_path, src, "--on-bad-record", "skip", name="skip")
    assert code == 0 and m.bad_records == {"corrupt_file": 1} and m.num_records == 0


@pytest.mark.parametrize("read_bytes", [16, 1 << 20])
def test_csv_line_over_the_limit_inside_and_opening_a_quoted_field(tmp_path, monkeypatch, read_bytes):
    """A physical line over --max-record-bytes, drained by the line reader, still ends its quoted field
    where the quote count says: the lines after it are counted, never read as rows."""
    from shards.corpus import decode as corpus_open
    from shards.corpus.read import BadRecords, Unit, read_unit
    monkeypatch.setattr(corpus_open, "READ_BYTES", read_bytes)
    long = "y" * 300
    rows = ["text,label", "a,pos",
            f'"start\n{long}\nfake,neg\nend",pos',  # a long line inside the quotes: 4 lines
            "b,neg",
            f'"{long}\nfake,pos\nend",neg',  # a long line opening the quotes: 3 lines
            "c,pos"]
    src = tmp_path / "a.csv"
    src.write_text("\n".join(rows) + "\n")
    bad = BadRecords("skip")
    records = list(read_unit(Unit(str(src)), CorpusSpec(label_field="label", max_record_bytes=100), bad))
    assert [r.text for r in records] == ["a", "b", "c"] and [r.line for r in records] == [2, 7, 11]
    assert dict(bad.counts) == {"too_long": 7} and bad.continued == 0
    with pytest.raises(BadRecordError, match=r"a\.csv:4: too_long"):
        list(read_unit(Unit(str(src)), CorpusSpec(label_field="label", max_record_bytes=100), BadRecords("error")))
