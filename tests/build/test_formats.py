"""Arrow and tar shard formats: write one shard, read it back with our reader and
with the reference libraries alone (pyarrow.ipc, webdataset), slices, byte layout."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pytest

from shards import formats
from shards.formats import CorruptShardError
from shards.formats import arrow as format_arrow
from shards.formats import tar_read as format_tar

pytestmark = pytest.mark.timeout(60)

TEXTS = [f"récord {i} " + "x" * (i % 37) for i in range(2500)] + ["", "a\nb\tc", "日本語 ✓"]
LABELS = [i % 3 for i in range(len(TEXTS))]
IDS = [np.arange(i % 29, dtype=np.int32) * 7 for i in range(len(TEXTS))]
ALL = ["text", "label", "input_ids"]


def write(module, path, fields=ALL, batch=1000):
    w = module.Writer(str(path), fields)
    for lo in range(0, len(TEXTS), batch):
        w.write(TEXTS[lo:lo + batch], LABELS[lo:lo + batch] if "label" in fields else None,
                IDS[lo:lo + batch] if "input_ids" in fields else None)
    w.close()
    return path.read_bytes()


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_roundtrip_all_columns(tmp_path, fmt):
    module = formats.get(fmt)
    data = write(module, tmp_path / f"s{module.EXT}")
    batches = list(module.read_batches(data, "s"))
    assert [b.start for b in batches] == sorted(b.start for b in batches)
    assert [t for b in batches for t in b.text] == TEXTS
    assert [int(x) for b in batches for x in b.label] == LABELS
    got = [x for b in batches for x in b.input_ids]
    assert all(g.dtype == np.int32 and np.array_equal(g, e) for g, e in zip(got, IDS)) and len(got) == len(IDS)


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
@pytest.mark.parametrize("start,stop", [(0, None), (5, 17), (1023, 1025), (2000, None), (2503, 2503), (0, 1)])
def test_slices(tmp_path, fmt, start, stop):
    module = formats.get(fmt)
    data = write(module, tmp_path / f"s{module.EXT}", ["text", "label"])
    batches = list(module.read_batches(data, "s", start, stop, columns=("text", "label")))
    texts = [t for b in batches for t in b.text]
    assert texts == TEXTS[start:stop]
    if batches:
        assert batches[0].start == start
        assert batches[0].input_ids is None


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_column_selection(tmp_path, fmt):
    module = formats.get(fmt)
    data = write(module, tmp_path / f"s{module.EXT}")
    b = next(module.read_batches(data, "s", columns=("label",)))
    assert b.text is None and b.input_ids is None and len(b.label) > 0


def test_arrow_readable_by_pyarrow_alone(tmp_path):
    path = tmp_path / "s.arrow"
    write(format_arrow, path, batch=700)
    reader = pa.ipc.open_file(str(path))
    assert reader.schema.field("text").type == pa.string()
    assert reader.schema.field("label").type == pa.int64()
    assert reader.schema.field("input_ids").type == pa.list_(pa.int32())
    assert reader.num_record_batches == 4  # written batch by batch, streamable
    table = reader.read_all()
    assert table.column("text").to_pylist() == TEXTS
    assert table.column("label").to_pylist() == LABELS
    assert table.column("input_ids").to_pylist()[30] == IDS[30].tolist()


def test_tar_readable_by_webdataset_alone(tmp_path):
    import webdataset as wds

    path = tmp_path / "s.tar"
    write(format_tar, path)
    samples = list(wds.WebDataset([str(path)], shardshuffle=False, empty_check=False))
    assert len(samples) == len(TEXTS)
    assert [s["txt"].decode("utf-8") for s in samples] == TEXTS
    assert [int(s["cls"]) for s in samples] == LABELS
    s = samples[100]
    assert np.array_equal(np.load(io.BytesIO(s["input_ids.npy"]), allow_pickle=False), IDS[100])
    decoded = list(wds.WebDataset([str(path)], shardshuffle=False, empty_check=False).decode())
    assert decoded[7]["txt"] == TEXTS[7] and decoded[7]["cls"] == LABELS[7]
    assert np.array_equal(decoded[7]["input_ids.npy"], IDS[7])


def _tarfile_reference(path, fields):
    """The same shard written with the standard library, as the byte-level reference."""
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, text in enumerate(TEXTS):
            members = [(f"{i:08d}.txt", text.encode())]
            if "label" in fields:
                members.append((f"{i:08d}.cls", str(LABELS[i]).encode()))
            if "input_ids" in fields:
                buf = io.BytesIO()
                np.save(buf, IDS[i], allow_pickle=False)
                members.append((f"{i:08d}.input_ids.npy", buf.getvalue()))
            for name, payload in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uname, info.gname = len(payload), 0, 0o644, "", ""
                tar.addfile(info, io.BytesIO(payload))
    return path.read_bytes()


@pytest.mark.parametrize("fields", [["text"], ["text", "label"], ALL])
def test_tar_writer_matches_tarfile_members(tmp_path, fields):
    """Hand-written headers parse in tarfile to the same members as tarfile's own."""
    ours = write(format_tar, tmp_path / "ours.tar", fields)
    ref = _tarfile_reference(tmp_path / "ref.tar", fields)
    assert len(ours) == len(ref) and len(ours) % format_tar.RECORD == 0
    with tarfile.open(tmp_path / "ours.tar") as a, tarfile.open(tmp_path / "ref.tar") as b:
        ma, mb = a.getmembers(), b.getmembers()
        assert [(m.name, m.size, m.mode, m.mtime, m.type, m.uid) for m in ma] == \
               [(m.name, m.size, m.mode, m.mtime, m.type, m.uid) for m in mb]
        for x, y in zip(ma[:50], mb[:50]):
            assert a.extractfile(x).read() == b.extractfile(y).read()


def test_tar_write_is_deterministic(tmp_path):
    assert write(format_tar, tmp_path / "a.tar") == write(format_tar, tmp_path / "b.tar", batch=333)


def test_npy_header_matches_numpy():
    for n in (0, 1, 9, 10, 99, 100, 12345, 10**6):
        buf = io.BytesIO()
        np.save(buf, np.zeros(n, np.int32), allow_pickle=False)
        assert format_tar.npy_bytes(np.zeros(n, np.int32)) == buf.getvalue()


def test_tar_reads_npy_written_by_other_tools(tmp_path):
    """A shard from another tool (int64 ids, tarfile headers) still reads, without pickle."""
    path = tmp_path / "other.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(3):
            for name, payload in ((f"k{i}.txt", b"hi"), (f"k{i}.input_ids.npy", _npy(np.arange(i, dtype=np.int64)))):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (b,) = format_tar.read_batches(path.read_bytes(), "other")
    assert [x.tolist() for x in b.input_ids] == [[], [0], [0, 1]]
    assert all(x.dtype == np.int32 for x in b.input_ids)


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
@pytest.mark.parametrize("damage", ["truncate", "zero", "magic", "empty"])
def test_damaged_shards_raise(tmp_path, fmt, damage):
    module = formats.get(fmt)
    data = bytearray(write(module, tmp_path / f"s{module.EXT}", ["text", "label"]))
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "zero":
        data[: 4096] = bytes(4096)
    elif damage == "magic":
        data[:8] = b"NOTASHRD"
    else:
        data = bytearray()
    with pytest.raises(CorruptShardError, match="shard s"):
        list(module.read_batches(bytes(data), "s"))


def test_unknown_format_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: arrow, tar"):
        formats.get("parquet")


@pytest.mark.parametrize("fmt", ["arrow", "tar"])
def test_overhead_bound_holds(tmp_path, fmt):
    """record_bytes + overhead_bytes bound the real file size (rollover relies on it)."""
    module = formats.get(fmt)
    for n_batches, rows in ((1, 1), (3, 50), (10, 7)):
        w = module.Writer(str(tmp_path / f"o{module.EXT}"), ALL)
        est = 0
        for _ in range(n_batches):
            texts, ids = TEXTS[:rows], IDS[:rows]
            w.write(texts, LABELS[:rows], ids)
            est += sum(module.record_bytes(len(t.encode()), len(x), True) for t, x in zip(texts, ids))
        w.close()
        size = (tmp_path / f"o{module.EXT}").stat().st_size
        assert est <= size <= est + module.overhead_bytes(n_batches, len(ALL))


@pytest.mark.parametrize("path", ["../x.arrow", "/etc/passwd", "s3://other/x.arrow", "a//b.arrow", "", "a/./b"])
def test_manifest_refuses_shard_paths_outside_its_folder(path):
    from shards.manifest import Manifest, ManifestError

    entry = {"path": path, "num_records": 1, "num_bytes": 10, "sha256": "0" * 64}
    with pytest.raises(ManifestError, match="relative to index.json"):
        Manifest.from_dict({"version": 1, "format": "arrow", "num_records": 1, "fields": ["text"],
                            "shards": [entry]})


@pytest.mark.parametrize("field,value", [("num_records", -1), ("num_bytes", "10"), ("sha256", "xyz")])
def test_manifest_refuses_bad_shard_counts(field, value):
    from shards.manifest import Manifest, ManifestError

    entry = {"path": "sub/shard-00000.arrow", "num_records": 1, "num_bytes": 10, "sha256": "0" * 64, field: value}
    with pytest.raises(ManifestError, match=field):
        Manifest.from_dict({"version": 1, "format": "arrow", "num_records": 1, "fields": ["text"],
                            "shards": [entry]})


def test_arrow_damaged_batch_body_raises(tmp_path):
    """Damage past the header (what verify='size' would miss) is caught by the reader."""
    data = bytearray(write(format_arrow, tmp_path / "s.arrow", ALL, batch=500))
    for pos in range(2000, len(data) - 2000, 997):
        data[pos] ^= 0xFF
    try:
        batches = list(format_arrow.read_batches(bytes(data), "s"))
    except CorruptShardError:
        return
    assert [t for b in batches for t in b.text] != TEXTS  # flipped bytes inside values: content differs


def test_tar_ranges_read_in_turn_match_whole(tmp_path):
    """Readers ask for many record ranges of one shard; the member index is built once."""
    data = write(format_tar, tmp_path / "s.tar")
    whole = [t for b in format_tar.read_batches(data, "s") for t in b.text]
    pieces = [t for lo in range(0, len(TEXTS), 100)
              for b in format_tar.read_batches(data, "s", lo, lo + 100) for t in b.text]
    assert pieces == whole == TEXTS


def test_tar_samples_with_different_members_refused():
    import tarfile as tf

    buf = io.BytesIO()
    with tf.open(fileobj=buf, mode="w", format=tf.USTAR_FORMAT) as tar:
        for name in ("a.txt", "a.cls", "b.txt"):
            info = tf.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(CorruptShardError, match=r"sample 'b' has members \['txt'\], the first sample has"):
        list(format_tar.read_batches(buf.getvalue(), "mixed.tar"))
