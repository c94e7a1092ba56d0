"""Benchmark tasks for the peers: webdataset, HF datasets, mosaic streaming, litdata (peer venv).

One writer and one streaming reader per peer, each used the way its docs
show, on the same JSONL corpus, with the same shard count as the project
(``max_records`` per shard), the same shuffle (seeded, 8192-item buffer where
the peer has one), DataLoader(batch 64, 2 workers) and the same tokenizing
collate (``bench_common.PadCollate``).  Never imports the project.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import time
import types

from tools.bench.common import BATCH, SHUFFLE_BUFFER, WORKERS, PadCollate, dir_bytes, iter_jsonl, time_epoch, versions


def _timed_build(corpus: str, out: str, write, libs: list[str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    records = write()
    seconds = time.perf_counter() - t0
    size = os.path.getsize(corpus)
    return {"seconds": seconds, "input_bytes": size, "mb_per_s": size / 1e6 / seconds, "records": records,
            "output_bytes": dir_bytes(out), "versions": versions(libs)}


def _stream(make, expected, libs) -> dict:
    out = time_epoch(make, expected)
    out["versions"] = versions(libs)
    return out


# -- webdataset ------------------------------------------------------------------
def build_webdataset(corpus: str, out: str, max_records: int) -> dict:
    import webdataset as wds

    def write():
        os.makedirs(out)
        n = 0
        with wds.ShardWriter(os.path.join(out, "shard-%05d.tar"), maxcount=max_records, verbose=0) as sink:
            for n, (text, label) in enumerate(iter_jsonl(corpus), 1):
                sink.write({"__key__": f"{n:09d}", "txt": text, "cls": label})
        return n

    return _timed_build(corpus, out, write, ["webdataset"])


def stream_webdataset(shards: str, tokenizer: str, seed: int = 0, expected: int | None = None) -> dict:
    import webdataset as wds
    from torch.utils.data import DataLoader

    urls = sorted(glob.glob(os.path.join(shards, "*.tar")))

    def make():
        ds = (wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, workersplitter=wds.split_by_worker,
                             nodesplitter=wds.single_node_only, empty_check=False)
              .shuffle(SHUFFLE_BUFFER).decode().to_tuple("txt", "cls"))
        return DataLoader(ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=PadCollate(tokenizer))

    return _stream(make, expected, ["webdataset", "torch", "tokenizers"])


# -- HF datasets -----------------------------------------------------------------
def build_hf(corpus: str, out: str, num_shards: int, cache_dir: str) -> dict:
    import datasets

    datasets.disable_progress_bars()

    def write():
        shutil.rmtree(cache_dir, ignore_errors=True)  # no reuse of an earlier run's Arrow cache
        ds = datasets.load_dataset("json", data_files=corpus, split="train", cache_dir=cache_dir)
        ds.save_to_disk(out, num_shards=num_shards)
        return len(ds)

    result = _timed_build(corpus, out, write, ["datasets", "pyarrow"])
    shutil.rmtree(cache_dir, ignore_errors=True)
    return result


def stream_hf(shards: str, tokenizer: str, seed: int = 0, expected: int | None = None) -> dict:
    """``load_dataset("arrow", streaming=True)`` over the files ``save_to_disk`` wrote."""
    import datasets
    from torch.utils.data import DataLoader

    datasets.disable_progress_bars()
    files = sorted(glob.glob(os.path.join(shards, "*.arrow")))

    def make():
        ds = datasets.load_dataset("arrow", data_files=files, split="train", streaming=True)
        # datasets >= 5 interleaves up to 10 shards into one buffer by default, which
        # leaves a single shard, i.e. one busy DataLoader worker; 1 keeps 2 workers busy
        extra = {"max_buffer_input_shards": 1} if _has_param(ds.shuffle, "max_buffer_input_shards") else {}
        ds = ds.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER, **extra)
        return DataLoader(ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=PadCollate(tokenizer))

    return _stream(make, expected, ["datasets", "pyarrow", "torch", "tokenizers"])


def _has_param(fn, name: str) -> bool:
    import inspect

    return name in inspect.signature(fn).parameters


# -- mosaic streaming ------------------------------------------------------------
def _import_streaming():
    # streaming/__init__ imports streaming.vision → torchvision, whose PyPI wheel
    # needs the CUDA torch; the text classes never use it, so stand it in.
    sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))
    import streaming

    return streaming


def build_mosaic(corpus: str, out: str, size_limit: int) -> dict:
    streaming = _import_streaming()

    def write():
        n = 0
        with streaming.MDSWriter(out=out, columns={"text": "str", "label": "int"}, size_limit=size_limit,
                                 progress_bar=False) as sink:
            for n, (text, label) in enumerate(iter_jsonl(corpus), 1):  # noqa: B007 (n is the count returned)
                sink.write({"text": text, "label": label})
        return n

    return _timed_build(corpus, out, write, ["mosaicml-streaming"])


def stream_mosaic(shards: str, tokenizer: str, seed: int = 0, expected: int | None = None) -> dict:
    streaming = _import_streaming()
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    clean_stale_shared_memory()

    def make():
        ds = streaming.StreamingDataset(local=shards, shuffle=True, shuffle_seed=seed, batch_size=BATCH)
        return DataLoader(ds, batch_size=BATCH, num_workers=WORKERS, collate_fn=PadCollate(tokenizer))

    return _stream(make, expected, ["mosaicml-streaming", "torch", "tokenizers"])


# -- litdata ---------------------------------------------------------------------
def _jsonl_ranges(corpus: str, parts: int) -> list[dict]:
    """Line-aligned byte ranges of the corpus: litdata's ``optimize`` maps a function over inputs."""
    size = os.path.getsize(corpus)
    starts = [0]
    with open(corpus, "rb") as f:
        for k in range(1, parts):
            f.seek(k * size // parts)
            f.readline()
            starts.append(f.tell())
    bounds = sorted(set(starts)) + [size]
    return [{"path": corpus, "start": a, "end": b} for a, b in zip(bounds, bounds[1:]) if a < b]


def read_range(item: dict):
    with open(item["path"], "rb") as f:
        f.seek(item["start"])
        for line in f.read(item["end"] - item["start"]).splitlines():
            obj = json.loads(line)
            yield {"text": obj["text"], "label": int(obj["label"])}


def build_litdata(corpus: str, out: str, max_records: int, workers: int = 1) -> dict:
    import litdata

    def write():
        litdata.optimize(fn=read_range, inputs=_jsonl_ranges(corpus, 8), output_dir=out,
                         chunk_size=max_records, num_workers=workers, mode="overwrite")
        return litdata.StreamingDataset(input_dir=out).__len__()

    return _timed_build(corpus, out, write, ["litdata"])


def stream_litdata(shards: str, tokenizer: str, seed: int = 0, expected: int | None = None) -> dict:
    import litdata

    def make():
        ds = litdata.StreamingDataset(input_dir=shards, shuffle=True, seed=seed)
        return litdata.StreamingDataLoader(ds, batch_size=BATCH, num_workers=WORKERS,
                                           collate_fn=PadCollate(tokenizer))

    return _stream(make, expected, ["litdata", "torch", "tokenizers"])
