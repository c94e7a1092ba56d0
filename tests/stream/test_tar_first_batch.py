"""A local shard read in chunks, each hashed on a thread as it lands and (tar) its headers scanned
while in the CPU cache (shards/reader.py, HeaderScan in shards/formats/tar_index.py): the bytes, the
index, the checks and the errors are those of the whole-file read, wherever the chunks fall."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shards
from pipeline import ShardStream, StreamConfig
from shards import reader
from shards.formats import Memo, tar_index, tar_read
from shards.formats.tar_write import BLOCK, header
from tests.helpers.data import build_set

pytestmark = pytest.mark.timeout(120)


def raw_tar(members) -> bytes:
    """A tar of (name, payload) members with our writer's headers, ended as tarfile ends one."""
    out = bytearray()
    for name, payload in members:
        out += header(name, len(payload)) + payload + bytes(-len(payload) % BLOCK)
    return bytes(out) + bytes(2 * BLOCK)


def same_index(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.n == b.n and list(a.spans) == list(b.spans) and all(np.array_equal(a.spans[k], b.spans[k]) for k in a.spans)


def fed_in_pieces(data: bytes, cuts: list[int]):
    """The scan's index of ``data`` fed up to each of ``cuts`` in turn (then the rest)."""
    scan = tar_index.HeaderScan()
    flat = np.frombuffer(data, np.uint8)
    for upto in [*sorted(cuts), len(data)]:
        scan.feed(flat, min(upto, len(data)))
    return scan.index(data, tar_read.MAX_MEMBER_BYTES)


PAYLOADS = st.lists(st.binary(max_size=1500), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(payloads=PAYLOADS, cuts=st.lists(st.integers(0, 20_000), max_size=6), chunk=st.integers(1, 9),
       ustar_inside=st.booleans(), key=st.sampled_from(["{:04d}", "k{:d}", "{:03d}" + "long" * 10]))
def test_the_scan_fed_in_any_pieces_gives_the_whole_shard_index(payloads, cuts, chunk, ustar_inside, key):
    """Pieces cut inside blocks, chunks of a few blocks, payloads holding "ustar" where a header's magic
    would be (the chain is then walked), keys of other widths and names longer than the bytes peeked
    first: the same index as plain_index over the whole bytes, and the walk's."""
    if ustar_inside:
        payloads = [p.ljust(BLOCK + 300, b"x")[:257] + b"ustar" + p[262:] for p in payloads]
    data = raw_tar([(f"{key.format(i)}.{ext}", p) for i, p in enumerate(payloads) for ext, p in (("txt", p), ("cls", b"1"))])
    saved = tar_index.CHUNK
    tar_index.CHUNK = chunk  # blocks scanned at a time (a fixture cannot be used under hypothesis' given)
    try:
        whole = tar_index.plain_index(data, tar_read.MAX_MEMBER_BYTES)
        pieces = fed_in_pieces(data, cuts)
    finally:
        tar_index.CHUNK = saved
    assert whole is not None and same_index(pieces, whole)
    assert same_index(whole, tar_read._general_index(data, "s.tar"))


@pytest.mark.parametrize("damage", ["checksum", "size_field", "type", "prefix", "tail"])
def test_the_scan_declines_what_plain_index_declines(damage):
    members = [(f"{i:04d}.{ext}", b"%d" % i) for i in range(40) for ext in ("txt", "cls")]
    data = bytearray(raw_tar(members))
    at = 30 * 2 * BLOCK  # the 31st member's header
    if damage == "checksum":
        data[at + 3] ^= 1
    elif damage == "size_field":
        data[at + 124] = ord("9")
    elif damage == "type":
        data[at + 156] = ord("2")
    elif damage == "prefix":
        data[at + 345] = ord("a")
    else:
        data[-1] = 1
    data = bytes(data)
    assert tar_index.plain_index(data, tar_read.MAX_MEMBER_BYTES) is None
    assert fed_in_pieces(data, [1000, 5 * BLOCK + 7]) is None


def test_the_scan_refuses_to_index_bytes_it_was_not_fed():
    data = raw_tar([("0.txt", b"a"), ("0.cls", b"1")])
    scan = tar_index.HeaderScan()
    scan.feed(np.frombuffer(data, np.uint8), BLOCK)
    with pytest.raises(ValueError, match="1 blocks scanned of 6"):
        scan.index(data, tar_read.MAX_MEMBER_BYTES)


@pytest.mark.parametrize("chunk", [700, BLOCK, 3 * BLOCK + 1, 1 << 20])
def test_a_local_shard_read_in_chunks_is_the_file_hashed_indexed_and_read_only(tmp_path, monkeypatch, chunk):
    """Chunks that split blocks or hold the whole shard: the bytes are the file's, its sha256 is checked,
    the index kept under it is the whole-bytes one, and the bytes handed out cannot be written."""
    monkeypatch.setattr(reader, "READ_CHUNK", chunk)
    monkeypatch.setattr(tar_read, "_INDEXES", Memo(16))
    monkeypatch.setattr(reader, "_CHECKED", Memo(16))
    url = build_set(tmp_path, n=40, max_records=40, fmt="tar")
    m = shards.load_manifest(url)
    info = m.shards[0]
    path = os.path.join(url, info.path)
    data = shards.fetch_shard(shards.shard_url(url, info), info, manifest=m)
    assert data == open(path, "rb").read() and isinstance(data, memoryview) and data.readonly
    kept = tar_read._INDEXES.get(tar_read._key(data, info.sha256))
    assert same_index(kept, tar_read._general_index(bytes(data), "s.tar"))
    with pytest.raises(TypeError):
        data[0] = 1
    rows = [t for b in shards.read_batches(m, shards.shard_url(url, info), data) for t in b.text]
    assert len(rows) == info.num_records == 40


def test_a_shard_changed_while_read_is_read_again_whole_and_named(tmp_path, monkeypatch):
    """A file that grows while read (its size said the entry's) falls back to the whole-file read,
    which names the size mismatch as before."""
    url = build_set(tmp_path, n=12, max_records=12, fmt="tar")
    m = shards.load_manifest(url)
    info = m.shards[0]
    path = os.path.join(url, info.path)
    real = reader._fill

    def growing(f, buf, digest, scan):
        done = real(f, buf, digest, scan)
        with open(path, "ab") as out:
            out.write(b"\0" * BLOCK)
        return done

    monkeypatch.setattr(reader, "_fill", growing)
    with pytest.raises(shards.CorruptShardError, match=rf"size mismatch \(expected {info.num_bytes} bytes, "
                                                       rf"got {info.num_bytes + BLOCK}\)"):
        shards.fetch_shard(shards.shard_url(url, info), info, manifest=m)


@pytest.mark.parametrize("change", ["shorter", "longer", "empty"])
def test_a_shard_of_another_size_is_named_as_before(tmp_path, change):
    url = build_set(tmp_path, n=12, max_records=12, fmt="tar")
    m = shards.load_manifest(url)
    info = m.shards[0]
    path = os.path.join(url, info.path)
    good = open(path, "rb").read()
    bad = {"shorter": good[:-BLOCK], "longer": good + bytes(BLOCK), "empty": b""}[change]
    open(path, "wb").write(bad)
    with pytest.raises(shards.CorruptShardError, match=rf"size mismatch \(expected {info.num_bytes} bytes, got {len(bad)}\)"):
        shards.fetch_shard(shards.shard_url(url, info), info, manifest=m)


def test_a_tarfile_written_shard_takes_the_walk_and_streams_its_records(tmp_path):
    """Not our writer's layout (tarfile's headers): the scan declines, the walk indexes it, the stream reads it."""
    n = 30
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(n):
            for ext, payload in (("txt", f"text {i}".encode()), ("cls", str(i % 2).encode())):
                member = tarfile.TarInfo(f"sample{i:03d}.{ext}")
                member.size, member.uname = len(payload), "someone"
                tar.addfile(member, io.BytesIO(payload))
    data = buf.getvalue()
    out = tmp_path / "set"
    out.mkdir()
    (out / "shard-00000.tar").write_bytes(data)
    shards.manifest.write_manifest(str(out), shards.manifest.Manifest(
        format="tar", num_records=n, fields=["text", "label"], schema={"text": "string", "label": "int64"},
        label_names=["a", "b"], shards=[shards.manifest.ShardInfo("shard-00000.tar", n, len(data),
                                                                  hashlib.sha256(data).hexdigest())]))
    texts = [item["text"] for item in ShardStream(str(out), config=StreamConfig(prefetch=False))]
    assert texts == [f"text {i}" for i in range(n)]
