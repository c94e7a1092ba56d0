"""Length grouping on a real set: pad fraction and samples/s with and without it.

    python -m tools.bench.group                          # SST-2 train, batch 64, max_length 128
    python -m tools.bench.group --corpus data.tsv --text-field text --train-batches 0
    python -m tools.bench.group --accuracy --seeds 3       # dev accuracy with and without (group_accuracy.py)

Builds the corpus into pre-tokenized Arrow shards in a temp dir (the bundled
MiniLM tokenizer), then for ``group_by_length`` False and True:

- **pad fraction**: pad tokens / all tokens of the batches of one shuffled
  epoch (what the model computes on and throws away);
- **loader samples/s**: that epoch through ``make_loader`` (``--workers``);
- **train samples/s**: ``--train-batches`` forward+backward steps of the MiniLM
  classifier on the loader's batches (where the padding costs).

Prints one table; ``--out`` writes the figures as JSON.  Skips, saying so,
when the corpus is absent.  ``--accuracy`` hands every other option to
``tools.bench.group_accuracy``: MiniLM trained the same steps with and without
grouping over several seeds, on SST-2 and Rotten Tomatoes, dev accuracy mean ± sd.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import torch

from pipeline import ShardStream, StreamConfig, make_loader
from pipeline.train.models import classify_loss, load_model
from tools.bench import group_accuracy

ROOT = pathlib.Path(__file__).resolve().parents[2]
SST2 = ROOT.parent / "shared" / "corpora" / "sst2" / "train.tsv"


def build(corpus: pathlib.Path, out: pathlib.Path, text_field: str, max_length: int) -> str:
    return group_accuracy.build_set(corpus, out, text_field, max_length)


def loader_for(url: str, grouped: bool, args):
    ds = ShardStream(url, shuffle=True, seed=0, max_length=args.max_length,
                     config=StreamConfig(keep_text=False, group_by_length=grouped))
    return ds, make_loader(ds, args.batch, num_workers=args.workers)


def epoch_figures(url: str, grouped: bool, args) -> dict:
    """One epoch: pad fraction and loader samples/s."""
    _, loader = loader_for(url, grouped, args)
    pad = total = samples = 0
    start = time.perf_counter()
    for batch in loader:
        mask = batch["attention_mask"]
        pad += int((mask == 0).sum())
        total += mask.numel()
        samples += len(mask)
    seconds = time.perf_counter() - start
    return {"pad_fraction": pad / total, "loader_samples_per_s": samples / seconds, "epoch_s": seconds,
            "samples": samples}


def train_figures(url: str, grouped: bool, args) -> dict:
    """``--train-batches`` forward+backward steps of the MiniLM classifier: samples/s."""
    torch.manual_seed(0)
    ds, loader = loader_for(url, grouped, args)
    model = load_model("classify", "minilm", label_names=ds.label_names)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    samples, seconds = 0, 0.0
    for step, batch in enumerate(loader):
        if step == args.train_batches:
            break
        start = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = classify_loss(logits, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
        samples += len(batch["input_ids"])
    return {"train_samples_per_s": samples / seconds if seconds else 0.0, "train_batches": args.train_batches}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--accuracy" in argv:  # its own options (--seeds, --steps, --corpora ...): see group_accuracy.py
        return group_accuracy.main([a for a in argv if a != "--accuracy"])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--accuracy", action="store_true",
                   help="dev accuracy with and without grouping over seeds; the other options are "
                        "tools.bench.group_accuracy's (python -m tools.bench.group_accuracy --help)")
    p.add_argument("--corpus", type=pathlib.Path, default=SST2, help="TSV/CSV/JSONL with a label column")
    p.add_argument("--text-field", default="sentence")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--train-batches", type=int, default=20, help="model steps per setting (0: skip)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (why 1: group_accuracy.py --help)")
    p.add_argument("--out", type=pathlib.Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.corpus.is_file():
        print(f"group_bench: skipped: corpus {args.corpus} not found (SST-2 lives in ../shared/corpora/sst2; "
              f"pass --corpus FILE)")
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="group-bench-") as tmp:
        t0 = time.perf_counter()
        url = build(args.corpus, pathlib.Path(tmp) / "shards", args.text_field, args.max_length)
        print(f"built {args.corpus.name} -> pre-tokenized shards in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for grouped in (False, True):
            row = epoch_figures(url, grouped, args)
            if args.train_batches:
                row.update(train_figures(url, grouped, args))
            results["grouped" if grouped else "random"] = row
    print(f"{args.corpus.name}: batch {args.batch}, max_length {args.max_length}, {args.workers} workers, "
          f"{results['random']['samples']} samples/epoch")
    print(f"{'batches':<10}{'pad fraction':>14}{'loader samples/s':>18}{'train samples/s':>17}")
    for name, row in results.items():
        train = f"{row['train_samples_per_s']:.1f}" if "train_samples_per_s" in row else "-"
        print(f"{name:<10}{row['pad_fraction']:>14.3f}{row['loader_samples_per_s']:>18,.0f}{train:>17}")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
