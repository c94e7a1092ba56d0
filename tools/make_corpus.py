"""Generate a small sentiment corpus (no download) whose labels a model can actually learn.

    python -m tools.make_corpus --out demo-out/corpus --train 4000 --dev 500 --seed 0

Writes ``train.tsv`` and ``dev.tsv`` (or ``.jsonl`` with ``--format jsonl``)
with columns ``sentence`` and ``label`` (``negative`` / ``positive``).
Sentences are reviews built from templates: the label follows the polarity
of the opinion words, flipped by negation ("not good"), and by the clause
after "but" in mixed reviews; neutral filler and a little label noise
(``--noise``) keep it from being trivial.  Same seed, same files.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys

POSITIVE = ["good", "great", "wonderful", "delightful", "moving", "charming", "brilliant", "funny",
            "gripping", "beautiful", "clever", "fresh", "touching", "superb", "engaging", "warm",
            "memorable", "stunning", "smart", "enjoyable", "heartfelt", "sharp", "lovely", "inventive"]
NEGATIVE = ["bad", "dull", "boring", "awful", "tedious", "clumsy", "lifeless", "predictable", "bland",
            "messy", "forgettable", "tiresome", "weak", "flat", "painful", "shallow", "pointless",
            "stale", "incoherent", "lazy", "hollow", "sloppy", "dreary", "annoying"]
NOUNS = ["movie", "film", "story", "plot", "script", "cast", "ending", "soundtrack", "director",
         "performance", "dialogue", "pacing", "sequel", "comedy", "drama", "thriller", "documentary"]
INTENSIFIERS = ["", "", "very", "really", "quite", "truly", "rather", "surprisingly", "utterly"]
FILLERS = ["", "", "", "i saw it on a sunday", "my friends came along", "it runs two hours",
           "the theater was half empty", "it was released last spring", "i watched it twice",
           "based on a novel", "shot in three countries"]
TEMPLATES = [
    "the {noun} is {intens} {adj}",
    "a {intens} {adj} {noun}",
    "i found the {noun} {intens} {adj}",
    "what a {adj} {noun}",
    "the {noun} was {intens} {adj} and {adj2}",
    "overall {intens} {adj}",
    "{adj} , {adj2} and {intens} {adj3}",
]
NEGATED = ["the {noun} is not {adj} at all", "hardly a {adj} {noun}", "i would not call the {noun} {adj}",
           "never {adj} , not even once"]
MIXED = "the {noun} starts {other} but ends up {intens} {adj}"


def opinion(rng: random.Random, positive: bool) -> str:
    """One sentence whose overall polarity is ``positive``."""
    words, other = (POSITIVE, NEGATIVE) if positive else (NEGATIVE, POSITIVE)
    kind = rng.random()
    fill = {"noun": rng.choice(NOUNS), "intens": rng.choice(INTENSIFIERS)}
    if kind < 0.15:  # negation: the words carry the opposite polarity
        text = rng.choice(NEGATED).format(adj=rng.choice(other), **fill)
    elif kind < 0.3:  # mixed: the clause after "but" decides
        text = MIXED.format(other=rng.choice(other), adj=rng.choice(words), **fill)
    else:
        adjs = rng.sample(words, 3)
        text = rng.choice(TEMPLATES).format(adj=adjs[0], adj2=adjs[1], adj3=adjs[2], **fill)
    filler = rng.choice(FILLERS)
    text = f"{filler} , {text}" if filler and rng.random() < 0.5 else (f"{text} , {filler}" if filler else text)
    return " ".join(text.split()) + " ."


def records(n: int, seed: int, noise: float) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        positive = rng.random() < 0.5
        text = opinion(rng, positive)
        if rng.random() < noise:  # label noise: accuracy cannot reach 100 %
            positive = not positive
        out.append((text, "positive" if positive else "negative"))
    return out


def write(path: str, rows: list[tuple[str, str]], fmt: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        if fmt == "tsv":
            f.write("sentence\tlabel\n")
            f.writelines(f"{text}\t{label}\n" for text, label in rows)
        else:
            f.writelines(json.dumps({"sentence": text, "label": label}) + "\n" for text, label in rows)
    return path


def make(out: str, train: int = 4000, dev: int = 500, seed: int = 0, noise: float = 0.03,
         fmt: str = "tsv") -> tuple[str, str]:
    """Write the train and dev files; returns their paths."""
    if fmt not in ("tsv", "jsonl"):
        raise ValueError(f"format {fmt!r}; valid: tsv, jsonl")
    os.makedirs(out, exist_ok=True)
    # different seeds per split: dev sentences are fresh draws, not copies of train lines
    return (write(os.path.join(out, f"train.{fmt}"), records(train, seed * 2, noise), fmt),
            write(os.path.join(out, f"dev.{fmt}"), records(dev, seed * 2 + 1, noise), fmt))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools.make_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=4000, help="train sentences")
    p.add_argument("--dev", type=int, default=500, help="dev sentences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.03, help="fraction of labels flipped")
    p.add_argument("--format", choices=("tsv", "jsonl"), default="tsv")
    args = p.parse_args(argv)
    paths = make(args.out, args.train, args.dev, args.seed, args.noise, args.format)
    print(f"wrote {args.train} + {args.dev} sentences: {paths[0]}, {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
