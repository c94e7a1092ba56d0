"""The fast paths of the JSONL/txt build (issue 17, target 1) against their references: the line shape
found with one pass, line counts taken from the shape, the bounded search for a block's last line end,
integer labels coded with numpy (no pyarrow.compute), the kept txt lines' bytes without a mask."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shards.build import in_pass
from shards.build.driver import BuildConfig, build
from shards.build.writer import Limits
from shards.corpus import decode, txt_block
from shards.corpus import jsonl as corpus_jsonl
from shards.corpus.column_checks import label_codes
from shards.corpus.jsonl_check import invalid_utf8_lines, line_shape
from shards.corpus.read import CorpusSpec
from shards.corpus.spec import BadRecords, Unit
from tests.build.test_build_fast import snapshot, write

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BYTES = [b"{", b"}", b"\n", b"\n", b"}\n{", b"a", b'"', b"\t", b"\x00", b"\x01", b"\x1f", b" ", b"\xc3\xa9", b"\xff",
         b'{"text": "x"}']


def reference_line_shape(block: bytes, limit: int):
    """line_shape as it was before the one-pass version (four passes over the bytes)."""
    a = np.frombuffer(block, np.uint8)
    newlines = np.flatnonzero(a == 10)
    starts = np.concatenate(([0], newlines + 1))
    if block.endswith(b"\n"):
        starts, ends = starts[:-1], newlines
    else:
        ends = np.concatenate((newlines, [len(a)]))
    lengths = ends - starts
    suspect = (lengths == 0) | (lengths > limit)
    suspect |= a[np.minimum(starts, len(a) - 1)] != ord("{")
    suspect |= a[np.maximum(ends - 1, 0)] != ord("}")
    if np.count_nonzero(a < 32) != len(newlines):
        where = np.flatnonzero((a < 32) & (a != 10))
        suspect[np.searchsorted(starts, where, side="right") - 1] = True
    if not block.isascii():
        suspect |= invalid_utf8_lines(block, starts)
    return starts, ends, suspect


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(BYTES), min_size=1, max_size=40).map(b"".join), st.integers(1, 12))
def test_line_shape_is_the_four_pass_reference(block, limit):
    lines = line_shape(block, limit)
    for got, want in zip(lines, reference_line_shape(block, limit)):
        assert got.tolist() == want.tolist()


def reference_safe_cut(buf: bytes, eof: bool) -> int:
    r = buf.rfind(b"\r")
    if r == len(buf) - 1 and not eof:
        r = buf.rfind(b"\r", 0, r)
    return max(buf.rfind(b"\n"), r) + 1


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\r\n", b"xy"]), max_size=20).map(b"".join), st.booleans())
def test_safe_cut_is_the_whole_block_search(buf, eof):
    assert decode._safe_cut(buf, eof) == reference_safe_cut(buf, eof)


def _counted_shape(block: bytes, first: int):
    """A shape that counts the lines itself when it can (no CR), as the JSONL and txt readers do."""
    return (None if b"\r" in block else block.count(b"\n")), (len(block), first)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.sampled_from([b"ab", b"\n", b"\r", b"\r\n", b"x" * 30, b"\xef\xbb\xbf"]), max_size=40).map(b"".join),
       block=st.integers(1, 64), limit=st.integers(1, 40), cut=st.integers(0, 200))
def test_shaped_blocks_number_lines_as_line_blocks(tmp_path_factory, data, block, limit, cut):
    """Taking each block's line count from its shape gives the blocks, first lines and counts of line_blocks."""
    path = tmp_path_factory.mktemp("shaped") / "f.txt"
    path.write_bytes(data)
    cut = min(cut, len(data))
    for unit in (Unit(str(path)), Unit(str(path), 0, cut), Unit(str(path), cut, None)):
        plain_bad, shaped_bad = BadRecords("skip"), BadRecords("skip")
        where = decode.Where(unit, None)
        plain = list(decode.line_blocks(unit, limit, plain_bad, where, None, None, block))
        shaped = list(decode.shaped_line_blocks(unit, limit, shaped_bad, where, None, None, block, _counted_shape))
        assert [(b, first) for b, first, _ in shaped] == plain
        assert [shape for _, _, shape in shaped] == [(len(b), first) for b, first in plain]
        assert shaped_bad.counts == plain_bad.counts


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(-2 ** 63, 2 ** 63 - 1) | st.integers(-3, 70000) | st.none(), max_size=30),
       st.integers(0, 30), st.integers(0, 3))
def test_int_labels_coded_with_numpy_are_the_record_rule(values, split, offset):
    """Per row: missing when null, else the decimal string; never bad; ids by a label set."""
    split = min(split, len(values))
    column = pa.chunked_array([pa.array([0] * offset + values[:split], pa.int64()).slice(offset),
                               pa.array(values[split:], pa.int64())])
    codes = label_codes(column)
    assert codes.missing().tolist() == [v is None for v in values]
    assert not codes.bad().any()
    strings = codes.strings().to_pylist()
    assert strings == ["" if v is None else str(v) for v in values]
    assert sorted(codes.values.to_pylist(), key=int) == sorted({str(v) for v in values if v is not None}, key=int)
    label_set = sorted({str(v) for v in values if v is not None})[:3] + ["absent"]
    want = [label_set.index(str(v)) if v is not None and str(v) in label_set else -1 for v in values]
    assert codes.ids(pa.array(label_set, pa.string())).tolist() == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"word", b"", b" ", b"\t", b"a b", b"\xc3\xa9"]), min_size=1, max_size=30),
       st.booleans())
def test_txt_kept_lines_bytes(lines, drop_some):
    """The kept lines' bytes, without their line feeds: by deleting the line feeds when every line is kept."""
    block = b"\n".join(lines) + b"\n"
    a = np.frombuffer(block, np.uint8)
    starts, ends = txt_block.line_bounds(a, True)
    keep = np.array([bool(line.strip()) for line in lines]) if drop_some else np.ones(len(lines), bool)
    columns = txt_block._strings(block, keep, starts, ends, block.isascii())
    kept = [line.decode() for line, k in zip(lines, keep) if k]
    assert columns.text.to_pylist() == kept and columns.text_chars == sum(map(len, kept))


INT_KINDS = [json.dumps({"text": f"record {i}", "label": i % 3}).encode() for i in range(6)] + [
    b'{"text": "no label"}', b'{"text": "null label", "label": null}', b'{"text": "string label", "label": "1"}',
    b'{"text": "float label", "label": 2.0}', b'{"text": "half", "label": 0.5}', b'{"text": "big", "label": 123456789012}',
    b'{"text": "negative", "label": -4}', b'{"text": ""}', b'{"text": "tab\tinside", "label": 1}', b"",
    b'{"text": "crlf", "label": 1}\r', b'{"text": "bad \xff", "label": 1}', b'{"text": "two", "label": 1, "label": 2}',
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.integers(0, len(INT_KINDS) - 1), min_size=1, max_size=120), final_newline=st.booleans(),
       block=st.integers(64, 3000), found_in_pass=st.booleans())
def test_int_labels_any_mix_same_bytes(tmp_path_factory, monkeypatch, picks, final_newline, block, found_in_pass):
    """Integer labels (numpy codes, no pyarrow.compute) among bad lines: the per-line path's bytes and counts,
    with the labels found in the write pass (relabelled shards) or by a scan first."""
    monkeypatch.setattr(corpus_jsonl, "BLOCK_BYTES", block)
    monkeypatch.setattr(corpus_jsonl, "MIN_PIECE_BYTES", max(block // 8, 1))
    monkeypatch.setattr(in_pass, "MIN_UNIT_BYTES", 0 if found_in_pass else 1 << 40)
    tmp = tmp_path_factory.mktemp("ints")
    src = write(tmp / "in" / "ints.jsonl", [INT_KINDS[k] for k in picks], final_newline)
    spec = CorpusSpec(label_field="label", on_bad_record="skip", max_record_bytes=200)
    outcomes = []
    for mode in (True, False):
        out = tmp / f"o{mode}"
        result = build([src], BuildConfig(out=str(out), progress=False, limits=Limits(max_records=7),
                                          spec=dataclasses.replace(spec, block_parse=mode)))
        outcomes.append((snapshot(out), result.manifest.bad_records, result.manifest.label_names))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("found_in_pass", [True, False])
def test_int_labelled_jsonl_build_never_imports_pyarrow_compute(tmp_path, found_in_pass):
    """Its import costs ~0.1 s of a build's start; integer labels are coded with numpy."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 3}) + "\n" for i in range(300)))
    code = ("import sys\nfrom shards.build import in_pass\nfrom shards.__main__ import main\n"
            f"in_pass.MIN_UNIT_BYTES = {0 if found_in_pass else 1 << 40}\n"
            f"rc = main(['build', {str(corpus)!r}, '--out', {str(tmp_path / 'out')!r}, '--label-field', 'label',"
            " '--no-progress'])\n"
            "print(rc, 'pyarrow.compute' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "0 False"


def _fast_and_slow_groups(tmp, monkeypatch, lengths: list[int], limits: Limits, labelled: bool) -> list:
    """(records, bytes, sha256) of each shard written with and without the path for a group that fits."""
    from shards.build.writer import PartWriter
    records = [("x" * n, i % 3 if labelled else None) for i, n in enumerate(lengths)]
    fields = ["text", "label"] if labelled else ["text"]
    outs = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(PartWriter, "_fits", lambda self, n, nbytes: False)
        folder = tmp / str(fast)
        folder.mkdir()
        parts = PartWriter("arrow", str(folder), "u", fields, limits).write(records)
        outs.append([(p.num_records, p.num_bytes, p.sha256) for p in parts])
    return outs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 5000), longest=st.integers(0, 300), seed=st.integers(0, 2 ** 16),
       max_bytes=st.integers(2000, 200000), max_records=st.none() | st.integers(20, 3000), labelled=st.booleans())
def test_group_that_fits_is_written_as_the_record_by_record_checks_would(tmp_path_factory, monkeypatch, count, longest,
                                                                        seed, max_bytes, max_records, labelled):
    """A group the open shard takes whole skips the prefix-sum search: same shards, same bytes."""
    lengths = np.random.default_rng(seed).integers(0, longest + 1, count).tolist()
    fast, slow = _fast_and_slow_groups(tmp_path_factory.mktemp("groups"), monkeypatch, lengths,
                                       Limits(max_bytes=max_bytes, max_records=max_records), labelled)
    assert fast == slow


@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("delta", [-2, -1, 0, 1, 2])
@pytest.mark.parametrize("by_records", [True, False])
def test_group_at_a_shard_limit(tmp_path, monkeypatch, groups, delta, by_records):
    """Records of one size, a limit within 2 of where ``groups`` whole groups fill a shard."""
    from shards.build.writer import BATCH_ROWS
    from shards.formats.arrow_write import overhead_bytes, record_bytes
    if by_records:
        limits = Limits(max_bytes=1 << 40, max_records=groups * BATCH_ROWS + delta)
    else:
        limits = Limits(max_bytes=groups * BATCH_ROWS * record_bytes(20, None, True) + overhead_bytes(groups, 2) + delta)
    fast, slow = _fast_and_slow_groups(tmp_path, monkeypatch, [20] * (4 * BATCH_ROWS + 300), limits, True)
    assert fast == slow and len(fast) > 1
