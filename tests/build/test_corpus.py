"""Corpus readers: every input kind (plain, .gz, .zst), byte ranges, bad records, labels."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.build.driver import sort_labels
from shards.corpus.read import BadRecordError, BadRecords, CorpusSpec, Unit, Where, kind_of, plan_units, read_unit

pytestmark = pytest.mark.timeout(60)

ROWS = [{"text": f"line {i}, with \"quotes\"", "title": f"T{i}", "label": ["neg", "pos"][i % 2]} for i in range(50)]


def compress(path, data: bytes, comp: str):
    if comp == "gz":
        data = gzip.compress(data, mtime=0)
    elif comp == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    target = path.with_name(path.name + (f".{comp}" if comp else ""))
    target.write_bytes(data)
    return str(target)


def read(url, spec=CorpusSpec(), unit=None, policy=None):
    bad = BadRecords(policy or spec.on_bad_record)
    return list(read_unit(unit or Unit(url), spec, bad)), dict(bad.counts)


COMPS = ["", "gz", "zst"]


@pytest.mark.parametrize("comp", COMPS)
def test_txt(tmp_path, comp):
    url = compress(tmp_path / "a.txt", b"first line\n\n  \nsecond\r\nthird", comp)
    records, bad = read(url)
    assert [r.text for r in records] == ["first line", "second", "third"]
    assert [r.line for r in records] == [1, 4, 5]
    assert bad == {"blank_line": 2}


@pytest.mark.parametrize("comp", COMPS)
def test_jsonl_several_text_fields_joined_by_newline(tmp_path, comp):
    data = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    url = compress(tmp_path / "a.jsonl", data, comp)
    records, bad = read(url, CorpusSpec(text_fields=("title", "text"), label_field="label"))
    assert [r.text for r in records] == [f"{r['title']}\n{r['text']}" for r in ROWS]
    assert [r.label for r in records] == [r["label"] for r in ROWS]
    assert bad == {}


@pytest.mark.parametrize("comp", COMPS)
def test_csv_with_header(tmp_path, comp):
    lines = ["text,label"] + [f'"{r["text"].replace(chr(34), chr(34) * 2)}",{r["label"]}' for r in ROWS]
    url = compress(tmp_path / "a.csv", "\n".join(lines).encode(), comp)
    records, _ = read(url, CorpusSpec(label_field="label"))
    assert [(r.text, r.label) for r in records] == [(r["text"], r["label"]) for r in ROWS]
    assert records[3].line == 5


@pytest.mark.parametrize("comp", COMPS)
def test_headerless_quoted_csv_with_columns(tmp_path, comp):
    """Quoted fields holding commas and newlines, no header row, names from --columns."""
    data = ('1,"hello, world",pos\n'
            '2,"two\nlines, and ""quotes""",neg\r\n'
            '3,plain,pos\n').encode()
    url = compress(tmp_path / "a.csv", data, comp)
    spec = CorpusSpec(columns=("id", "text", "label"), label_field="label")
    records, bad = read(url, spec)
    assert [(r.text, r.label, r.line) for r in records] == [
        ("hello, world", "pos", 1), ('two\nlines, and "quotes"', "neg", 2), ("plain", "pos", 4)]
    assert bad == {}


@pytest.mark.parametrize("comp", COMPS)
def test_tsv(tmp_path, comp):
    data = "sentence\tlabel\n" + "".join(f"{r['text']} \t{i % 2}\n" for i, r in enumerate(ROWS))
    url = compress(tmp_path / "a.tsv", data.encode(), comp)
    records, _ = read(url, CorpusSpec(text_fields=("sentence",), label_field="label"))
    assert [r.text for r in records] == [r["text"] + " " for r in ROWS]  # text kept as is
    assert [r.label for r in records] == [str(i % 2) for i in range(len(ROWS))]


@pytest.mark.parametrize("comp", COMPS)
def test_parquet(tmp_path, comp):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=7)
    url = compress(path, path.read_bytes(), comp) if comp else str(path)
    records, _ = read(url, CorpusSpec(text_fields=("text",), label_field="label"))
    assert [(r.text, r.label) for r in records] == [(r["text"], r["label"]) for r in ROWS]


def test_parquet_missing_column_names_the_columns(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    with pytest.raises(BadRecordError, match="no column.*body.*columns: text, title, label"):
        read(str(path), CorpusSpec(text_fields=("body",)))


def test_parquet_string_that_is_not_utf8_is_a_counted_row(tmp_path):
    """Parquet does not check UTF-8: such a row is invalid_utf8 naming file:row, the others are read."""
    raw = pa.array([b"ok", b"a\xed\xa0\x80", b"\xff", b"fine"], pa.binary())
    path = tmp_path / "u.parquet"
    pq.write_table(pa.table({"text": pa.Array.from_buffers(pa.string(), 4, raw.buffers())}), path)
    records, bad = read(str(path), CorpusSpec(on_bad_record="skip"))
    assert [r.text for r in records] == ["ok", "fine"] and bad == {"invalid_utf8": 2}
    with pytest.raises(BadRecordError, match=r"u\.parquet:row 2: invalid_utf8"):
        read(str(path), CorpusSpec())


def test_csv_columns_named_twice_are_refused():
    with pytest.raises(ValueError, match="--columns a,b,a: names the column 'a' twice"):
        CorpusSpec(columns=("a", "b", "a"))


def test_kind_of_rejects_unknown_extension():
    assert kind_of("x/a.JSONL.GZ") == ("jsonl", "gzip")
    assert kind_of("s3://b/a.csv.zst") == ("csv", "zstd")
    with pytest.raises(ValueError, match=r"unknown file type.*\.txt, \.jsonl"):
        kind_of("a.docx")


def test_labels_sorted_numerically_when_numeric():
    assert sort_labels(["10", "9", "2"]) == ["2", "9", "10"]
    assert sort_labels(["1", "0", "1"]) == ["0", "1"]
    assert sort_labels(["-1", "0.5", "3"]) == ["-1", "0.5", "3"]
    assert sort_labels(["pos", "neg", "10"]) == ["10", "neg", "pos"]
    assert sort_labels([]) == []


def test_json_label_types(tmp_path):
    """One label rule: strings stripped, integers and integral floats in decimal, the rest refused."""
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": True}, {"text": "c", "label": " x "},
            {"text": "d", "label": 1.0}, {"text": "e", "label": "1 "}, {"text": "f", "label": 1.5},
            {"text": "g", "label": "a\nb"}, {"text": "h", "label": "  "}, {"text": "i", "label": [1]},
            {"text": "j", "label": -0.0}, {"text": "k", "label": None}]
    url = tmp_path / "a.jsonl"
    url.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, bad = read(str(url), CorpusSpec(label_field="label"), policy="skip")
    assert [(r.text, r.label) for r in records] == [("a", "1"), ("c", "x"), ("d", "1"), ("e", "1"), ("j", "0")]
    assert bad == {"wrong_type": 3, "bad_label": 1, "missing_field": 2}
    with pytest.raises(BadRecordError, match=r"a\.jsonl:2: wrong_type: label field 'label' is a boolean"):
        read(str(url), CorpusSpec(label_field="label"))


def test_text_must_be_a_string(tmp_path):
    rows = [{"text": 12.5}, {"text": True}, {"text": None}, {"text": ["a"]}, {"text": "ok"}, {"text": 0}]
    url = tmp_path / "a.jsonl"
    url.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, bad = read(str(url), policy="skip")
    assert [r.text for r in records] == ["ok"] and bad == {"wrong_type": 4, "missing_field": 1}


BAD_JSONL = (b'{"text": "ok"}\n'
             b'{"text": "broken\n'
             b'{"nope": 1}\n'
             b'{"text": "   "}\n'
             b'{"text": "nul \\u0000 inside"}\n'
             b'{"text": "bad \xff byte"}\n'
             b'[1, 2]\n'
             b'{"text": ["a"]}\n'
             b'\n'
             b'{"text": "fine too"}\n')
REASONS = {"malformed_json": 2, "missing_field": 1, "empty_text": 1, "nul_byte": 1, "invalid_utf8": 1,
           "wrong_type": 1, "blank_line": 1}


def test_bad_jsonl_skipped_and_counted(tmp_path):
    url = tmp_path / "bad.jsonl"
    url.write_bytes(BAD_JSONL)
    records, bad = read(str(url), policy="skip")
    assert [r.text for r in records] == ["ok", "fine too"]
    assert bad == REASONS
    assert len(records) + sum(bad.values()) == BAD_JSONL.count(b"\n")


@pytest.mark.parametrize("line,reason", [(2, "malformed_json"), (3, "missing_field"), (4, "empty_text"),
                                         (5, "nul_byte"), (6, "invalid_utf8")])
def test_bad_record_error_names_file_line_and_reason(tmp_path, line, reason):
    lines = BAD_JSONL.split(b"\n")
    url = tmp_path / "bad.jsonl"
    url.write_bytes(b"\n".join([lines[0]] * (line - 1) + [lines[line - 1]]) + b"\n")
    with pytest.raises(BadRecordError, match=rf"bad\.jsonl:{line}: {reason}.*--on-bad-record skip"):
        read(str(url))


def test_csv_bad_rows_counted_and_reading_continues(tmp_path):
    data = b'text,label\nok,1\n"unterminated,1\nx,1,extra\nlast,0\n'
    url = tmp_path / "bad.csv"
    url.write_bytes(data)
    records, bad = read(str(url), CorpusSpec(label_field="label"), policy="skip")
    # an unterminated quote swallows the rest of the file: each line it took is counted
    assert [r.text for r in records] == ["ok"]
    assert bad == {"malformed_csv": 3}
    data = b'text,label\nok,1\nx,1,extra\n\xff\xfe,0\n,\nlast,0\n'
    url.write_bytes(data)
    records, bad = read(str(url), CorpusSpec(label_field="label"), policy="skip")
    assert [r.text for r in records] == ["ok", "last"]
    assert bad == {"malformed_csv": 1, "invalid_utf8": 1, "blank_line": 1}
    with pytest.raises(BadRecordError, match=r"bad\.csv:3: malformed_csv: 3 fields, header has 2"):
        read(str(url), CorpusSpec(label_field="label"))


def test_too_long_lines_are_drained_not_held(tmp_path):
    url = tmp_path / "long.txt"
    url.write_bytes(b"short\n" + b"y" * 100_000 + b"\nafter\n" + b"z" * 5000)
    records, bad = read(str(url), CorpusSpec(max_record_bytes=1000), policy="skip")
    assert [(r.text, r.line) for r in records] == [("short", 1), ("after", 3)]
    assert bad == {"too_long": 2}


def _records_by_ranges(url, split):
    units = plan_units([url], split)
    out, bad = [], BadRecords("skip")
    for u in units:
        out.extend(r.text for r in read_unit(u, CorpusSpec(), bad))
    return units, out, bad.counts


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(st.text(alphabet="ab é\n", max_size=30), max_size=40), split=st.integers(1, 60))
def test_byte_ranges_cover_each_line_once(tmp_path_factory, lines, split):
    path = tmp_path_factory.mktemp("r") / "a.txt"
    data = "\n".join(lines).encode()
    path.write_bytes(data)
    if not data:
        return
    whole, _ = read(str(path), policy="skip")
    units, texts, _ = _records_by_ranges(str(path), split)
    assert texts == [r.text for r in whole]
    assert len(units) == -(-len(data) // split) if len(data) > split else len(units) == 1


@settings(max_examples=30, deadline=None)
@given(bad_line=st.integers(1, 200), split=st.integers(5, 900))
def test_error_in_a_byte_range_names_the_file_line(tmp_path_factory, bad_line, split):
    path = tmp_path_factory.mktemp("r") / "a.jsonl"
    rows = [json.dumps({"text": f"r{i}"}) for i in range(200)]
    rows[bad_line - 1] = "{broken"
    path.write_text("\n".join(rows) + "\n")
    units = plan_units([str(path)], split)
    assert len(units) > 3 and all(u.end is not None for u in units)
    with pytest.raises(BadRecordError, match=rf"a\.jsonl:{bad_line}: malformed_json"):
        for u in units:
            list(read_unit(u, CorpusSpec(), BadRecords("error")))


def test_compressed_and_columnar_files_are_never_split(tmp_path):
    gz = compress(tmp_path / "a.jsonl", b'{"text": "x"}\n' * 1000, "gz")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "b.parquet")
    units = plan_units([gz, str(tmp_path / "b.parquet")], 10)
    assert [u.end for u in units] == [None, None]


def test_kind_of_ignores_a_presigned_urls_query_and_takes_input_format():
    url = "https://bucket.s3.amazonaws.com/raw/a.csv.gz?X-Amz-Signature=abc.txt&X-Amz-Expires=60"
    assert kind_of(url) == ("csv", "gzip")
    assert kind_of("data/rt-polarity.neg", "txt") == ("txt", None)
    assert kind_of("data/a.neg.zst", "jsonl") == ("jsonl", "zstd")
    with pytest.raises(ValueError, match=r"input data/a\.neg: unknown file type.*--input-format txt\|jsonl"):
        kind_of("data/a.neg")


def test_bad_record_errors_never_show_url_credentials():
    where = Where(Unit("https://user:s3cret@host/a.jsonl?sig=tok3n"), None)
    with pytest.raises(BadRecordError) as info:
        BadRecords("error").add("malformed_json", where(7), "x")
    text = str(info.value)
    assert "s3cret" not in text and "tok3n" not in text and "a.jsonl?sig=***:7: malformed_json" in text
    with pytest.raises(ValueError) as info:
        kind_of("https://user:s3cret@host/a.docx")
    assert "s3cret" not in str(info.value)
