"""Length grouping on a real set: pad fraction and samples/s with and without it.

    python -m tools.bench.group                          # SST-2 train, batch 64, max_length 128
    python -m tools.bench.group --corpus data.tsv --text-field text --train-batches 0
    python -m tools.bench.group --batch 16 --max-length 64 --train-batches 40 --workers 0 --group-batches 50 0
    python -m tools.bench.group --accuracy --seeds 3       # dev accuracy with and without (group_accuracy.py)

Builds the corpus into pre-tokenized Arrow shards in a temp dir (the bundled
MiniLM tokenizer), then for random batches and each grouping (``--group-batches``:
batches per sorted sub-window, pipeline/group.py's GROUP_BATCHES; 0: whole windows):

- **pad fraction**: pad tokens / all tokens of the batches of one shuffled
  epoch (what the model computes on and throws away);
- **loader samples/s**: that epoch through ``make_loader`` (``--workers``);
- **train samples/s**: ``--train-batches`` forward+backward steps of the MiniLM
  classifier on the loader's batches (where the padding costs), per wall second
  and per CPU second of the process; ``--rounds`` rounds, the settings' order
  rotating, and each grouping's ratio to random taken per round (the rounds'
  median): on a shared machine the load moves between rounds, less within one.

Prints one table; ``--out`` writes the figures as JSON.  Skips, saying so,
when the corpus is absent.  ``--accuracy`` hands every other option to
``tools.bench.group_accuracy``: MiniLM trained the same steps with and without
grouping over several seeds, on SST-2 and Rotten Tomatoes, dev accuracy mean ± sd.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import torch

from pipeline import ShardStream, StreamConfig, group, make_loader
from pipeline.train.models import classify_loss, load_model
from tools.bench import group_accuracy

ROOT = pathlib.Path(__file__).resolve().parents[2]
SST2 = ROOT.parent / "shared" / "corpora" / "sst2" / "train.tsv"


def build(corpus: pathlib.Path, out: pathlib.Path, text_field: str, max_length: int) -> str:
    return group_accuracy.build_set(corpus, out, text_field, max_length)


def loader_for(url: str, group_batches: int | None, args):
    grouped = group_accuracy.use_grouping(group_batches)
    ds = ShardStream(url, shuffle=True, seed=0, max_length=args.max_length,
                     config=StreamConfig(keep_text=False, group_by_length=grouped))
    return ds, make_loader(ds, args.batch, num_workers=args.workers)


def epoch_figures(url: str, group_batches: int | None, args) -> dict:
    """One epoch: pad fraction and loader samples/s."""
    _, loader = loader_for(url, group_batches, args)
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


def train_figures(url: str, group_batches: int | None, args) -> dict:
    """``--train-batches`` forward+backward steps of the MiniLM classifier: samples per wall and CPU second."""
    torch.manual_seed(0)
    ds, loader = loader_for(url, group_batches, args)
    model = load_model("classify", "minilm", label_names=ds.label_names)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    samples, seconds, cpu = 0, 0.0, 0.0
    for step, batch in enumerate(loader):
        if step == args.train_batches:
            break
        start, start_cpu = time.perf_counter(), time.process_time()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = classify_loss(logits, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds, cpu = seconds + time.perf_counter() - start, cpu + time.process_time() - start_cpu
        samples += len(batch["input_ids"])
    return {"train_samples_per_s": samples / seconds if seconds else 0.0,
            "train_samples_per_cpu_s": samples / cpu if cpu else 0.0}


def train_rounds(url: str, settings: list, args) -> dict:
    """Each setting's train figures over ``--rounds`` rounds (order rotating), and per grouping the
    median over rounds of its ratio to random's figure of the same round (wall and CPU)."""
    rounds = []
    for k in range(args.rounds):
        turn = k % len(settings)
        rounds.append({s: train_figures(url, s, args) for s in settings[turn:] + settings[:turn]})
    out = {}
    for s in settings:
        row = {key: statistics.median(r[s][key] for r in rounds) for key in rounds[0][s]}
        for key in ("train_samples_per_s", "train_samples_per_cpu_s"):
            row[f"{key}_by_round"] = [r[s][key] for r in rounds]
            if s is not None:
                row[f"{key}_ratio"] = statistics.median(r[s][key] / r[None][key] for r in rounds)
        out[s] = row
    return out


def render(results: dict, args) -> str:
    """The table: pad fraction, loader samples/s, train samples/s (wall, CPU) and their ratios to random."""
    lines = [f"{args.corpus.name}: batch {args.batch}, max_length {args.max_length}, {args.workers} workers, "
             f"{results['random']['samples']} samples/epoch, {args.rounds} train rounds of {args.train_batches} batches",
             f"{'batches':<12}{'pad fraction':>14}{'loader samples/s':>18}{'train samples/s':>17}{'x random':>10}"
             f"{'per CPU s':>11}{'x random':>10}"]
    for name, row in results.items():
        wall = cpu = "-"
        if "train_samples_per_s" in row:
            wall = f"{row['train_samples_per_s']:.1f}{'':>10}" if name == "random" else \
                f"{row['train_samples_per_s']:.1f}{row['train_samples_per_s_ratio']:>10.2f}"
            cpu = f"{row['train_samples_per_cpu_s']:.1f}{'':>10}" if name == "random" else \
                f"{row['train_samples_per_cpu_s']:.1f}{row['train_samples_per_cpu_s_ratio']:>10.2f}"
        lines.append(f"{name:<12}{row['pad_fraction']:>14.3f}{row['loader_samples_per_s']:>18,.0f}{wall:>27}{cpu:>21}")
    return "\n".join(lines)


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
    p.add_argument("--group-batches", type=int, nargs="+", default=[group.GROUP_BATCHES],
                   help=f"the groupings measured beside random: batches per sorted sub-window (0: whole windows; "
                        f"default {group.GROUP_BATCHES})")
    p.add_argument("--rounds", type=int, default=3, help="train rounds per setting, interleaved (ratios: the median)")
    p.add_argument("--train-batches", type=int, default=20, help="model steps per setting (0: skip)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (why 1: group_accuracy.py --help)")
    p.add_argument("--out", type=pathlib.Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.rounds < 1 or any(n < 0 for n in args.group_batches):
        p.error(f"--rounds {args.rounds} --group-batches {' '.join(map(str, args.group_batches))}: "
                f"need rounds >= 1 and groupings >= 0")
    torch.set_num_threads(args.threads)
    if not args.corpus.is_file():
        print(f"group_bench: skipped: corpus {args.corpus} not found (SST-2 lives in ../shared/corpora/sst2; "
              f"pass --corpus FILE)")
        return 0
    settings = [None, *args.group_batches]
    results = {}
    with tempfile.TemporaryDirectory(prefix="group-bench-") as tmp:
        t0 = time.perf_counter()
        url = build(args.corpus, pathlib.Path(tmp) / "shards", args.text_field, args.max_length)
        print(f"built {args.corpus.name} -> pre-tokenized shards in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows = {s: epoch_figures(url, s, args) for s in settings}
        if args.train_batches:
            for s, figures in train_rounds(url, settings, args).items():
                rows[s].update(figures)
        results = {group_accuracy.setting_name(s): row for s, row in rows.items()}
    print(render(results, args))
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
