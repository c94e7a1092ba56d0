"""A labelled Arrow build of one unit finds its labels in the write pass (shards/build/in_pass.py):
the same shards, manifest, counts and errors as the scan-then-write build and the per-line path."""
from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pyarrow as pa
import pytest

from shards.build import driver, in_pass, spill
from shards.build.driver import BuildConfig, build
from shards.build.writer import Limits
from shards.corpus import jsonl as corpus_jsonl
from shards.corpus.read import BadRecordError, CorpusSpec
from shards.formats.arrow_write import Writer, relabel
from shards.storage import sha256_file
from tests.build.test_build_fast import build_both, snapshot

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def in_pass_used(monkeypatch):
    """Any unit size finds its labels in the pass; returns the list of relabel calls' label lists."""
    monkeypatch.setattr(in_pass, "MIN_UNIT_BYTES", 0)
    monkeypatch.setattr(corpus_jsonl, "BLOCK_BYTES", 4096)
    finished = []
    original = in_pass.FoundLabels.finish

    def finish(self, parts, labels):
        finished.append((list(self.values), list(labels)))
        return original(self, parts, labels)

    monkeypatch.setattr(in_pass.FoundLabels, "finish", finish)
    return finished


def _jsonl(rows: int, values: list, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    lines = []
    for i in range(rows):
        label = values[0] if i == 0 else rng.choice(values)
        if i % 97 == 5:
            lines.append(b"{not json")
        elif i % 89 == 7:
            lines.append(json.dumps({"text": "   ", "label": label}).encode())
        elif i % 83 == 11:
            lines.append(json.dumps({"text": "no label"}).encode())
        else:
            lines.append(json.dumps({"text": f"record {i} " + "w" * (i % 40), "label": label}).encode())
    return b"\n".join(lines) + b"\n"


def _csv(rows: int, values: list, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    body = [b"text,label"]
    for i in range(rows):
        label = values[0] if i == 0 else rng.choice(values)
        body.append(b'"rec, %d",%s' % (i, str(label).encode()) if i % 91 != 3 else b"only one field")
    return b"\n".join(body) + b"\n"


@pytest.mark.parametrize("kind,values,names", [
    ("jsonl", [10, 9, 2], ["2", "9", "10"]),  # numbers: numeric order, not first met
    ("jsonl", ["pos", "neg"], ["neg", "pos"]),
    ("jsonl", ["a", "b"], ["a", "b"]),  # first met == sorted: no relabel needed
    ("csv", ["pos", "neu", "neg"], ["neg", "neu", "pos"]),
])
def test_same_bytes_as_per_line_and_as_given_labels(tmp_path, monkeypatch, in_pass_used, kind, values, names):
    data = (_jsonl if kind == "jsonl" else _csv)(3000, values)
    src = tmp_path / "in" / f"a.{kind}"
    src.parent.mkdir()
    src.write_bytes(data)
    spec = CorpusSpec(label_field="label", on_bad_record="skip")
    (fast, slow), manifest = build_both(tmp_path, monkeypatch, [str(src)], spec=spec, limits=Limits(max_bytes=20000))
    assert in_pass_used and in_pass_used[0][1] == names
    assert fast == slow  # shards and index.json, byte for byte
    assert manifest.label_names == names and sum(manifest.label_counts) == manifest.num_records
    assert len(manifest.shards) > 3 and manifest.bad_records
    given = build([str(src)], BuildConfig(out=str(tmp_path / "given"), spec=spec, limits=Limits(max_bytes=20000),
                                          label_names=tuple(names), progress=False)).manifest
    assert snapshot(tmp_path / "given") == fast and given.label_counts == manifest.label_counts


def test_error_names_the_same_line(tmp_path, in_pass_used):
    src = tmp_path / "a.jsonl"
    src.write_bytes(b"".join(b'{"text": "r%d", "label": "x"}\n' % i for i in range(500)) + b'{"text": 5, "label": "x"}\n')
    with pytest.raises(BadRecordError, match=r"a\.jsonl:501: wrong_type"):
        build([str(src)], BuildConfig(out=str(tmp_path / "o"), spec=CorpusSpec(label_field="label"), progress=False))
    assert not (tmp_path / "o" / "index.json").exists()


def test_rerun_reuses_the_unit_and_its_labels(tmp_path, monkeypatch, in_pass_used):
    """A build that failed after its unit was written: the rerun reuses the unit, labels from its marker."""
    src = tmp_path / "a.jsonl"
    src.write_bytes(_jsonl(400, ["z", "y"]))
    spec = CorpusSpec(label_field="label", on_bad_record="skip")
    fresh = build([str(src)], BuildConfig(out=str(tmp_path / "fresh"), spec=spec, progress=False))
    finish = driver._finish

    def fail_once(*args):
        monkeypatch.setattr(driver, "_finish", finish)
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(driver, "_finish", fail_once)
    cfg = BuildConfig(out=str(tmp_path / "o"), spec=spec, progress=False)
    with pytest.raises(RuntimeError, match="killed before the commit"):
        build([str(src)], cfg)
    again = build([str(src)], cfg)
    assert again.reused_units == 1 and len(in_pass_used) == 2  # the rerun ran no unit
    assert again.manifest.label_names == ["y", "z"] and again.manifest.label_counts == fresh.manifest.label_counts
    assert snapshot(tmp_path / "o") == snapshot(tmp_path / "fresh")


def test_small_unit_scans_first(tmp_path, monkeypatch):
    """Below MIN_UNIT_BYTES (one read block) the label scan runs first and its spill is read back."""
    taken = []
    original = spill.take
    monkeypatch.setattr(spill, "take", lambda *a: taken.append(original(*a)) or taken[-1])
    src = tmp_path / "a.jsonl"
    src.write_bytes(_jsonl(300, ["b", "a"]))
    build([str(src)], BuildConfig(out=str(tmp_path / "o"), spec=CorpusSpec(label_field="label", on_bad_record="skip"),
                                  progress=False))
    assert taken and taken[0] is not None


def test_relabel_rewrites_only_the_ids(tmp_path):
    path = str(tmp_path / "s.arrow")
    writer = Writer(path, ["text", "label"])
    ids = np.array([0, 1, 2, 1, 0] * 300, np.int64)
    for lo in range(0, len(ids), 512):
        part = ids[lo:lo + 512]
        writer.write(pa.array([f"t{i}" for i in range(len(part))], pa.string()), part, None)
    writer.close()
    before = open(path, "rb").read()
    relabel(path, np.array([2, 0, 1], np.int64))
    digest, nbytes = sha256_file(path)
    after = open(path, "rb").read()
    assert nbytes == len(after) == len(before) and digest == hashlib.sha256(after).hexdigest()
    table = pa.ipc.open_file(pa.py_buffer(after)).read_all()
    assert table.column("label").to_numpy().tolist() == np.array([2, 0, 1])[ids].tolist()
    assert table.column("text").equals(pa.ipc.open_file(pa.py_buffer(before)).read_all().column("text"))
