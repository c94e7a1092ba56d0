"""``shards audit RUN_DIR``: prove from a run's audit logs that every sample was trained exactly once per epoch.

    shards audit runs/demo            # or: python -m tools.audit runs/demo

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
import glob
import json
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from shards.manifest import SAMPLE_ID, load_manifest
from shards.storage import parse_storage_options, redact

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


def read_log(path: str) -> RankLog:
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty audit log; was the run started with --audit?")
    try:
        entries = [json.loads(line) for line in lines]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON lines ({exc}); a run killed mid-write is cut back "
                         f"by --resume, rerun with --resume to repair it") from exc
    header = entries[0]
    if header.get("audit") != 1:
        raise ValueError(f"{path}: first line is not an audit header of version 1: {lines[0][:200]}")
    log = RankLog(header)
    for e in entries[1:]:
        log.ids[e["epoch"]].extend(e["ids"])
        log.pads[e["epoch"]] += len(e["pads"])
        log.steps.append(e["step"])
    return log


def read_logs(run_dir: str) -> dict[int, RankLog]:
    paths = glob.glob(os.path.join(run_dir, "audit", "rank*.jsonl"))
    if not paths:
        raise FileNotFoundError(f"{run_dir}/audit/rank*.jsonl: no audit logs; train with --audit "
                                f"and pass the run's --out folder")
    logs = {int(re.search(r"rank(\d+)\.jsonl$", p).group(1)): read_log(p) for p in paths}
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
    logs = read_logs(run_dir)
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
    out.say(f"audit {run_dir}: train set {url} ({len(expected)} samples in {len(manifest.shards)} shards), "
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
    p.add_argument("dir", help="the training run's --out folder")
    p.add_argument("--train", help="train manifest URL (default: the one recorded in the logs)")
    p.add_argument("--storage-option", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        result = audit(args.dir, parse_storage_options(args.storage_option), args.train)
    except (OSError, ValueError, KeyError) as exc:
        print(f"shards audit: error: {redact(exc)}", file=sys.stderr)
        return 2
    print("\n".join(result.lines))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
