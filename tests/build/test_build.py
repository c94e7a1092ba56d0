"""shards build: rollover, labels, text fields, pre-tokenization, determinism, crash/rerun,
bad records, output to a non-local filesystem, and the SST-2 corpus."""
from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from shards import load_manifest
from shards.build.driver import BuildConfig, build
from shards.build.writer import Limits
from shards.corpus.read import BadRecordError, CorpusSpec
from shards.reader import iter_shard
from shards.tokenizer import fingerprint, load_tokenizer
from tests.helpers.data import labelled_records, write_jsonl

pytestmark = pytest.mark.timeout(120)
ROOT = pathlib.Path(__file__).resolve().parents[2]


def cfg(out, **kw) -> BuildConfig:
    kw.setdefault("spec", CorpusSpec(label_field="label"))
    kw.setdefault("progress", False)
    return BuildConfig(out=str(out), **kw)


def read_all(out, columns=("text", "label", "input_ids")):
    m = load_manifest(str(out))
    rows = []
    for i in range(len(m.shards)):
        for b in iter_shard(m, str(out), i, columns=columns):
            for j in range(len(b)):
                rows.append((b.text[j] if b.text is not None else None,
                             int(b.label[j]) if b.label is not None else None,
                             b.input_ids[j].tolist() if b.input_ids is not None else None))
    return m, rows


def snapshot(out) -> dict[str, bytes]:
    out = pathlib.Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    """Three jsonl files, 300 records, labels neg/pos."""
    recs = labelled_records(300)
    return [write_jsonl(tmp_path / "in" / f"part{k}.jsonl", recs[k * 100:(k + 1) * 100]) for k in range(3)], recs


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_rollover_by_records_keeps_order_and_labels(tmp_path, corpus, fmt):
    inputs, recs = corpus
    result = build(inputs, cfg(tmp_path / "out", format=fmt, limits=Limits(max_records=7)))
    m, rows = read_all(tmp_path / "out")
    assert m.shard_sizes == [7] * 14 + [2] + [7] * 14 + [2] + [7] * 14 + [2]  # rolls over per input file
    assert [s.path for s in m.shards][:2] == [f"shard-00000.{fmt}", f"shard-00001.{fmt}"]
    assert m.label_names == ["neg", "pos"]
    assert rows == [(r["text"], ["neg", "pos"].index(r["label"]), None) for r in recs]
    assert m.num_records == 300 and m.fields == ["text", "label"] and m.format == fmt and m.version == 1
    assert result.reused_units == 0 and not (tmp_path / "out" / ".staging").exists()


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_rollover_by_bytes(tmp_path, fmt):
    recs = [{"text": "w" * (i % 300 + 1), "label": "a"} for i in range(2000)]
    src = write_jsonl(tmp_path / "a.jsonl", recs)
    max_bytes = 64 << 10
    build([src], cfg(tmp_path / "out", format=fmt, limits=Limits(max_bytes=max_bytes)))
    m, rows = read_all(tmp_path / "out")
    assert len(m.shards) > 3
    sizes = [(tmp_path / "out" / s.path).stat().st_size for s in m.shards]
    assert sizes == [s.num_bytes for s in m.shards]
    assert max(sizes) <= max_bytes
    assert min(sizes[:-1]) > max_bytes * 0.7  # filled, not cut early
    assert [r[0] for r in rows] == [r["text"] for r in recs]


def test_labels_numeric_strings_sorted_numerically(tmp_path):
    recs = [{"text": f"t{i}", "label": ["10", "9", "2"][i % 3]} for i in range(9)]
    src = write_jsonl(tmp_path / "a.jsonl", recs)
    build([src], cfg(tmp_path / "out"))
    m, rows = read_all(tmp_path / "out")
    assert m.label_names == ["2", "9", "10"]
    assert [r[1] for r in rows] == [2, 1, 0] * 3


def test_label_names_given_and_unknown_labels(tmp_path):
    recs = [{"text": f"t{i}", "label": ["a", "b", "zzz"][i % 3]} for i in range(9)]
    src = write_jsonl(tmp_path / "a.jsonl", recs)
    spec = CorpusSpec(label_field="label", on_bad_record="skip")
    build([src], cfg(tmp_path / "out", spec=spec, label_names=("b", "a")))
    m, rows = read_all(tmp_path / "out")
    assert m.label_names == ["b", "a"] and [r[1] for r in rows] == [1, 0] * 3
    assert m.bad_records == {"unknown_label": 3}
    with pytest.raises(BadRecordError, match=r"a\.jsonl:3: unknown_label: 'zzz' not in \['b', 'a'\]"):
        build([src], cfg(tmp_path / "out2", label_names=("b", "a")))
    assert not (tmp_path / "out2" / "index.json").exists()


def test_several_text_fields_joined_and_unlabelled(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"title": "T", "body": f"b{i}"} for i in range(5)])
    build([src], cfg(tmp_path / "out", spec=CorpusSpec(text_fields=("title", "body"))))
    m, rows = read_all(tmp_path / "out")
    assert m.fields == ["text"] and m.label_names is None
    assert [r[0] for r in rows] == [f"T\nb{i}" for i in range(5)]


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_pretokenized_ids_match_hf_tokenizer(tmp_path, minilm, fmt):
    from transformers import AutoTokenizer

    recs = labelled_records(40) + [{"text": "a much longer sentence " * 20, "label": "pos"}]
    src = write_jsonl(tmp_path / "a.jsonl", recs)
    hf = AutoTokenizer.from_pretrained(minilm)
    texts = [r["text"] for r in recs]
    for max_length, name in ((None, "full"), (12, "trunc")):
        build([src], cfg(tmp_path / name, format=fmt, tokenizer=minilm, max_length=max_length,
                         limits=Limits(max_records=16)))
        m, rows = read_all(tmp_path / name)
        want = hf(texts, truncation=max_length is not None, max_length=max_length)["input_ids"]
        assert [r[2] for r in rows] == want
        assert m.fields == ["text", "label", "input_ids"] and m.max_length == max_length
        assert m.tokenizer == {"name_or_path": minilm, "fingerprint": fingerprint(load_tokenizer(minilm))}
    assert max(len(r[2]) for r in rows) == 12
    assert len(read_all(tmp_path / "full")[1][-1][2]) > 12


def test_deterministic_across_workers_reruns_and_split_bytes(tmp_path):
    recs = labelled_records(1500)
    inputs = [write_jsonl(tmp_path / "in" / f"f{k}.jsonl", recs[k * 500:(k + 1) * 500]) for k in range(3)]
    kw = dict(limits=Limits(max_bytes=8 << 10), split_bytes=9000)
    build(inputs, cfg(tmp_path / "w1", **kw))
    build(inputs, cfg(tmp_path / "w2", workers=2, **kw))
    first = snapshot(tmp_path / "w1")
    assert len(first) > 10 and "index.json" in first
    assert snapshot(tmp_path / "w2") == first
    build(inputs, cfg(tmp_path / "w1", **kw))  # rerun over a finished build
    assert snapshot(tmp_path / "w1") == first
    m, rows = read_all(tmp_path / "w1")
    assert [r[0] for r in rows] == [r["text"] for r in recs]


def test_rebuild_with_fewer_shards_removes_stale_ones(tmp_path, corpus):
    inputs, _ = corpus
    build(inputs, cfg(tmp_path / "out", limits=Limits(max_records=5)))
    build(inputs, cfg(tmp_path / "out", limits=Limits(max_records=50)))
    m = load_manifest(str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([s.path for s in m.shards] + ["index.json"])


def test_exception_during_rebuild_keeps_the_previous_set(tmp_path, corpus):
    """A failed rebuild leaves the old index.json and every shard it lists as they were."""
    inputs, _ = corpus
    build(inputs, cfg(tmp_path / "out"))
    before = snapshot(tmp_path / "out")
    bad = pathlib.Path(inputs[1])
    bad.write_text(bad.read_text() + "{not json\n")
    with pytest.raises(BadRecordError, match=r"part1\.jsonl:101: malformed_json"):
        build(inputs, cfg(tmp_path / "out"))
    after = snapshot(tmp_path / "out")
    assert {k: v for k, v in after.items() if not k.startswith(".staging")} == before
    assert not [k for k in after if ".partial-" in k or ".tmp-" in k or k == ".lock"]


def test_bad_records_skipped_counted_in_manifest(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "ok", "label": "x"}\n{"text": \n{"label": "x"}\n'
                     b'{"text": "nul\\u0000", "label": "x"}\n\xff\xfe\n\n{"text": "ok2", "label": "y"}\n')
    spec = CorpusSpec(label_field="label", on_bad_record="skip")
    result = build([str(path)], cfg(tmp_path / "out", spec=spec))
    m = result.manifest
    assert m.num_records == 2
    assert m.bad_records == {"blank_line": 1, "invalid_utf8": 1, "malformed_json": 1, "missing_field": 1,
                             "nul_byte": 1}
    assert json.loads((tmp_path / "out" / "index.json").read_text())["bad_records"] == m.bad_records


def test_reuses_finished_units_after_interruption(tmp_path, corpus):
    """A unit that raised is redone on rerun; the ones before it are reused."""
    inputs, _ = corpus
    reference = cfg(tmp_path / "ref", limits=Limits(max_records=9))
    build(inputs, reference)
    good = pathlib.Path(inputs[2]).read_text()
    pathlib.Path(inputs[2]).write_text(good + "{broken\n")
    with pytest.raises(BadRecordError):
        build(inputs, cfg(tmp_path / "out", limits=Limits(max_records=9)))
    assert not (tmp_path / "out" / "index.json").exists()
    pathlib.Path(inputs[2]).write_text(good)
    result = build(inputs, cfg(tmp_path / "out", limits=Limits(max_records=9)))
    assert result.reused_units == 2
    assert snapshot(tmp_path / "out") == snapshot(tmp_path / "ref")


def test_output_to_an_fsspec_url(tmp_path, corpus):
    """Nothing assumes a local --out: build to memory:// gives the same bytes as a local build."""
    import fsspec

    inputs, _ = corpus
    url = "memory://shards-test/out"
    build(inputs, cfg(url, format="tar", limits=Limits(max_records=40)))
    build(inputs, cfg(tmp_path / "local", format="tar", limits=Limits(max_records=40)))
    fs = fsspec.filesystem("memory")
    local = snapshot(tmp_path / "local")
    remote = {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.find("/shards-test/out")}
    assert remote == local
    _, rows = read_all(url)
    assert len(rows) == 300
    fs.rm("/shards-test", recursive=True)


# --- crash / rerun with a real process ------------------------------------------------------

def big_corpus(tmp_path, n_files=4, n=6000) -> list[str]:
    recs = labelled_records(n_files * n)
    return [write_jsonl(tmp_path / "big" / f"f{k}.jsonl", recs[k * n:(k + 1) * n]) for k in range(n_files)]


def build_cmd(inputs, out, fmt="tar") -> list[str]:
    return [sys.executable, "-m", "shards", "build", *inputs, "--out", str(out), "--format", fmt,
            "--label-field", "label", "--max-records", "50", "--split-bytes", "200KB", "--no-progress"]


def test_sigkill_midway_then_rerun_is_identical(tmp_path):
    inputs = big_corpus(tmp_path)
    subprocess.run(build_cmd(inputs, tmp_path / "ref"), check=True, cwd=ROOT, capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen(build_cmd(inputs, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / ".staging" / "u00002.done.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the build never reached its third unit"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed; grow the corpus"
    assert not (out / "index.json").exists()
    run = subprocess.run(build_cmd(inputs, out), cwd=ROOT, capture_output=True, text=True, check=True)
    reused = int(run.stdout.rsplit("reused units: ", 1)[1].split()[0])
    assert reused >= 3
    assert snapshot(out) == snapshot(tmp_path / "ref")


# --- the real corpus -------------------------------------------------------------------------

@pytest.mark.corpora
@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_sst2_train(tmp_path, corpora, fmt, capsys):
    spec = CorpusSpec(text_fields=("sentence",), label_field="label")
    result = build([str(corpora / "sst2" / "train.tsv")], cfg(tmp_path / fmt, format=fmt, spec=spec))
    m = result.manifest
    assert m.num_records == 67_349 and m.label_names == ["0", "1"] and m.bad_records == {}
    labels = np.concatenate([b.label for i in range(len(m.shards))
                             for b in iter_shard(m, str(tmp_path / fmt), i, columns=("label",))])
    assert np.bincount(labels).tolist() == [29_780, 37_569]
    with capsys.disabled():
        print(f"\nSST-2 train -> {fmt}: {m.num_records} records, {len(m.shards)} shard(s), "
              f"{m.num_bytes / 1e6:.1f} MB, {result.seconds:.2f} s, {result.mb_per_s:.1f} MB/s input")


@pytest.mark.parametrize("workers", [1, 2])
def test_manifest_alone_accounts_for_every_input_line(tmp_path, workers):
    """input lines = records + continued_lines + sum(bad_records) + 1 header line per CSV file."""
    a = tmp_path / "a.csv"
    a.write_text('text,label\n"two\nlines",pos\nplain,neg\n"three\nline\nrow",neg\n"bad quote"x,pos\n'
                 '\n"multi\nunknown",other\n,pos\n')
    b = tmp_path / "b.csv"
    b.write_text('text,label\none,pos\n"x\ny",pos\n')
    out = tmp_path / "out"
    m = build([str(a), str(b)], cfg(out, workers=workers, label_names=("neg", "pos"),
                                    spec=CorpusSpec(label_field="label", on_bad_record="skip"))).manifest
    lines = sum(len(p.read_bytes().splitlines()) for p in (a, b))
    assert m.num_records == 5 and m.continued_lines == 1 + 2 + 1 + 1  # the unknown-label row read 2 lines
    assert m.bad_records == {"blank_line": 1, "empty_text": 1, "malformed_csv": 1, "unknown_label": 1}
    assert lines == m.num_records + m.continued_lines + sum(m.bad_records.values()) + 2
    assert m.label_counts == [2, 3]
