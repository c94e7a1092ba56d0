"""The one definition of the sample-audit line format, shared by the writer
(``pipeline.train.audit_log``, through the names ``shards`` exports) and the checker (``shards.audit``).

A rank's log is a sequence of *sections*: a header line, then the lines of the
micro-batches trained under it.  A run that resumes under another topology (an
elastic resume: world size, workers or batch size changed) appends a new header
before its lines: a *stretch* is every rank's section opening at the same
``first_step``.  Header (``"audit": 1``)::

    {"audit": 1, "rank": R, "train": URL, "identity": ..., "seed": S, "world_size": W,
     "samples_per_rank": P, "first_step": F, ...,  "pack": {...} (packed LM runs only)}

``pack`` = ``{"seq_len", "sep_id", "prefix", "suffix"}``: the separator the packer
appends to every document and the tokenizer specials it strips from its ends
(``pipeline.pack.cut``), so a document of ``n`` stored ids trains ``n - stripped + 1``
tokens.  Micro-batch lines:

    classify / unpacked LM: {"step": 12, "epoch": 0, "ids": [trained sample ids], "pads": [flagged pad ids]}
    packed LM:              {"step": 12, "epoch": 0, "segs": [[doc, offset, count] or [doc, offset, count, length]]}
                            {"step": 13, "epoch": 0, "segs": [], "filler": true}      (lockstep filler)

A segment is ``count`` tokens of document ``doc`` from token ``offset`` on;
``length`` (the document's full token count, separator included) is given on a
segment known to end the document.  ``offset`` is null when the writer could not
place it (a continued document it never saw start).
"""
from __future__ import annotations

import json

VERSION = 1
RUN_KEYS = ("train", "identity", "seed", "num_records", "shuffle", "pack")  # one value for the whole run
STRETCH_KEYS = ("world_size", "samples_per_rank")                            # may change at an elastic resume


def header_line(rank: int, fields: dict, first_step: int) -> dict:
    return {"audit": VERSION, **fields, "rank": rank, "first_step": first_step}


def sample_line(step: int, epoch: int, ids: list[str], pads: list[str]) -> dict:
    return {"step": step, "epoch": epoch, "ids": ids, "pads": pads}


def packed_line(step: int, epoch: int, segments: list[list], filler: bool = False) -> dict:
    line = {"step": step, "epoch": epoch, "segs": segments}
    if filler:
        line["filler"] = True
    return line


def dumps(entry: dict) -> str:
    return json.dumps(entry)


def is_header(entry) -> bool:
    return isinstance(entry, dict) and "audit" in entry


def same_stretch(a: dict, b: dict) -> bool:
    """Two headers of one stretch: equal but for ``first_step``."""
    return {k: v for k, v in a.items() if k != "first_step"} == {k: v for k, v in b.items() if k != "first_step"}


def check_header(entry, where: str, required: tuple[str, ...] = ("world_size", "samples_per_rank", "rank")) -> dict:
    """A header line; ``required``: its integer fields the reader needs (the checker needs all three)."""
    if not is_header(entry) or entry.get("audit") != VERSION:
        raise ValueError(f"{where}: not an audit header of version {VERSION}: {str(entry)[:200]}; "
                         f"was the run started with --audit?")
    for key in required:
        if not isinstance(entry.get(key), int) or entry[key] < 0:
            raise ValueError(f"{where}: audit header has {key}={entry.get(key)!r}, expected an integer >= 0; "
                             f"the log was damaged or edited")
    return entry


def check_line(entry, where: str) -> dict:
    """A micro-batch line, its shape checked (a damaged line is named, never half-read)."""
    ok = isinstance(entry, dict) and isinstance(entry.get("step"), int) and isinstance(entry.get("epoch"), int)
    if ok and "segs" in entry:
        ok = isinstance(entry["segs"], list) and all(_segment_ok(s) for s in entry["segs"])
    elif ok:
        ok = isinstance(entry.get("ids"), list) and isinstance(entry.get("pads"), list)
    if not ok:
        raise ValueError(f"{where}: not an audit line (damaged or edited): {str(entry)[:200]}; restore the "
                         f"file, or start the run over with --resume never")
    return entry


def _segment_ok(seg) -> bool:
    if not isinstance(seg, list) or len(seg) not in (3, 4) or not isinstance(seg[0], str):
        return False
    offset, count = seg[1], seg[2]
    length_ok = len(seg) == 3 or (isinstance(seg[3], int) and seg[3] > 0)
    return (offset is None or (isinstance(offset, int) and offset >= 0)) and isinstance(count, int) \
        and count > 0 and length_ok


def sections(entries: list, where: str) -> list[tuple[dict, list[dict]]]:
    """A rank's parsed lines → [(header, its micro-batch lines)], in file order."""
    if not entries:
        raise ValueError(f"{where}: empty audit log; was the run started with --audit?")
    out: list[tuple[dict, list[dict]]] = []
    for number, entry in enumerate(entries, start=1):
        if is_header(entry):
            out.append((check_header(entry, f"{where}:{number}"), []))
        elif not out:
            raise ValueError(f"{where}:1: not an audit header of version {VERSION}: {str(entry)[:200]}")
        else:
            out[-1][1].append(check_line(entry, f"{where}:{number}"))
    return out


def open_documents(lines: list[dict]) -> dict[str, int]:
    """Packed lines in training order → the documents begun but not known to be finished in the
    last epoch, each with the offset of its next token (what a resumed writer continues from)."""
    last = max((x["epoch"] for x in lines), default=None)
    opened: dict[str, int] = {}
    for line in lines:
        if line["epoch"] != last:
            continue
        for seg in line.get("segs", []):
            if len(seg) == 4 or seg[1] is None:
                opened.pop(seg[0], None)
            else:
                opened[seg[0]] = seg[1] + seg[2]
    return opened


def stretch_starts(logs: dict[int, list[tuple[dict, list[dict]]]]) -> list[int]:
    """Every stretch's first step, over the sections of all ranks, ascending."""
    return sorted({h.get("first_step", 1) for secs in logs.values() for h, _ in secs})


def counted(logs: dict[int, list[tuple[dict, list[dict]]]]) -> dict[int, list[tuple[dict, list[dict]]]]:
    """The sections with only the lines that count: a line of a stretch at or past the next stretch's
    first step was trained before a resume went back to that step's checkpoint (a rank that left the
    run keeps such lines; a rank still in it had its file cut back by the resume)."""
    starts = stretch_starts(logs)
    out: dict[int, list[tuple[dict, list[dict]]]] = {}
    for rank, secs in logs.items():
        out[rank] = []
        for header, lines in secs:
            first = header.get("first_step", 1)
            end = next((s for s in starts if s > first), None)
            out[rank].append((header, [x for x in lines if end is None or x["step"] < end]))
    return out
