"""The vectorised tar writer writes exactly the bytes of Python's ``tarfile`` module (ustar, mtime 0,
mode 0644, no user names) for any records, in slices on its own thread, and the result reads back in
``tarfile``, webdataset and GNU tar."""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shards.formats import tar_write

pytestmark = pytest.mark.timeout(120)


def tarfile_members(records, fields: list[str], first: int = 0) -> list[tuple[str, bytes]]:
    """(name, payload) of every member, in the order the writer lays them out."""
    members = []
    for i, (text, label, ids) in enumerate(records):
        key = f"{first + i:08d}"
        if "text" in fields:
            members.append((f"{key}.txt", text.encode("utf-8")))
        if "label" in fields:
            members.append((f"{key}.cls", str(int(label)).encode()))
        if "input_ids" in fields:
            buf = io.BytesIO()
            np.save(buf, np.asarray(ids, "<i4"), allow_pickle=False)
            members.append((f"{key}.input_ids.npy", buf.getvalue()))
    return members


def tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """The reference: the archive as ``tarfile`` writes it with the writer's fixed header fields."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(payload), 0, 0o644, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def fast_write(path, records, fields: list[str], batch: int, arrow_in: bool, first: int = 0) -> tuple[str, int]:
    writer = tar_write.Writer(str(path), fields)
    writer._count = first  # keys start where a long shard's would
    texts = [t for t, _, _ in records]
    for lo in range(0, len(records), batch):
        part = records[lo: lo + batch]
        part_texts = pa.array(texts[lo: lo + batch], pa.string()) if arrow_in else texts[lo: lo + batch]
        labels = np.array([r[1] for r in part], np.int64) if "label" in fields else None
        ids = [r[2] for r in part] if "input_ids" in fields else None
        writer.write(part_texts, labels, ids)
    return writer.close()


def assert_reads_back(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == members


# texts: empty, short, around one block, several blocks; ASCII, accents, CJK, emoji, NUL, newlines
TEXT = st.one_of(st.just(""), st.text(max_size=40),
                 st.text(alphabet=st.sampled_from("ab é日😀\n\x00"), min_size=500, max_size=1600))
IDS = st.lists(st.integers(0, 2**31 - 1), max_size=300).map(lambda v: np.array(v, np.int32))
RECORDS = st.lists(st.tuples(TEXT, st.integers(-5, 10**6), IDS), max_size=40)
FIELDS = st.sampled_from([["text"], ["text", "label"], ["text", "input_ids"], ["text", "label", "input_ids"],
                          ["label", "input_ids"], ["input_ids"]])
# the first key: 0, or just under 10**8 so keys grow a digit (a 9-character name) inside a batch
FIRST = st.sampled_from([0, 7, 10**8 - 3, 10**9 - 1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS, fields=FIELDS, first=FIRST, batch=st.integers(1, 50), arrow_in=st.booleans())
def test_fast_writer_bytes_equal_tarfile(tmp_path, records, fields, first, batch, arrow_in):
    path = tmp_path / "fast.tar"
    digest = fast_write(path, records, fields, batch, arrow_in, first)
    members = tarfile_members(records, fields, first)
    data = path.read_bytes()
    assert data == tarfile_bytes(members)
    assert digest == (hashlib.sha256(data).hexdigest(), len(data))
    assert_reads_back(path, members)


def _big_records(n: int, seed: int = 0):
    """Records whose batch spans many WRITE_SLICEs and ends inside one (texts of 0 to ~5 KB)."""
    rng = np.random.default_rng(seed)
    return [("ü" * int(k) + "z" * int(k % 3), int(k % 5), np.arange(k % 40, dtype=np.int32))
            for k in rng.integers(0, 2600, n)]


def test_batches_larger_than_a_write_slice(tmp_path):
    records = _big_records(1500)
    fields = ["text", "label", "input_ids"]
    path = tmp_path / "big.tar"
    digest = fast_write(path, records, fields, batch=1024, arrow_in=True)
    data = path.read_bytes()
    assert len(data) > 4 * tar_write.WRITE_SLICE  # the first batch alone took several slices
    members = tarfile_members(records, fields)
    assert data == tarfile_bytes(members)
    assert digest == (hashlib.sha256(data).hexdigest(), len(data))


def test_webdataset_reads_the_samples(tmp_path):
    wds = pytest.importorskip("webdataset", reason="webdataset is a test extra: pip install -e '.[test]'")
    records = _big_records(300, seed=1)
    path = tmp_path / "s.tar"
    fast_write(path, records, ["text", "label"], batch=128, arrow_in=False)
    samples = list(wds.WebDataset(str(path), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [f"{i:08d}" for i in range(len(records))]
    assert [(s["txt"], s["cls"]) for s in samples] == [(t, label) for t, label, _ in records]


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar program on PATH (GNU tar: apt-get install tar)")
def test_gnu_tar_lists_and_extracts(tmp_path):
    records = _big_records(200, seed=2)
    fields = ["text", "input_ids"]
    path = tmp_path / "s.tar"
    fast_write(path, records, fields, batch=64, arrow_in=True)
    listing = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=True)
    members = tarfile_members(records, fields)
    assert listing.stdout.splitlines() == [name for name, _ in members]
    name, payload = members[-1]
    extracted = subprocess.run(["tar", "-xOf", str(path), name], capture_output=True, check=True)
    assert extracted.stdout == payload and extracted.stderr == b""


def test_an_error_on_the_writer_thread_reaches_close(tmp_path):
    writer = tar_write.Writer(str(tmp_path / "s.tar"), ["text"])
    writer._sink._file.close()  # the writer thread's write fails; the caller hears of it at close
    writer.write(["a", "b"], None, None)
    with pytest.raises(ValueError, match="closed file"):
        writer.close()
    assert writer._pool._shutdown  # the thread is let go even so
