"""The only user of fsspec: open, list, publish and read URLs, local or remote.

Local paths and any fsspec URL (``s3://``, ``gs://``, ``memory://`` ...) are
accepted everywhere.  Credentials are left to fsspec / boto (env vars, profile,
``storage_options``) and never logged: errors name URLs, never options.

Reads of remote objects go through :func:`read_object`, which fetches in
ranged chunks and retries transient failures with exponential backoff and
jitter, resuming from the byte offset already read.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
from dataclasses import dataclass

import fsspec

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20


class StorageError(RuntimeError):
    """A URL could not be read or written after the retries allowed."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient errors; defaults give up within ~20 s per object."""

    attempts: int = 6
    base_delay_s: float = 0.1
    max_delay_s: float = 4.0
    timeout_s: float = 30.0


# Retry counts are per process; the loader sums them over workers.
_stats_lock = threading.Lock()
_stats = {"retries": 0}


def retry_count() -> int:
    return _stats["retries"]


def _count_retry() -> None:
    with _stats_lock:
        _stats["retries"] += 1


def is_remote(url: str) -> bool:
    protocol = fsspec.utils.get_protocol(str(url))
    return protocol not in ("file", "local")


def filesystem(url: str, storage_options: dict | None = None):
    """(fs, path) for a URL.  Called in the process that uses it (fork safety)."""
    fs, path = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
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
        # Object stores publish a PUT atomically under its final key.
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def makedirs(url: str, storage_options: dict | None = None) -> None:
    fs, path = filesystem(url, storage_options)
    if not is_remote(url):
        fs.makedirs(path, exist_ok=True)


def expand_inputs(inputs: list[str], suffixes: tuple[str, ...],
                  storage_options: dict | None = None) -> list[str]:
    """Files named by paths, directories or globs, sorted, each once.

    Directories are walked recursively and keep only files whose name ends in
    one of ``suffixes``; explicitly named files are kept as given.
    """
    found: list[str] = []
    for item in inputs:
        fs, path = filesystem(item, storage_options)
        protocol = fsspec.utils.get_protocol(str(item))
        prefix = "" if protocol in ("file", "local") else f"{protocol}://"
        if any(ch in path for ch in "*?["):
            matches = sorted(fs.glob(path))
        elif fs.isdir(path):
            matches = sorted(p for p in fs.find(path) if p.endswith(suffixes))
        elif fs.exists(path):
            matches = [path]
        else:
            raise FileNotFoundError(f"input {item}: no such file, directory or glob match")
        if not matches:
            raise FileNotFoundError(f"input {item}: matched no files ending in {', '.join(suffixes)}")
        found.extend(prefix + m for m in matches)
    return list(dict.fromkeys(found))


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    text = f"{type(exc).__name__} {exc}"
    permanent = ("NoSuchKey", "AccessDenied", "403", "404", "InvalidAccessKeyId",
                 "NoSuchBucket", "SignatureDoesNotMatch")
    return not any(word in text for word in permanent)


def read_object(url: str, storage_options: dict | None = None,
                policy: RetryPolicy = RetryPolicy(), expected_size: int | None = None,
                hasher=None) -> bytes:
    """All bytes of an object, fetched in ranged chunks with retries.

    A chunk cut short or failed with a transient error is fetched again from the
    offset already read, so a flaky connection costs time, not correctness.
    ``hasher`` (e.g. ``hashlib.sha256()``) is fed while reading.
    """
    fs, path = filesystem(url, storage_options)
    if not is_remote(url):
        with open(path, "rb") as f:
            data = f.read()
        if hasher is not None:
            hasher.update(data)
        return data
    total = expected_size
    parts: list[bytes] = []
    offset = 0
    attempt = 0
    deadline = time.monotonic() + policy.timeout_s
    while True:
        try:
            if total is None:
                total = int(fs.size(path))
            if offset >= total:
                break
            end = min(offset + CHUNK_BYTES, total)
            chunk = fs.cat_file(path, start=offset, end=end)
            if len(chunk) != end - offset:
                raise StorageError(f"short read: got {len(chunk)} of {end - offset} bytes at offset {offset}")
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised if permanent
            attempt += 1
            if not _transient(exc) or attempt >= policy.attempts or time.monotonic() > deadline:
                raise StorageError(
                    f"{url}: read failed at byte {offset} after {attempt} attempt(s): "
                    f"{type(exc).__name__}: {exc}") from exc
            _count_retry()
            delay = min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))
            time.sleep(delay * (0.5 + random.random() / 2))
            _invalidate(fs)
            continue
        parts.append(chunk)
        if hasher is not None:
            hasher.update(chunk)
        offset += len(chunk)
        attempt = 0
    return b"".join(parts)


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
