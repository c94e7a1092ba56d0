"""Benchmark tasks for this project, the map-style baseline and the pyarrow floor (project venv).

Each ``task_*`` does one repetition and returns a dict of figures; the driver
(``python -m tools.bench``) runs them through ``python -m tools.bench.task``
in a fresh process each, so memory and imports never leak between them.
"""
from __future__ import annotations

import os
import shutil
import time

from tools.bench.common import BATCH, MAX_LENGTH, WORKERS, PadCollate, dir_bytes, read_jsonl, time_epoch, versions

LABEL_NAMES = ("0", "1")


def task_build_ours(corpus: str, out: str, fmt: str = "arrow", tokenizer: str | None = None,
                    max_records: int | None = None, workers: int = 1) -> dict:
    """JSONL → shards with ``shards.build.driver.build`` (one process, like the peer writers)."""
    from shards.build.driver import BuildConfig, build
    from shards.build.writer import Limits
    from shards.corpus.read import CorpusSpec

    shutil.rmtree(out, ignore_errors=True)
    cfg = BuildConfig(out=out, format=fmt, spec=CorpusSpec(label_field="label"),
                      limits=Limits(max_records=max_records), tokenizer=tokenizer,
                      max_length=MAX_LENGTH if tokenizer else None, label_names=LABEL_NAMES,
                      workers=workers, progress=False)
    t0 = time.perf_counter()
    result = build([corpus], cfg)
    seconds = time.perf_counter() - t0
    size = os.path.getsize(corpus)
    return {"seconds": seconds, "input_bytes": size, "mb_per_s": size / 1e6 / seconds,
            "records": result.manifest.num_records, "shards": len(result.manifest.shards),
            "output_bytes": dir_bytes(out), "versions": versions(["pyarrow", "tokenizers"])}


def task_build_pyarrow(corpus: str, out: str, max_records: int | None = None) -> dict:
    """The floor: pyarrow's C++ JSON reader straight into Arrow IPC files (no checks, no manifest)."""
    import pyarrow as pa
    import pyarrow.json as pj

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.perf_counter()
    table = pj.read_json(corpus)
    step = max_records or table.num_rows
    for k, start in enumerate(range(0, table.num_rows, step)):
        part = table.slice(start, step)
        with pa.OSFile(os.path.join(out, f"part-{k:05d}.arrow"), "wb") as sink:
            with pa.ipc.new_file(sink, part.schema) as writer:
                writer.write_table(part, max_chunksize=1024)
    seconds = time.perf_counter() - t0
    size = os.path.getsize(corpus)
    return {"seconds": seconds, "input_bytes": size, "mb_per_s": size / 1e6 / seconds,
            "records": table.num_rows, "output_bytes": dir_bytes(out), "versions": versions(["pyarrow"])}


def task_stream_ours(url: str, tokenizer: str, pretokenized: bool = False, keep_text: bool = True,
                     seed: int = 0, expected: int | None = None, workers: int = WORKERS) -> dict:
    """One shuffled epoch of ``ShardStream`` + ``make_loader`` (batch 64, 2 workers).

    On-the-fly shards get the tokenizer; pre-tokenized ones get it too (as a
    user would, for the fingerprint check and the pad id) and read stored ids.
    """
    from pipeline import ShardStream, StreamConfig, make_loader

    def make():
        ds = ShardStream(url, tokenizer=tokenizer, max_length=MAX_LENGTH, shuffle=True, seed=seed,
                         config=StreamConfig(keep_text=keep_text))
        return make_loader(ds, BATCH, num_workers=workers)

    out = time_epoch(make, expected)
    out["versions"] = versions(["torch", "torchdata", "tokenizers", "pyarrow"])
    out["pretokenized"] = pretokenized
    return out


class ListDataset:
    """The map-style baseline: the whole corpus as Python lists (PyTorch issue 13246's pattern)."""

    def __init__(self, texts: list[str], labels: list[int]):
        self.texts, self.labels = texts, labels

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int):
        return self.texts[i], self.labels[i]


class NumpyCollate(PadCollate):
    """The shared collate, returning numpy arrays: the workers pickle them instead of
    passing torch tensors through shared memory (what the project's loader does)."""

    def __call__(self, items) -> dict:
        return {k: v.numpy() for k, v in super().__call__(items).items()}


def _tensors(loader):
    import torch

    for batch in loader:
        yield {k: torch.from_numpy(v) for k, v in batch.items()}


def task_stream_mapstyle(corpus: str, tokenizer: str, seed: int = 0, expected: int | None = None,
                         workers: int = WORKERS, numpy_ipc: bool = False) -> dict:
    """Lists in a Dataset + DataLoader(shuffle=True, 2 workers) + the shared tokenizing collate.

    Reading the JSONL into lists is setup, paid once per run: it counts in
    the time to first batch, not in the epoch's samples/s.  ``numpy_ipc``:
    batches cross from the workers as numpy arrays, tensors made in the main
    process, to show how much of a gap is that choice alone.
    """
    import torch
    from torch.utils.data import DataLoader, Dataset

    t0 = time.perf_counter()
    texts, labels = read_jsonl(corpus)
    load_s = time.perf_counter() - t0
    dataset = type("ListDataset", (ListDataset, Dataset), {})(texts, labels)
    gen = torch.Generator().manual_seed(seed)

    def make():
        collate = (NumpyCollate if numpy_ipc else PadCollate)(tokenizer)
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=gen, num_workers=workers,
                            collate_fn=collate, prefetch_factor=2 if workers else None)
        return _tensors(loader) if numpy_ipc else loader

    out = time_epoch(make, expected)
    out["load_s"] = load_s
    out["ttfb_s"] += load_s
    out["versions"] = versions(["torch", "tokenizers"])
    return out
