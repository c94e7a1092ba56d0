"""``shards audit RUN_DIR``: prove from a run's audit logs that every sample was trained exactly once per epoch.

    shards audit runs/demo            # or: python -m tools.audit runs/demo
    shards audit s3://bucket/run      # a run whose --out was a URL (its logs are parts per checkpoint)

Reads ``RUN_DIR/audit/rank{R}.jsonl`` (or ``rank{R}.part-{STEP}.jsonl``), written by
``pipeline.train.loop --audit`` in the format of ``shards.audit_schema``, and checks
them against the train manifest named in the headers (and its ``identity``).

Stretches: a run resumed under another world size (2 → 1 → 3 processes) logs a new
header per stretch; lines a stretch logged at or past the next stretch's first step
were undone by that resume and do not count.  Every stretch must have a log for
each of its ranks, and its ranks logged the same steps.  The steps run without a gap
from 1 to the last (each stretch on from where the one before it ended), and each step
holds ``grad_accum`` micro-batch lines per rank (the run's last step may hold fewer).
Epochs are checked over all ranks and stretches together, however many ranks contributed.

Samples (classify, unpacked LM): in every complete epoch (a later epoch was logged,
or every rank of the epoch's one stretch logged its full share) each sample of the
manifest trained exactly once, none missing, no unknown id, and pads never
counted as trained.  Packed LM (``--pack``): every document's segments tile
``[0, length)`` exactly once per complete epoch (no overlap, no gap), logged lengths
agree with each other and, for pre-tokenized sets, with the stored token count
(+ the separator, - the specials the packer strips); lockstep fillers train nothing.
A partial last epoch is checked for duplicates, overlaps and unknown ids, and its
coverage shown.  Exit status: 0 when the audit passes, 1 when it fails, 2 when the
logs cannot be read.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from shards import audit_schema
from shards.audit_read import Sections, read_logs
from shards.manifest import SAMPLE_ID, load_manifest, shard_url
from shards.reader import fetch_shard, read_batches
from shards.storage import StorageError, parse_storage_options, redact

EXAMPLES = 5  # ids shown per failure kind


def sample_id(shard: int, record: int) -> str:
    return SAMPLE_ID % (shard, record)


# -- findings ------------------------------------------------------------------
@dataclass
class Finding:
    ok: bool = True
    lines: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.lines.append(text)

    def fail(self, text: str) -> None:
        self.ok = False
        self.lines.append(f"FAIL {text}")


@dataclass
class Stretch:
    first_step: int
    world: int
    per_rank: int
    ranks: dict[int, list[dict]]  # rank -> its counted lines
    accum: int | None = None      # micro-batches per step (the header's grad_accum), None when not logged


def check_run(logs: dict[int, Sections], out: Finding) -> dict:
    """Every header of every rank names the same run; returns the first."""
    first_rank, secs = next(iter(logs.items()))
    first = secs[0][0]
    for rank, sections in logs.items():
        for header, _ in sections:
            for key in audit_schema.RUN_KEYS:
                if header.get(key) != first.get(key):
                    out.fail(f"rank {rank} header has {key}={header.get(key)!r}, rank {first_rank} has "
                             f"{first.get(key)!r}: logs of different runs mixed")
                    return first
    return first


def stretches(logs: dict[int, Sections], out: Finding) -> list[Stretch]:
    """The counted lines grouped by stretch; each stretch complete (all its ranks) and in step."""
    found: list[Stretch] = []
    for start in audit_schema.stretch_starts(logs):
        members = {r: [(h, xs) for h, xs in secs if h.get("first_step", 1) == start] for r, secs in logs.items()}
        members = {r: m for r, m in members.items() if m}
        head = next(iter(members.values()))[0][0]
        world, per_rank = head["world_size"], head["samples_per_rank"]
        for rank, m in members.items():
            for key in audit_schema.STRETCH_KEYS:
                if m[0][0].get(key) != head.get(key):
                    out.fail(f"stretch from step {start}: rank {rank} header has {key}={m[0][0].get(key)!r}, "
                             f"another rank {head.get(key)!r}: logs of different runs mixed")
        accum = head.get("grad_accum") if isinstance(head.get("grad_accum"), int) else None
        found.append(Stretch(start, world, per_rank, {r: [x for _, xs in m for x in xs] for r, m in members.items()},
                             accum))
        missing = sorted(set(range(world)) - set(members))
        if missing:
            out.fail(f"no audit log for rank(s) {missing} of world size {world}" +
                     (f" (the stretch from step {start})" if start != 1 else ""))
        steps = {r: [x["step"] for x in xs] for r, xs in found[-1].ranks.items()}
        if len({tuple(s) for s in steps.values()}) > 1:
            out.fail("ranks logged different steps" + (f" in the stretch from step {start}" if start != 1 else "")
                     + ": " + ", ".join(f"rank {r}: {len(s)} micro-batches" for r, s in steps.items()))
    if found and found[0].first_step != 1:
        out.fail(f"the logs start at step {found[0].first_step}: audit was off before a resume, so the earlier "
                 f"steps cannot be checked")
    check_steps(found, out)
    check_micro_batches(found, out)
    return found


def check_steps(found: list[Stretch], out: Finding) -> None:
    """The steps run without a gap: each stretch from its first step to its last, the next one on from
    there (a part or line lost on every rank leaves no other trace in a partial last epoch)."""
    expected = found[0].first_step if found else 1  # a late start is its own failure above
    for s in found:
        steps = sorted({x["step"] for xs in s.ranks.values() for x in xs})
        if not steps:
            continue
        where = f" (the stretch from step {s.first_step})" if len(found) > 1 else ""
        if steps[0] < s.first_step:
            out.fail(f"step {steps[0]} logged before its stretch's first step {s.first_step}: "
                     f"the log was edited or logs of two runs mixed")
        elif steps[0] > expected:
            out.fail(f"steps {expected}..{steps[0] - 1} are not in the logs{where}: lost audit parts or lines")
        holes = sorted(set(range(steps[0], steps[-1] + 1)) - set(steps))
        if holes:
            out.fail(f"{len(holes)} step(s) between {steps[0]} and {steps[-1]} are not in the logs{where}, "
                     f"e.g. {holes[:EXAMPLES]}: lost audit parts or lines")
        expected = steps[-1] + 1


def check_micro_batches(found: list[Stretch], out: Finding) -> None:
    """Every step holds grad_accum micro-batch lines per rank; only the run's last step may hold fewer
    (a run killed mid-step and not resumed)."""
    last = max((x["step"] for s in found for xs in s.ranks.values() for x in xs), default=0)
    for s in found:
        for rank, xs in s.ranks.items():
            counts = Counter(x["step"] for x in xs)
            wrong = sorted(step for step, n in counts.items()
                           if s.accum is not None and (n > s.accum or (n < s.accum and step != last)))
            if wrong:
                out.fail(f"rank {rank}: {len(wrong)} step(s) with other than grad_accum={s.accum} micro-batch "
                         f"lines, e.g. " + ", ".join(f"step {w}: {counts[w]}" for w in wrong[:EXAMPLES])
                         + ": lost or repeated audit lines")


# -- samples -------------------------------------------------------------------------
def epoch_complete(epoch: int, runs: list[Stretch], last_epoch: int, counts) -> bool:
    """A later epoch was logged, or the epoch lies in one stretch whose every rank logged its share."""
    if epoch < last_epoch:
        return True
    holding = [s for s in runs if any(x["epoch"] == epoch for xs in s.ranks.values() for x in xs)]
    if len(holding) != 1:
        return False
    s = holding[0]
    return len(s.ranks) == s.world and all(counts(xs) == s.per_rank for xs in s.ranks.values())


def check_sample_epoch(epoch: int, runs: list[Stretch], expected: set[str], complete: bool, out: Finding) -> None:
    lines = [x for s in runs for xs in s.ranks.values() for x in xs if x["epoch"] == epoch]
    seen: Counter = Counter(i for x in lines for i in x["ids"])
    pads = sum(len(x["pads"]) for x in lines)
    dup = sorted(s for s, n in seen.items() if n > 1)
    unknown = sorted(set(seen) - expected)
    trained = len(set(seen) & expected)
    out.say(f"epoch {epoch} ({'complete' if complete else 'partial'}): {trained}/{len(expected)} samples trained "
            f"({trained / max(len(expected), 1):.1%}), {sum(seen.values())} trained items, "
            f"{pads} pad items excluded, {len(dup)} duplicated, {len(unknown)} unknown")
    if dup:
        out.fail(f"epoch {epoch}: {len(dup)} sample(s) trained more than once, e.g. "
                 f"{', '.join(f'{s} x{seen[s]}' for s in dup[:EXAMPLES])}")
    if unknown:
        out.fail(f"epoch {epoch}: {len(unknown)} id(s) not in the manifest, e.g. {unknown[:EXAMPLES]}")
    holding = [s for s in runs if any(x["epoch"] == epoch for xs in s.ranks.values() for x in xs)]
    one = holding[0] if len(holding) == 1 else None
    if complete:
        missing = sorted(expected - set(seen))
        if missing:
            out.fail(f"epoch {epoch}: {len(missing)} sample(s) never trained, e.g. {missing[:EXAMPLES]} "
                     f"(shards skipped as corrupt turn their samples into pads)")
        full = one is not None and all(_items(xs, epoch) == one.per_rank for xs in one.ranks.values())
        if full and pads != one.world * one.per_rank - len(expected) and not missing:
            out.fail(f"epoch {epoch}: {pads} pad items, expected {one.world * one.per_rank - len(expected)}")
    elif one is not None and any(_items(xs, epoch) > one.per_rank for xs in one.ranks.values()):
        out.fail(f"epoch {epoch}: a rank logged more than its {one.per_rank} samples per epoch")


def _items(lines: list[dict], epoch: int) -> int:
    return sum(len(x["ids"]) + len(x["pads"]) for x in lines if x["epoch"] == epoch)


# -- packed documents -----------------------------------------------------------------
def document_lengths(manifest, url: str, pack: dict, storage_options: dict | None) -> dict[str, int] | None:
    """Pre-tokenized sets: each document's trained token count (stored ids without the specials the
    packer strips, + its separator); documents with no tokens are left out (never packed).  None when
    the set stores no token ids (tokenized on the fly)."""
    if "input_ids" not in (manifest.fields or []):
        return None
    prefix, suffix = list(pack.get("prefix", [])), list(pack.get("suffix", []))
    lengths: dict[str, int] = {}
    for s, info in enumerate(manifest.shards):
        where = shard_url(url, info)
        data = fetch_shard(where, info, storage_options, manifest=manifest)
        for batch in read_batches(manifest, where, data, columns=("input_ids",)):
            for r, ids in enumerate(batch.input_ids, start=batch.start):
                n = _body(np.asarray(ids), prefix, suffix)
                if n:
                    lengths[sample_id(s, r)] = n + 1
    return lengths


def _body(ids: np.ndarray, prefix: list[int], suffix: list[int]) -> int:
    lo, hi = 0, len(ids)
    if prefix and hi >= len(prefix) and ids[:len(prefix)].tolist() == prefix:
        lo = len(prefix)
    if suffix and hi - lo >= len(suffix) and ids[hi - len(suffix):].tolist() == suffix:
        hi -= len(suffix)
    return hi - lo


def check_packed_epoch(epoch: int, runs: list[Stretch], expected: set[str], lengths: dict | None,
                       later: bool, out: Finding) -> None:
    lines = [x for s in runs for xs in s.ranks.values() for x in xs if x["epoch"] == epoch]
    segs: dict[str, list] = defaultdict(list)
    for x in lines:
        if x.get("filler") and x["segs"]:
            out.fail(f"epoch {epoch} step {x['step']}: a filler micro-batch lists {len(x['segs'])} segment(s)")
        for seg in x["segs"]:
            segs[seg[0]].append(seg)
    problems: dict[str, list[str]] = defaultdict(list)
    covered, whole = 0, 0
    for doc, found in segs.items():
        got, tiled = _tile(doc, found, lengths.get(doc) if lengths is not None else None, problems)
        covered += got
        whole += tiled
    unknown = sorted(set(segs) - expected)
    total = sum(lengths.values()) if lengths is not None else None
    complete = later or (not problems and whole == len(expected) and not unknown)
    missing = sorted(expected - set(segs)) if complete else []
    fillers = sum(1 for x in lines if x.get("filler"))
    tokens = f"{covered}/{total} tokens" if total is not None else f"{covered} tokens"
    out.say(f"epoch {epoch} ({'complete' if complete else 'partial'}): {whole}/{len(expected)} documents whole, "
            f"{tokens} trained ({covered / max(total or covered, 1):.1%}), {sum(map(len, segs.values()))} "
            f"segments, {fillers} filler micro-batches, {len(problems.get('duplicated', []))} duplicated, "
            f"{len(problems.get('overlapping', []))} overlapping, {len(unknown)} unknown")
    for kind, docs in sorted(problems.items()):
        if kind == "gap" and not complete:
            continue  # a partial epoch has documents still to come
        out.fail(f"epoch {epoch}: {len(docs)} document(s) {kind}, e.g. {'; '.join(docs[:EXAMPLES])}")
    if unknown:
        out.fail(f"epoch {epoch}: {len(unknown)} document id(s) not in the manifest, e.g. {unknown[:EXAMPLES]}")
    if missing:
        out.fail(f"epoch {epoch}: {len(missing)} document(s) never trained, e.g. {missing[:EXAMPLES]}")


def _tile(doc: str, found: list, data_length: int | None, problems: dict) -> tuple[int, int]:
    """Check one document's segments; returns (tokens covered, 1 if it is whole)."""
    before = sum(map(len, problems.values()))
    if any(s[1] is None for s in found):
        problems["with a segment of unknown offset"].append(f"{doc} ({len(found)} segments)")
        return sum(s[2] for s in found), 0
    logged = {s[3] for s in found if len(s) == 4}
    if len(logged) > 1 or (data_length is not None and logged - {data_length}):
        data = f", the data has {data_length}" if data_length is not None else ""
        problems["with lengths that disagree"].append(f"{doc} logged {sorted(logged)}{data}")
    length = data_length if data_length is not None else (min(logged) if logged else None)
    ordered = sorted((s[1], s[2]) for s in found)
    end, covered, before_seg = 0, 0, None
    for offset, count in ordered:
        if offset < end:
            kind = "duplicated" if (offset, count) == before_seg else "overlapping"
            problems[kind].append(f"{doc} tokens [{offset}, {offset + count}) again (before: up to {end})")
        elif offset > end:
            problems["gap"].append(f"{doc} tokens [{end}, {offset}) never trained")
        covered += max(0, offset + count - max(end, offset))
        end, before_seg = max(end, offset + count), (offset, count)
    if length is not None and end > length:
        problems["past its end"].append(f"{doc} trained up to token {end} of {length}")
    elif length is not None and end < length:
        problems["gap"].append(f"{doc} tokens [{end}, {length}) never trained")
    whole = end == length or (length is None and ordered[0][0] == 0)
    return covered, int(whole and sum(map(len, problems.values())) == before)


# -- the audit -------------------------------------------------------------------------
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
    header = check_run(logs, out)
    runs = stretches(audit_schema.counted(logs), out)
    url = train_url or reopenable(header["train"])
    manifest = load_manifest(url, storage_options)
    shown = redact(url)  # for the lines below: a --train given with credentials is not echoed
    expected = {sample_id(s, r) for s, size in enumerate(manifest.shard_sizes) for r in range(size)}
    if header.get("identity") is not None and header["identity"] != manifest.identity:
        out.fail(f"manifest {shown} has identity {manifest.identity[:16]}, the run trained on "
                 f"{str(header['identity'])[:16]}: other data (rebuilt, edited or another set) than the run's")
    if manifest.num_records != header["num_records"]:
        out.fail(f"manifest {shown} has {manifest.num_records} records, the run trained on "
                 f"{header['num_records']}: shards were rebuilt after the run")
    lines = [x for s in runs for xs in s.ranks.values() for x in xs]
    steps = max((x["step"] for x in lines), default=0)
    worlds = " -> ".join(str(s.world) for s in runs)
    per_rank = " -> ".join(str(s.per_rank) for s in runs)
    where = f" (stretches from steps {', '.join(str(s.first_step) for s in runs)})" if len(runs) > 1 else ""
    out.say(f"audit {redact(run_dir)}: train set {shown} ({len(expected)} samples in {len(manifest.shards)} "
            f"shards), world size {worlds}{where}, {per_rank} samples per rank per epoch, {steps} steps logged")
    epochs = sorted({x["epoch"] for x in lines})
    last = max(epochs, default=0)
    pack = header.get("pack")
    lengths = document_lengths(manifest, url, pack, storage_options) if pack and epochs else None
    for epoch in epochs:
        if pack:
            docs = set(lengths) if lengths is not None else expected
            check_packed_epoch(epoch, runs, docs, lengths, epoch < last, out)
        else:
            complete = epoch_complete(epoch, runs, last, lambda xs, e=epoch: _items(xs, e))
            check_sample_epoch(epoch, runs, expected, complete, out)
    complete = sum(1 for line in out.lines if "(complete)" in line)
    what = "each token of each document" if pack else "each sample"
    out.say(f"{'OK' if out.ok else 'FAILED'}: {complete} complete epoch(s), "
            f"{len(epochs) - complete} partial; {what} trained "
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
