"""The corpora and shard sets of ``tools.gpu_check``: real ones from ../shared/corpora, else generated.

    classify_corpus(args, work) -> (tsv path, note);  lm_corpus(args, work) -> (lines, note)
    build_set(inputs, out, args, tokenizer=...) -> shard set URL
"""
from __future__ import annotations

import logging
import math
import os
import pathlib
import time

log = logging.getLogger("tools.gpu_check")


def classify_corpus(args, work: pathlib.Path) -> tuple[str, str]:
    """(TSV path with sentence/label columns, description)."""
    sst2 = pathlib.Path(args.corpora) / "sst2" / "train.tsv"
    need = (args.warmup + args.steps + 2) * args.cls_batch
    if sst2.is_file():
        if not args.smoke:
            return str(sst2), f"SST-2 train ({sst2})"
        with open(sst2, encoding="utf-8") as f:
            lines = [next(f) for _ in range(need + 1)]  # header + rows
        path = work / "sst2-head.tsv"
        path.write_text("".join(lines), encoding="utf-8")
        return str(path), f"SST-2 train, first {need} rows ({sst2})"
    from tools.make_corpus import make

    rows = max(need, 4000)
    train, _ = make(str(work / "generated"), train=rows, dev=0, seed=args.seed)
    return train, f"generated sentiment corpus (tools.make_corpus, {rows} rows; {sst2} not found)"


def lm_lines(args, work: pathlib.Path) -> tuple[list[str], str]:
    wiki = pathlib.Path(args.corpora) / "wikitext-2"
    files = [wiki / "valid.txt", wiki / "test.txt"]
    if all(f.is_file() for f in files):
        lines = [ln for f in files for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return lines, f"WikiText-2 valid+test ({wiki})"
    sst2 = pathlib.Path(args.corpora) / "sst2" / "train.tsv"
    if sst2.is_file():
        rows = sst2.read_text(encoding="utf-8").splitlines()[1:]
        return [r.split("\t")[0] for r in rows if r.strip()], f"SST-2 train sentences ({sst2}; no WikiText-2)"
    from tools.make_corpus import records

    return [text for text, _ in records(20000, args.seed, 0.0)], "generated sentences (tools.make_corpus)"


def lm_corpus(args, work: pathlib.Path) -> tuple[list[str], str]:
    """Text files (one document a line) holding at least the tokens the measured steps need.

    The source is repeated, one copy per file, when it is too small: a throughput
    check needs tokens, not novelty, and one loader pass avoids an epoch boundary.
    """
    lines, what = lm_lines(args, work)
    need_tokens = (args.warmup + args.steps + 2) * args.lm_batch * args.seq_len * 1.3
    chars = sum(len(ln) + 1 for ln in lines)
    est_tokens = chars / 6  # WordPiece gives ~4.5 characters a token on English; 6 errs on the safe side
    if args.smoke:  # only what the steps need, from the start of the source
        keep, total = [], 0
        for ln in lines:
            keep.append(ln)
            total += (len(ln) + 1) / 6
            if total >= need_tokens:
                break
        lines, copies = keep, 1 if total >= need_tokens else math.ceil(need_tokens / max(total, 1))
    else:
        copies = max(1, math.ceil(need_tokens / max(est_tokens, 1)))
    text = "\n".join(lines) + "\n"
    out = work / "lm-text"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(copies):
        path = out / f"part-{k:03d}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))
    note = f"{what}, {len(lines):,} documents" + (f" x {copies} copies" if copies > 1 else "")
    return paths, note


def build_set(inputs: list[str], out: pathlib.Path, args, *, tokenizer: str | None = None,
              max_length: int | None = None, label: bool = False) -> str:
    from shards.build.driver import BuildConfig, build
    from shards.corpus.spec import CorpusSpec

    spec = CorpusSpec(text_fields=("sentence",), label_field="label") if label else CorpusSpec()
    workers = args.build_workers or (1 if args.smoke else min(4, os.cpu_count() or 1))
    t0 = time.perf_counter()
    result = build(inputs, BuildConfig(out=str(out), spec=spec, tokenizer=tokenizer, max_length=max_length,
                                       workers=workers, progress=False))
    log.info("built %s: %d records in %.1f s", out.name, result.manifest.num_records, time.perf_counter() - t0)
    return str(out)
