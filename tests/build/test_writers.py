"""Shard writers: the vectorised tar writer lays out exactly the bytes of the member-by-member
one it replaced, and both writers hash what they write (the manifest's sha256 and size
come from the writer, never from reading the file back)."""
from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shards.formats import arrow as format_arrow
from shards.formats import tar_read as format_tar
from shards.formats.sink import HashingSink
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(120)


class ReferenceTarWriter:
    """The tar writer as it was before vectorising: one Python-built header per member."""

    def __init__(self, path: str, fields: list[str], first: int = 0):
        self.fields, self._file, self._count, self._offset = fields, open(path, "wb"), first, 0

    def _member(self, out: list, name: str, payload: bytes) -> None:
        pad = -len(payload) % format_tar.BLOCK
        out += [format_tar.header(name, len(payload)), payload, bytes(pad)]
        self._offset += format_tar.BLOCK + len(payload) + pad

    def write(self, texts, labels, ids) -> None:
        out: list[bytes] = []
        for i, text in enumerate(texts):
            key = f"{self._count:08d}"
            if "text" in self.fields:
                self._member(out, f"{key}.txt", text.encode("utf-8"))
            if labels is not None:
                self._member(out, f"{key}.cls", b"%d" % int(labels[i]))
            if ids is not None:
                self._member(out, f"{key}.input_ids.npy", format_tar.npy_bytes(ids[i]))
            self._count += 1
        self._file.write(b"".join(out))

    def close(self) -> None:
        end = 2 * format_tar.BLOCK
        end += -(self._offset + end) % format_tar.RECORD
        self._file.write(bytes(end))
        self._file.close()


# texts: empty, short, around one block, several blocks; ASCII, accents, CJK, emoji, NUL, newlines
TEXT = st.one_of(st.just(""), st.text(max_size=40),
                 st.text(alphabet=st.sampled_from("ab é日😀\n\x00"), min_size=500, max_size=1600))
RECORD = st.tuples(TEXT, st.integers(-5, 10**6),
                   st.lists(st.integers(0, 2**31 - 1), max_size=300).map(lambda v: np.array(v, np.int32)))
FIELDS = st.sampled_from([["text"], ["text", "label"], ["text", "input_ids"], ["text", "label", "input_ids"],
                          ["label", "input_ids"], ["input_ids"]])
# the first key: 0, or just under 10**8 so keys grow a digit (a 9-character name) inside a batch
FIRST = st.sampled_from([0, 7, 10**8 - 3, 10**9 - 1])


def _write(writer, records, fields, batch: int, arrow_in: bool):
    texts = [t for t, _, _ in records]
    labels = [label for _, label, _ in records]
    ids = [x for _, _, x in records]
    column = pa.array(texts, pa.string())
    for lo in range(0, len(records), batch):
        hi = min(lo + batch, len(records))
        part_texts = column.slice(lo, hi - lo) if arrow_in else texts[lo:hi]
        part_labels = None
        if "label" in fields:
            part_labels = np.array(labels[lo:hi], np.int64) if arrow_in else labels[lo:hi]
        writer.write(part_texts, part_labels, ids[lo:hi] if "input_ids" in fields else None)
    return writer.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(RECORD, max_size=40), fields=FIELDS, first=FIRST, batch=st.integers(1, 50),
       arrow_in=st.booleans())
def test_tar_writer_bytes_equal_the_member_by_member_writer(tmp_path, records, fields, first, batch, arrow_in):
    ref_path, new_path = tmp_path / "ref.tar", tmp_path / "new.tar"
    _write(ReferenceTarWriter(str(ref_path), fields, first), records, fields, batch, arrow_in=False)
    writer = format_tar.Writer(str(new_path), fields)
    writer._count = first  # keys start where a long shard's would
    digest = _write(writer, records, fields, batch, arrow_in)
    data = new_path.read_bytes()
    assert data == ref_path.read_bytes()
    assert digest == (hashlib.sha256(data).hexdigest(), len(data))


def test_tar_writer_long_texts_and_many_records(tmp_path):
    """Both copy paths (one vectorised copy for short payloads, a slice each for long ones)
    in one shard, over a batch of the builder's size."""
    rng = np.random.default_rng(0)
    lengths = rng.choice([0, 3, 60, 700, 9000], size=2100)
    records = [("é" * (n // 2) + "x" * (n % 2), int(n) % 7, np.arange(n % 130, dtype=np.int32))
               for n in lengths]
    fields = ["text", "label", "input_ids"]
    _write(ReferenceTarWriter(str(tmp_path / "ref.tar"), fields), records, fields, 1024, arrow_in=False)
    _write(format_tar.Writer(str(tmp_path / "new.tar"), fields), records, fields, 1024, arrow_in=True)
    assert (tmp_path / "new.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()


@pytest.mark.parametrize("module", [format_arrow, format_tar])
def test_writer_close_returns_sha256_and_size_of_the_file(tmp_path, module):
    path = tmp_path / f"s{module.EXT}"
    writer = module.Writer(str(path), ["text", "label", "input_ids"])
    for lo in range(0, 3000, 1000):
        writer.write(pa.array([f"récord {i}" * (i % 5) for i in range(lo, lo + 1000)]),
                     np.arange(lo, lo + 1000) % 3, [np.arange(i % 17, dtype=np.int32) for i in range(1000)])
    assert writer.close() == (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size)


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
@pytest.mark.parametrize("tokenized", [False, True])
def test_manifest_sha256_and_size_equal_the_files(tmp_path, minilm, fmt, tokenized):
    url = build_set(tmp_path, n=60, max_records=7, fmt=fmt, tokenizer=minilm if tokenized else None,
                    max_length=16 if tokenized else None)
    manifest = json.loads((pathlib.Path(url) / "index.json").read_text())
    assert len(manifest["shards"]) == 9
    for shard in manifest["shards"]:
        data = (pathlib.Path(url) / shard["path"]).read_bytes()
        assert (shard["sha256"], shard["num_bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))


def test_hashing_sink_takes_any_buffer(tmp_path):
    sink = HashingSink(str(tmp_path / "x.bin"))
    pieces = [b"abc", memoryview(b"defg"), np.arange(5, dtype=np.int32), pa.py_buffer(b"hi"), bytearray(3)]
    for piece in pieces:
        sink.write(piece)
    sink.close()
    data = (tmp_path / "x.bin").read_bytes()
    assert data == b"".join(bytes(memoryview(p).cast("B")) for p in pieces)
    assert sink.digest() == (hashlib.sha256(data).hexdigest(), len(data)) and sink.closed


def test_background_sink_writes_in_order_and_reports_errors(tmp_path):
    sink = HashingSink(str(tmp_path / "x.bin"), background=True)
    pieces = [np.full(5000, i, np.uint8) for i in range(20)]
    for piece in pieces:
        sink.write(piece)
    assert sink.num_bytes == 100_000
    sink.close()
    data = (tmp_path / "x.bin").read_bytes()
    assert data == b"".join(p.tobytes() for p in pieces)
    assert sink.digest() == (hashlib.sha256(data).hexdigest(), len(data))

    broken = HashingSink(str(tmp_path / "y.bin"), background=True)
    broken._file.close()  # the next write fails on the thread; the error reaches the caller
    broken.write(b"abc")
    with pytest.raises(ValueError, match="closed file"):
        broken.close()
