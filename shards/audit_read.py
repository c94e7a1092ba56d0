"""Reading a run's audit logs for ``shards audit`` (audit.py): local files or per-checkpoint parts on any URL."""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict

from shards import audit_schema
from shards.storage import is_remote, list_names, read_object, redact

Sections = list[tuple[dict, list[dict]]]


def _entries(url: str, storage_options: dict | None) -> list:
    text = read_object(url, storage_options).decode("utf-8")
    try:
        return [json.loads(line) for line in text.split("\n") if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{redact(url)}: not valid JSON lines ({exc}); a run killed mid-write is cut back "
                         f"by --resume, rerun with --resume to repair it") from exc


def read_log(path: str, storage_options: dict | None = None, parts: list[str] = ()) -> Sections:
    """A rank's sections: the file ``path``, or (remote runs) its ``parts`` in step order, each
    opening with its stretch's header (parts of one stretch are joined)."""
    out: Sections = []
    for url in parts or [path]:
        for header, lines in audit_schema.sections(_entries(url, storage_options), redact(url)):
            if out and out[-1][0] == header:
                out[-1][1].extend(lines)
            else:
                out.append((header, lines))
    return out


def read_logs(run_dir: str, storage_options: dict | None = None) -> dict[int, Sections]:
    """rank -> its sections, from ``RUN/audit/rank{R}.jsonl`` or ``rank{R}.part-{STEP}.jsonl``."""
    folder = f"{run_dir.rstrip('/')}/audit" if is_remote(run_dir) else os.path.join(run_dir, "audit")
    names = list_names(folder, storage_options)
    singles = {int(m.group(1)): n for n in names if (m := re.fullmatch(r"rank(\d+)\.jsonl", n))}
    parts: dict[int, list] = defaultdict(list)
    for n in names:
        if m := re.fullmatch(r"rank(\d+)\.part-(\d+)\.jsonl", n):
            parts[int(m.group(1))].append((int(m.group(2)), f"{folder.rstrip('/')}/{n}"))
    if not singles and not parts:
        raise FileNotFoundError(f"{redact(folder)}/rank*.jsonl: no audit logs; train with --audit "
                                f"and pass the run's --out folder or URL")
    both = sorted(set(singles) & set(parts))
    if both:
        raise ValueError(f"{redact(folder)}: rank(s) {both} have both a rank file and parts: logs of two runs mixed")
    logs = {r: read_log(f"{folder.rstrip('/')}/{n}", storage_options) for r, n in singles.items()}
    logs.update({r: read_log(f"{redact(folder)}/rank{r}.part-*", storage_options, [u for _, u in sorted(p)])
                 for r, p in parts.items()})
    return dict(sorted(logs.items()))
