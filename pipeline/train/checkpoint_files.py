"""The file list of a checkpoint step folder, ``files.json``, and its verification.

    {"version": 1, "step": 12, "files": {"model.pt": {"bytes": 1234, "sha256": "..."}, ...}}

``save`` writes it last, after every other file is on disk, so a folder with a
list that matches its files is complete and untouched; a truncated, replaced or
missing file fails ``verify`` with one line naming it.
"""
from __future__ import annotations

import hashlib
import json
import os

FILES = ("model.pt", "optim.pt", "state.json")  # what every step folder must hold
LIST = "files.json"
VERSION = 1
CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, fails verification or does not fit this run."""


def sha256_file(path: str) -> tuple[int, str]:
    """(bytes, sha256 hex) of the file at ``path``."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def write_file_list(folder: str, step: int, write) -> None:
    """List the files of ``folder`` (sizes and sha256, read back from disk) in ``files.json``."""
    files = {}
    for name in FILES:
        size, digest = sha256_file(os.path.join(folder, name))
        files[name] = {"bytes": size, "sha256": digest}
    write(os.path.join(folder, LIST), json.dumps({"version": VERSION, "step": step, "files": files}).encode())


def verify(folder: str, step: int) -> str | None:
    """None when ``folder`` (the checkpoint of ``step``) is complete and matches its list, else why not."""
    listed = _read_list(folder)
    if isinstance(listed, str):
        return listed
    if listed.get("step") != step:
        return f"{folder}/{LIST}: lists step {listed.get('step')!r}, the folder is step {step}"
    files = listed.get("files")
    if not isinstance(files, dict) or not set(FILES) <= files.keys():
        return f"{folder}/{LIST}: does not list {', '.join(FILES)}"
    for name, want in sorted(files.items()):
        problem = _check(folder, name, want)
        if problem:
            return problem
    return None


def _read_list(folder: str) -> dict | str:
    path = os.path.join(folder, LIST)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return f"{path}: missing (the save did not complete, or an older version wrote it)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{path}: unreadable ({exc})"
    if not isinstance(data, dict) or data.get("version") != VERSION:
        return f"{path}: not a version-{VERSION} file list"
    return data


def _check(folder: str, name: str, want) -> str | None:
    path = os.path.join(folder, name)
    if os.sep in name or name.startswith(".") or not isinstance(want, dict):
        return f"{folder}/{LIST}: bad entry {name!r}"
    try:
        size, digest = sha256_file(path)
    except OSError as exc:
        return f"{path}: unreadable ({exc.strerror or exc})"
    if size != want.get("bytes"):
        return f"{path}: {size} bytes, {LIST} lists {want.get('bytes')} (truncated or replaced)"
    if digest != want.get("sha256"):
        return f"{path}: sha256 {digest[:12]}…, {LIST} lists {str(want.get('sha256'))[:12]}… (modified)"
    return None
