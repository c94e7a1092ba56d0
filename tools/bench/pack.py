"""Packed LM blocks vs the on-the-fly classification stream: tokens/s through the pipeline.

    python -m tools.bench.pack                                   # WikiText-2 test+valid, bundled MiniLM
    python -m tools.bench.pack --corpus a.txt --corpus b.txt --seq-len 1024 --repeats 3

Builds two shard sets of the corpus (text only, and pre-tokenized) under ``--work``,
then times, each in this process (no DataLoader) and best of ``--repeats``:
- ``classify``: ShardStream with an on-the-fly tokenizer and ``--max-length`` (the
  classification path): items/s and tokens/s (ids per item, specials included);
- ``raw_pretok``: ShardStream over the pre-tokenized set (reading only);
- ``packed``: PackedStream over the on-the-fly stream; ``packed_pretok``: over the
  pre-tokenized one: blocks/s and real (non-padding) tokens/s; ``packed_pretok_items``:
  the same read an item dict at a time (PackedStream's path for streams without
  ``read_chunks``, e.g. MixedStream), for comparison with the columnar path;
- ``*_loader``: ``classify``, ``packed`` and ``packed_pretok`` through make_loader with
  ``--workers`` workers and their collators (batches of ``--batch-size``).
Prints one JSON line per measurement.  Figures depend on the machine's load.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time


def parse_args(argv):
    corpora = pathlib.Path(__file__).resolve().parents[3] / "shared" / "corpora"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", action="append", default=None,
                   help="text file(s), one document per line (default: WikiText-2 test + valid)")
    p.add_argument("--work", default=None)
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: bundled MiniLM)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-length", type=int, default=128, help="truncation of the classify stream")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    args.corpus = args.corpus or [str(corpora / "wikitext-2" / "test.txt"), str(corpora / "wikitext-2" / "valid.txt")]
    return args


def build_sets(corpus: list[str], work: pathlib.Path, tok: str) -> tuple[str, str]:
    from shards.build.driver import BuildConfig, build
    from shards.build.writer import Limits

    out = []
    for name, tokenizer in (("text", None), ("pretok", tok)):
        url = str(work / name)
        build(corpus, BuildConfig(out=url, limits=Limits(max_bytes=1 << 20), tokenizer=tokenizer))
        out.append(url)
    return out[0], out[1]


def best_of(repeats: int, run) -> tuple[float, int, int]:
    """(seconds, units, tokens) of the fastest of ``repeats`` runs of ``run() -> (units, tokens)``."""
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        units, tokens = run()
        took = time.perf_counter() - t0
        if best is None or took < best[0]:
            best = (took, units, tokens)
    return best


def count_items(stream) -> tuple[int, int]:
    n = tokens = 0
    for item in stream:
        n, tokens = n + 1, tokens + len(item["input_ids"])
    return n, tokens


def count_blocks(stream) -> tuple[int, int]:
    n = tokens = 0
    for block in stream:
        n, tokens = n + 1, tokens + block["num_tokens"]
    return n, tokens


def count_batches(loader, key: str) -> tuple[int, int]:
    n = tokens = 0
    for batch in loader:
        n += len(batch["is_pad"])
        tokens += int(batch["attention_mask"].sum()) if key == "mask" else batch["num_tokens"]
    return n, tokens


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipeline import ShardStream, StreamConfig, make_loader
    from pipeline.pack.stream import PackedStream
    from tools.lm_smoke import default_tokenizer

    tok = args.tokenizer or default_tokenizer()
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="pack-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    text_url, pretok_url = build_sets(args.corpus, work, tok)
    cfg = StreamConfig(keep_text=False)

    def classify():
        return ShardStream(text_url, tokenizer=tok, max_length=args.max_length, config=cfg)

    def packed(url=text_url, tokenizer=tok):
        return PackedStream(ShardStream(url, tokenizer=tokenizer, config=cfg), seq_len=args.seq_len, tokenizer=tok)

    runs = {
        "classify": lambda: count_items(classify()),
        "raw_pretok": lambda: count_items(ShardStream(pretok_url, config=cfg)),
        "packed": lambda: count_blocks(packed()),
        "packed_pretok": lambda: count_blocks(packed(pretok_url, None)),
        "packed_pretok_items": lambda: count_blocks(PackedStream(_ItemsOnly(ShardStream(pretok_url, config=cfg)),
                                                                 seq_len=args.seq_len, tokenizer=tok)),
        "classify_loader": lambda: count_batches(make_loader(classify(), args.batch_size, args.workers), "mask"),
        "packed_loader": lambda: count_batches(_packed_loader(packed(), args), "blocks"),
        "packed_pretok_loader": lambda: count_batches(_packed_loader(packed(pretok_url, None), args), "blocks"),
    }
    for name, run in runs.items():
        seconds, units, tokens = best_of(args.repeats, run)
        print(json.dumps({"mode": name, "seconds": round(seconds, 3), "units": units, "tokens": tokens,
                          "units_per_s": round(units / seconds), "tokens_per_s": round(tokens / seconds),
                          "seq_len": args.seq_len if "packed" in name else args.max_length}), flush=True)
    return 0


class _ItemsOnly:
    """A stream seen through ``__iter__`` only, so PackedStream reads it an item at a time."""

    def __init__(self, stream):
        self.stream, self.epoch, self.stats = stream, stream.epoch, stream.stats

    def __iter__(self):
        return iter(self.stream)

    def position(self):
        return self.stream.position()

    def seek(self, position):
        self.stream.seek(position)


def _packed_loader(ds, args):
    from pipeline import make_loader

    return make_loader(ds, args.batch_size, args.workers)


if __name__ == "__main__":
    sys.exit(main())
