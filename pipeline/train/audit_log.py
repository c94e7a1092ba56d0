"""The sample audit log each rank writes with ``--audit``: ``OUT/audit/rank{R}.jsonl``.

The line format is ``shards.audit_schema`` (one definition for this writer and the
checker): a header, then one line per micro-batch, either the trained sample ids
and the flagged pad ids, or for packed LM batches the document segments trained
(``[doc, offset, count(, length)]``).  ``shards audit OUT`` checks the files
against the manifest.  On ``--resume`` the file is cut back to the checkpoint's
step first, so replayed steps are not counted twice; a resume under another
topology (elastic: other world size, workers or batch size), or a rank that was
absent for a while, appends a new header (a new *stretch*) before its lines.

On an object store (``--out s3://bucket/run``) there is no append: the lines
since the previous checkpoint are written as one part,
``OUT/audit/rank{R}.part-{LAST_STEP:07d}.jsonl`` (the stretch's header line first,
then the lines of the steps up to LAST_STEP), when the checkpoint is taken and at
the end; a resume deletes (or cuts) the parts past the checkpoint's step.
``shards audit`` reads both forms.
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict

from shards import (
    audit_schema,
    is_remote,
    join_url,
    list_names,
    read_object,
    remove_url,
    write_bytes_atomic,
)

VERSION = audit_schema.VERSION
PART = re.compile(r"rank(\d+)\.part-(\d{7,})\.jsonl")
PART_NAME = "rank{rank}.part-{step:07d}.jsonl"
SINGLE = re.compile(r"rank(\d+)\.jsonl")
OPEN_LIMIT = 4096  # documents a packed writer remembers as possibly continuing (one per worker is the need)


def audit_path(out_dir: str, rank: int) -> str:
    return os.path.join(out_dir, "audit", f"rank{rank}.jsonl")


def absolute_url(url: str) -> str:
    """Local paths made absolute so the audit can be checked from any folder."""
    return url if is_remote(url) else os.path.abspath(url)


class AuditLog:
    """Appends what every micro-batch this rank trains on holds (remote: one part per checkpoint)."""

    def __init__(self, out_dir: str, rank: int, header: dict, resume_step: int | None = None,
                 storage_options: dict | None = None):
        resume = resume_step or 0
        fields = {k: v for k, v in header.items() if k not in ("audit", "rank", "first_step")}
        self._segments = Segments() if "pack" in fields else None
        self._parts = Parts(out_dir, rank, fields, resume, storage_options) if is_remote(out_dir) else None
        self._file = None
        if self._segments is not None and resume:
            self._segments.resume(all_lines(join_url(out_dir, "audit") if is_remote(out_dir) else
                                            os.path.join(out_dir, "audit"), resume, storage_options))
        if self._parts is not None:
            return
        self.path = audit_path(out_dir, rank)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        kept = truncate(self.path, resume, fields) if resume else None
        lines = continued(kept, rank, fields, resume)
        write_lines(self.path, lines)
        self._file = open(self.path, "a", encoding="utf-8")

    def record(self, step: int, epoch: int, sample_ids: list[str], is_pad) -> None:
        pads = [bool(p) for p in is_pad]
        self._write(audit_schema.sample_line(step, epoch, [s for s, p in zip(sample_ids, pads) if not p],
                                             [s for s, p in zip(sample_ids, pads) if p]), step)

    def record_batch(self, step: int, epoch: int, batch: dict) -> None:
        """One micro-batch as the loop trains it: packed LM blocks (``doc_ids``) as document
        segments, anything else as sample ids and pad ids."""
        if "doc_ids" not in batch:
            self.record(step, epoch, batch["sample_id"], batch["is_pad"])
            return
        if self._segments is None:
            raise ValueError("audit log: a packed batch arrived but the audit header has no 'pack' entry; "
                             "pass the packing settings in the header (pipeline.train.loop.audit_header)")
        segs, filler = self._segments.of_batch(batch, epoch)
        self._write(audit_schema.packed_line(step, epoch, segs, filler), step)

    def _write(self, entry: dict, step: int) -> None:
        line = audit_schema.dumps(entry)
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


# -- packed batches → document segments ---------------------------------------------------
class Segments:
    """Turns packed LM batches into ``[doc, offset, count(, length)]`` segments.

    A batch tells, per block, its documents (``sample_ids``), each one's tokens
    (``doc_ids`` == its index in the block) and which documents start in the batch
    (``started_ids``).  The offset of a continued document is what this rank has
    seen of it (``_open``: a worker's stream continues its document in that worker's
    next batch); a document ends where another one or padding follows it in its
    block, and only then is its length known.  A document that ends exactly at a
    block's end stays "open" without a length (the checker takes the length from
    the data)."""

    def __init__(self):
        self._open: OrderedDict[str, int] = OrderedDict()
        self._epoch: int | None = None

    def resume(self, lines: list[dict]) -> None:
        self._open = OrderedDict(audit_schema.open_documents(lines))
        self._epoch = max((x["epoch"] for x in lines), default=None)

    def of_batch(self, batch: dict, epoch: int) -> tuple[list[list], bool]:
        if epoch != self._epoch:
            self._open.clear()
            self._epoch = epoch
        names = [list(b) for b in batch["sample_ids"]]
        if not any(names):
            return [], bool(all(bool(p) for p in batch["is_pad"]))
        started = set(batch.get("started_ids", ()))
        doc_ids = batch["doc_ids"]
        doc_ids = doc_ids.numpy() if hasattr(doc_ids, "numpy") else doc_ids
        segs, seen = [], set()
        for row, docs in zip(doc_ids, names):
            counts = _piece_lengths(row, len(docs))
            padded = bool((row < 0).any())
            for k, (doc, count) in enumerate(zip(docs, counts)):
                offset = 0 if doc in started and doc not in seen else self._open.pop(doc, None)
                seen.add(doc)
                ends = k < len(docs) - 1 or padded
                segs.append(self._segment(doc, offset, count, ends))
        return segs, False

    def _segment(self, doc: str, offset: int | None, count: int, ends: bool) -> list:
        if offset is None:
            return [doc, None, count]
        if ends:
            return [doc, offset, count, offset + count]
        self._open[doc] = offset + count
        while len(self._open) > OPEN_LIMIT:
            self._open.popitem(last=False)
        return [doc, offset, count]


def _piece_lengths(row, pieces: int) -> list[int]:
    counts = [0] * pieces
    for value in row.tolist():
        if value >= 0:
            counts[value] += 1
    return counts


def all_lines(folder: str, step: int, options: dict | None) -> list[dict]:
    """Every rank's counted lines up to ``step``, in step order (what a resumed packed writer replays)."""
    logs: dict[int, list] = {}
    for name in sorted(list_names(folder, options)):
        m = SINGLE.fullmatch(name) or PART.fullmatch(name)
        if not m:
            continue
        text = read_object(join_url(folder, name), options).decode("utf-8", errors="replace")
        entries = [e for e in (_maybe(t) for t in text.split("\n") if t.strip()) if isinstance(e, dict)]
        secs = logs.setdefault(int(m.group(1)), [])
        for entry in entries:
            if audit_schema.is_header(entry):
                secs.append((entry, []))
            elif secs and "step" in entry and entry["step"] <= step:
                secs[-1][1].append(entry)
    lines = [x for secs in audit_schema.counted(logs).values() for _, xs in secs for x in xs]
    return sorted(lines, key=lambda x: x["step"])


def _maybe(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


# -- the file after a resume ----------------------------------------------------------------
def continued(kept: list[str] | None, rank: int, fields: dict, resume: int) -> list[str]:
    """The log's lines for a run (re)starting after step ``resume``: the kept lines, plus a new
    header when this is a new stretch (another topology, or this rank was absent for a while)."""
    new = audit_schema.header_line(rank, fields, resume + 1)
    if not kept:
        return [audit_schema.dumps(new)]
    entries = [json.loads(t) for t in kept]
    last_header = next(e for e in reversed(entries) if audit_schema.is_header(e))
    last_step = entries[-1]["step"] if not audit_schema.is_header(entries[-1]) else None
    if audit_schema.same_stretch(last_header, new) and last_step == resume:
        return kept
    if last_step is None and last_header.get("first_step") == resume + 1:
        kept = kept[:-1]  # a stretch that logged nothing before it was resumed again: replace its header
    return kept + [audit_schema.dumps(new)]


def write_lines(path: str, lines: list[str]) -> None:
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def truncate(path: str, step: int, fields: dict) -> list[str] | None:
    """The headers and the lines of steps <= ``step`` of the file, None if there is none.

    A torn last line (the process was killed mid-write) is dropped with the
    other lines past the checkpoint.
    """
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    _same_run(path, _entry(path, 1, lines[0], header=True), fields)
    kept = [lines[0]]
    last = max((i for i, text in enumerate(lines) if text.strip()), default=0)
    for number, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        if number - 1 == last and _maybe(text) is None:
            continue  # the torn last line of a killed write; its step is past the checkpoint
        entry = _entry(path, number, text)
        if audit_schema.is_header(entry):
            _same_run(path, entry, fields)
            kept.append(text)
        elif entry["step"] <= step:
            kept.append(text)
    return kept


def _same_run(path: str, old: dict, fields: dict) -> None:
    for key in ("train", "seed"):
        if old.get(key) != fields.get(key):
            raise ValueError(f"{path}: audit log was written with {key}={old.get(key)!r}, this run has "
                             f"{fields.get(key)!r}; resume with the same settings or use a new --out")


def _entry(path: str, number: int, text: str, header: bool = False) -> dict:
    """Line ``number`` as a header or a micro-batch line; a damaged one is named."""
    entry = _maybe(text)
    where = f"{path}:{number}"
    if header or audit_schema.is_header(entry):
        try:
            return audit_schema.check_header(entry, where, required=("world_size",))
        except ValueError:
            raise ValueError(f"{where}: not an audit line (damaged or edited); restore the file, or "
                             f"start the run over with --resume never") from None
    return audit_schema.check_line(entry, where)


# -- the remote form --------------------------------------------------------------------------
class Parts:
    """Lines held until ``flush`` writes them as the part named by their last step."""

    def __init__(self, out_dir: str, rank: int, fields: dict, resume_step: int, storage_options: dict | None):
        self.folder, self.rank, self.options = join_url(out_dir, "audit"), rank, storage_options
        kept = truncate_parts(self.folder, rank, resume_step, fields, storage_options)  # step 0: all deleted
        lines = continued(kept, rank, fields, resume_step)
        self.header = json.loads(next(t for t in reversed(lines) if audit_schema.is_header(json.loads(t))))
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
    return join_url(folder, PART_NAME.format(rank=rank, step=last_step))


def write_part(folder: str, rank: int, last_step: int, header: dict, lines: list[str], options) -> None:
    text = "\n".join([audit_schema.dumps(header), *lines]) + "\n"
    write_bytes_atomic(part_url(folder, rank, last_step), text.encode(), options)


def truncate_parts(folder: str, rank: int, step: int, fields: dict, options: dict | None) -> list[str]:
    """Remote: delete this rank's lines of steps > ``step`` (whole parts, or cut ones); returns the
    lines kept, each part's header first.

    Parts are cut by the steps their lines hold, never by their names.  A cut part is written
    (under the name of its last kept step) before the old one is deleted, so a failure in between
    leaves both: the next resume finds the copy's steps again in the old part, with the same lines,
    and drops them there.  A damaged line is refused with its part and line number (parts are
    written whole, so it is no torn write; its step is unknown)."""
    parts = sorted((int(m.group(2)), n) for n in list_names(folder, options)
                   if (m := PART.fullmatch(n)) and int(m.group(1)) == rank)
    present = {name for _, name in parts}
    kept_all: list[str] = []
    owners: dict[int, tuple[str, list]] = {}  # step -> (the part that kept it, its header + lines)
    for _, name in parts:
        url = join_url(folder, name)
        header, lines = _read_part(url, fields, options)
        kept = _kept_lines(url, header, lines, step, owners)
        _replace_part(folder, rank, name, header, lines, kept, present, options)
        if kept:
            kept_all += [header, *(text for text, _ in kept)]
    return kept_all


def _read_part(url: str, fields: dict, options: dict | None) -> tuple[str, list[tuple[str, dict]]]:
    """A part's header line and its micro-batch lines, each with its entry; a damaged line raises."""
    texts = [t for t in read_object(url, options).decode("utf-8", errors="replace").split("\n") if t.strip()]
    _same_run(url, _entry(url, 1, texts[0] if texts else "", header=True), fields)
    lines = []
    for number, text in enumerate(texts[1:], start=2):
        entry = _entry(url, number, text)
        if audit_schema.is_header(entry):
            raise ValueError(f"{url}:{number}: a second header inside a part (a part holds one stretch); "
                             f"restore the part, or start the run over with --resume never")
        lines.append((text, entry))
    return texts[0], lines


def _kept_lines(url: str, header: str, lines: list[tuple[str, dict]], step: int,
                owners: dict[int, tuple[str, list]]) -> list[tuple[str, dict]]:
    """The lines of steps <= ``step`` not already kept from an earlier part (the leftover of a cut
    that failed before it deleted the old part: the same lines again, else the logs are mixed)."""
    by_step: dict[int, list[tuple[str, dict]]] = {}
    for text, entry in lines:
        if entry["step"] <= step:
            by_step.setdefault(entry["step"], []).append((text, entry))
    kept = []
    for s, group in by_step.items():
        mine = [json.loads(header), *(text for text, _ in group)]
        if s not in owners:
            owners[s] = (url, mine)
            kept += group
        elif owners[s][1] != mine:
            raise ValueError(f"{url}: step {s} is also in {owners[s][0]} with other lines: audit logs of two "
                             f"runs mixed; delete the wrong part, or start the run over with --resume never")
    return kept


def _replace_part(folder: str, rank: int, name: str, header: str, lines: list, kept: list,
                  present: set[str], options: dict | None) -> None:
    """Leave the part as it is, or write its cut copy first and then delete it."""
    if len(kept) == len(lines):
        return
    target = None  # nothing kept: the part goes
    if kept:
        last = max(entry["step"] for _, entry in kept)
        target = PART_NAME.format(rank=rank, step=last)
        if target != name and target in present:
            raise ValueError(f"{join_url(folder, name)}: its lines up to step {last} would replace {target}, "
                             f"another part of rank {rank}: audit parts renamed or mixed; restore them, or "
                             f"start the run over with --resume never")
        write_part(folder, rank, last, json.loads(header), [text for text, _ in kept], options)
        present.add(target)
    if target != name:
        remove_url(join_url(folder, name), options)
        present.discard(name)
