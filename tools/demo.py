"""The whole pipeline end to end on CPU: corpus → shards → 2-process DDP fine-tuning → eval → audit.

    python -m tools.demo --out demo-out --nproc 2 --steps 150                 # generated corpus
    python -m tools.demo --out demo-out --corpus my/train.tsv [--eval-corpus my/dev.tsv]

Steps (each printed as the command it runs):
1. a sentiment corpus from ``tools.make_corpus`` (no download), or ``--corpus``
   (tsv/csv with a header, or jsonl; without ``--eval-corpus`` every 10th
   record is held out for evaluation);
2. ``shards build`` of train and dev (pre-tokenized with the MiniLM tokenizer);
3. ``torchrun --nproc_per_node N -m pipeline.train`` fine-tuning the bundled
   all-MiniLM-L6-v2 with checkpoints and ``--audit``;
4. ``shards audit`` of the run; then the accuracy, throughput, data-wait
   fraction and audit result are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from pipeline.train import quiet
from pipeline.train.models import minilm_dir
from tools import make_corpus

HOLDOUT_EVERY = 10


def run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env, check=False)


def fields(path: str, text_field: str | None) -> str:
    """The text column: --text-field, else 'sentence' or 'text' from the file's header / first record."""
    if text_field:
        return text_field
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    names = list(json.loads(first)) if path.endswith(".jsonl") else first.rstrip("\n").split(
        "\t" if path.endswith(".tsv") else ",")
    for name in ("sentence", "text"):
        if name in names:
            return name
    raise SystemExit(f"{path}: no 'sentence' or 'text' column among {names}; pass --text-field NAME")


def hold_out(path: str, out_dir: str) -> tuple[str, str]:
    """Split a one-record-per-line file into train and dev (every 10th record), header kept."""
    if not path.endswith((".tsv", ".csv", ".jsonl")):
        raise SystemExit(f"--corpus {path}: can split only .tsv/.csv/.jsonl; pass --eval-corpus for a dev set")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    header = [] if path.endswith(".jsonl") else lines[:1]
    body = lines[len(header):]
    ext = os.path.splitext(path)[1]
    train, dev = os.path.join(out_dir, f"train{ext}"), os.path.join(out_dir, f"dev{ext}")
    with open(train, "w", encoding="utf-8") as f:
        f.writelines(header + [x for i, x in enumerate(body) if i % HOLDOUT_EVERY])
    with open(dev, "w", encoding="utf-8") as f:
        f.writelines(header + [x for i, x in enumerate(body) if not i % HOLDOUT_EVERY])
    return train, dev


def corpus(args) -> tuple[str, str, str]:
    """(train file, dev file, description)."""
    if args.corpus is None:
        train, dev = make_corpus.make(os.path.join(args.out, "corpus"), seed=args.seed)
        return train, dev, "generated sentiment corpus (tools.make_corpus): 4000 train / 500 dev"
    if args.eval_corpus:
        return args.corpus, args.eval_corpus, f"{args.corpus} / {args.eval_corpus}"
    train, dev = hold_out(args.corpus, os.path.join(args.out, "corpus"))
    return train, dev, f"{args.corpus} (every {HOLDOUT_EVERY}th record held out for eval)"


def build(src: str, out: str, args, label_names: list[str] | None) -> dict:
    cmd = [sys.executable, "-m", "shards", "build", src, "--out", out, "--text-field",
           fields(src, args.text_field), "--label-field", args.label_field, "--tokenizer", minilm_dir(),
           "--max-length", str(args.max_length), "--max-records", "1000", "--no-progress"]
    if label_names:
        cmd += ["--label-names", ",".join(label_names)]
    if run(cmd).returncode:
        raise SystemExit(f"shards build {src} failed (see above)")
    with open(os.path.join(out, "index.json"), encoding="utf-8") as f:
        return json.load(f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo-out")
    p.add_argument("--nproc", type=int, default=2, help="training processes (torchrun --nproc_per_node)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", help="your train file (tsv/csv/jsonl) instead of the generated corpus")
    p.add_argument("--eval-corpus", help="your dev file (default: every 10th record of --corpus)")
    p.add_argument("--text-field", help="text column (default: sentence or text)")
    p.add_argument("--label-field", default="label")
    p.add_argument("--min-accuracy", type=float, help="fail below this dev accuracy "
                                                      "(default 0.8 on the generated corpus, none otherwise)")
    args = p.parse_args(argv)
    quiet.entry_point()  # the training and shards commands it runs are quiet entry points of their own
    start = time.perf_counter()
    train_src, dev_src, described = corpus(args)
    manifest = build(train_src, os.path.join(args.out, "shards", "train"), args, None)
    build(dev_src, os.path.join(args.out, "shards", "dev"), args, manifest["label_names"])
    run_dir = os.path.join(args.out, "run")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (the shards above are reused)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t_train = time.perf_counter()
    shard_dir = os.path.join(args.out, "shards")
    train = run([sys.executable, "-m", "torch.distributed.run", "--standalone",  # a free port, not 29500
                 "--nproc_per_node", str(args.nproc), "-m", "pipeline.train",
                 "--train", os.path.join(shard_dir, "train"), "--eval", os.path.join(shard_dir, "dev"),
                 "--task", "classify", "--model", "minilm", "--steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--max-length", str(args.max_length),
                 "--num-workers", str(args.num_workers), "--seed", str(args.seed), "--out", run_dir,
                 "--checkpoint-every", "50", "--audit"], env)
    train_s = time.perf_counter() - t_train
    if train.returncode:
        print(f"demo: training failed with exit status {train.returncode} (see above)", file=sys.stderr)
        return 1
    audit = subprocess.run([sys.executable, "-m", "shards", "audit", run_dir], capture_output=True, text=True)
    print(audit.stdout + audit.stderr, end="")
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        m = json.load(f)
    floor = args.min_accuracy if args.min_accuracy is not None else (0.8 if args.corpus is None else None)
    summary(args, described, manifest, m, train_s, time.perf_counter() - start, audit, run_dir)
    if audit.returncode:
        return 1
    if floor is not None and m["eval_accuracy"] < floor:
        print(f"demo: dev accuracy {m['eval_accuracy']:.1%} is below {floor:.0%}", file=sys.stderr)
        return 1
    return 0


def summary(args, described, manifest, m, train_s, total_s, audit, run_dir) -> None:
    verdict = (audit.stdout.strip().splitlines() or ["(no output)"])[-1]
    rows = [("corpus", described),
            ("shards", f"{args.out}/shards/train: {manifest['num_records']} records in "
                       f"{len(manifest['shards'])} shards, labels {manifest['label_names']}"),
            ("training", f"{m['world_size']} processes ({m['device']}), {m['steps']} steps x "
                         f"{args.batch_size} per process, {m['train_seconds']:.0f} s in the loop, "
                         f"{train_s:.0f} s with start-up and eval"),
            ("dev accuracy", f"{m['eval_accuracy']:.1%} on {m['eval_samples']} samples "
                             f"(final train loss {m['train_loss']:.3f})"),
            ("throughput", f"{m['samples_per_s']:.1f} samples/s, {m['tokens_per_s']:.0f} tokens/s, "
                           f"data-wait fraction {m['data_wait_fraction']:.1%}"),
            ("audit", verdict),
            ("outputs", f"{run_dir}/metrics.json, train.png, model/ (weights, tokenizer, label names), "
                        f"checkpoint/, audit/"),
            ("total time", f"{total_s:.0f} s")]
    print("\n== demo summary ==")
    for name, text in rows:
        print(f"  {name:<13} {text}")


if __name__ == "__main__":
    sys.exit(main())
