"""The builder's hold on ``--out``: an exclusive lock, one-line write errors, a set replaced only whole.

Locally the lock is the file ``OUT/.lock``, published with ``os.link`` from a
complete temp file, so it appears atomically (like ``O_EXCL``) and is never seen
half-written.  It holds the host, pid, the pid's start time and the start time
of the build.  On an object store it is the object ``OUT/.lock``, created with a
conditional PUT where the filesystem offers one (``mode="create"``) and always
read back: the token in it must be ours, so a server that ignores the condition
still cannot give two builders the lock.

The set already at ``--out`` is replaced only whole (:func:`commit`): see :mod:`shards.build.driver`.

A lock whose holder is a dead process on this host (pid gone, or reused by a
process that started later) is stale and taken over; any other lock stops the
second builder at once with one line naming the holder and how to clear it.
The lock is released on success and on failure (exceptions, Ctrl-C, SIGTERM);
after a SIGKILL the next build on the same host takes the stale lock over.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import replace

from shards import formats, retry, storage
from shards.build.writer import Part
from shards.manifest import MANIFEST_NAME, Manifest, ManifestError, ShardInfo, index_url, load_manifest, write_manifest
from shards.storage import StorageError, redact

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"
REMOTE_SETTLE_S = 0.2  # between writing a lock object and reading it back: lets a racing PUT land first


class LockError(StorageError):
    """Another builder holds the output folder."""


class OutputError(StorageError):
    """The output cannot be written: disk full, read-only, no permission."""


WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file"}


def output_error(exc: OSError, where: str) -> OutputError | None:
    """The one-line error for a write that failed for a reason no retry fixes; None for others."""
    reason = WRITE_ERRNOS.get(exc.errno)
    if reason is None:
        return None
    fix = ("free space or choose another --out" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else "make it writable or choose another --out")
    path = exc.filename if exc.filename is not None else where
    return OutputError(f"cannot write {redact(path)}: {reason} ({errno.errorcode[exc.errno]}); {fix}")


def clean_after_failure(staging: str, storage_options: dict | None, everything: bool) -> None:
    """What a failed build leaves that no rerun can use: temp files of parts (``.partial-``) and of
    markers (``.tmp-``); with ``everything`` (disk full, read-only) the whole staging folder."""
    try:
        fs, path = storage.filesystem(staging, storage_options)
        if not fs.exists(path):
            return
        if everything:
            fs.rm(path, recursive=True)
            return
        for name in fs.ls(path, detail=False):
            base = name.rsplit("/", 1)[-1]
            if ".partial-" in base or ".tmp-" in base:
                fs.rm(name)
    except OSError as exc:  # the failure being reported matters more than this one
        log.warning("could not clean %s after the failed build: %s", redact(staging), redact(exc))


@contextmanager
def sigterm_raises():
    """SIGTERM ends the build like Ctrl-C does (locks released, workers stopped), not at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; the caller owns signals then
        return

    def stop(signum, frame):
        raise SystemExit("shards build: stopped by SIGTERM; finished units are kept for a rerun")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def redacted():
    """Errors raised inside carry no URL credentials: the message is redacted, the chain cut."""
    try:
        yield
    except (ValueError, RuntimeError, OSError) as exc:
        text = str(exc)
        safe = redact(text)
        if safe == text:
            raise
        try:
            clean = type(exc)(safe) if not isinstance(exc, OSError) else StorageError(safe)
        except TypeError:  # an error type with another constructor
            clean = StorageError(safe)
        raise clean from None


# --- replacing a set only whole ------------------------------------------------------------

def listed_shards(cfg) -> dict[str, tuple[str, int]]:
    """The shards the current index.json lists: name -> (sha256, bytes).  None of them may
    change before the new index replaces it, so a failed rebuild leaves that set whole."""
    if not storage.exists(index_url(cfg.out), cfg.storage_options):
        return {}
    try:
        m = load_manifest(cfg.out, cfg.storage_options)
    except ManifestError as exc:  # unreadable already: there is no set to keep
        log.warning("%s; replacing it", redact(exc))
        return {}
    return {s.path: (s.sha256, s.num_bytes) for s in m.shards}


def plain_name(cfg, number: int) -> str:
    return f"shard-{number:05d}{formats.EXTENSIONS[cfg.format]}"


def final_name(cfg, number: int, part: Part, listed: dict) -> str:
    """The plain name, unless the current index lists it with other bytes: then one of its own."""
    name = plain_name(cfg, number)
    if listed.get(name, (part.sha256, part.num_bytes)) == (part.sha256, part.num_bytes):
        return name
    return f"shard-{number:05d}-{part.sha256[:16]}{formats.EXTENSIONS[cfg.format]}"


def part_in_place(cfg, part: Part, final: str) -> bool:
    """A part moved by an earlier, interrupted finalize is already under its final name."""
    if storage.exists(part.path, cfg.storage_options):
        return True
    if not final or not storage.exists(final, cfg.storage_options):
        return False
    if storage.is_remote(final):
        return storage.size(final, cfg.storage_options) == part.num_bytes
    digest, n = storage.sha256_file(storage.filesystem(final)[1])
    return (digest, n) == (part.sha256, part.num_bytes)


def publish_parts(cfg, results, listed: dict) -> list[ShardInfo]:
    shards = []
    for part in (p for r in results for p in r.parts):
        name = final_name(cfg, len(shards), part, listed)
        if storage.exists(part.path, cfg.storage_options):
            _move(cfg, part.path, storage.join(cfg.out, name))
        shards.append(ShardInfo(name, part.num_records, part.num_bytes, part.sha256))
    return shards


def _move(cfg, src_url: str, dst_url: str, keep: bool = False) -> None:
    """Publish a file under ``dst_url`` at once (a rename, a hard link, or one server-side copy)."""
    fs, src = storage.filesystem(src_url, cfg.storage_options)
    dst = storage.filesystem(dst_url, cfg.storage_options)[1]
    if storage.is_remote(dst_url):
        fs.copy(src, dst)  # server-side copy; a staged part goes with the folder
    elif keep:
        tmp = f"{dst}.tmp-{os.getpid()}"
        if os.path.exists(tmp):
            os.remove(tmp)
        os.link(src, tmp)
        os.replace(tmp, dst)
    else:
        os.replace(src, dst)


def plain_names(cfg, manifest: Manifest) -> Manifest:
    """After the commit, give shards published under names of their own their plain names:
    link or copy each, then swap the index again; at any crash, the index lists whole files."""
    shards = []
    for i, s in enumerate(manifest.shards):
        plain = plain_name(cfg, i)
        if s.path != plain:
            _move(cfg, storage.join(cfg.out, s.path), storage.join(cfg.out, plain), keep=True)
        shards.append(replace(s, path=plain))
    manifest = replace(manifest, shards=shards)
    write_manifest(cfg.out, manifest, cfg.storage_options)
    return manifest


def remove_leftovers(cfg, manifest: Manifest) -> None:
    """Remove shard files index.json does not list (earlier builds, the other format, names of
    their own, temp links) and temp manifests of killed builds."""
    fs, path = storage.filesystem(cfg.out, cfg.storage_options)
    exts = "|".join(re.escape(e) for e in formats.EXTENSIONS.values())
    shard_file = re.compile(rf"shard-\d{{5,}}(-[0-9a-f]{{16}})?({exts})(\.tmp-\d+)?")
    listed = {s.path for s in manifest.shards}
    for name in fs.ls(path, detail=False):
        base = name.rsplit("/", 1)[-1]
        if (shard_file.fullmatch(base) and base not in listed) or base.startswith(f"{MANIFEST_NAME}.tmp-") \
                or _dead_lock_temp(base):
            fs.rm(name)


def _dead_lock_temp(base: str) -> bool:
    """A lock's temp file (``.lock.PID-TOKEN``) whose builder was killed between writing and removing it."""
    found = _LOCK_TEMP.fullmatch(base)
    return found is not None and not _alive(int(found.group(1)), None)


def commit(cfg, manifest: Manifest, staging: str) -> Manifest:
    """Replace the set at ``cfg.out`` with ``manifest``'s (its shards published): the index swap is the
    commit point; then plain names, and what the new index does not list is removed."""
    write_manifest(cfg.out, manifest, cfg.storage_options)
    if any(s.path != plain_name(cfg, i) for i, s in enumerate(manifest.shards)):
        manifest = plain_names(cfg, manifest)
    storage.remove(staging, cfg.storage_options, recursive=True)
    remove_leftovers(cfg, manifest)
    return manifest


_LOCK_TEMP = re.compile(r"\.lock\.(\d+)-[0-9a-f]{32}")


def _stat(pid: int) -> list[bytes]:
    """Fields of /proc/PID/stat after the command name (Linux; empty elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return []


def _process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot, to tell a reused pid apart."""
    fields = _stat(pid)
    return fields[19].decode() if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    fields = _stat(pid)
    if fields[:1] == [b"Z"]:
        return False  # killed, not yet reaped by its parent
    return start is None or len(fields) <= 19 or fields[19].decode() == start


class OutputLock:
    """``with OutputLock(out, storage_options):`` holds ``out`` for one builder."""

    def __init__(self, out: str, storage_options: dict | None = None):
        self.url = storage.join(str(out), LOCK_NAME)
        self.options = storage_options
        self.remote = storage.is_remote(self.url)
        self.token = uuid.uuid4().hex
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": self.token}
        self.held = False

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock: the first write to ``--out``, so a store that cannot be written (unreachable,
        read-only, refused) ends here in one line naming it."""
        try:
            self._acquire()
        except retry.client_errors() as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise OutputError(f"cannot write the lock {redact(self.url)}: {type(exc).__name__}: {redact(detail)}; "
                              f"check the --out URL, its --storage-option settings and that the store is "
                              f"reachable and writable (an http:// server usually is not)") from None

    def _acquire(self) -> None:
        for _ in range(3):  # a stale lock taken over, then retried; a race lost twice gives up
            holder = self._try_remote() if self.remote else self._try_local()
            if holder is None:
                self.held = True
                return
            if not self._stale(holder):
                raise LockError(self._held_message(holder))
            log.warning("%s: taking over the stale lock of %s", redact(self.url), _who(holder))
            self._break(holder)
        raise LockError(f"{redact(self.url)}: could not take the lock (other builders keep taking it); "
                        f"run one `shards build` per --out")

    def release(self) -> None:
        """Remove the lock if it is still ours (a stale-lock taker may have replaced it)."""
        if not self.held:
            return
        self.held = False
        fs, path = storage.filesystem(self.url, self.options)
        try:
            if self._read(fs, path).get("token") == self.token:
                fs.rm(path)
        except (OSError, StorageError) as exc:  # e.g. the disk that failed the build; the lock stays stale
            log.warning("%s: could not remove the lock (%s); the next build on %s takes it over",
                        redact(self.url), redact(exc), self.info["host"])

    def _try_local(self) -> dict | None:
        """None when the lock is now ours, else what the holder wrote."""
        path = storage.filesystem(self.url)[1]
        tmp = f"{path}.{os.getpid()}-{self.token}"  # the pid: a builder killed before it removed this is known
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(self.info).encode())
            os.link(tmp, path)  # atomic: fails with EEXIST when a lock is there
            return None
        except FileExistsError:
            return self._read(*storage.filesystem(self.url))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _try_remote(self) -> dict | None:
        fs, path = storage.filesystem(self.url, self.options)
        if fs.exists(path):
            return self._read(fs, path)
        data = json.dumps(self.info).encode()
        try:
            fs.pipe_file(path, data, mode="create")  # conditional create (S3 If-None-Match, memory://)
        except FileExistsError:
            return self._read(fs, path)
        except (TypeError, NotImplementedError):  # this filesystem has no conditional create
            fs.pipe_file(path, data)
        time.sleep(REMOTE_SETTLE_S)
        seen = self._read(fs, path)
        return None if seen.get("token") == self.token else seen

    def _read(self, fs, path) -> dict:
        try:
            data = json.loads(fs.cat_file(path))
        except FileNotFoundError:
            return {"token": None, "vanished": True}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"token": None, "unreadable": True}
        return data if isinstance(data, dict) else {"token": None, "unreadable": True}

    def _stale(self, holder: dict) -> bool:
        if holder.get("vanished"):
            return True  # released between our try and our read: just try again
        pid = holder.get("pid")
        if holder.get("host") != self.info["host"] or not isinstance(pid, int):
            return False  # another machine's process cannot be checked from here
        return not _alive(pid, holder.get("pid_start"))

    def _break(self, holder: dict) -> None:
        """Remove a stale lock, unless it changed since it was read (then the next try sees the new one)."""
        if holder.get("vanished"):
            return
        fs, path = storage.filesystem(self.url, self.options)
        if self.remote:
            if self._read(fs, path).get("token") == holder.get("token"):
                fs.rm(path)
            return
        aside = f"{path}.stale-{self.token}"
        try:
            os.rename(path, aside)  # atomic: what we remove is exactly what we moved
        except FileNotFoundError:
            return
        if self._read(fs, aside).get("token") != holder.get("token"):
            try:  # a live builder's fresh lock replaced the stale one meanwhile: put it back
                os.link(aside, path)
            except FileExistsError:
                pass
        os.remove(aside)

    def _held_message(self, holder: dict) -> str:
        where = redact(self.url)
        if holder.get("unreadable"):
            return (f"{where}: the output is locked by a builder whose lock cannot be read; if no `shards "
                    f"build` writes to this --out, remove {where} and build again")
        host = holder.get("host")
        alive = "alive" if host == self.info["host"] else f"on another host, {host}"
        return (f"{where}: another `shards build` is writing to this --out: {_who(holder)} ({alive}); wait "
                f"for it to finish, or, if it is no longer running, remove {where} and build again")


def _who(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
