"""storage.read_object against the moto server through the fault proxy: retries, resume, give-up."""
from __future__ import annotations

import hashlib
import os
import time

import pytest
import torch.utils.data

from shards import storage

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]

FAST = storage.RetryPolicy(base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def blob(s3_url, s3_options):
    """A 100 kB random object on the server -> (url, bytes)."""
    data = os.urandom(100_000)
    url = f"{s3_url}/blob.bin"
    storage.write_bytes_atomic(url, data, s3_options)
    return url, data


@pytest.mark.parametrize("kind", ["slowdown", "internal", "reset", "truncate", "short"])
def test_each_transient_fault_is_retried_and_counted(blob, fault_proxy, kind):
    url, data = blob
    proxy, so = fault_proxy(0.5, seed=3, kinds=[kind])
    before = storage.retry_count()
    for _ in range(6):
        digest = hashlib.sha256()
        assert storage.read_object(url, so, FAST, hasher=digest) == data
        assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    retries = storage.retry_count() - before
    assert proxy.counts[kind] > 0
    # Our loop is the one that retries: s3fs and botocore make one try each.  Only a reset
    # on a reused keep-alive connection may be retried once inside aiohttp, uncounted.
    if kind == "reset":
        assert 0 < retries <= proxy.counts[kind]
    else:
        assert retries == proxy.counts[kind]


def test_resumes_from_the_offset_already_read(blob, fault_proxy, monkeypatch):
    url, data = blob
    monkeypatch.setattr(storage, "CHUNK_BYTES", 30_000)  # 4 ranged GETs per read
    proxy, so = fault_proxy(0.5, seed=1, kinds=["short"])
    assert storage.read_object(url, so, FAST) == data
    gets = [(rng, fault) for method, path, rng, fault in proxy.log if method == "GET" and path.endswith("blob.bin")]
    resumed = [i for i, (_, fault) in enumerate(gets) if fault == "short"]
    assert resumed, "no short read was injected"
    for i in resumed:  # half of the asked range came back; the next GET starts right after it
        start, end = map(int, gets[i][0].split("=")[1].split("-"))
        got = (end - start + 1) // 2
        assert gets[i + 1][0].startswith(f"bytes={start + got}-")


def test_read_timeout_is_retried(blob, fault_proxy):
    url, data = blob
    proxy, so = fault_proxy(0.0, fail={"blob.bin": "stall"}, stall_s=2)
    policy = storage.RetryPolicy(attempts=2, base_delay_s=0.01, read_timeout_s=0.5)
    before = storage.retry_count()
    with pytest.raises(storage.StorageError, match="ReadTimeoutError"):
        storage.read_object(url, so, policy)
    assert storage.retry_count() - before == 1 and proxy.counts["stall"] == 2


def test_permanent_failure_names_the_object_and_gives_up(blob, fault_proxy):
    url, _ = blob
    proxy, so = fault_proxy(0.0, fail={"blob.bin": "slowdown"})
    t0 = time.monotonic()
    with pytest.raises(storage.StorageError) as info:
        storage.read_object(url, so)  # default policy: the real backoff
    elapsed = time.monotonic() - t0
    message = str(info.value)
    assert url in message and url.startswith("s3://")
    assert "SlowDown" in message or "reduce your request rate" in message
    assert proxy.counts["slowdown"] == storage.RetryPolicy().attempts  # bounded: 6 tries, then stop
    print(f"\npermanent 503: gave up after {proxy.counts['slowdown']} tries in {elapsed:.1f} s")


def test_missing_object_and_denied_are_not_retried(s3_url, fault_proxy, blob):
    url, _ = blob
    proxy, so = fault_proxy(0.0, fail={"blob.bin": "denied"})
    before = storage.retry_count()
    with pytest.raises(FileNotFoundError, match=f"{s3_url}/nothing-here"):
        storage.read_object(f"{s3_url}/nothing-here", so, FAST)
    with pytest.raises(storage.StorageError, match="Access Denied") as info:
        storage.read_object(url, so, FAST)
    assert url in str(info.value)
    assert storage.retry_count() == before and proxy.counts["denied"] == 1


@pytest.mark.parametrize("exc,expected", [
    (ConnectionResetError(104, "reset"), True),
    (TimeoutError("read"), True),
    (OSError(16, "Please reduce your request rate."), True),  # s3fs's SlowDown
    (FileNotFoundError("gone"), False),
    (PermissionError("Access Denied"), False),
    (ValueError("bad bucket name"), False),
    (storage.ShortReadError(5, "short read: got 1403 of 2000 bytes"), True),  # "403" in text is no 403
])
def test_is_transient(exc, expected):
    assert storage.is_transient(exc) is expected


class _FsProbe(torch.utils.data.IterableDataset):
    """Yields (pid, pids that created the fs used, bytes read, retry count) from inside a worker."""

    def __init__(self, url, so):
        self.url, self.so = url, so

    def __iter__(self):
        fs, _ = storage.filesystem(self.url, self.so)
        read_fs, _ = storage._read_filesystem(self.url, self.so, storage.RetryPolicy())
        data = storage.read_object(self.url, self.so)
        yield os.getpid(), fs._pid, read_fs._pid, len(data), storage.retry_count()


def test_filesystems_are_made_in_each_forked_worker(blob, s3_options):
    url, data = blob
    assert storage.read_object(url, s3_options) == data  # the parent's fs and event loop now exist
    storage._count_retry()  # a count the workers must not inherit: theirs are their own
    loader = torch.utils.data.DataLoader(_FsProbe(url, s3_options), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    rows = [tuple(int(x) for x in row) for row in loader]
    assert len(rows) == 2 and len({pid for pid, *_ in rows}) == 2
    for pid, fs_pid, read_pid, n, retries in rows:
        assert pid != os.getpid() and fs_pid == pid and read_pid == pid and n == len(data) and retries == 0
