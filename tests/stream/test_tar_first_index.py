"""The tar index that comes before a stream's first record (shards/formats/tar_index.py).

It must equal the member-by-member walk wherever it accepts a shard and never accept one the
walk refuses, whichever of its forms runs: canonical octal fields in one matrix product, names
as our writer makes them checked on their key bytes, other names split column by column,
checksums summed a chunk of headers at a time.  And its checks are whole-shard: a damaged
member at the end of a shard stops the stream before any record of that shard is delivered.
"""
from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shards
from pipeline import ShardStream, StreamConfig
from shards.formats import tar_index, tar_read
from shards.formats.tar_write import BLOCK, Writer, header

pytestmark = pytest.mark.timeout(120)


def raw_tar(members) -> bytes:
    """A tar of (name, payload) members with our writer's headers, ended as tarfile ends one."""
    out = bytearray()
    for name, payload in members:
        out += header(name, len(payload)) + payload + bytes(-len(payload) % BLOCK)
    return bytes(out) + bytes(2 * BLOCK)


def walk_or_error(data):
    try:
        return tar_read._general_index(data, "s.tar")
    except shards.CorruptShardError as exc:
        return exc


def agrees_with_walk(data) -> bool:
    """The vectorised index declines, or gives exactly the walk's index (and the walk accepts)."""
    fast, walk = tar_read._fast_index(data), walk_or_error(data)
    if fast is None:
        return True
    return not isinstance(walk, Exception) and fast.n == walk.n and list(fast.spans) == list(walk.spans) \
        and all(np.array_equal(fast.spans[k], walk.spans[k]) for k in fast.spans)


OCTAL_ROW = st.tuples(st.integers(0, 12), st.integers(0, 8 ** 11 - 1), st.sampled_from([b"\x00", b" ", b"\x00 ", b"x"]))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(OCTAL_ROW, min_size=1, max_size=20), same_width=st.booleans())
def test_octal_column_equals_the_row_by_row_parse(rows, same_width):
    """The one-product form (every row as wide as the first) and the per-row form agree on any field."""
    fields = []
    for width, value, end in rows:
        width = rows[0][0] if same_width else width
        text = (b"%0*o" % (width, value))[-width:] if width else b""
        fields.append((text + end + b"\x00" * 12)[:12])
    array = np.frombuffer(b"".join(fields), np.uint8).reshape(-1, 12)
    assert tar_index.octal_column(array).tolist() == tar_index._octal_fields(array).tolist()


NAME = st.text(st.sampled_from("ab0._-/"), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(names=st.lists(NAME, min_size=1, max_size=8), uniform=st.booleans())
def test_any_member_names_index_as_the_walk_does(names, uniform):
    """Names from a small alphabet with dots and slashes (uniform: writer-like KEY.EXT pairs)."""
    if uniform:
        names = [f"{k}.{e}" for k in sorted(set(n.replace(".", "") or "k" for n in names)) for e in ("txt", "cls")]
    data = raw_tar([(n, b"x" * (i % 3)) for i, n in enumerate(names)])
    assert agrees_with_walk(data)


@pytest.mark.parametrize("keys", [["b", "a"], ["a", "bb"], ["0002", "0001", "0003"]])
def test_keys_not_rising_or_of_other_widths_still_take_the_vectorised_index(keys):
    data = raw_tar([(f"{k}.{e}", b"1") for k in keys for e in ("txt", "cls")])
    names = tar_index._member_names(tar_index.blocks_of(data), np.arange(0, 4 * len(keys), 2))
    assert tar_index._uniform_samples(names) is None  # not the writer's form ...
    assert tar_read._fast_index(data) is not None and agrees_with_walk(data)  # ... yet no walk


@pytest.mark.parametrize("names, problem", [
    (["a.txt", "a.cls", "b.txt", "b.cls", "a.txt", "a.cls"], "duplicate member"),
    (["a.txt", "a.cls", "b.txt", "b.txt"], "duplicate member"),
    (["a.txt", "a.cls", "b.txt", "b.npy"], "has members"),
])
def test_late_duplicates_and_odd_samples_go_to_the_walk_which_names_them(names, problem):
    data = raw_tar([(n, b"1") for n in names])
    assert tar_read._fast_index(data) is None
    with pytest.raises(shards.CorruptShardError, match=problem):
        tar_read._build_index(data, "s.tar")


def writer_shard(tmp_path, n: int, labels=None) -> bytes:
    path = tmp_path / "w.tar"
    writer = Writer(str(path), ["text", "label"])
    writer.write([f"text {i}" for i in range(n)], np.arange(n) % 2 if labels is None else np.asarray(labels), None)
    writer.close()
    return path.read_bytes()


def test_checksums_are_checked_in_every_chunk(tmp_path, monkeypatch):
    """With chunks of 3 headers, a bad checksum in the last header is still found."""
    monkeypatch.setattr(tar_index, "CHUNK", 3)
    data = writer_shard(tmp_path, 10)
    index = tar_read._fast_index(data)
    assert index is not None and agrees_with_walk(data) and index.n == 10
    last = int(index.spans["cls"][-1, 0]) - BLOCK
    bad = bytearray(data)
    bad[last + 5] = ord("9")  # inside the name, checksum not updated
    assert tar_read._fast_index(bytes(bad)) is None
    with pytest.raises(shards.CorruptShardError, match="checksum mismatch"):
        tar_read._build_index(bytes(bad), "s.tar")


def one_shard_set(tmp_path, data: bytes, n: int, name: str = "set") -> str:
    """A set of a good shard then ``data`` (n records), its sha256 in the manifest: the bytes are what a
    (buggy or hostile) producer wrote, so only the content checks can refuse them."""
    out = tmp_path / name
    out.mkdir()
    good = writer_shard(tmp_path, 8)
    infos = []
    for i, payload in enumerate([data, good]):
        path = f"shard-{i:05d}.tar"
        (out / path).write_bytes(payload)
        infos.append(shards.manifest.ShardInfo(path, n if i == 0 else 8, len(payload), hashlib.sha256(payload).hexdigest()))
    shards.manifest.write_manifest(str(out), shards.manifest.Manifest(
        format="tar", num_records=n + 8, fields=["text", "label"], schema={"text": "string", "label": "int64"},
        label_names=["a", "b"], shards=infos))
    return str(out)


def late_damage(tmp_path, kind: str) -> tuple[bytes, str]:
    """A 3000-record shard (three 1024-row batches) whose last record is damaged."""
    n = 3000
    if kind == "label":
        return writer_shard(tmp_path, n, [i % 2 for i in range(n - 1)] + [7]), "record 2999 has label id 7"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(n):
            key = f"{i:08d}" if i < n - 1 else f"{0:08d}"  # the last sample reuses the first key
            for ext, payload in (("txt", b"t"), ("cls", b"1")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue(), "duplicate member '00000000.txt'"


@pytest.mark.parametrize("kind", ["label", "duplicate"])
def test_damage_at_the_end_of_a_shard_stops_it_before_its_first_record(tmp_path, kind):
    data, problem = late_damage(tmp_path, kind)
    url = one_shard_set(tmp_path, data, 3000)
    seen = []
    with pytest.raises(shards.CorruptShardError, match=problem):
        for item in ShardStream(url, config=StreamConfig(tokenize_batch=16, prefetch=False)):
            seen.append(item["sample_id"])
    assert not [s for s in seen if s.startswith("00000:")]


@pytest.mark.parametrize("kind", ["label", "duplicate"])
def test_damage_at_the_end_of_a_shard_is_skipped_whole(tmp_path, kind):
    """Under on_corrupt='skip' every record of that shard is a pad: none was delivered as real."""
    data, _ = late_damage(tmp_path, kind)
    url = one_shard_set(tmp_path, data, 3000)
    ds = ShardStream(url, config=StreamConfig(on_corrupt="skip"))
    items = list(ds)
    real = [i["sample_id"] for i in items if not i["is_pad"]]
    assert len(items) == 3008 and real == [f"00001:{r:06d}" for r in range(8)]
    assert ds.stats["skipped_samples"] == 3000


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_texts_decode_alike_from_bytes_and_buffers_and_bad_utf8_is_named(wrap):
    """Texts are read from bytes slices (the fast path) or buffer views: the same strings, and the
    same one-line error for a text that is not UTF-8."""
    good = raw_tar([("0.txt", "héllo".encode()), ("0.cls", b"1"), ("1.txt", b"two"), ("1.cls", b"0")])
    assert [t for b in tar_read.read_batches(wrap(good), "s.tar") for t in b.text] == ["héllo", "two"]
    bad = raw_tar([("0.txt", b"ok"), ("0.cls", b"1"), ("1.txt", b"\xff\xfe"), ("1.cls", b"0")])
    with pytest.raises(shards.CorruptShardError, match=r"shard s\.tar: malformed sample in records 0\.\.1 .*rebuild it"):
        list(tar_read.read_batches(wrap(bad), "s.tar"))
