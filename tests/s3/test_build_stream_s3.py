"""Build to and stream from s3:// on the moto server: gz inputs, CLI, ranks x workers, crash + rerun."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter

import pytest

import shards
from pipeline import ShardStream, make_loader
from shards import storage
from shards.build.driver import BuildConfig, build
from shards.build.writer import Limits
from shards.cli import main as shards_main
from shards.corpus.read import CorpusSpec
from tests.helpers.data import ROOT, labelled_records, write_jsonl

pytestmark = [pytest.mark.s3, pytest.mark.timeout(240)]


def upload_gz_jsonl(url: str, records: list[dict], so: dict) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    storage.write_bytes_atomic(url, gzip.compress(text.encode()), so)


def epoch(url: str, so: dict, world: int, workers: int, **kw) -> tuple[Counter, int, dict]:
    """(real sample ids seen, pads, id -> text) over all ranks of one epoch."""
    seen, pads, texts = Counter(), 0, {}
    for rank in range(world):
        ds = ShardStream(url, storage_options=so, rank=rank, world_size=world, **kw)
        for batch in make_loader(ds, 8, num_workers=workers, collate_fn=list):
            for item in batch:
                if item["is_pad"]:
                    pads += 1
                else:
                    seen[item["sample_id"]] += 1
                    texts[item["sample_id"]] = item["text"]
    return seen, pads, texts


def test_build_from_s3_gz_and_stream_two_ranks_two_workers(s3_url, s3_options, s3_env, capsys):
    records = labelled_records(301)
    upload_gz_jsonl(f"{s3_url}/raw/a.jsonl.gz", records[:150], s3_options)
    upload_gz_jsonl(f"{s3_url}/raw/b.jsonl.gz", records[150:], s3_options)
    storage.write_bytes_atomic(f"{s3_url}/raw/notes.txt", b"not an input", s3_options)
    out = f"{s3_url}/shards"
    # Keys from the environment, endpoint given as a storage option (as a user would on the CLI).
    rc = shards_main(["build", f"{s3_url}/raw/*.jsonl.gz", "--out", out, "--label-field", "label",
                      "--max-records", "10", "--storage-option",
                      f"client_kwargs.endpoint_url={s3_env['AWS_ENDPOINT_URL']}", "--no-progress"])
    assert rc == 0, capsys.readouterr()
    manifest = shards.load_manifest(out, s3_options)
    assert manifest.num_records == 301 and len(manifest.shards) == 31
    assert manifest.sources == [f"{s3_url}/raw/a.jsonl.gz", f"{s3_url}/raw/b.jsonl.gz"]

    seen, pads, texts = epoch(out, s3_options, world=2, workers=2, shuffle=True, seed=3)
    assert len(seen) == 301 and set(seen.values()) == {1}, "a sample was lost or duplicated"
    assert pads == 1  # 301 records over 2 ranks: one flagged repeat evens them out
    assert sorted(texts.values()) == sorted(r["text"] for r in records)


def test_cli_inspect_and_verify_on_s3(s3_build_set, s3_options, s3_env, capsys):
    url = s3_build_set(n=40, max_records=8)
    endpoint = f"client_kwargs.endpoint_url={s3_env['AWS_ENDPOINT_URL']}"
    assert shards_main(["verify", url, "--storage-option", endpoint]) == 0
    assert "verified 5 shard(s), 40 records: OK" in capsys.readouterr().out
    assert shards_main(["inspect", url, "-n", "2", "--storage-option", endpoint]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["sample_id"] for r in rows] == ["00000:000000", "00000:000001"]

    # A real process with nothing but the AWS_* environment (AWS_ENDPOINT_URL) to find the server.
    done = subprocess.run([sys.executable, "-m", "shards", "verify", url], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout

    bad = f"{url}/shard-00002.arrow"
    storage.write_bytes_atomic(bad, storage.read_object(bad, s3_options)[:-1] + b"x", s3_options)
    assert shards_main(["verify", url, "--storage-option", endpoint]) == 1
    captured = capsys.readouterr()
    assert f"FAIL shard {bad}: sha256 mismatch" in captured.err and "1 bad shard(s): shard-00002.arrow" in captured.out


def _config(out: str, so: dict) -> BuildConfig:
    return BuildConfig(out=out, spec=CorpusSpec(label_field="label"), limits=Limits(max_records=10),
                       split_bytes=3000, storage_options=so)


def _staged_uploads(proxy) -> list[str]:
    return [path for method, path, _, _ in proxy.log if method == "PUT" and "/.staging/u" in path
            and path.endswith(".arrow")]


def test_rerun_after_crashes_skips_uploaded_shards_and_never_lists_a_missing_one(
        tmp_path, s3_url, s3_options, fault_proxy):
    src = write_jsonl(tmp_path / "data.jsonl", labelled_records(120))
    out = f"{s3_url}/shards"

    # 1. Crash while uploading unit 2's shard: units 0 and 1 are finished and marked.
    proxy, so = fault_proxy(0.0, fail={".staging/u00002-": "denied"}, methods=("PUT",))
    with pytest.raises(PermissionError):
        build([src], _config(out, so))
    assert not storage.exists(f"{out}/index.json", s3_options)
    with pytest.raises(shards.ManifestError):
        shards.load_manifest(out, s3_options)

    # 2. The rerun reuses units 0 and 1, then crashes while publishing final shard 5.
    proxy, so = fault_proxy(0.0, fail={"/shard-00005.arrow": "denied"}, methods=("PUT",))
    with pytest.raises(PermissionError):
        build([src], _config(out, so))
    assert not any("/.staging/u00000-" in p or "/.staging/u00001-" in p for p in _staged_uploads(proxy))
    assert storage.exists(f"{out}/shard-00004.arrow", s3_options)  # published before the crash
    assert not storage.exists(f"{out}/index.json", s3_options)

    # 3. A clean rerun uploads no shard again, and the set is complete and verified.
    proxy, so = fault_proxy(0.0)
    result = build([src], _config(out, so))
    units = result.reused_units
    assert units >= 3 and _staged_uploads(proxy) == []
    manifest = shards.load_manifest(out, s3_options)
    assert manifest.num_records == 120 and len(manifest.shards) >= 12
    for i in range(len(manifest.shards)):
        shards.verify_shard(manifest, out, i, s3_options)
    names = {p.rsplit("/", 1)[-1] for p in storage.filesystem(out, s3_options)[0].ls(out[5:], detail=False)}
    assert names == {"index.json"} | {s.path for s in manifest.shards}, "staging or stale shards left"
    seen, _, _ = epoch(out, s3_options, world=1, workers=0)
    assert len(seen) == 120 and set(seen.values()) == {1}


def test_one_builder_per_s3_output_and_a_failed_rebuild_keeps_the_old_set(tmp_path, s3_url, s3_options,
                                                                           fault_proxy):
    from shards.build.lock import LockError, OutputLock

    out = f"{s3_url}/shards"
    old = write_jsonl(tmp_path / "old.jsonl", labelled_records(60))
    build([old], _config(out, s3_options))

    # 1. The lock object: a second holder is refused while the first holds it, and gets it after.
    first = OutputLock(out, s3_options)
    first.acquire()
    with pytest.raises(LockError, match=r"another `shards build` is writing to this --out: pid \d+"):
        OutputLock(out, s3_options).acquire()
    with pytest.raises(LockError):
        build([old], _config(out, s3_options))
    first.release()
    with OutputLock(out, s3_options):
        pass
    assert not storage.exists(f"{out}/.lock", s3_options)

    # 2. A rebuild with other content that fails while publishing its shards leaves the old set whole.
    new = write_jsonl(tmp_path / "new.jsonl", [{**r, "text": r["text"] + "!"} for r in labelled_records(60)])
    _, so = fault_proxy(0.0, fail={"/shard-00003": "denied"}, methods=("PUT",))
    with pytest.raises(PermissionError):
        build([new], _config(out, so))
    manifest = shards.load_manifest(out, s3_options)
    assert manifest.sources == [old]
    assert sum(shards.verify_shard(manifest, out, i, s3_options) for i in range(len(manifest.shards))) == 60
    assert not storage.exists(f"{out}/.lock", s3_options)

    # 3. The rerun commits the new set under the plain names, and nothing else is left.
    manifest = build([new], _config(out, s3_options)).manifest
    assert manifest.sources == [new] and [s.path for s in manifest.shards][:2] == ["shard-00000.arrow",
                                                                                   "shard-00001.arrow"]
    names = {p.rsplit("/", 1)[-1] for p in storage.filesystem(out, s3_options)[0].ls(out[5:], detail=False)}
    assert names == {"index.json"} | {s.path for s in manifest.shards}
