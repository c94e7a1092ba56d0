"""LM-block benchmark tasks: pre-tokenized blocks of 128 tokens, batch 64, 2 workers.

    python -m tools.bench.lm                      # SST-2 train x3, bundled MiniLM, workers 0 and 2
    python -m tools.bench.lm --workers 2 --repeats 5 --copies 3

Run directly, it builds the pre-tokenized shard set and the memmap of the same
tokens under ``--work``, then times an epoch of each (interleaved, best of
``--repeats``) with every ``--workers`` count and prints one JSON line per count:
ours (``make_loader`` over ``PackedStream``, with labels, position ids, document ids
and exact resume) and the nanoGPT-style memmap loader, tokens/s and their ratio.

- ours: ``PackedStream`` over the pre-tokenized shards (documents + [SEP], cut into blocks);
- nanoGPT-style: every token in one flat ``np.memmap`` (uint16 or uint32), a
  map-style Dataset of its non-overlapping blocks, DataLoader(shuffle=True);
- litdata: ``optimize(..., item_loader=TokensLoader())`` and a
  ``StreamingDataset(item_loader=TokensLoader(block_size=128))``.

Every variant holds the same tokens: each document's ids with the leading
[CLS] dropped and its [SEP] kept as the separator, truncated at 128 like the
pre-tokenized shards.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from tools.bench.common import BATCH, MAX_LENGTH, WORKERS, encode, iter_jsonl, load_tok, time_epoch, versions

BLOCK = 128


def doc_tokens(tok, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids[1:], dtype=np.int64) for e in encode(tok, texts)]  # drop [CLS], keep [SEP]


def _chunks(corpus: str, n: int = 1024):
    texts = []
    for text, _ in iter_jsonl(corpus):
        texts.append(text)
        if len(texts) == n:
            yield texts
            texts = []
    if texts:
        yield texts


def count_blocks(batch) -> tuple[int, int]:
    """(blocks, real tokens) of a batch of LM blocks (a tensor, or the project's dict)."""
    if isinstance(batch, dict):
        return int(batch["input_ids"].shape[0]), int(batch["num_tokens"])
    return int(batch.shape[0]), int(batch.numel())


# -- nanoGPT-style memmap --------------------------------------------------------
def build_memmap(corpus: str, out: str, tokenizer: str) -> dict:
    """``out/tokens-uint16.bin`` and ``tokens-uint32.bin``: every token, end to end (nanoGPT's prepare.py)."""
    tok = load_tok(tokenizer, MAX_LENGTH)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.perf_counter()
    flat = np.concatenate([ids for texts in _chunks(corpus) for ids in doc_tokens(tok, texts)])
    if flat.max() >= 1 << 16:
        raise ValueError(f"token id {flat.max()} does not fit uint16; the uint16 file needs a vocab < 65536")
    for dtype in ("uint16", "uint32"):
        flat.astype(dtype).tofile(os.path.join(out, f"tokens-{dtype}.bin"))
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump({"tokens": int(flat.size)}, f)
    return {"seconds": time.perf_counter() - t0, "tokens": int(flat.size), "versions": versions(["numpy"])}


class MemmapBlocks:
    """Block ``i`` = tokens [i*BLOCK, (i+1)*BLOCK) of the memmap (opened lazily, once per worker)."""

    def __init__(self, path: str, dtype: str):
        self.path, self.dtype = path, dtype
        self.n = os.path.getsize(path) // np.dtype(dtype).itemsize // BLOCK
        self._data = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        if self._data is None:
            self._data = np.memmap(self.path, dtype=self.dtype, mode="r")
        return torch.from_numpy(self._data[i * BLOCK:(i + 1) * BLOCK].astype(np.int64))


def stream_memmap(out: str, dtype: str = "uint16", seed: int = 0, expected: int | None = None) -> dict:
    import torch
    from torch.utils.data import DataLoader, Dataset

    blocks = type("MemmapBlocks", (MemmapBlocks, Dataset), {})(os.path.join(out, f"tokens-{dtype}.bin"), dtype)
    gen = torch.Generator().manual_seed(seed)

    def make():
        return DataLoader(blocks, batch_size=BATCH, shuffle=True, generator=gen, num_workers=WORKERS)

    result = time_epoch(make, None, count_blocks)
    result.update(expected_tokens=expected, versions=versions(["numpy", "torch"]))
    return result


# -- litdata TokensLoader --------------------------------------------------------
def _litdata_docs(item: dict):
    import torch

    from tools.bench.peers import read_range

    tok = load_tok(item["tokenizer"], MAX_LENGTH)
    texts = [r["text"] for r in read_range(item)]
    for i in range(0, len(texts), 1024):
        for ids in doc_tokens(tok, texts[i:i + 1024]):
            yield torch.from_numpy(ids.astype(np.int32))


def build_litdata_tokens(corpus: str, out: str, tokenizer: str, chunk_tokens: int) -> dict:
    import litdata
    from litdata.streaming.item_loader import TokensLoader

    from tools.bench.peers import _jsonl_ranges

    shutil.rmtree(out, ignore_errors=True)
    inputs = [dict(r, tokenizer=tokenizer) for r in _jsonl_ranges(corpus, 8)]
    t0 = time.perf_counter()
    litdata.optimize(fn=_litdata_docs, inputs=inputs, output_dir=out, chunk_size=chunk_tokens,
                     item_loader=TokensLoader(), num_workers=1, mode="overwrite")
    return {"seconds": time.perf_counter() - t0, "versions": versions(["litdata"])}


def stream_litdata_tokens(out: str, seed: int = 0, expected: int | None = None) -> dict:
    import litdata
    from litdata.streaming.item_loader import TokensLoader

    def make():
        ds = litdata.StreamingDataset(input_dir=out, item_loader=TokensLoader(block_size=BLOCK), shuffle=True,
                                      seed=seed)
        return litdata.StreamingDataLoader(ds, batch_size=BATCH, num_workers=WORKERS)

    result = time_epoch(make, None, count_blocks)
    result.update(expected_tokens=expected, versions=versions(["litdata", "torch"]))
    return result


# -- ours ---------------------------------------------------------------------------
def stream_ours_blocks(url: str, tokenizer: str, seed: int = 0, expected: int | None = None) -> dict:
    """``PackedStream`` (seq_len 128, documents split across blocks) over pre-tokenized shards."""
    from pipeline import ShardStream, StreamConfig, make_loader
    from pipeline.pack.stream import PackedStream

    def make():
        docs = ShardStream(url, tokenizer=tokenizer, shuffle=True, seed=seed, config=StreamConfig(keep_text=False))
        blocks = PackedStream(docs, seq_len=BLOCK)
        return make_loader(blocks, BATCH, num_workers=WORKERS)

    result = time_epoch(make, None, count_blocks)
    result.update(expected_tokens=expected, versions=versions(["torch", "pyarrow"]))
    return result


# -- run directly: ours against the memmap baseline, in one run ---------------------------
def _prepare(work: str, copies: int, corpus: str, tokenizer: str) -> tuple[str, str]:
    """(pre-tokenized shard set, memmap uint16 file) of ``copies`` x the corpus's sentences."""
    from shards.build.driver import BuildConfig, build
    from shards.corpus.read import CorpusSpec

    jsonl = os.path.join(work, "corpus.jsonl")
    with open(corpus) as src, open(jsonl, "w") as out:
        rows = [line.split("\t")[0] for line in src.read().splitlines()[1:]]
        for copy in range(copies):
            for i, text in enumerate(rows):
                out.write(json.dumps({"text": text, "id": f"{copy}-{i}"}) + "\n")
    url = os.path.join(work, "pretok")
    shutil.rmtree(url, ignore_errors=True)
    build([jsonl], BuildConfig(out=url, spec=CorpusSpec(text_fields=("text",)), tokenizer=tokenizer,
                               max_length=MAX_LENGTH))
    from pipeline import ShardStream, StreamConfig

    docs = [c.ids for c in ShardStream(url, config=StreamConfig(keep_text=False)).read_chunks(0)]
    flat = np.concatenate([np.asarray(r[1:]) for ids in docs for r in ids.rows()])  # drop [CLS], keep [SEP]
    path = os.path.join(work, "tokens-uint16.bin")
    flat.astype(np.uint16).tofile(path)
    return url, path


def _cpu_s() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _epoch_rates(make) -> tuple[float, float]:
    """(tokens per second, tokens per CPU second of main + workers) of one epoch; the CPU
    figure is what other users of a shared machine disturb least (workers are reaped at the end)."""
    import gc

    cpu0, t0 = _cpu_s(), time.perf_counter()
    loader = make()
    tokens = sum(count_blocks(b)[1] for b in loader)
    seconds = time.perf_counter() - t0
    del loader
    gc.collect()
    return tokens / seconds, tokens / max(_cpu_s() - cpu0, 1e-9)


def main(argv=None) -> int:
    import argparse
    import pathlib
    import tempfile

    import torch
    from torch.utils.data import DataLoader, Dataset

    from pipeline import PackedStream, ShardStream, StreamConfig, make_loader
    from tools.lm_smoke import default_tokenizer

    corpora = pathlib.Path(__file__).resolve().parents[3] / "shared" / "corpora"
    p = argparse.ArgumentParser(description="LM blocks: make_loader(PackedStream) vs an np.memmap uint16 loader")
    p.add_argument("--corpus", default=str(corpora / "sst2" / "train.tsv"), help="TSV, text in the first column")
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--work", default=None)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reuse", action="store_true", help="reuse the sets a previous run left in --work")
    args = p.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="lm-bench-")
    os.makedirs(work, exist_ok=True)
    tok = default_tokenizer()
    done = os.path.join(work, "tokens-uint16.bin")
    url, path = (os.path.join(work, "pretok"), done) if args.reuse and os.path.exists(done) else \
        _prepare(work, args.copies, args.corpus, tok)
    memmap = type("MemmapBlocks", (MemmapBlocks, Dataset), {})(path, "uint16")
    for workers in args.workers:
        # made once, like the memmap dataset: the epoch times the loader, not loading a tokenizer
        blocks = PackedStream(ShardStream(url, shuffle=True, seed=0, config=StreamConfig(keep_text=False)),
                              seq_len=BLOCK, tokenizer=tok)

        def ours(workers=workers, blocks=blocks):
            return make_loader(blocks, BATCH, num_workers=workers)

        def baseline(workers=workers):
            return DataLoader(memmap, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0),
                              num_workers=workers)

        best = {"ours": (0.0, 0.0), "memmap": (0.0, 0.0)}
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            for name, make in (("ours", ours), ("memmap", baseline)):
                rate, per_cpu = _epoch_rates(make)
                best[name] = (max(best[name][0], rate), max(best[name][1], per_cpu))
        (ours_s, ours_cpu), (mm_s, mm_cpu) = best["ours"], best["memmap"]
        print(json.dumps({"workers": workers, "ours_tokens_per_s": round(ours_s), "memmap_tokens_per_s": round(mm_s),
                          "ratio": round(ours_s / mm_s, 3), "ours_tokens_per_cpu_s": round(ours_cpu),
                          "memmap_tokens_per_cpu_s": round(mm_cpu), "cpu_ratio": round(ours_cpu / mm_cpu, 3)}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
