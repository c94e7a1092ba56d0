"""The file list of a checkpoint step folder, ``files.json``, and its verification, on any fsspec URL.

    {"version": 1, "step": 12, "files": {"model.pt": {"bytes": 1234, "sha256": "..."}, ...}}

Rank 0 writes it after every file of the step is written (its own and the
``rank-RRRRR.json`` parts the other ranks wrote and reported), so a folder whose
list matches its files is complete and untouched; a truncated, replaced or
missing file fails ``verify`` with one line naming it.  Folders are local paths
or URLs (``s3://bucket/run/checkpoint/step-0000012``); storage goes through
``shards`` (the only user of fsspec).
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import shards

FILES = ("model.pt", "optim.pt", "state.json")  # what every step folder must hold
PART = re.compile(r"rank-(\d{5})\.json")  # the loader/RNG state of rank R > 0, written by that rank
LIST = "files.json"
VERSION = 1
CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, fails verification or does not fit this run."""


def locate(folder: str, *names: str) -> str:
    """``folder/names...`` for a local path (os.path) or a URL ("/")."""
    return shards.join_url(folder, *names) if shards.is_remote(folder) else os.path.join(folder, *names)


def part_name(rank: int) -> str:
    return f"rank-{rank:05d}.json"


def sha256_file(path: str) -> tuple[int, str]:
    """(bytes, sha256 hex) of the local file at ``path``."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def sha256_bytes(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def list_bytes(step: int, entries: dict[str, tuple[int, str]]) -> bytes:
    """``files.json`` for ``entries`` (name -> (bytes, sha256))."""
    files = {name: {"bytes": size, "sha256": digest} for name, (size, digest) in sorted(entries.items())}
    return json.dumps({"version": VERSION, "step": step, "files": files}).encode()


def write_file_list(folder: str, step: int, write) -> None:
    """List the files of local ``folder`` (sizes and sha256, read back from disk) in ``files.json``."""
    names = [*FILES, *sorted(n for n in os.listdir(folder) if PART.fullmatch(n))]
    write(os.path.join(folder, LIST), list_bytes(step, {n: sha256_file(os.path.join(folder, n)) for n in names}))


def verify(folder: str, step: int, storage_options: dict | None = None) -> str | None:
    """None when ``folder`` (the checkpoint of ``step``) is complete and matches its list, else why not."""
    listed = read_list(folder, step, storage_options)
    if isinstance(listed, str):
        return listed
    for name, want in sorted(listed.items()):
        problem = _check(folder, name, want, storage_options)
        if problem:
            return problem
    return None


def read_list(folder: str, step: int, storage_options: dict | None = None) -> dict | str:
    """name -> {"bytes", "sha256"} of a step's ``files.json``, or why it cannot be trusted."""
    path = locate(folder, LIST)
    shown = shards.redact(path)
    try:
        data = json.loads(shards.read_object(path, storage_options))
    except FileNotFoundError:
        return f"{shown}: missing (the save did not complete, or an older version wrote it)"
    except (OSError, shards.StorageError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{shown}: unreadable ({shards.redact(exc)})"
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return f"{shown}: not a version-{VERSION} file list"
    if data.get("step") != step:
        return f"{shards.redact(folder)}/{LIST}: lists step {data.get('step')!r}, the folder is step {step}"
    files = data.get("files")
    if not isinstance(files, dict) or not set(FILES) <= files.keys():
        return f"{shards.redact(folder)}/{LIST}: does not list {', '.join(FILES)}"
    bad = [n for n, want in files.items() if not isinstance(want, dict) or not (n in FILES or PART.fullmatch(n))]
    if bad:
        return f"{shards.redact(folder)}/{LIST}: bad entry {bad[0]!r}"
    return files


def read_checked(folder: str, name: str, want: dict, storage_options: dict | None = None) -> bytes:
    """The bytes of ``folder/name``, checked against its ``files.json`` entry; CheckpointError if they differ."""
    path = locate(folder, name)
    try:
        data = shards.read_object(path, storage_options)
    except (OSError, shards.StorageError) as exc:
        raise CheckpointError(f"{shards.redact(path)}: unreadable ({shards.redact(exc)})") from exc
    problem = _compare(path, *sha256_bytes(data), want)
    if problem:
        raise CheckpointError(problem)
    return data


def _check(folder: str, name: str, want: dict, storage_options: dict | None) -> str | None:
    path = locate(folder, name)
    try:
        if shards.is_remote(path):
            h = hashlib.sha256()
            size = len(shards.read_object(path, storage_options, hasher=h))
            digest = h.hexdigest()
        else:
            size, digest = sha256_file(path)
    except (OSError, shards.StorageError) as exc:
        return f"{shards.redact(path)}: unreadable ({shards.redact(getattr(exc, 'strerror', None) or exc)})"
    return _compare(path, size, digest, want)


def _compare(path: str, size: int, digest: str, want: dict) -> str | None:
    shown = shards.redact(path)
    if size != want.get("bytes"):
        return f"{shown}: {size} bytes, {LIST} lists {want.get('bytes')} (truncated or replaced)"
    if digest != want.get("sha256"):
        return f"{shown}: sha256 {digest[:12]}…, {LIST} lists {str(want.get('sha256'))[:12]}… (modified)"
    return None
