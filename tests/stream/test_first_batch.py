"""First batch without a member-by-member walk: the vectorised tar index and label parse.

The fast path must be indistinguishable from the general one: on every shard it either
declines (None, and the general path decides) or gives exactly the general path's index,
and it never accepts a shard the general path refuses.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shards
from shards.formats import tar_read
from shards.formats.tar_write import Writer

pytestmark = pytest.mark.timeout(120)
FIELDS = {(False, False): ["text"], (True, False): ["text", "label"], (True, True): ["text", "label", "input_ids"]}
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=700)


def tar_bytes(tmp_path, texts, labels=None, ids=None) -> bytes:
    path = tmp_path / "s.tar"
    writer = Writer(str(path), FIELDS[(labels is not None, ids is not None)])
    writer.write(texts, labels, ids)
    writer.close()
    return path.read_bytes()


def general_or_error(data):
    try:
        return tar_read._general_index(data, "s.tar")
    except shards.CorruptShardError as exc:
        return exc


def same_index(a, b) -> bool:
    return a.n == b.n and list(a.spans) == list(b.spans) and all(np.array_equal(a.spans[k], b.spans[k]) for k in a.spans)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXT, min_size=1, max_size=30), labelled=st.booleans(), tokenized=st.booleans())
def test_fast_index_takes_written_shards_and_equals_the_general_walk(tmp_path, texts, labelled, tokenized):
    labels = np.arange(len(texts)) % 3 if labelled or tokenized else None
    ids = [np.arange(len(t) % 7, dtype=np.int32) for t in texts] if tokenized else None
    data = tar_bytes(tmp_path, texts, labels, ids)
    fast = tar_read._fast_index(data)
    assert fast is not None, "a shard as the writer lays it out must take the fast path"
    assert same_index(fast, tar_read._general_index(data, "s.tar"))
    if labels is not None:
        assert np.array_equal(tar_read._fast_labels(data, fast.spans["cls"]), labels)


def test_payload_that_looks_like_a_header_is_walked_over(tmp_path):
    """A text with "ustar" where a header's magic would be is payload, not a member."""
    fake = "x" * 257 + "ustar" + "y" * 300
    data = tar_bytes(tmp_path, [fake, "b", fake], np.array([0, 1, 0]))
    fast = tar_read._fast_index(data)
    assert fast is not None and fast.n == 3
    assert same_index(fast, tar_read._general_index(data, "s.tar"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 6), where=st.integers(0, 10**9), value=st.integers(0, 255), block=st.integers(0, 40))
def test_fast_index_never_accepts_what_the_general_walk_refuses(tmp_path, n, where, value, block):
    """One byte changed in or near a header: the fast path declines, or agrees exactly."""
    data = bytearray(tar_bytes(tmp_path, [f"text {i}" for i in range(n)], np.arange(n) % 2))
    offset = (block % (len(data) // 512)) * 512 + where % 512
    data[offset] = value
    data = bytes(data)
    fast, general = tar_read._fast_index(data), general_or_error(data)
    if fast is not None:
        assert not isinstance(general, Exception), f"fast path accepted a shard the walk refuses: {general}"
        assert same_index(fast, general)


@pytest.mark.parametrize("payload, accepted", [(b"1", True), (b"17\n", True), (b"-1", False), (b" 1", False),
                                                (b"1x", False), (b"", False), (b"9" * 19, False)])
def test_fast_labels_decline_every_form_but_plain_digits(payload, accepted):
    data = b"\x00" * 8 + payload + b"\x00" * 8
    got = tar_read._fast_labels(data, np.array([[8, 8 + len(payload)]]))
    assert (got is not None) == accepted
    if accepted:
        assert got.tolist() == [int(payload)]


def test_odd_member_order_falls_back_and_still_reads(tmp_path):
    """Members of the second sample in another order: the fast path declines, the walk accepts."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in (("0.txt", b"a"), ("0.cls", b"0"), ("1.cls", b"1"), ("1.txt", b"b")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    data = buf.getvalue()
    assert tar_read._fast_index(data) is None
    index = tar_read._build_index(data, "s.tar")
    assert index.n == 2 and tar_read._labels(data, index, "s.tar").tolist() == [0, 1]


def tar_set(tmp_path, texts) -> str:
    """A one-shard tar set of ``texts`` with labels i % 2 (names a, b)."""
    import hashlib

    out = tmp_path / "set"
    out.mkdir()
    data = tar_bytes(tmp_path, texts, np.arange(len(texts)) % 2)
    (out / "shard-00000.tar").write_bytes(data)
    info = shards.manifest.ShardInfo("shard-00000.tar", len(texts), len(data), hashlib.sha256(data).hexdigest())
    shards.manifest.write_manifest(str(out), shards.manifest.Manifest(
        format="tar", num_records=len(texts), fields=["text", "label"], schema={"text": "string", "label": "int64"},
        label_names=["a", "b"], shards=[info]))
    return str(out)


def test_first_batch_of_a_tar_set_never_walks_members(tmp_path, monkeypatch):
    """The stream's first record comes without the member-by-member walk, and all checks hold."""
    from pipeline import ShardStream

    texts = [f"sample number {i}" for i in range(40)]
    url = tar_set(tmp_path, texts)
    monkeypatch.setattr(tar_read, "_INDEXES", shards.formats.Memo(16))
    monkeypatch.setattr(tar_read, "_general_index", lambda *a: pytest.fail("walked the members one by one"))
    items = list(ShardStream(url))
    assert [i["text"] for i in items] == texts and [i["label"] for i in items] == [i % 2 for i in range(40)]


def test_first_batch_tool_times_a_full_first_batch(tmp_path, minilm):
    """tools.bench.first_batch's timed call: a positive time for a full batch; a short one is refused."""
    from tools.bench import first_batch

    seconds, cpu = first_batch.child_ours(tar_set(tmp_path, [f"review {i} was fine" for i in range(70)]), 0, minilm)
    assert seconds > 0 and cpu > 0
    short = tmp_path / "short"
    short.mkdir()
    with pytest.raises(RuntimeError, match="first batch has 30 rows, expected 64"):
        first_batch.child_ours(tar_set(short, [f"review {i}" for i in range(30)]), 0, minilm)


def test_first_batch_tool_reports_each_case_over_webdataset_with_as_many_workers():
    from tools.bench.first_batch import vs_peer

    medians = {"arrow-w0": 0.2, "tar-w0": 0.3, "tar-w2": 1.0, "webdataset-w0": 0.1, "webdataset-w2": 0.5}
    assert vs_peer(medians) == {"arrow-w0": 2.0, "tar-w0": 3.0, "tar-w2": 2.0}
    assert vs_peer({"arrow-w0": 0.2}) == {}  # no peer in this run: no ratio, rather than one against nothing
