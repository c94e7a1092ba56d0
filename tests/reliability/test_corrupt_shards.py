"""Corrupt shards (5 kinds x 2 formats) under on_corrupt='error' and 'skip'."""
import logging
import os
from collections import Counter

import pytest

import shards
from pipeline import ShardStream, StreamConfig, make_loader
from tests.helpers.data import build_set

KINDS = ["truncated", "bitflip", "zero_length", "wrong_magic", "replaced"]
VICTIM = 2  # shard index that gets corrupted


def corrupt(url: str, kind: str, tmp_path, fmt: str) -> str:
    m = shards.load_manifest(url)
    path = os.path.join(url, m.shards[VICTIM].path)
    data = open(path, "rb").read()
    if kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "bitflip":
        data = bytearray(data)
        data[len(data) // 3] ^= 0x10
        data = bytes(data)
    elif kind == "zero_length":
        data = b""
    elif kind == "wrong_magic":
        data = b"XXXXXXXX" + data[8:]
    elif kind == "replaced":  # a valid shard of another build, swapped in after the manifest was written
        other = build_set(tmp_path, n=40, max_records=6, fmt=fmt, name="other")
        om = shards.load_manifest(other)
        data = open(os.path.join(other, om.shards[VICTIM + 1].path), "rb").read()
    with open(path, "wb") as f:
        f.write(data)
    return shards.shard_url(url, m.shards[VICTIM])


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
@pytest.mark.parametrize("kind", KINDS)
def test_error_names_the_shard_before_any_of_its_samples(tmp_path, fmt, kind):
    url = build_set(tmp_path, n=40, max_records=6, fmt=fmt)
    bad_url = corrupt(url, kind, tmp_path, fmt)
    seen = []
    with pytest.raises(shards.CorruptShardError) as info:
        for item in ShardStream(url):
            seen.append(item["sample_id"])
    message = str(info.value)
    assert bad_url in message and ("rebuild" in message)
    assert any(check in message for check in ("sha256", "size", "magic"))
    assert not [s for s in seen if s.startswith(f"{VICTIM:05d}:")]
    print(f"{fmt} {kind}: error raised after {len(seen)} good samples: {message[:110]}")


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
@pytest.mark.parametrize("kind", KINDS)
def test_skip_pads_counts_and_keeps_steps_equal(tmp_path, fmt, kind, caplog):
    url = build_set(tmp_path, n=40, max_records=6, fmt=fmt)
    corrupt(url, kind, tmp_path, fmt)
    real, pads, steps, skipped = Counter(), Counter(), [], 0
    caplog.set_level(logging.WARNING)
    for rank in range(2):
        ds = ShardStream(url, rank=rank, world_size=2, shuffle=True, seed=1,
                         config=StreamConfig(on_corrupt="skip"))
        n = 0
        for item in ds:
            n += 1
            (pads if item["is_pad"] else real)[item["sample_id"]] += 1
        steps.append(n)
        skipped += ds.stats["skipped_samples"]
    expected = {f"{s:05d}:{r:06d}" for s in range(7) for r in range(6 if s < 6 else 4) if s != VICTIM}
    assert set(real) == expected and set(real.values()) == {1}
    assert skipped == 6 and steps[0] == steps[1] == 20
    assert sum(1 for s in pads if s.startswith(f"{VICTIM:05d}:")) == 6
    warnings = [r for r in caplog.records if "skipping corrupt shard" in r.getMessage()]
    assert 1 <= len(warnings) <= 2  # once per rank whose part held the shard
    print(f"{fmt} {kind}: skipped 1 shard, {skipped} samples padded, steps per rank {steps}")


def test_skip_with_workers_reports_through_loader(tmp_path):
    from pipeline import loader_stats
    url = build_set(tmp_path, n=40, max_records=6)
    corrupt(url, "bitflip", tmp_path, "arrow")
    ds = ShardStream(url, config=StreamConfig(on_corrupt="skip"))
    loader = make_loader(ds, 4, num_workers=2)
    n = sum(len(b["sample_id"]) for b in loader)
    assert n == 40
    assert loader_stats(loader)["skipped_samples"] == 6


def _payload_flip(url: str) -> tuple[str, bytes, bytes]:
    """Shard VICTIM of a tar set with one text byte changed: a well-formed tar, the wrong sha256."""
    m = shards.load_manifest(url)
    path = os.path.join(url, m.shards[VICTIM].path)
    good = open(path, "rb").read()
    at = good.index(b"record") if b"record" in good else 512
    bad = good[:at] + bytes([good[at] ^ 0x20]) + good[at + 1:]
    return path, good, bad


def test_tar_hashed_beside_its_check_remembers_nothing_until_verified(tmp_path, monkeypatch):
    """The sha256 runs beside the content check: bytes that pass the check but not the hash are
    refused with the sha256 message, and no index or check result is kept for them, so the
    good bytes fetched next are indexed from scratch."""
    from shards import reader
    from shards.formats import tar_read

    url = build_set(tmp_path, n=40, max_records=6, fmt="tar")
    m = shards.load_manifest(url)
    info = m.shards[VICTIM]
    path, good, bad = _payload_flip(url)
    assert tar_read._fast_index(bad) is not None  # still a well-formed tar: only the hash can tell
    monkeypatch.setattr(tar_read, "_INDEXES", shards.formats.Memo(16))
    monkeypatch.setattr(reader, "_CHECKED", shards.formats.Memo(16))
    built = []
    real = tar_read._build_index
    monkeypatch.setattr(tar_read, "_build_index", lambda data, u: built.append(data) or real(data, u))
    open(path, "wb").write(bad)
    with pytest.raises(shards.CorruptShardError, match="sha256 mismatch"):
        shards.fetch_shard(shards.shard_url(url, info), info, manifest=m)
    assert not tar_read._INDEXES._items and not reader._CHECKED._items
    open(path, "wb").write(good)
    data = shards.fetch_shard(shards.shard_url(url, info), info, manifest=m)
    assert built == [bad, good] and len(tar_read._INDEXES._items) == 1
    assert sum(len(b) for b in shards.read_batches(m, shards.shard_url(url, info), data)) == info.num_records
    assert built == [bad, good]  # the verified index was kept: reading did not index again


def test_sha256_mismatch_is_named_before_a_content_problem(tmp_path):
    """A shard failing both the hash and the record count reports the hash, as in one thread."""
    url = build_set(tmp_path, n=40, max_records=6, fmt="tar")
    m = shards.load_manifest(url)
    info = m.shards[VICTIM]
    edited = shards.manifest.ShardInfo(info.path, info.num_records + 1, info.num_bytes, info.sha256)
    path, _, bad = _payload_flip(url)
    open(path, "wb").write(bad)
    with pytest.raises(shards.CorruptShardError, match="sha256 mismatch"):
        shards.fetch_shard(shards.shard_url(url, info), edited, manifest=m)
