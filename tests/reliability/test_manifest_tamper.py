"""Manifest and shard tampering (issue 14, item 4), with real shard sets on disk.

A manifest listing a shard twice or another's entry would deliver records twice under
distinct sample ids; a wrong ``num_records`` would give ranks unequal batch counts; a label
id outside ``label_names``, a duplicate tar member or an int64 token id past int32 would be
wrong data.  Each is refused: by ``load_manifest``/``shards verify``, or as a corrupt shard
under the ``on_corrupt`` policy, before any record of that shard is used.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter

import numpy as np
import pytest

import shards
from pipeline import ShardStream, StreamConfig
from shards.cli import main
from shards.manifest import Manifest, ShardInfo, write_manifest
from tests.helpers.data import ROOT, build_set

pytestmark = pytest.mark.timeout(120)


def edit_manifest(url: str, change) -> dict:
    path = os.path.join(url, "index.json")
    with open(path) as f:
        data = json.load(f)
    # label_counts cross-checks the totals: the tamperer drops it (older sets have none), so the
    # manifest stays self-consistent and the shard and duplicate checks are what must catch the edit
    data.pop("label_counts", None)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return data


def listed_twice(d):
    d["shards"].insert(3, dict(d["shards"][2]))
    d["num_records"] += d["shards"][2]["num_records"]


def replaced_by_another(d):
    d["shards"][3] = dict(d["shards"][2])


def other_path_same_content(d):  # the entry's path is its own, the rest another shard's
    d["shards"][3] = dict(d["shards"][2], path=d["shards"][3]["path"])


@pytest.mark.parametrize("change", [listed_twice, replaced_by_another, other_path_same_content])
def test_duplicate_shard_entries_are_refused_by_load_and_verify(tmp_path, capsys, change):
    url = build_set(tmp_path, n=40, max_records=6)
    names = [s["path"] for s in edit_manifest(url, change)["shards"][2:4]]
    with pytest.raises(shards.ManifestError, match=r"shards\[2\].*shards\[3\]"):
        shards.load_manifest(url)
    assert main(["verify", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("shards verify: error: ")
    assert all(n in err for n in names)
    with pytest.raises(shards.ManifestError):
        ShardStream(url)


@pytest.mark.parametrize("delta", [+3, -2])
def test_wrong_shard_record_count_is_a_corrupt_shard_under_error(tmp_path, delta):
    url = build_set(tmp_path, n=40, max_records=6)

    def change(d):
        d["shards"][2]["num_records"] += delta
        d["num_records"] += delta
    edit_manifest(url, change)
    m = shards.load_manifest(url)  # consistent with itself: only the shard can tell
    bad = shards.shard_url(url, m.shards[2])
    seen = []
    with pytest.raises(shards.CorruptShardError) as info:
        for item in ShardStream(url):
            seen.append(item["sample_id"])
    msg = str(info.value)
    assert bad in msg and f"holds 6 records, the manifest says {6 + delta}" in msg
    assert not [s for s in seen if s.startswith("00002:")]  # raised before the shard's first record
    assert main(["verify", url]) == 1


@pytest.mark.parametrize("delta", [+3, -2])
@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_wrong_shard_record_count_under_skip_keeps_ranks_equal(tmp_path, fmt, delta):
    url = build_set(tmp_path, n=40, max_records=6, fmt=fmt)

    def change(d):
        d["shards"][2]["num_records"] += delta
        d["num_records"] += delta
    edit_manifest(url, change)
    counts, real, pads = [], Counter(), 0
    for rank in range(2):
        ds = ShardStream(url, rank=rank, world_size=2, shuffle=True, seed=3,
                         config=StreamConfig(on_corrupt="skip", block_size=4))
        items = list(ds)
        counts.append(len(items))
        assert len(items) == len(ds)
        real.update(i["sample_id"] for i in items if not i["is_pad"])
        pads += sum(i["is_pad"] for i in items)
        assert ds.stats["skipped_shards"] >= 1
    assert counts[0] == counts[1]
    assert not [s for s in real if s.startswith("00002:")]  # the shard's records are all pads
    assert len(real) == 40 - 6 and max(real.values()) == 1  # every other record exactly once
    assert pads == sum(counts) - len(real)


WRONG_TYPES = {
    "format": 1, "version": "1", "num_records": "40", "fields": "text,label",
    "label_names": "neg,pos", "tokenizer": "minilm", "max_length": "128",
    "bad_records": {"blank_line": "1"}, "schema": ["text"], "sources": "a.jsonl", "shards": {"a": 1},
}


@pytest.mark.parametrize("field", sorted(WRONG_TYPES))
def test_wrong_typed_manifest_fields_are_a_manifest_error(tmp_path, field):
    url = build_set(tmp_path, n=12, max_records=6)
    edit_manifest(url, lambda d: d.__setitem__(field, WRONG_TYPES[field]))
    with pytest.raises(shards.ManifestError, match=field if field != "version" else "version"):
        shards.load_manifest(url)


@pytest.mark.parametrize("change,match", [
    (lambda d: d.__setitem__("num_records", d["num_records"] + 1), "sum of the shards' num_records"),
    (lambda d: d.__setitem__("label_names", ["neg", "neg"]), "label_names"),
    (lambda d: d.__setitem__("fields", ["text", "text", "label"]), "fields"),
    (lambda d: d["shards"][0].__setitem__("num_records", True), "not a count"),
    (lambda d: d["shards"][0].__setitem__("path", 7), "must be a string"),
    (lambda d: d["shards"][0].pop("sha256"), "malformed shard entry"),
])
def test_inconsistent_manifest_values_are_refused(tmp_path, change, match):
    url = build_set(tmp_path, n=12, max_records=6)
    edit_manifest(url, change)
    with pytest.raises(shards.ManifestError, match=match):
        shards.load_manifest(url)


# -- tar tampering: shards written with tarfile, a manifest whose hashes match ----------

def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def npy(values, dtype) -> bytes:
    out = io.BytesIO()
    np.save(out, np.asarray(values, dtype=dtype))
    return out.getvalue()


def tar_set(tmp_path, members, n: int, fields=("text", "label")) -> str:
    """A one-shard tar set whose manifest matches the shard's bytes (a hostile producer)."""
    data = tar_bytes(members)
    (tmp_path / "shard-00000.tar").write_bytes(data)
    info = ShardInfo("shard-00000.tar", n, len(data), hashlib.sha256(data).hexdigest())
    write_manifest(str(tmp_path), Manifest(format="tar", num_records=n, fields=list(fields), shards=[info],
                                           label_names=["neg", "pos"] if "label" in fields else None))
    return str(tmp_path)


def sample(key: str, text: str, label: str) -> list[tuple[str, bytes]]:
    return [(f"{key}.txt", text.encode()), (f"{key}.cls", label.encode())]


TAMPERED = {
    "label_outside_names": (sample("a", "x", "0") + sample("b", "y", "7"), 2, "record 1 has label id 7"),
    "negative_label": (sample("a", "x", "-1") + sample("b", "y", "1"), 2, "record 0 has label id -1"),
    "label_overflows_int64": (sample("a", "x", "99999999999999999999") + sample("b", "y", "1"), 2,
                              "not a decimal int64 id"),
    "two_txt_members": (sample("a", "x", "0") + [("a.txt", b"again")] + sample("b", "y", "1"), 2,
                        "duplicate member 'a.txt'"),
    "key_again_later": (sample("a", "x", "0") + sample("b", "y", "1") + sample("a", "z", "1"), 3,
                        "duplicate member 'a.txt'"),
}


@pytest.mark.parametrize("kind", sorted(TAMPERED))
def test_tampered_tar_fails_verify_and_the_stream(tmp_path, capsys, kind):
    members, n, match = TAMPERED[kind]
    url = tar_set(tmp_path, members, n)
    assert main(["verify", url]) == 1
    captured = capsys.readouterr()
    assert match in captured.err and "shard-00000.tar" in captured.err
    assert "1 bad shard(s): shard-00000.tar" in captured.out
    with pytest.raises(shards.CorruptShardError, match=match):
        list(ShardStream(url))


@pytest.mark.parametrize("values", [[1, 2**31 + 5], [3, -4]])
def test_int64_token_ids_past_int32_or_negative_fail_verify(tmp_path, capsys, values):
    members = [("a.txt", b"x"), ("a.input_ids.npy", npy([5, 6], np.int64)),
               ("b.txt", b"y"), ("b.input_ids.npy", npy(values, np.int64))]
    url = tar_set(tmp_path, members, 2, fields=("text", "input_ids"))
    assert main(["verify", url]) == 1
    err = capsys.readouterr().err
    assert "shard-00000.tar" in err and "record 1" in err
    with pytest.raises(shards.CorruptShardError, match="record 1"):
        list(ShardStream(url))


def test_arrow_label_outside_names_is_a_corrupt_shard(tmp_path, capsys):
    url = build_set(tmp_path, n=12, max_records=6)  # labels neg/pos = ids 0/1
    edit_manifest(url, lambda d: d.__setitem__("label_names", ["neg"]))
    assert main(["verify", url]) == 1
    assert "has label id 1, outside label_names" in capsys.readouterr().err
    with pytest.raises(shards.CorruptShardError, match="outside label_names"):
        list(ShardStream(url))


def test_tar_index_is_kept_per_shard_across_two_sets(tmp_path, monkeypatch):
    """Alternating between shards of two sets (a mixed stream) indexes each shard once."""
    from shards.formats import tar_read as format_tar

    a = build_set(tmp_path, n=24, max_records=6, fmt="tar", name="a")
    b = build_set(tmp_path, n=24, max_records=6, fmt="tar", name="b", labels=False)  # other content
    monkeypatch.setattr(format_tar, "_INDEXES", shards.formats.Memo(16))  # none kept from other tests
    built = []
    real = format_tar._build_index
    monkeypatch.setattr(format_tar, "_build_index", lambda data, url: built.append(url) or real(data, url))
    loaded = [(u, shards.load_manifest(u)) for u in (a, b)]
    for _ in range(3):
        for i in range(4):
            for u, m in loaded:
                url = shards.shard_url(u, m.shards[i])
                data = shards.fetch_shard(url, m.shards[i], manifest=m)
                assert sum(len(x) for x in shards.read_batches(m, url, data, 1, 5)) == 4
    assert len(built) == len(set(built)) == 8


def test_verify_cli_subprocess_names_the_duplicate_in_one_line(tmp_path):
    url = build_set(tmp_path, n=40, max_records=6)
    edit_manifest(url, listed_twice)
    run = subprocess.run([sys.executable, "-m", "shards", "verify", url], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "shard-00002.arrow" in run.stderr
