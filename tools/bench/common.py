"""Pieces shared by every benchmark task, in the project venv and in the peer venv alike.

Imports only numpy, torch and tokenizers (present in both venvs), never the
project, so a peer task can run where the project is not installed.  Not run
directly: ``tools.bench.task`` runs the tasks that use it.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np

RESULT_MARK = "BENCH_RESULT "
BATCH = 64
WORKERS = 2
MAX_LENGTH = 128
CEILING_CHUNK = 1024
SHUFFLE_BUFFER = 8192  # the same in-worker buffer as ShardStream's default, for the peers that have one


def load_tok(path: str, max_length: int = MAX_LENGTH, pad: bool = False):
    """The bundled fast tokenizer (a ``tokenizers.Tokenizer``), truncating at ``max_length``."""
    from tokenizers import Tokenizer

    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    tok = Tokenizer.from_file(file)
    tok.enable_truncation(max_length)
    if pad:
        pad_id = tok.token_to_id("[PAD]") or 0
        tok.enable_padding(pad_id=pad_id, pad_token="[PAD]")
    else:
        tok.no_padding()
    return tok


def encode(tok, texts: list[str]):
    # encode_batch_fast skips the char offsets (tokenizers >= 0.21); the ids are identical
    fn = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    return fn(texts)


class PadCollate:
    """The collate every text-yielding peer and the map-style baseline share.

    One call to the fast tokenizer per batch (64 texts), padding to the longest
    in Rust, then tensors shaped like the project's batches.  Items are
    ``(text, label)`` pairs or dicts with ``text``/``label``.
    """

    def __init__(self, tokenizer_path: str, max_length: int = MAX_LENGTH):
        self.path, self.max_length = tokenizer_path, max_length
        self._tok = None

    def __getstate__(self):  # workers load their own copy (spawn-safe, and no Rust object pickled)
        return {"path": self.path, "max_length": self.max_length, "_tok": None}

    def __call__(self, items) -> dict:
        import torch

        if self._tok is None:
            self._tok = load_tok(self.path, self.max_length, pad=True)
        if isinstance(items[0], dict):
            texts = [it["text"] for it in items]
            labels = [int(it["label"]) for it in items]
        else:
            texts = [str(t) for t, _ in items]
            labels = [int(lab) for _, lab in items]
        encs = encode(self._tok, texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "labels": torch.tensor(labels, dtype=torch.long)}


def read_jsonl(path: str) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            texts.append(obj["text"])
            labels.append(int(obj["label"]))
    return texts, labels


def iter_jsonl(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            yield obj["text"], int(obj["label"])


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def count_padded(batch) -> tuple[int, int]:
    """(samples, real tokens) of a padded batch; ``is_pad`` repeats are left out."""
    mask = batch["attention_mask"]
    is_pad = batch.get("is_pad")
    if is_pad is not None and bool(is_pad.any()):
        keep = ~is_pad
        return int(keep.sum()), int(mask[keep].sum())
    return int(mask.shape[0]), int(mask.sum())


def cpu_seconds() -> float:
    """User + system CPU of this process and of its children that have been waited for."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _live_children() -> int:
    try:
        import psutil
    except ImportError:
        return -1
    return len(psutil.Process().children(recursive=True))


def time_epoch(make_loader, expected: int | None = None, count=count_padded) -> dict:
    """One epoch through the loader ``make_loader()`` returns, timed from before its creation.

    ``ttfb_s``: creation (dataset, workers) to the first batch; ``count(batch)``
    gives (samples, real tokens), by default from the attention masks.
    ``cpu_s``: CPU time of main + workers over the epoch (workers are reaped
    when the loader is done), which other users of a shared machine disturb
    far less than wall time; ``cpu_partial`` says some child was still alive.
    """
    import gc

    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    loader = make_loader()
    samples = tokens = batches = 0
    ttfb = batch = None
    for batch in loader:
        if ttfb is None:
            ttfb = time.perf_counter() - t0
        n, t = count(batch)
        samples += n
        tokens += t
        batches += 1
    seconds = time.perf_counter() - t0
    del loader, batch
    own = time.process_time()
    gc.collect()  # reaps the workers, so that their CPU is counted; the collection itself is the bench's, not
    cpu = cpu_seconds() - cpu0 - (time.process_time() - own)  # the pipeline's: the tokenizer ceiling pays none
    out = {"samples": samples, "tokens": tokens, "batches": batches, "epoch_s": seconds,
           "ttfb_s": ttfb if ttfb is not None else float("nan"),
           "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
           "cpu_s": cpu, "samples_per_cpu_s": samples / cpu, "cpu_partial": _live_children() > 0}
    if expected is not None:
        out["expected_samples"] = expected
    return out


def median_of(runs: list[dict]) -> dict:
    """Per-key median of numeric figures over repetitions (ints that differ are reported as lists)."""
    out: dict = {"reps": len(runs)}
    for key in runs[0]:
        values = [r[key] for r in runs if key in r]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            if all(isinstance(v, int) for v in values) and len(set(values)) > 1:
                out[key] = values  # e.g. sample counts that change between reps: a finding, keep all
            elif all(isinstance(v, int) for v in values):
                out[key] = values[0]
            else:
                out[key] = statistics.median(values)
        else:
            out[key] = values[0]
    return out


def emit(result: dict) -> None:
    """The one line the driver reads back from a task's stdout."""
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


def versions(names) -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# -- the raw tokenizer ceiling -------------------------------------------------
def _tokenize_all(tok, texts: list[str]) -> tuple[int, float, float, float]:
    """(tokens, start, end, cpu s): ``tok(1024 texts)`` in a loop, ids pulled out as the stream must."""
    start, cpu0 = time.perf_counter(), time.process_time()
    tokens = 0
    for i in range(0, len(texts), CEILING_CHUNK):
        encs = encode(tok, texts[i:i + CEILING_CHUNK])
        tokens += sum(len(ids) for ids in (e.ids for e in encs))
    return tokens, start, time.perf_counter(), time.process_time() - cpu0


def _ceiling_child(path, texts, barrier, conn):
    tok = load_tok(path)
    barrier.wait()
    conn.send(_tokenize_all(tok, texts))
    conn.close()


def ceiling_once(path: str, texts: list[str], procs: int) -> dict:
    """Samples/s and tokens/s of ``procs`` processes each tokenizing its share of ``texts``.

    Children are forked with the texts already in memory and start together
    at a barrier; the wall time is first start to last end (perf_counter is
    the system-wide monotonic clock on Linux).
    """
    if procs == 1:
        tokens, start, end, cpu = _tokenize_all(load_tok(path), texts)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(procs)
        pipes, children = [], []
        for k in range(procs):
            share = texts[k * len(texts) // procs:(k + 1) * len(texts) // procs]
            recv, send = ctx.Pipe(duplex=False)
            child = ctx.Process(target=_ceiling_child, args=(path, share, barrier, send))
            child.start()
            pipes.append(recv)
            children.append(child)
        parts = [p.recv() for p in pipes]
        for child in children:
            child.join()
        tokens = sum(p[0] for p in parts)
        start, end = min(p[1] for p in parts), max(p[2] for p in parts)
        cpu = sum(p[3] for p in parts)
    seconds = end - start
    return {"samples": len(texts), "tokens": tokens, "seconds": seconds, "cpu_s": cpu,
            "samples_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds,
            "samples_per_cpu_s": len(texts) / cpu}


def task_ceiling(corpus: str, tokenizer: str, procs: int = 1, reps: int = 3, transformers: bool = False) -> dict:
    """The raw tokenizer ceiling (and, with ``transformers``, the ``AutoTokenizer`` call for reference)."""
    texts, _ = read_jsonl(corpus)
    if transformers:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(tokenizer)
        runs = []
        for _ in range(reps):
            t0, cpu0 = time.perf_counter(), time.process_time()
            tokens = 0
            for i in range(0, len(texts), CEILING_CHUNK):
                out = hf(texts[i:i + CEILING_CHUNK], truncation=True, max_length=MAX_LENGTH)
                tokens += sum(len(x) for x in out["input_ids"])
            s, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            runs.append({"samples": len(texts), "tokens": tokens, "seconds": s, "cpu_s": cpu,
                         "samples_per_s": len(texts) / s, "tokens_per_s": tokens / s,
                         "samples_per_cpu_s": len(texts) / cpu})
    else:
        runs = [ceiling_once(tokenizer, texts, procs) for _ in range(reps)]
    out = median_of(runs)
    out.update(procs=procs, tokenizers_parallelism=os.environ.get("TOKENIZERS_PARALLELISM"),
               versions=versions(["tokenizers", "transformers"]))
    return out
