"""Fuzz of the line readers (txt, jsonl, csv, tsv; plain, .gz, .zst; truncated) against a small
independent reference reader written here: every input line is written or counted, never
merged, split or invented.

The reference decodes with zlib / zstandard fed everything at once, splits lines with a
regex, and parses CSV with its own character state machine (RFC 4180 with the csv module's
``strict`` rules).  Both readers must give the same record texts and labels, the same
counts by reason, and ``lines = records + continued + sum(counts)``.

    .venv/bin/python -m pytest tests/reliability/test_input_fuzz.py -q            # ~300 examples
    .venv/bin/python -m pytest tests/reliability/test_input_fuzz.py -q -m slow    # many more
"""
from __future__ import annotations

import contextlib
import gzip
import json
import math
import re
import zlib
from collections import Counter

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shards.corpus import decode as corpus_open
from shards.corpus import jsonl as corpus_jsonl
from shards.corpus.read import BadRecordError, BadRecords, CorpusSpec, Unit, plan_units, read_unit

pytestmark = pytest.mark.timeout(300)

BOM = b"\xef\xbb\xbf"
BREAKS = [b"\n", b"\r\n", b"\r"]
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# -- the reference reader ---------------------------------------------------------------------------------


def ref_decode(data: bytes, comp: str) -> tuple[bytes, bool]:
    """(readable bytes, damaged?) as zlib / zstandard see the file when fed all of it."""
    if comp == "":
        return data, False
    out, damaged = [], False
    while data:
        d = zlib.decompressobj(31) if comp == "gz" else zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(data))
        if not d.eof:
            damaged = True
            break
        data = d.unused_data
    return b"".join(out), damaged


def ref_lines(data: bytes, damaged: bool) -> list[tuple[bytes, bytes]]:
    """(line, its break) pairs; a damaged file loses its unfinished last line."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    lines, at = [], 0
    for m in re.finditer(rb"\r\n|\r|\n", data):
        lines.append((data[at:m.start()], m.group()))
        at = m.end()
    if at < len(data) and not damaged:
        lines.append((data[at:], b""))
    return lines


class Ref:
    def __init__(self):
        self.records: list[tuple[str, str | None]] = []
        self.counts: Counter = Counter()
        self.continued = 0
        self.header_lines = 0  # a CSV header is neither a record nor counted

    def bad(self, reason: str, lines: int = 1):
        self.counts[reason] += lines


def ref_label(value):
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None, "missing_field"
        return (None, "bad_label") if CONTROL.search(value) else (value, None)
    if value is None:
        return None, "missing_field"
    if type(value) is int:
        return str(value), None
    if type(value) is float and math.isfinite(value) and value.is_integer() and abs(value) < 2 ** 53:
        return str(int(value)), None
    return None, "wrong_type"


def ref_fields(obj: dict, ref: Ref, lines: int = 1) -> None:
    text = obj.get("text")
    if text is None:
        return ref.bad("missing_field", lines)
    if not isinstance(text, str):
        return ref.bad("wrong_type", lines)
    if not text.strip():
        return ref.bad("empty_text", lines)
    if "\x00" in text:
        return ref.bad("nul_byte", lines)
    label, why = ref_label(obj.get("label"))
    if why:
        return ref.bad(why, lines)
    ref.records.append((text, label))
    ref.continued += lines - 1


def ref_line_format(kind: str, lines, ref: Ref) -> None:
    for line, _ in lines:
        if not line.strip():
            ref.bad("blank_line")
            continue
        if b"\x00" in line:
            ref.bad("nul_byte")
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            ref.bad("invalid_utf8")
            continue
        if kind == "txt":
            ref.records.append((text, None))
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            ref.bad("malformed_json")
            continue
        ref_fields(obj, ref)


def ref_csv_rows(lines, delim: str):
    """(fields or an error word, lines taken) per record: a character state machine over the lines."""
    i = 0
    while i < len(lines):
        fields, field, taken, state = [], "", 0, "start"
        while True:
            if i + taken == len(lines):
                yield "unclosed", taken
                break
            text = lines[i + taken][0].decode("utf-8", "surrogateescape")
            brk = lines[i + taken][1].decode()
            taken += 1
            k, error = 0, False
            while k < len(text):
                c = text[k]
                if state == "start":
                    state, field = ("quoted", "") if c == '"' else ("plain", "")
                    if c == delim:
                        fields.append("")
                        state = "start"
                    elif c != '"':
                        field = c
                elif state == "plain":
                    if c == delim:
                        fields.append(field)
                        state = "start"
                    else:
                        field += c
                elif state == "quoted":
                    if c == '"':
                        state = "quote"
                    else:
                        field += c
                elif state == "quote":  # just after a quote inside a quoted field
                    if c == '"':
                        field, state = field + '"', "quoted"
                    elif c == delim:
                        fields.append(field)
                        state = "start"
                    else:
                        error = True
                        break
                k += 1
            if error:
                yield "malformed", taken
                break
            if state == "quoted":
                field += brk
                if brk == "":  # the file ends inside the quotes
                    yield "unclosed", taken
                    break
                continue
            if state == "start":
                field = ""  # a row ending in a delimiter has an empty last field
            if state != "start" or fields:
                fields.append(field)
            yield fields, taken
            break
        i += taken


def ref_csv(lines, delim: str, ref: Ref) -> None:
    header = None
    for row, taken in ref_csv_rows(lines, delim):
        if isinstance(row, str):
            ref.bad("malformed_csv", taken)
            continue
        joined = "".join(row)
        if header is None:
            if joined.strip():
                header, ref.header_lines = row, taken
            else:
                ref.bad("blank_line", taken)
            continue
        if not joined.strip():
            ref.bad("blank_line", taken)
        elif any("\udc80" <= c <= "\udcff" for c in joined):
            ref.bad("invalid_utf8", taken)
        elif len(row) != len(header):
            ref.bad("malformed_csv", taken)
        else:
            ref_fields(dict(zip(header, row)), ref, taken)


def reference(data: bytes, kind: str, comp: str) -> tuple[Ref, int]:
    plain, damaged = ref_decode(data, comp)
    lines = ref_lines(plain, damaged)
    ref = Ref()
    if kind in ("txt", "jsonl"):
        ref_line_format(kind, lines, ref)
    else:
        ref_csv(lines, "\t" if kind == "tsv" else ",", ref)
    if damaged:
        ref.bad("corrupt_file")
    return ref, len(lines) + damaged


# -- inputs ------------------------------------------------------------------------------------------------
WORDS = st.sampled_from(["a", "word", "é", "😀", " ", "\t", '"', ",", "\\", "\x00", "\x01", "\x85", "\u2028",
                         "1", "x y"])
TEXTS = st.lists(WORDS, max_size=5).map("".join)
JUNK = st.sampled_from([b"", b"   ", b"\xff\xfe bad", b"caf\xe9", b"nul \x00 byte", b'{"text": "cut', b"[1, 2]",
                        b'"str"', b"{}", b"\x0c", BOM + b"mid-file bom", b"\xe2\x80"])
LABELS = st.one_of(st.sampled_from(["pos", "neg", " pos ", "1", "1 ", "", "a\nb", "\u3000"]),
                   st.sampled_from([1, 0, 1.0, -2.0, 1.5, 1e300, 2.0 ** 53, True, None, [1], float("nan")]))
JSON_VALUES = st.one_of(TEXTS, st.sampled_from([None, 3, 2.5, False, ["a"], {"a": 1}]))


@st.composite
def jsonl_line(draw) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(JUNK)
    obj = {}
    if draw(st.integers(0, 8)):
        obj["text"] = draw(TEXTS) if draw(st.integers(0, 4)) else draw(JSON_VALUES)
    if draw(st.booleans()):
        obj["label"] = draw(LABELS)
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()


@st.composite
def csv_line(draw, delim: str) -> bytes:
    if draw(st.integers(0, 6)) == 0:
        return draw(st.sampled_from([b"", b'"unclosed' + delim.encode() + b"pos", b'"a"b' + delim.encode() + b"c",
                                     b"only one field", b"a" + delim.encode() * 3, b"\xff" + delim.encode() + b"x",
                                     b'plain"quote' + delim.encode() + b"pos"]))
    fields = []
    for _ in range(2):
        text = draw(st.lists(st.sampled_from(["a", "é", " ", delim, '"', "\n", "\r\n", "\r", "\x00", "x"]),
                             max_size=6).map("".join))
        if any(c in text for c in (delim, '"', "\n", "\r")) or draw(st.booleans()):
            text = '"' + text.replace('"', '""') + '"'
        fields.append(text)
    return delim.join(fields).encode()


@st.composite
def corpus_file(draw):
    kind = draw(st.sampled_from(["txt", "jsonl", "csv", "tsv"]))
    if kind == "txt":
        lines = draw(st.lists(st.one_of(TEXTS.map(str.encode), JUNK), max_size=25))
    elif kind == "jsonl":
        lines = draw(st.lists(jsonl_line(), max_size=25))
    else:
        delim = "\t" if kind == "tsv" else ","
        lines = [delim.join(["text", "label"]).encode()] + draw(st.lists(csv_line(delim), max_size=20))
    breaks = draw(st.lists(st.sampled_from(BREAKS), min_size=len(lines), max_size=len(lines)))
    data = b"".join(line + brk for line, brk in zip(lines, breaks))
    if lines and draw(st.booleans()):
        data = data[: -len(breaks[-1])]  # no break after the last line
    if draw(st.booleans()):
        data = BOM + data
    comp = draw(st.sampled_from(["", "gz", "zst"]))
    if comp == "gz":
        data = gzip.compress(data, mtime=0)
    elif comp == "zst":
        data = zstandard.ZstdCompressor(level=1).compress(data)
    if data and draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data) - 1))]  # truncated
    return kind, comp, data, draw(st.integers(1, 60)), draw(st.integers(1, 9))


def write(tmp_path_factory, kind: str, comp: str, data: bytes) -> str:
    path = tmp_path_factory.mktemp("fuzz") / (f"in.{kind}" + (f".{comp}" if comp else ""))
    path.write_bytes(data)
    return str(path)


def check(tmp_path_factory, sample) -> None:
    kind, comp, data, split, tiny = sample
    url = write(tmp_path_factory, kind, comp, data)
    ref, n_lines = reference(data, kind, comp)
    labelled = kind != "txt"
    spec = CorpusSpec(label_field="label" if labelled else None, on_bad_record="skip")
    bad = BadRecords("skip")
    got = [(r.text, r.label) for r in read_unit(Unit(url), spec, bad)]
    assert got == ref.records
    assert dict(bad.counts) == dict(ref.counts)
    assert bad.continued == ref.continued
    assert n_lines - ref.header_lines == len(got) + bad.continued + sum(bad.counts.values())
    with _tiny_reads(tiny):  # reads and decoder input of a few bytes: every \r\n and BOM split across reads
        small = BadRecords("skip")
        assert [(r.text, r.label) for r in read_unit(Unit(url), spec, small)] == ref.records
        assert small.counts == bad.counts and small.continued == bad.continued
    if kind == "jsonl":  # the column-wise path gives the same
        labels = sorted({label for _, label in ref.records})
        fast = BadRecords("skip")
        cols = list(corpus_jsonl.read_columns(Unit(url), spec, fast, labels))
        texts = [t for c in cols for t in c.text.to_pylist()]
        ids = [int(i) for c in cols for i in c.label]
        assert list(zip(texts, [labels[i] for i in ids])) == ref.records and fast.counts == bad.counts
    strict = CorpusSpec(label_field=spec.label_field)
    if ref.counts.keys() - {"blank_line"}:  # under error, the reader stops
        with pytest.raises(BadRecordError) as whole:
            list(read_unit(Unit(url), strict, BadRecords("error")))
    if comp == "" and kind in ("txt", "jsonl") and len(data) > split:  # byte ranges: each line read once
        units = plan_units([url], split)
        ranged = BadRecords("skip")
        assert [(r.text, r.label) for u in units for r in read_unit(u, spec, ranged)] == ref.records
        assert ranged.counts == bad.counts
        if ref.counts.keys() - {"blank_line"}:  # and the error names the same file:line
            with pytest.raises(BadRecordError) as first:
                for u in units:
                    list(read_unit(u, strict, BadRecords("error")))
            assert str(first.value) == str(whole.value)


@contextlib.contextmanager
def _tiny_reads(n: int):
    saved = corpus_open.READ_BYTES, corpus_open.IN_CHUNK
    corpus_open.READ_BYTES, corpus_open.IN_CHUNK = n, n
    try:
        yield
    finally:
        corpus_open.READ_BYTES, corpus_open.IN_CHUNK = saved


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(sample=corpus_file())
def test_every_line_written_or_counted(tmp_path_factory, sample):
    check(tmp_path_factory, sample)


@pytest.mark.slow
@pytest.mark.timeout(900)
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(sample=corpus_file())
def test_every_line_written_or_counted_many(tmp_path_factory, sample):
    check(tmp_path_factory, sample)


def test_reference_reader_sees_what_it_should():
    """The reference itself, on hand-made cases (so a bug there cannot hide one in the readers)."""
    rows = list(ref_csv_rows([(b'a,"b', b"\n"), (b'c",d', b"\r\n"), (b'"x"y', b"\n"), (b"", b"\n"), (b'"open', b"")],
                             ","))
    assert rows == [(["a", "b\nc", "d"], 2), ("malformed", 1), ([], 1), ("unclosed", 1)]
    assert ref_lines(BOM + b"a\r\nb\rc\nd", damaged=True) == [(b"a", b"\r\n"), (b"b", b"\r"), (b"c", b"\n")]
    gz = gzip.compress(b"one\ntwo\nthree\n", mtime=0)
    assert ref_decode(gz[:-12], "gz")[1] and not ref_decode(gz, "gz")[1]
