"""The column-wise CSV/TSV and txt readers (shards/corpus/csv_block.py, txt_block.py) and the label
scan's spill (shards/build/spill.py) write the same bytes, counts and errors as the per-line
readers (``CorpusSpec(block_parse=False)``); plus the threads they run on (prefetch, the sink)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shards.build import spill
from shards.build.driver import BuildConfig, build
from shards.build.engines import LocalEngine
from shards.build.prefetch import prefetch
from shards.build.writer import Limits
from shards.corpus import csv_block, txt_block
from shards.corpus.read import BadRecordError, CorpusSpec
from shards.formats.sink import HashingSink
from tests.build.test_build_fast import build_both, snapshot

pytestmark = pytest.mark.timeout(240)
LIMIT = 200  # --max-record-bytes in these tests

# CSV rows of every kind the strict reader treats specially (header: text,label)
CSV_ROWS = [
    b"plain words,pos", b'"quoted, with comma",neg', b'"doubled ""quote"" inside",pos', b'"",pos',
    b'say ""hi"",pos', b'"closed"then text,pos', b'in"side,neg', b'"a""",pos', b'""""," pos "',
    b"", b"   ", b" , ", b'" ",pos', b"\xc2\xa0,pos", b"ok,\xc2\xa0", b"three,fields,here", b"one field",
    b'"multi\nline, quoted",neg', b'"unclosed quote,pos', b"cr line,pos\r", b"nul \x00 byte,pos",
    b"ctrl \x01 byte,pos", b"bad utf8 \xff,pos", b"caf\xc3\xa9 na\xc3\xafve,neg", b"x" * (LIMIT + 5) + b",pos",
    b"label with,\"a\nb\"", b"unknown label,maybe", b"empty label,", b"tab\tinside,pos", b'"",',
    b"  padded text  ,  pos  ", b"\xe3\x80\x80,pos",
]
TXT_LINES = [b"plain line", b"", b"   ", b"\t", b"  padded  ", b"nul \x00 here", b"bad \xff utf8",
             b"caf\xc3\xa9", b"x" * (LIMIT + 1), b"x" * LIMIT, b"\xe3\x80\x80", b"cr\r", b"\x0b\x0c"]


def _write(path: pathlib.Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(csv_block, "BLOCK_BYTES", 300)
    monkeypatch.setattr(txt_block, "BLOCK_BYTES", 300)


def _csv(rows: list[bytes], delimiter: bytes = b",", final_newline: bool = True) -> bytes:
    rows = [r.replace(b",", delimiter) if delimiter != b"," else r for r in rows]
    return b"text" + delimiter + b"label\n" + b"\n".join(rows) + (b"\n" if final_newline else b"")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, len(CSV_ROWS) - 1), max_size=80), final_newline=st.booleans(),
       block=st.integers(40, 2000), fmt=st.sampled_from(["arrow", "tar"]), tsv=st.booleans())
def test_csv_any_mix_same_bytes(tmp_path_factory, monkeypatch, picks, final_newline, block, fmt, tsv):
    monkeypatch.setattr(csv_block, "BLOCK_BYTES", block)
    tmp = tmp_path_factory.mktemp("csv")
    delim = b"\t" if tsv else b","
    src = _write(tmp / "in" / ("mix.tsv" if tsv else "mix.csv"), _csv([CSV_ROWS[k] for k in picks], delim, final_newline))
    spec = CorpusSpec(label_field="label", on_bad_record="skip", max_record_bytes=LIMIT)
    (fast, slow), manifest = build_both(tmp, monkeypatch, [src], spec=spec, format=fmt, limits=Limits(max_records=7))
    assert fast == slow


def _count_strict_rows(monkeypatch) -> list:
    """A list that gets an item for each row the strict CSV reader reads from now on."""
    strict_rows = []
    original = csv_block.Rows.next_row

    def counting(self):
        strict_rows.append(1)
        return original(self)

    monkeypatch.setattr(csv_block.Rows, "next_row", counting)
    return strict_rows


@pytest.mark.parametrize("labels", [None, ("neg", "pos")])
def test_csv_clean_rows_go_column_wise(tmp_path, monkeypatch, small_blocks, labels):
    """A clean file never reaches the strict reader past its header, and still gives the same bytes."""
    rows = [b"plain words %d,pos" % i if i % 3 else b'"quoted, %d ""x""",neg' % i for i in range(300)]
    src = _write(tmp_path / "in" / "clean.csv", _csv(rows))
    spec = CorpusSpec(label_field="label", max_record_bytes=LIMIT)
    slow = build([src], BuildConfig(out=str(tmp_path / "slow"), spec=dataclasses.replace(spec, block_parse=False),
                                    label_names=labels, progress=False))
    strict_rows = _count_strict_rows(monkeypatch)
    fast = build([src], BuildConfig(out=str(tmp_path / "fast"), spec=spec, label_names=labels, progress=False))
    assert [s.sha256 for s in fast.manifest.shards] == [s.sha256 for s in slow.manifest.shards]
    assert fast.manifest.num_records == 300
    assert len(strict_rows) <= 4  # the header and the end, in one pass (labels given) or the scan


def test_csv_row_of_other_fields_cuts_the_run(tmp_path, monkeypatch):
    """A row of another number of fields (which pyarrow refuses) goes to the strict reader alone: the
    block's fields are counted after the refusal and the clean rows around it still go column-wise."""
    rows = [b"plain words %d,pos" % i for i in range(300)]
    rows[150] = b"three,fields,here"
    src = _write(tmp_path / "in" / "fields.csv", _csv(rows))
    spec = CorpusSpec(label_field="label", on_bad_record="skip", max_record_bytes=LIMIT)
    slow = build([src], BuildConfig(out=str(tmp_path / "slow"), spec=dataclasses.replace(spec, block_parse=False),
                                    progress=False))
    strict_rows = _count_strict_rows(monkeypatch)
    fast = build([src], BuildConfig(out=str(tmp_path / "fast"), spec=spec, progress=False))
    assert [s.sha256 for s in fast.manifest.shards] == [s.sha256 for s in slow.manifest.shards]
    assert fast.manifest.num_records == 299
    assert len(strict_rows) <= 4  # the header, the bad row and the end


@pytest.mark.parametrize("row", CSV_ROWS, ids=range(len(CSV_ROWS)))
def test_csv_error_names_the_same_line(tmp_path, monkeypatch, small_blocks, row):
    rows = [b"fine %d,pos" % i for i in range(40)] + [row] + [b"after,pos"] * 5
    src = _write(tmp_path / "in" / "e.csv", _csv(rows))
    messages = []
    for mode in (True, False):
        spec = CorpusSpec(label_field="label", max_record_bytes=LIMIT, block_parse=mode)
        try:
            build([src], BuildConfig(out=str(tmp_path / f"o{mode}"), spec=spec, label_names=("neg", "pos"),
                                     progress=False))
            messages.append(None)
        except BadRecordError as exc:
            messages.append(str(exc))
    assert messages[0] == messages[1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, len(TXT_LINES) - 1), max_size=80), final_newline=st.booleans(),
       block=st.integers(16, 1000), policy=st.sampled_from(["skip", "error"]))
def test_txt_any_mix_same_bytes(tmp_path_factory, monkeypatch, picks, final_newline, block, policy):
    monkeypatch.setattr(txt_block, "BLOCK_BYTES", block)
    tmp = tmp_path_factory.mktemp("txt")
    data = b"\n".join(TXT_LINES[k] for k in picks) + (b"\n" if final_newline else b"")
    src = _write(tmp / "in" / "mix.txt", data)
    spec = CorpusSpec(on_bad_record=policy, max_record_bytes=LIMIT)
    outcomes = []
    for mode in (True, False):
        try:
            result = build([src], BuildConfig(out=str(tmp / f"o{mode}"), progress=False, limits=Limits(max_records=5),
                                              spec=dataclasses.replace(spec, block_parse=mode)))
            outcomes.append((snapshot(tmp / f"o{mode}"), result.manifest.bad_records))
        except BadRecordError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("searches", [0, 2000])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.lists(st.sampled_from([b" ", b"\t", b"\x0b", b"\x0c", b"a", b"\x00", b"\xc3\xa9"]), max_size=7),
                      min_size=1, max_size=12), final_newline=st.booleans())
def test_txt_blank_lines_as_bytes_strip(monkeypatch, searches, lines, final_newline):
    """blank_lines (a few bytes per line, a regex, or with many lines left the numpy pass) is bytes.strip() == b''."""
    monkeypatch.setattr(txt_block, "MAX_BLANK_SEARCHES", searches)
    block = b"\n".join(b"".join(line) for line in lines) + (b"\n" if final_newline else b"")
    if not block:
        return
    a = np.frombuffer(block, np.uint8)
    starts, ends = txt_block.line_bounds(a, block.endswith(b"\n"))
    want = [block[i:j].strip() == b"" for i, j in zip(starts.tolist(), ends.tolist())]
    assert txt_block.blank_lines(block, a, starts, ends).tolist() == want


def test_txt_counts_every_line(tmp_path, small_blocks):
    lines = [TXT_LINES[i % len(TXT_LINES)] for i in range(500) if b"\r" not in TXT_LINES[i % len(TXT_LINES)]]
    src = _write(tmp_path / "in" / "a.txt", b"\n".join(lines) + b"\n")
    m = build([src], BuildConfig(out=str(tmp_path / "o"), spec=CorpusSpec(on_bad_record="skip", max_record_bytes=LIMIT),
                                 progress=False)).manifest
    assert m.num_records + sum(m.bad_records.values()) == len(lines)
    assert set(m.bad_records) == {"blank_line", "nul_byte", "invalid_utf8", "too_long"}


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_spill_is_used_then_removed(tmp_path, monkeypatch, kind):
    """A labelled build parses each unit once (the scan's spill), leaves no spill behind, same bytes."""
    if kind == "jsonl":
        data = b"".join(b'{"text": "record %d", "label": "%s"}\n' % (i, b"ab"[i % 2:i % 2 + 1]) for i in range(200))
    else:
        data = b"text,label\n" + b"".join(b"record %d,%s\n" % (i, b"ab"[i % 2:i % 2 + 1]) for i in range(200))
    src = _write(tmp_path / "in" / f"a.{kind}", data)
    taken, made, folders = [], [], []
    original_take, original_scan = spill.take, spill.scan

    def take(*args):
        taken.append(original_take(*args))
        folders.extend(spill._DIR)
        return taken[-1]

    def scan(*args):
        made.append(args[0])
        return original_scan(*args)

    monkeypatch.setattr(spill, "take", take)
    monkeypatch.setattr(spill, "scan", scan)
    spec = CorpusSpec(label_field="label")
    (fast, slow), manifest = build_both(tmp_path, monkeypatch, [src], spec=spec, workers=2)
    assert fast == slow and manifest.label_names == ["a", "b"]
    assert made and taken[0] is not None  # the first (block_parse) build read its spill back
    assert not spill._SPILLS and not spill._DIR
    # inside the output's staging folder, so a SIGKILLed build's spill goes when the next one commits
    assert folders and folders[0].startswith(str(tmp_path / "b-True" / ".staging"))


@pytest.mark.parametrize("memory_bytes", [0, 600, 1 << 30], ids=["file", "memory-then-file", "memory"])
def test_spill_in_memory_or_in_a_file_same_bytes(tmp_path, monkeypatch, small_blocks, memory_bytes):
    """A spill kept in memory, written to a file, or moved to a file midway: the same shards as a
    build that parses twice; a file only when the spill outgrows MEMORY_SPILL_BYTES."""
    monkeypatch.setattr(spill, "MEMORY_SPILL_BYTES", memory_bytes)
    rows = [b"record %d with some words,%s" % (i, b"abc"[i % 3:i % 3 + 1]) for i in range(300)]
    src = _write(tmp_path / "in" / "a.csv", _csv(rows + CSV_ROWS))
    writes = []
    original_writer = spill._SpillWriter.write

    def write(self, batch, size):
        original_writer(self, batch, size)
        writes.append(self.spill.batches is None)

    monkeypatch.setattr(spill._SpillWriter, "write", write)
    spec = CorpusSpec(label_field="label", on_bad_record="skip", max_record_bytes=LIMIT)
    (fast, slow), manifest = build_both(tmp_path, monkeypatch, [src], spec=spec)
    assert fast == slow and manifest.num_records > 300
    assert len(writes) > 2
    assert writes[-1] == (memory_bytes < 1 << 30)  # on file at the end unless the whole spill fit
    assert writes[0] == (memory_bytes == 0)  # in memory first unless none may be
    assert not spill._SPILLS and not spill._DIR


def test_spill_not_used_when_the_scan_met_a_bad_record_under_error(tmp_path):
    src = _write(tmp_path / "in" / "a.jsonl", b'{"text": "ok", "label": "a"}\n{"text": 5, "label": "a"}\n')
    with pytest.raises(BadRecordError, match=r"a\.jsonl:2: wrong_type"):
        build([src], BuildConfig(out=str(tmp_path / "o"), spec=CorpusSpec(label_field="label"), progress=False))
    assert not spill._SPILLS and not spill._DIR


def test_one_unit_spawns_no_pool(tmp_path):
    src = _write(tmp_path / "in" / "a.txt", b"one\ntwo\n")
    engine = LocalEngine(workers=2)
    build([src], BuildConfig(out=str(tmp_path / "o"), progress=False, workers=2), engine=engine)
    assert engine._pool is None


def test_prefetch_order_errors_and_early_stop():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))

    def failing():
        yield 1
        raise ValueError("boom at 2")

    got = []
    with pytest.raises(ValueError, match="boom at 2"):
        for x in prefetch(failing()):
            got.append(x)
    assert got == [1]
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    items = prefetch(endless(), depth=2)
    assert next(items) == 0
    items.close()  # the consumer stops: the producer thread ends too
    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n and not [t for t in threading.enumerate() if t.name == "unit-reader"]


def test_background_sink_hashes_what_it_wrote(tmp_path):
    path = str(tmp_path / "f")
    sink = HashingSink(path, background=True)
    chunks = [os.urandom(n) for n in (0, 1, 5000, 1 << 20, 77)]
    for c in chunks:
        sink.write(c)
    sink.close()
    data = b"".join(chunks)
    assert sink.digest() == (hashlib.sha256(data).hexdigest(), len(data))
    assert pathlib.Path(path).read_bytes() == data
