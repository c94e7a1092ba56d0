"""The sample audit log each rank writes with ``--audit``: ``OUT/audit/rank{R}.jsonl``.

Line 1 is a header (train manifest URL, rank, world size, seed, samples per
rank per epoch); then one line per micro-batch:
``{"step": 12, "epoch": 0, "ids": [...trained sample ids...], "pads": [...flagged pad ids...]}``.
``shards audit OUT`` checks the files against the manifest.  On ``--resume``
the file is cut back to the checkpoint's step first, so replayed steps are
not counted twice.
"""
from __future__ import annotations

import json
import os

from shards import is_remote

VERSION = 1


def audit_path(out_dir: str, rank: int) -> str:
    return os.path.join(out_dir, "audit", f"rank{rank}.jsonl")


def absolute_url(url: str) -> str:
    """Local paths made absolute so the audit can be checked from any folder."""
    return url if is_remote(url) else os.path.abspath(url)


class AuditLog:
    """Appends the sample ids of every micro-batch this rank trains on."""

    def __init__(self, out_dir: str, rank: int, header: dict, resume_step: int | None = None):
        self.path = audit_path(out_dir, rank)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        header = {"audit": VERSION, "rank": rank, **header}
        kept = truncate(self.path, resume_step, header) if resume_step else None
        if kept is None:
            first = {**header, "first_step": (resume_step or 0) + 1}
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps(first) + "\n")
        self._file = open(self.path, "a", encoding="utf-8")

    def record(self, step: int, epoch: int, sample_ids: list[str], is_pad) -> None:
        pads = [bool(p) for p in is_pad]
        line = {"step": step, "epoch": epoch,
                "ids": [s for s, p in zip(sample_ids, pads) if not p],
                "pads": [s for s, p in zip(sample_ids, pads) if p]}
        # one write per line, flushed: a SIGKILL loses at most the line being written
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def sync(self) -> None:
        """Make the lines so far durable (before a checkpoint that vouches for them)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.sync()
        self._file.close()


def truncate(path: str, step: int, header: dict) -> int | None:
    """Keep the header and the lines of steps <= ``step``; returns the lines kept, None if no file.

    A torn last line (the process was killed mid-write) is dropped with the
    other lines past the checkpoint.
    """
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    old = _entry(path, 1, lines[0], "audit")
    for key in ("train", "world_size", "seed"):
        if old.get(key) != header.get(key):
            raise ValueError(f"{path}: audit log was written with {key}={old.get(key)!r}, this run has "
                             f"{header.get(key)!r}; resume with the same settings or use a new --out")
    kept = [lines[0]]
    last = max((i for i, text in enumerate(lines) if text.strip()), default=0)
    for number, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        if number - 1 == last and not _parses(text):
            continue  # the torn last line of a killed write; its step is past the checkpoint
        if _entry(path, number, text, "step")["step"] <= step:
            kept.append(text)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(kept) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(kept) - 1


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _entry(path: str, number: int, text: str, key: str) -> dict:
    """Line ``number`` as a JSON object with an integer ``key`` ("audit" for the header)."""
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as exc:
        entry = exc
    if not isinstance(entry, dict) or not isinstance(entry.get(key), int):
        raise ValueError(f"{path}:{number}: not an audit line (damaged or edited); restore the file, or "
                         f"start the run over with --resume never")
    return entry
