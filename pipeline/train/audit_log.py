"""The sample audit log each rank writes with ``--audit``: ``OUT/audit/rank{R}.jsonl``.

Line 1 is a header (train manifest URL, rank, world size, seed, samples per
rank per epoch); then one line per micro-batch:
``{"step": 12, "epoch": 0, "ids": [...trained sample ids...], "pads": [...flagged pad ids...]}``.
``shards audit OUT`` checks the files against the manifest.  On ``--resume``
the file is cut back to the checkpoint's step first, so replayed steps are
not counted twice.

On an object store (``--out s3://bucket/run``) there is no append: the lines
since the previous checkpoint are written as one part,
``OUT/audit/rank{R}.part-{LAST_STEP:07d}.jsonl`` (the header line first, then
the lines of the steps up to LAST_STEP), when the checkpoint is taken and at
the end; a resume deletes (or cuts) the parts past the checkpoint's step.
``shards audit`` reads both forms.
"""
from __future__ import annotations

import json
import os
import re

from shards import is_remote, join_url, list_names, read_object, remove_url, write_bytes_atomic

VERSION = 1
PART = re.compile(r"rank(\d+)\.part-(\d{7,})\.jsonl")


def audit_path(out_dir: str, rank: int) -> str:
    return os.path.join(out_dir, "audit", f"rank{rank}.jsonl")


def absolute_url(url: str) -> str:
    """Local paths made absolute so the audit can be checked from any folder."""
    return url if is_remote(url) else os.path.abspath(url)


class AuditLog:
    """Appends the sample ids of every micro-batch this rank trains on (remote: one part per checkpoint)."""

    def __init__(self, out_dir: str, rank: int, header: dict, resume_step: int | None = None,
                 storage_options: dict | None = None):
        header = {"audit": VERSION, "rank": rank, **header}
        self._parts = Parts(out_dir, rank, header, resume_step or 0, storage_options) if is_remote(out_dir) else None
        self._file = None
        if self._parts is not None:
            return
        self.path = audit_path(out_dir, rank)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        kept = truncate(self.path, resume_step, header) if resume_step else None
        if kept is None:
            first = {**header, "first_step": (resume_step or 0) + 1}
            with open(self.path, "w", encoding="utf-8") as f:
                f.write(json.dumps(first) + "\n")
        self._file = open(self.path, "a", encoding="utf-8")

    def record(self, step: int, epoch: int, sample_ids: list[str], is_pad) -> None:
        pads = [bool(p) for p in is_pad]
        line = json.dumps({"step": step, "epoch": epoch,
                           "ids": [s for s, p in zip(sample_ids, pads) if not p],
                           "pads": [s for s, p in zip(sample_ids, pads) if p]})
        if self._parts is not None:
            self._parts.add(line, step)
            return
        # one write per line, flushed: a SIGKILL loses at most the line being written
        self._file.write(line + "\n")
        self._file.flush()

    def sync(self) -> None:
        """Make the lines so far durable (before a checkpoint that vouches for them)."""
        if self._parts is not None:
            self._parts.flush()
            return
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.sync()
        if self._file is not None:
            self._file.close()


class Parts:
    """The remote form: lines held until ``flush`` writes them as the part named by their last step."""

    def __init__(self, out_dir: str, rank: int, header: dict, resume_step: int, storage_options: dict | None):
        self.folder, self.rank, self.options = join_url(out_dir, "audit"), rank, storage_options
        first = truncate_parts(self.folder, rank, resume_step, header, storage_options)
        self.header = {**header, "first_step": resume_step + 1 if first is None else first}
        self.lines: list[str] = []
        self.last = resume_step

    def add(self, line: str, step: int) -> None:
        self.lines.append(line)
        self.last = step

    def flush(self) -> None:
        if self.lines:
            write_part(self.folder, self.rank, self.last, self.header, self.lines, self.options)
            self.lines = []


def part_url(folder: str, rank: int, last_step: int) -> str:
    return join_url(folder, f"rank{rank}.part-{last_step:07d}.jsonl")


def write_part(folder: str, rank: int, last_step: int, header: dict, lines: list[str], options) -> None:
    text = "\n".join([json.dumps(header), *lines]) + "\n"
    write_bytes_atomic(part_url(folder, rank, last_step), text.encode(), options)


def truncate_parts(folder: str, rank: int, step: int, header: dict, options: dict | None) -> int | None:
    """Remote: delete this rank's lines of steps > ``step`` (whole parts, or cut one); returns the
    ``first_step`` of the parts kept, None when none is left."""
    first = None
    parts = sorted((int(m.group(2)), n) for n in list_names(folder, options)
                   if (m := PART.fullmatch(n)) and int(m.group(1)) == rank)
    for last, name in parts:
        url = join_url(folder, name)
        lines = [t for t in read_object(url, options).decode("utf-8", errors="replace").split("\n") if t.strip()]
        old = _entry(url, 1, lines[0] if lines else "", "audit")
        _same_run(url, old, header)
        kept = lines[1:] if last <= step else [t for i, t in enumerate(lines[1:], start=2)
                                                if _parses(t) and _entry(url, i, t, "step")["step"] <= step]
        if last > step:
            remove_url(url, options)
            if kept:
                write_part(folder, rank, json.loads(kept[-1])["step"], old, kept, options)
        if kept and first is None:
            first = old.get("first_step", 1)
    return first


def truncate(path: str, step: int, header: dict) -> int | None:
    """Keep the header and the lines of steps <= ``step``; returns the lines kept, None if no file.

    A torn last line (the process was killed mid-write) is dropped with the
    other lines past the checkpoint.
    """
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    _same_run(path, _entry(path, 1, lines[0], "audit"), header)
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


def _same_run(path: str, old: dict, header: dict) -> None:
    for key in ("train", "world_size", "seed"):
        if old.get(key) != header.get(key):
            raise ValueError(f"{path}: audit log was written with {key}={old.get(key)!r}, this run has "
                             f"{header.get(key)!r}; resume with the same settings or use a new --out")


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
