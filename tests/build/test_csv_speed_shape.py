"""csv_shape.block_shape (one scan for the line feeds, quotes and control bytes of a block, reused
masks) against a per-line reference of the *clean line* rule in shards/corpus/csv_block.py's
docstring, on hostile bytes (and line_fields on its clean lines); and pyarrow's UTF-8 check left to block_shape (check_utf8=False):
a file with more invalid lines than a block locates one by one builds as the strict reader does."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shards.corpus import csv_block, csv_shape
from shards.corpus.jsonl_check import MAX_UTF8_ERRORS
from shards.corpus.read import CorpusSpec
from tests.build.test_build_fast import build_both

pytestmark = pytest.mark.timeout(240)

# pieces of lines: quotes alone and doubled, both delimiters, control bytes, CR, invalid and multi-byte UTF-8
PIECES = [b"a", b"word", b" ", b",", b"\t", b'"', b'""', b'" "', b'"a"', b"\x00", b"\x01", b"\x0b", b"\x7f", b"\xc3\xa9",
          b"\xff", b"\xe2\x80", b"\xe3\x80\x80", b"1", b"\r"]
LINE = st.lists(st.sampled_from(PIECES), max_size=12).map(b"".join)


def ref_quotes_ok(line: bytes, delim: int) -> bool:
    """Every field unquoted without a quote, or quoted whole with its inner quotes doubled."""
    i, n = 0, len(line)
    while True:  # at the start of a field
        if i < n and line[i] == 34:
            i += 1
            while True:
                if i >= n:
                    return False  # the quote runs past the line
                if line[i] == 34:
                    if i + 1 < n and line[i + 1] == 34:
                        i += 2  # a doubled quote inside
                        continue
                    i += 1
                    break
                i += 1
            if i == n:
                return True
            if line[i] != delim:
                return False  # text after the closing quote
            i += 1
            continue
        end = line.find(bytes([delim]), i)
        field = line[i:] if end < 0 else line[i:end]
        if b'"' in field:
            return False
        if end < 0:
            return True
        i = end + 1


def ref_clean(block: bytes, limit: int, delimiter: str) -> tuple[list[int], list[int], list[bool]]:
    """(starts, ends, clean) line by line, as the module docstring states the rule."""
    delim = ord(delimiter)
    starts, ends, clean, invalid = [], [], [], 0
    at = 0
    while True:
        end = block.find(b"\n", at)
        end = len(block) if end < 0 else end
        line = block[at:end]
        valid = invalid < MAX_UTF8_ERRORS  # past that many invalid lines, the rest of the block is suspect
        if valid and not _utf8(line):
            valid, invalid = False, invalid + 1
        meaningful = any(b < 128 and b not in b' \t\n\r\x0b\x0c"' and b != delim for b in line)
        ok = (0 < len(line) <= limit and not any(b < 32 and b != 9 for b in line) and valid
              and ref_quotes_ok(line, delim) and meaningful)
        starts.append(at)
        ends.append(end)
        clean.append(ok)
        if end >= len(block) - 1:  # the last line, with or without its line feed
            break
        at = end + 1
    return starts, ends, clean


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def ref_fields(line: bytes, delim: int) -> int:
    """Fields of a clean line: delimiters outside quotes, plus one."""
    fields, quoted = 1, False
    for b in line:
        if b == 34:
            quoted = not quoted
        elif b == delim and not quoted:
            fields += 1
    return fields


SHARED_MASKS = csv_shape.Masks()  # one reader's masks, dirty from the examples before


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(LINE, min_size=1, max_size=40), final_newline=st.booleans(), delimiter=st.sampled_from(",\t"),
       limit=st.integers(1, 40), reuse=st.booleans(), searches=st.sampled_from([0, 2000]))
def test_block_shape_matches_the_line_rule(lines, final_newline, delimiter, limit, reuse, searches):
    """``searches``: how many maybe-blank lines a regex looks at before one numpy pass does (both ways)."""
    block = b"\n".join(lines) + (b"\n" if final_newline else b"")
    if not block:
        return
    saved, csv_shape.MAX_BLANK_SEARCHES = csv_shape.MAX_BLANK_SEARCHES, searches
    try:
        shape = csv_shape.block_shape(block, limit, delimiter, SHARED_MASKS if reuse else None)
    finally:
        csv_shape.MAX_BLANK_SEARCHES = saved
    if b"\r" in block:
        assert shape is None
        return
    starts, ends, clean = ref_clean(block, limit, delimiter)
    assert shape.starts.tolist() == starts
    assert shape.ends.tolist() == ends
    assert shape.clean.tolist() == clean
    fields = csv_shape.line_fields(block, shape.starts, delimiter)
    for k in np.flatnonzero(shape.clean).tolist():
        assert fields[k] == ref_fields(block[starts[k]:ends[k]], ord(delimiter))


def test_masks_reused_for_a_smaller_block():
    """A reader's masks hold the last (larger) block's bytes: a smaller block must not see them."""
    masks = csv_shape.Masks()
    big = b'"a""b",x\n' * 50 + b"\x01bad,x\n"
    small = b"plain,x\n" * 3
    csv_shape.block_shape(big, 100, ",", masks)
    shape = csv_shape.block_shape(small, 100, ",", masks)
    assert shape.clean.tolist() == [True, True, True]
    assert shape.starts.tolist() == [0, 8, 16]


def test_many_invalid_utf8_lines_build_as_the_strict_reader(tmp_path, monkeypatch):
    """pyarrow no longer checks UTF-8 (block_shape leaves every invalid line to the strict reader): a
    block with more invalid lines than it locates one by one, among clean ones, builds the same bytes."""
    monkeypatch.setattr(csv_block, "BLOCK_BYTES", 4096)
    rows = []
    for i in range(600):
        rows.append(b"bad \xff%d,pos" % i if i % 7 == 3 else b"caf\xc3\xa9 %d,neg" % i)
    assert sum(b"\xff" in r for r in rows[:180]) > MAX_UTF8_ERRORS  # more than one block locates
    src = tmp_path / "in" / "utf8.csv"
    src.parent.mkdir()
    src.write_bytes(b"text,label\n" + b"\n".join(rows) + b"\n")
    spec = CorpusSpec(label_field="label", on_bad_record="skip", max_record_bytes=200)
    (fast, slow), manifest = build_both(tmp_path, monkeypatch, [str(src)], spec=spec)
    assert fast == slow
    assert manifest.num_records == 600 - sum(b"\xff" in r for r in rows)


@pytest.mark.parametrize("searches", [0, 2000])
def test_quoted_fields_and_blank_rows_build_as_the_strict_reader(tmp_path, monkeypatch, searches):
    """Every field quoted (a line starts and ends with a quote, so its first and last bytes settle
    nothing), blank rows among them: the same bytes and counts as the strict reader, by the regex or
    by the numpy pass over the block."""
    monkeypatch.setattr(csv_block, "BLOCK_BYTES", 2048)
    monkeypatch.setattr(csv_shape, "MAX_BLANK_SEARCHES", searches)
    kinds = [b'"text %d","pos"', b'" "," "', b'"",""', b'"a","neg"', b'" ","pos"', b'"" ,""', b'"x"""," "']
    rows = [kinds[i % len(kinds)].replace(b"%d", b"%d" % i) for i in range(400)]
    src = tmp_path / "in" / "quoted.csv"
    src.parent.mkdir()
    src.write_bytes(b'"text","label"\n' + b"\n".join(rows) + b"\n")
    spec = CorpusSpec(label_field="label", on_bad_record="skip", max_record_bytes=200)
    (fast, slow), manifest = build_both(tmp_path, monkeypatch, [str(src)], spec=spec)
    assert fast == slow
