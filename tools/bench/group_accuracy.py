"""Length grouping and dev accuracy: the same training steps with and without it, over several seeds.

    python -m tools.bench.group_accuracy                       # SST-2 + Rotten Tomatoes, 3 seeds, 150 steps of 16
    python -m tools.bench.group --accuracy --seeds 5           # the same, through the group bench
    python -m tools.bench.group_accuracy --corpora sst2 --steps 50 --out acc.json
    python -m tools.bench.group_accuracy --corpora sst2 --group-batches 0 50 --seeds 12   # whole window vs 50

For each corpus, each seed, random batches and each grouping (``--group-batches``:
batches per sorted sub-window, pipeline/group.py's GROUP_BATCHES), trains the
bundled MiniLM classifier from the same start (``torch.manual_seed(seed)``,
stream seed ``seed``) for ``--steps`` steps of ``--batch`` (AdamW, the
project's classify LR and linear warm-up/decay), then scores the dev set.  The
settings of a seed run back to back, their order rotating from seed to seed,
so machine load falls on all alike and each seed gives a paired difference.
Per setting it prints the pad fraction of the trained batches, train samples/s
(forward+backward+step only, like ``tools.bench.group``) and dev accuracy mean
± sd; per grouping the accuracy difference to random paired by seed, with its
t statistic and two-sided p.

Corpora: SST-2 (``sst2/train.tsv``, dev = ``sst2/dev.tsv``) and Rotten
Tomatoes (``rt-polarity/rt-polarity.{pos,neg}``; no official split, so a line
whose CRC-32 is 0 mod 10 is held out as dev: deterministic, ~10 %, duplicate
lines on one side).  A corpus that is absent is skipped, saying so.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass

import torch

from pipeline import ShardStream, StreamConfig, group, make_loader
from pipeline.train.config import DEFAULT_LR
from pipeline.train.evaluate import evaluate
from pipeline.train.models import classify_loss, load_model, minilm_dir
from pipeline.train.schedule import Schedule
from shards.build.driver import BuildConfig
from shards.build.driver import build as build_shards
from shards.corpus.read import CorpusSpec

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPORA_DIR = ROOT.parent / "shared" / "corpora"
CORPUS_NAMES = ("sst2", "rt")
RANDOM = "random"
DEV_BATCH = 64


@dataclass(frozen=True)
class Corpus:
    name: str
    train: pathlib.Path
    dev: pathlib.Path
    text_field: str


def build_set(corpus: pathlib.Path, out: pathlib.Path, text_field: str, max_length: int,
              label_names: list[str] | None = None) -> str:
    """Pre-tokenized Arrow shards (MiniLM tokenizer) of a labelled corpus; ``label_names`` fixes the label ids."""
    names = tuple(label_names) if label_names else None
    build_shards([str(corpus)], BuildConfig(out=str(out), format="arrow", tokenizer=minilm_dir(),
                                            max_length=max_length, label_names=names,
                                            spec=CorpusSpec(text_fields=(text_field,), label_field="label")))
    return str(out)


def split_rt(folder: pathlib.Path, out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """Rotten Tomatoes as train/dev JSONL: a line is dev when its CRC-32 is 0 mod 10 (same split on every run)."""
    rows = {"train": [], "dev": []}
    for label in ("neg", "pos"):
        for line in (folder / f"rt-polarity.{label}").read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if text:
                part = "dev" if zlib.crc32(text.encode()) % 10 == 0 else "train"
                rows[part].append(json.dumps({"text": text, "label": label}))
    paths = []
    for part in ("train", "dev"):
        path = out / f"rt-{part}.jsonl"
        path.write_text("\n".join(rows[part]) + "\n", encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def find_corpora(names: list[str], corpora_dir: pathlib.Path, tmp: pathlib.Path) -> list[Corpus]:
    """The requested corpora that exist; each missing one is reported on stderr."""
    found = []
    for name in names:
        if name == "sst2":
            train, dev = corpora_dir / "sst2" / "train.tsv", corpora_dir / "sst2" / "dev.tsv"
            if train.is_file() and dev.is_file():
                found.append(Corpus("SST-2", train, dev, "sentence"))
                continue
        else:
            folder = corpora_dir / "rt-polarity"
            if (folder / "rt-polarity.pos").is_file() and (folder / "rt-polarity.neg").is_file():
                found.append(Corpus("RottenTomatoes", *split_rt(folder, tmp), "text"))
                continue
        print(f"group_accuracy: skipped {name}: not found under {corpora_dir} "
              f"(pass --corpora-dir DIR holding sst2/ and rt-polarity/)", file=sys.stderr)
    return found


def setting_name(group_batches: int | None) -> str:
    """``random`` (no grouping), or ``grouped/N``: sorted sub-windows of N batches (0: the whole window)."""
    return RANDOM if group_batches is None else f"grouped/{group_batches}"


def use_grouping(group_batches: int | None) -> bool:
    """Set pipeline/group.py's sub-window for the streams made next (in this process, and in loader
    workers forked from it); whether to group at all."""
    if group_batches is not None:
        group.GROUP_BATCHES = group_batches
    return group_batches is not None


def train_batches(url: str, group_batches: int | None, seed: int, args):
    """Batches of the shuffled train stream, epoch after epoch, until the caller stops."""
    ds = ShardStream(url, shuffle=True, seed=seed, max_length=args.max_length,
                     config=StreamConfig(keep_text=False, group_by_length=use_grouping(group_batches)))
    loader = make_loader(ds, args.batch, num_workers=args.workers)
    epoch = 0
    while True:
        ds.set_epoch(epoch)
        yield from loader
        epoch += 1


def train_once(urls: tuple[str, str], label_names: list[str], group_batches: int | None, seed: int, args) -> dict:
    """``--steps`` steps from the seed's start, then the dev figures: pad fraction, samples/s, accuracy."""
    torch.manual_seed(seed)  # the classifier head and dropout: the same for both settings of a seed
    model = load_model("classify", "minilm", label_names=label_names)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    schedule = Schedule(total=args.steps, warmup=int(args.steps * 0.1), peak=args.lr)
    pad = tokens = samples = 0
    seconds = 0.0
    for step, batch in enumerate(train_batches(urls[0], group_batches, seed, args)):
        if step == args.steps:
            break
        mask = batch["attention_mask"]
        pad, tokens, samples = pad + int((mask == 0).sum()), tokens + mask.numel(), samples + len(mask)
        for param_group in opt.param_groups:
            param_group["lr"] = schedule.lr(step)
        start = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], attention_mask=mask).logits
        loss, _ = classify_loss(logits, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
    # dev batches grouped by length too: accuracy does not depend on the order, and it pads (and costs) less
    dev = ShardStream(urls[1], shuffle=False, max_length=args.max_length,
                      config=StreamConfig(keep_text=False, group_by_length=True))
    figures = evaluate(model, make_loader(dev, DEV_BATCH), "classify", torch.device("cpu"))
    return {"seed": seed, "setting": setting_name(group_batches), "pad_fraction": pad / tokens,
            "train_samples_per_s": samples / seconds, "dev_accuracy": figures["eval_accuracy"],
            "dev_samples": figures.get("eval_samples")}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def t_test(diffs: list[float]) -> tuple[float, float]:
    """One-sample t statistic of ``diffs`` against 0 and its two-sided p (Student t, n - 1 degrees of
    freedom; the density integrated by Simpson's rule: no scipy needed).  (0, 1) when undefined."""
    n = len(diffs)
    mean, sd = mean_sd(diffs)
    if n < 2 or sd == 0:
        return 0.0, 1.0
    t, df = mean / (sd / n ** 0.5), n - 1
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    steps, width = 2000, abs(t) / 2000

    def density(x: float) -> float:
        return scale * (1 + x * x / df) ** (-(df + 1) / 2)

    area = sum((1 if k in (0, steps) else 4 if k % 2 else 2) * density(k * width) for k in range(steps + 1))
    return t, max(0.0, 1 - 2 * area * width / 3)


def summarize(runs: list[dict]) -> dict:
    """Per setting: means (and sd) over seeds; per grouping (``paired``): its accuracy minus random's
    paired by seed (mean, sd, standard error, t, p) and the median of the per-seed samples/s ratios."""
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    out = {"settings": settings, "paired": {}}
    for setting in settings:
        rows = [r for r in runs if r["setting"] == setting]
        acc_mean, acc_sd = mean_sd([r["dev_accuracy"] for r in rows])
        speed_mean, speed_sd = mean_sd([r["train_samples_per_s"] for r in rows])
        out[setting] = {"pad_fraction": statistics.fmean(r["pad_fraction"] for r in rows),
                        "train_samples_per_s": speed_mean, "train_samples_per_s_sd": speed_sd,
                        "dev_accuracy": acc_mean, "dev_accuracy_sd": acc_sd,
                        "dev_accuracy_by_seed": [r["dev_accuracy"] for r in rows]}
    by_seed = {(r["seed"], r["setting"]): r for r in runs}
    for setting in settings:
        if setting == RANDOM or RANDOM not in settings:
            continue
        seeds = sorted({s for s, _ in by_seed if (s, setting) in by_seed and (s, RANDOM) in by_seed})
        if not seeds:  # a run saved part way: nothing paired yet
            continue
        diffs = [by_seed[(s, setting)]["dev_accuracy"] - by_seed[(s, RANDOM)]["dev_accuracy"] for s in seeds]
        diff_mean, diff_sd = mean_sd(diffs)
        t, p = t_test(diffs)
        # a seed's runs are back to back, so their ratio sees about the same machine load; the median of
        # those ratios drifts less with the load than the ratio of the means
        ratios = [by_seed[(s, setting)]["train_samples_per_s"] / by_seed[(s, RANDOM)]["train_samples_per_s"]
                  for s in seeds]
        out["paired"][setting] = {"mean": diff_mean, "sd": diff_sd, "by_seed": diffs, "seeds": seeds,
                                  "se": diff_sd / len(diffs) ** 0.5,
                                  "t": t, "p": p, "n": len(diffs), "wins": sum(d > 0 for d in diffs),
                                  "speed_ratio": statistics.median(ratios), "speed_ratio_by_seed": ratios}
    return out


def render(corpus: str, summary: dict, args) -> str:
    """One table per corpus: the figures the README quotes."""
    lines = [f"{corpus}: {args.seeds} seeds x {args.steps} steps of batch {args.batch}, max_length "
             f"{args.max_length}, lr {args.lr:g}, {args.threads} torch thread(s)",
             f"{'batches':<12}{'pad fraction':>14}{'train samples/s':>18}{'dev accuracy':>20}   by seed"]
    for setting in summary["settings"]:
        row = summary[setting]
        seeds = " ".join(f"{a:.1%}" for a in row["dev_accuracy_by_seed"])
        lines.append(f"{setting:<12}{row['pad_fraction']:>14.3f}"
                     f"{row['train_samples_per_s']:>11.1f} ± {row['train_samples_per_s_sd']:<4.1f}"
                     f"{row['dev_accuracy']:>12.1%} ± {row['dev_accuracy_sd']:.1%}   {seeds}")
    for setting, diff in summary["paired"].items():
        lines.append(f"{setting} - random, paired by seed: dev accuracy {diff['mean']:+.1%} ± {diff['sd']:.1%} "
                     f"(standard error {diff['se']:.1%}, t = {diff['t']:+.2f}, p = {diff['p']:.2f}, better in "
                     f"{diff['wins']} of {diff['n']}); train samples/s x{diff['speed_ratio']:.2f} (median of the "
                     f"per-seed ratios)")
    return "\n".join(lines)


def run_corpus(corpus: Corpus, tmp: pathlib.Path, args, save) -> list[dict]:
    """Build the corpus's train and dev shards, then every seed with every setting, interleaved;
    ``save(runs)`` after each run (a long run stopped part way keeps what it measured)."""
    t0 = time.perf_counter()
    train_url = build_set(corpus.train, tmp / f"{corpus.name}-train", corpus.text_field, args.max_length)
    label_names = ShardStream(train_url).label_names
    dev_url = build_set(corpus.dev, tmp / f"{corpus.name}-dev", corpus.text_field, args.max_length, label_names)
    print(f"built {corpus.name} train + dev shards in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    settings = [None, *args.group_batches]
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        turn = seed % len(settings)  # no setting always runs first
        for group_batches in settings[turn:] + settings[:turn]:
            runs.append(train_once((train_url, dev_url), label_names, group_batches, seed, args))
            save(runs)
            r = runs[-1]
            print(f"  {corpus.name} seed {seed} {r['setting']:<12} dev {r['dev_accuracy']:.1%}  "
                  f"{r['train_samples_per_s']:.1f} samples/s  pad {r['pad_fraction']:.3f}", file=sys.stderr, flush=True)
    return runs


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpora", nargs="+", choices=CORPUS_NAMES, default=list(CORPUS_NAMES))
    p.add_argument("--corpora-dir", type=pathlib.Path, default=CORPORA_DIR,
                   help="folder holding sst2/{train,dev}.tsv and rt-polarity/rt-polarity.{pos,neg}")
    p.add_argument("--seeds", type=int, default=3, help="how many seeds, each trained with and without grouping")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run FIRST..FIRST+N-1 (to add seeds to a run)")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per run")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--group-batches", type=int, nargs="+", default=[group.GROUP_BATCHES],
                   help="the groupings trained beside random batches: batches per sorted sub-window "
                        f"(0: the whole shuffle window, the grouping before sub-windows; default {group.GROUP_BATCHES})")
    p.add_argument("--lr", type=float, default=DEFAULT_LR["classify"], help="peak learning rate")
    p.add_argument("--workers", type=int, default=0, help="loader workers (the shards are pre-tokenized)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 because on a busy 2-core machine 2 threads ran a step ~4x slower (waiting "
                        "on each other)")
    p.add_argument("--out", type=pathlib.Path, help="write every run and the summaries as JSON here")
    args = p.parse_args(argv)
    for name in ("seeds", "steps", "batch", "max_length", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if any(n < 0 for n in args.group_batches) or len(set(args.group_batches)) != len(args.group_batches):
        p.error(f"--group-batches {' '.join(map(str, args.group_batches))}: distinct integers >= 0")
    if args.first_seed < 0:
        p.error(f"--first-seed {args.first_seed}: must be 0 or more (torch seeds are non-negative)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}

    def save(name: str, runs: list[dict]) -> None:
        results[name] = {"runs": runs, "summary": summarize(runs)}
        if args.out:
            args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=1))

    with tempfile.TemporaryDirectory(prefix="group-accuracy-") as tmp:
        for corpus in find_corpora(args.corpora, args.corpora_dir, pathlib.Path(tmp)):
            run_corpus(corpus, pathlib.Path(tmp), args, lambda runs, name=corpus.name: save(name, runs))
            print(render(corpus.name, results[corpus.name]["summary"], args))
    if not results:
        print("group_accuracy: skipped: no corpus found; nothing measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
