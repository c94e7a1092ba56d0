"""``shards audit RUN_DIR``: prove from a run's audit logs that every sample was trained exactly once per epoch.

    shards audit runs/demo            # or: python -m tools.audit runs/demo
    shards audit s3://bucket/run      # a run whose --out was a URL (its logs are parts per checkpoint)

Reads ``RUN_DIR/audit/rank{R}.jsonl`` (written by ``pipeline.train.loop --audit``:
a header, then one line per micro-batch with the trained sample ids and the
flagged pad ids) and checks them against the train manifest named in the
header (and its ``identity``, when the header records one).  For every
complete epoch (each rank logged its full share): each sample of the
manifest trained exactly once, none missing, no unknown id, and pads (the
repeats that even out ranks) never counted as trained.  A partial last epoch
is checked for duplicates and unknown ids, and its coverage shown.
Exit status: 0 when the audit passes, 1 when it fails, 2 when the logs
cannot be read.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from shards.manifest import SAMPLE_ID, load_manifest
from shards.storage import StorageError, is_remote, list_names, parse_storage_options, read_object, redact

EXAMPLES = 5  # ids shown per failure kind


@dataclass
class RankLog:
    header: dict
    # epoch -> trained ids, and epoch -> number of pad items, in log order
    ids: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    pads: Counter = field(default_factory=Counter)
    steps: list[int] = field(default_factory=list)


def sample_id(shard: int, record: int) -> str:
    return SAMPLE_ID % (shard, record)


def _lines(url: str, storage_options: dict | None) -> list[str]:
    return [line for line in read_object(url, storage_options).decode("utf-8").split("\n") if line.strip()]


def read_log(path: str, storage_options: dict | None = None, parts: list[str] = ()) -> RankLog:
    """A rank's log: the file ``path``, or (remote runs) its ``parts`` in step order, each opening with the header."""
    chunks = [(url, _lines(url, storage_options)) for url in (parts or [path])]
    if not chunks[0][1]:
        raise ValueError(f"{redact(path)}: empty audit log; was the run started with --audit?")
    entries = []
    for url, lines in chunks:
        try:
            got = [json.loads(line) for line in lines]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{redact(url)}: not valid JSON lines ({exc}); a run killed mid-write is cut back "
                             f"by --resume, rerun with --resume to repair it") from exc
        if entries and got and got[0] != entries[0]:
            raise ValueError(f"{redact(url)}: its header differs from the first part's: parts of different runs")
        entries += got if not entries else got[1:]
    header = entries[0]
    if header.get("audit") != 1:
        raise ValueError(f"{redact(path)}: first line is not an audit header of version 1: {str(header)[:200]}")
    log = RankLog(header)
    for e in entries[1:]:
        log.ids[e["epoch"]].extend(e["ids"])
        log.pads[e["epoch"]] += len(e["pads"])
        log.steps.append(e["step"])
    return log


def read_logs(run_dir: str, storage_options: dict | None = None) -> dict[int, RankLog]:
    """rank -> its log, from ``RUN/audit/rank{R}.jsonl`` or ``rank{R}.part-{STEP}.jsonl`` (local path or URL)."""
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


@dataclass
class Finding:
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.lines.append(text)

    def fail(self, text: str) -> None:
        self.ok = False
        self.lines.append(f"FAIL {text}")


def check_ranks(logs: dict[int, RankLog], out: Finding) -> tuple[int, int]:
    """Same run on every rank, all ranks present, same steps; returns (world size, samples per rank)."""
    first = next(iter(logs.values())).header
    world, per_rank = first["world_size"], first["samples_per_rank"]
    for rank, log in logs.items():
        for key in ("train", "world_size", "seed", "samples_per_rank"):
            if log.header.get(key) != first.get(key):
                out.fail(f"rank {rank} header has {key}={log.header.get(key)!r}, rank "
                         f"{next(iter(logs))} has {first.get(key)!r}: logs of different runs mixed")
        if log.header.get("first_step", 1) != 1:
            out.fail(f"rank {rank} log starts at step {log.header['first_step']}: audit was off before a "
                     f"resume, so the earlier steps cannot be checked")
    missing = sorted(set(range(world)) - set(logs))
    if missing:
        out.fail(f"no audit log for rank(s) {missing} of world size {world}")
    steps = {rank: log.steps for rank, log in logs.items()}
    if len({tuple(s) for s in steps.values()}) > 1:
        out.fail("ranks logged different steps: " + ", ".join(f"rank {r}: {len(s)} micro-batches"
                                                              for r, s in steps.items()))
    return world, per_rank


def check_epoch(epoch: int, logs: dict[int, RankLog], expected: set[str], world: int, per_rank: int,
                out: Finding) -> None:
    seen: Counter = Counter()
    items = 0
    pads = 0
    for log in logs.values():
        seen.update(log.ids.get(epoch, []))
        items += len(log.ids.get(epoch, [])) + log.pads[epoch]
        pads += log.pads[epoch]
    complete = len(logs) == world and all(
        len(log.ids.get(epoch, [])) + log.pads[epoch] == per_rank for log in logs.values())
    dup = sorted(s for s, n in seen.items() if n > 1)
    unknown = sorted(set(seen) - expected)
    trained = len(set(seen) & expected)
    kind = "complete" if complete else "partial"
    out.say(f"epoch {epoch} ({kind}): {trained}/{len(expected)} samples trained "
            f"({trained / max(len(expected), 1):.1%}), {sum(seen.values())} trained items, "
            f"{pads} pad items excluded, {len(dup)} duplicated, {len(unknown)} unknown")
    if dup:
        out.fail(f"epoch {epoch}: {len(dup)} sample(s) trained more than once, e.g. "
                 f"{', '.join(f'{s} x{seen[s]}' for s in dup[:EXAMPLES])}")
    if unknown:
        out.fail(f"epoch {epoch}: {len(unknown)} id(s) not in the manifest, e.g. {unknown[:EXAMPLES]}")
    if complete:
        missing = sorted(expected - set(seen))
        if missing:
            out.fail(f"epoch {epoch}: {len(missing)} sample(s) never trained, e.g. {missing[:EXAMPLES]} "
                     f"(shards skipped as corrupt turn their samples into pads)")
        if pads != world * per_rank - len(expected) and not missing:
            out.fail(f"epoch {epoch}: {pads} pad items, expected {world * per_rank - len(expected)}")
    elif any(len(log.ids.get(epoch, [])) + log.pads[epoch] > per_rank for log in logs.values()):
        out.fail(f"epoch {epoch}: a rank logged more than its {per_rank} samples per epoch")


def reopenable(recorded: str) -> str:
    """The header's train URL, stored without credentials (``pipeline.train.loop`` redacts it): a hidden
    ``user:token@`` is dropped (credentials come from ``--storage-option`` or the environment); a
    hidden secret query value cannot be rebuilt, so the run's URL must be given again."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)\*\*\*@", r"\1", recorded)
    if "=***" in url:
        raise ValueError(f"audit header: the train URL {recorded} had a secret in its query, hidden in the "
                         f"log; pass the run's URL again with --train URL")
    return url


def audit(run_dir: str, storage_options: dict | None = None, train_url: str | None = None) -> Finding:
    out = Finding()
    logs = read_logs(run_dir, storage_options)
    world, per_rank = check_ranks(logs, out)
    url = train_url or reopenable(next(iter(logs.values())).header["train"])
    manifest = load_manifest(url, storage_options)
    url = redact(url)  # for the lines below: a --train given with credentials is not echoed
    expected = {sample_id(s, r) for s, size in enumerate(manifest.shard_sizes) for r in range(size)}
    recorded = next(iter(logs.values())).header.get("identity")
    if recorded is not None and recorded != manifest.identity:
        out.fail(f"manifest {url} has identity {manifest.identity[:16]}, the run trained on "
                 f"{str(recorded)[:16]}: other data (rebuilt, edited or another set) than the run's")
    if manifest.num_records != next(iter(logs.values())).header["num_records"]:
        out.fail(f"manifest {url} has {manifest.num_records} records, the run trained on "
                 f"{next(iter(logs.values())).header['num_records']}: shards were rebuilt after the run")
    steps = max((max(log.steps, default=0) for log in logs.values()), default=0)
    out.say(f"audit {redact(run_dir)}: train set {url} ({len(expected)} samples in {len(manifest.shards)} shards), "
            f"world size {world}, {per_rank} samples per rank per epoch, {steps} steps logged")
    epochs = sorted({e for log in logs.values() for e in log.ids} | {e for log in logs.values() for e in log.pads})
    for epoch in epochs:
        check_epoch(epoch, logs, expected, world, per_rank, out)
    complete = sum(1 for line in out.lines if "(complete)" in line)
    out.say(f"{'OK' if out.ok else 'FAILED'}: {complete} complete epoch(s), "
            f"{len(epochs) - complete} partial; each sample trained "
            f"{'exactly once per complete epoch' if out.ok else 'NOT exactly once (see FAIL lines)'}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shards audit", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="the training run's --out folder or URL (s3://bucket/run)")
    p.add_argument("--train", help="train manifest URL (default: the one recorded in the logs)")
    p.add_argument("--storage-option", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        result = audit(args.dir, parse_storage_options(args.storage_option), args.train)
    except (OSError, ValueError, KeyError, StorageError) as exc:
        print(f"shards audit: error: {redact(exc)}", file=sys.stderr)
        return 2
    print("\n".join(result.lines))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
