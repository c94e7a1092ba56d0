"""The only user of fsspec: open, list, publish and read URLs, local or remote.

Local paths and any fsspec URL (``s3://``, ``gs://``, ``memory://`` ...) are
accepted everywhere.  fsspec is imported on first use: a local path (no storage
options) gets :class:`LocalFS`, which answers the few calls a local build makes
(exists, isdir, size, info, ls, rm, makedirs, cat_file) as fsspec's LocalFileSystem does
(a test holds them to it) and hands any other to it, so a local build never pays
fsspec's import (its async stack: ~0.07 s, a fifth of a build's start-up).  Credentials are left to fsspec / boto (env vars, profile,
``storage_options``) and never logged: errors name URLs, never options.

Reads of remote objects go through :func:`read_object`, which fetches in
ranged chunks and retries transient failures with exponential backoff and
jitter, resuming from the byte offset already read.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass

from shards.retry import ShortReadError, _http_status, is_transient

# what is worth another try is decided in retry.py (also by the Ray engine)
from shards.storage_local import LOCAL_FS, LocalFS

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20


class StorageError(RuntimeError):
    """A URL could not be read or written after the retries allowed."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient errors of remote reads.

    With the defaults a failing object gives up after 8 tries in a row, i.e. after
    ~4-8 s of backoff when the server answers errors at once (0.1 s doubling to a
    5 s cap, each times a jitter in [0.5, 1)); a server that hangs costs at most
    ``timeout_s`` plus one ``read_timeout_s``: 30 s.
    """

    attempts: int = 8              # failed tries in a row (no byte read in between) before giving up
    base_delay_s: float = 0.1      # first backoff; doubles each try
    max_delay_s: float = 5.0       # cap of one backoff
    timeout_s: float = 20.0        # give up after this long without reading a byte
    connect_timeout_s: float = 5.0  # per try (S3: botocore's connect_timeout)
    read_timeout_s: float = 10.0    # per socket read (S3: botocore's read_timeout)


# Retry counts are per process (a forked DataLoader worker starts from 0, not from its
# parent's count); the loader sums them over workers.
_stats_lock = threading.Lock()
_stats = {"retries": 0}


def retry_count() -> int:
    """Transient read failures retried by read_object in this process so far."""
    return _stats["retries"]


def _count_retry() -> None:
    with _stats_lock:
        _stats["retries"] += 1


def _reset_after_fork() -> None:
    global _stats_lock
    _stats_lock = threading.Lock()  # another thread may have held it at fork time
    _stats["retries"] = 0


os.register_at_fork(after_in_child=_reset_after_fork)


# userinfo of any URL (``scheme://user:token@host``) and query values that carry secrets
# (presigned S3 ``X-Amz-Signature``/``-Credential``/``-Security-Token``, Azure ``sig``, ``token=``)
# userinfo runs to the LAST '@' before the path (a password may hold '@'; RFC 3986 authority)
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s'\"]+@")
_SECRET_QUERY = re.compile(r"(?i)([?&][^=&\s'\"]*(?:signature|credential|token|secret|password|passwd|pwd|auth|key|sig)"
                           r"[^=&\s'\"]*=)[^&#\s'\"]+")


def redact(url) -> str:
    """``url`` (or any text holding URLs, e.g. an error message) safe to print, log or store:
    credentials in the userinfo and secret query values become ``***``."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", str(url)))


def _fsspec():
    import fsspec  # noqa: PLC0415 - on first use: see the module docstring

    return fsspec


def protocol_of(url: str) -> str:
    """The fsspec protocol a URL names ("file" for a plain path), as ``fsspec.utils.get_protocol``."""
    parts = re.split(r"(::|://)", str(url), maxsplit=1)
    return parts[0] if len(parts) > 1 else "file"


def is_remote(url: str) -> bool:
    protocol = protocol_of(url)
    return protocol not in ("file", "local")


# object stores whose URL "host" is the bucket: a user:secret@ there would be sent as part of the name
NO_USERINFO = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl")


def filesystem(url: str, storage_options: dict | None = None):
    """(fs, path) for a URL.  Called in the process that uses it (fork safety)."""
    protocol = protocol_of(url)
    if protocol in ("file", "local") and not storage_options and "::" not in str(url) and os.sep == "/":
        return LOCAL_FS, LocalFS._strip_protocol(str(url))
    if protocol in NO_USERINFO and _USERINFO.match(str(url)):
        raise ValueError(f"{redact(url)}: {protocol}:// URLs cannot carry credentials (user:password@), they would "
                         f"be sent as the bucket name; drop them from the URL and give them by the environment "
                         f"(e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) or by --storage-option")
    fs, path = _fsspec().core.url_to_fs(str(url), **(storage_options or {}))
    return fs, path




def join(base: str, *parts: str) -> str:
    base = str(base).rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts]])


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def size(url: str, storage_options: dict | None = None) -> int:
    fs, path = filesystem(url, storage_options)
    return int(fs.size(path))


def read_text(url: str, storage_options: dict | None = None) -> str:
    return read_object(url, storage_options).decode("utf-8")


def write_bytes_atomic(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write a small object so that readers see all of it or nothing."""
    fs, path = filesystem(url, storage_options)
    if is_remote(url):
        fs.pipe_file(path, data)  # one PUT: object stores publish it whole under its final key
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):  # a full disk must not also keep the half-written temp file
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))  # the rename itself survives a power cut


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened for reading (some platforms): nothing more to do
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(local_path: str, url: str, storage_options: dict | None = None) -> None:
    """Move a finished local file to its final URL (rename locally, upload remotely)."""
    fs, path = filesystem(url, storage_options)
    if is_remote(url):
        fs.put_file(local_path, path)
        os.remove(local_path)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    os.replace(local_path, path)


def remove(url: str, storage_options: dict | None = None, recursive: bool = False) -> None:
    fs, path = filesystem(url, storage_options)
    _invalidate(fs)  # another process may have written it since this one listed the folder
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def list_names(url: str, storage_options: dict | None = None) -> list[str]:
    """Sorted names (not paths) of the entries right under folder ``url``; [] when there is none.

    Listed afresh: other processes (ranks on other nodes) write there too."""
    fs, path = filesystem(url, storage_options)
    _invalidate(fs)
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    base = path.rstrip("/")
    names = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries if str(e).rstrip("/") != base}
    return sorted(names - {""})


def put_tree(local_dir: str, url: str, storage_options: dict | None = None) -> list[str]:
    """Copy every file under ``local_dir`` to the same relative names under ``url``; returns them."""
    names = sorted(os.path.relpath(os.path.join(d, f), local_dir)
                   for d, _, files in os.walk(local_dir) for f in files)
    for name in names:
        with open(os.path.join(local_dir, name), "rb") as f:
            write_bytes_atomic(join(url, *name.split(os.sep)), f.read(), storage_options)
    return names


def makedirs(url: str, storage_options: dict | None = None) -> None:
    fs, path = filesystem(url, storage_options)
    if not is_remote(url):
        fs.makedirs(path, exist_ok=True)


# Remote read filesystems, one per (process, protocol, options): created in the process
# that uses them, because fsspec's async filesystems must not cross a fork.
_READ_FS: dict[tuple, object] = {}
_INHERITED: list = []


def _read_filesystem(url: str, storage_options: dict | None, policy: "RetryPolicy"):
    """(fs, path) for read_object: for S3, one whose own retry layers are switched off.

    By default s3fs retries each call 5 times around botocore's own 5 attempts: up to
    25 tries and ~40 s hidden per chunk (measured: a 503 SlowDown object), none of them
    counted.  Our loop is the one in control, so the S3 client here makes one attempt
    (unless ``config_kwargs.retries`` is given in storage_options) with the policy's
    timeouts.  What remains below us: aiohttp resends once a request that failed on a
    reused keep-alive connection (a server may close idle ones), uncounted.
    """
    protocol = protocol_of(url)
    if protocol not in ("s3", "s3a"):
        return filesystem(url, storage_options)
    fsspec = _fsspec()
    key = (os.getpid(), fsspec.utils.tokenize(protocol, storage_options or {}, policy))
    fs = _READ_FS.get(key)
    if fs is None:
        for stale in [k for k in _READ_FS if k[0] != os.getpid()]:
            # Inherited through fork: the parent's, bound to its event loop.  Kept referenced,
            # because collecting one runs s3fs's finalizer against that loop (noisy errors).
            _INHERITED.append(_READ_FS.pop(stale))
        options = dict(storage_options or {})
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
        config.setdefault("connect_timeout", policy.connect_timeout_s)
        config.setdefault("read_timeout", policy.read_timeout_s)
        options["config_kwargs"] = config
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
        fs.retries = 1  # s3fs's own loop: one try
        _READ_FS[key] = fs
    return fs, fs._strip_protocol(str(url))


def read_object(url: str, storage_options: dict | None = None,
                policy: RetryPolicy = RetryPolicy(), expected_size: int | None = None,
                hasher=None) -> bytes:
    """All bytes of an object, fetched in ranged chunks with retries.

    A chunk cut short or failed with a transient error is fetched again from the
    offset already read, so a flaky connection costs time, not correctness.
    Gives up (StorageError naming the URL and the last cause) after
    ``policy.attempts`` failed tries in a row or ``policy.timeout_s`` without
    progress; a missing object raises FileNotFoundError at once.
    ``hasher`` (e.g. ``hashlib.sha256()``) is fed while reading.
    """
    if not is_remote(url):
        path = filesystem(url, storage_options)[1]
        with open(path, "rb") as f:
            data = f.read()
        if hasher is not None:
            hasher.update(data)
        return data
    fs, path = _read_filesystem(url, storage_options, policy)
    total = expected_size
    parts: list[bytes] = []
    offset = attempt = 0
    last_progress = time.monotonic()
    while True:
        try:
            if total is None:
                total = int(fs.size(path))
            if offset >= total:
                break
            want = min(CHUNK_BYTES, total - offset)
            chunk = fs.cat_file(path, start=offset, end=offset + want)
            if len(chunk) > want:
                raise StorageError(f"{redact(url)}: asked for {want} bytes at offset {offset}, got {len(chunk)}; "
                                   f"the server ignored the Range header")
            _take(parts, chunk, hasher)
            offset += len(chunk)
            if len(chunk) < want:
                # Keep what came (the right bytes, just too few) and ask for the rest.
                raise ShortReadError(errno.EIO, f"short read: got {len(chunk)} of {want} bytes, "
                                                f"resuming at byte {offset}")
        except Exception as exc:  # noqa: BLE001 - classified by is_transient, re-raised when permanent
            attempt += 1
            _give_up_or_wait(url, exc, attempt, offset, total, policy, last_progress)
            _invalidate(fs)
            continue
        attempt = 0
        last_progress = time.monotonic()
    return b"".join(parts)


def _take(parts: list[bytes], chunk: bytes, hasher) -> None:
    if chunk:
        parts.append(chunk)
        if hasher is not None:
            hasher.update(chunk)


def _give_up_or_wait(url: str, exc: Exception, attempt: int, offset: int, total: int | None,
                     policy: "RetryPolicy", last_progress: float) -> None:
    """Raise if ``exc`` is permanent or the policy is spent; else count a retry and back off."""
    if isinstance(exc, FileNotFoundError):
        raise FileNotFoundError(errno.ENOENT, redact(f"no such object ({exc})"), redact(url)) from exc
    stalled = time.monotonic() - last_progress
    if isinstance(exc, StorageError) or not is_transient(exc) or attempt >= policy.attempts \
            or stalled > policy.timeout_s:
        kind = "permanent error" if isinstance(exc, StorageError) or not is_transient(exc) else \
            f"{attempt} failed attempt(s) in a row, {stalled:.1f} s without progress"
        code, status = _http_status(exc)
        http = f" (HTTP {status}, S3 code {code})" if status is not None else ""
        raise StorageError(redact(f"{url}: read failed at byte {offset} of {total if total is not None else '?'} "
                                  f"({kind}); last cause: {type(exc).__name__}: {exc}{http}")) from exc
    _count_retry()
    delay = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
    delay *= 0.5 + random.random() / 2  # jitter: workers hit by the same outage spread out
    log.debug("retrying %s at byte %d in %.2f s after %s", redact(url), offset, delay, type(exc).__name__)
    time.sleep(min(delay, max(0.0, policy.timeout_s - stalled)))


def _invalidate(fs) -> None:
    invalidate = getattr(fs, "invalidate_cache", None)
    if invalidate is not None:
        invalidate()


def sha256_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            digest.update(block)
            n += len(block)
    return digest.hexdigest(), n


def parse_storage_options(pairs: list[str]) -> dict | None:
    """--storage-option key=value (repeatable); values parsed as JSON when they can be."""
    if not pairs:
        return None
    options: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--storage-option {key!r}: expected KEY=VALUE, e.g. "
                             f"client_kwargs.endpoint_url=http://127.0.0.1:9000")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        target = options
        *path, last = key.split(".")  # client_kwargs.endpoint_url=... nests
        for part in path:
            target = target.setdefault(part, {})
        target[last] = parsed
    return options
