"""Cold-epoch throughput: the same shards streamed from the local S3 server vs from local disk.

    python -m tools.bench.s3                                  # defaults: 40k records, 64 shards
    python -m tools.bench.s3 --records 100000 --shards 128 --workers 2 --repeat 3 --out s3-bench.json

Builds a shard set locally, starts ``tools.s3_server`` (moto, a child process
on 127.0.0.1) and uploads the set there, then times full epochs of
``ShardStream`` + ``make_loader`` (fresh dataset and workers each time, no
shard cache: a cold epoch for the S3 client) from disk and from ``s3://``.
With ``--tokenizer DIR`` the stream also tokenizes, as training would.
Prints samples/s and MB/s per source (median of ``--repeat`` runs); local
files sit in the page cache, so "local" is the pipeline's own ceiling.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time


def make_set(root: str, records: int, shards: int) -> str:
    from shards.build.driver import BuildConfig, build
    from shards.build.writer import Limits
    from shards.corpus.read import CorpusSpec

    src = os.path.join(root, "corpus.jsonl")
    with open(src, "w", encoding="utf-8") as f:
        for i in range(records):
            words = " ".join(f"w{(i * 7 + k) % 997}" for k in range(40))
            f.write(json.dumps({"text": f"record {i}: {words}", "label": ["neg", "pos"][i % 2]}) + "\n")
    out = os.path.join(root, "shards")
    build([src], BuildConfig(out=out, spec=CorpusSpec(label_field="label"),
                             limits=Limits(max_records=-(-records // shards))))
    return out


def start_server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tools.s3_server", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    match = re.match(r"endpoint (\S+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"tools.s3_server did not start: {line}")
    return proc, match.group(1)


def one_epoch(url: str, so: dict | None, workers: int, batch: int, tokenizer: str | None) -> tuple[int, float]:
    from pipeline import ShardStream, make_loader

    t0 = time.perf_counter()
    ds = ShardStream(url, storage_options=so, tokenizer=tokenizer, max_length=128 if tokenizer else None)
    n = 0
    for b in make_loader(ds, batch, num_workers=workers, collate_fn=None if tokenizer else list):
        n += len(b["sample_id"]) if isinstance(b, dict) else len(b)
    return n, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.s3", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (tokenize while streaming)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    from shards import load_manifest, storage
    from tools.s3_server import make_bucket

    with tempfile.TemporaryDirectory(prefix="s3-bench-") as root:
        local = make_set(root, args.records, args.shards)
        manifest = load_manifest(local)
        mb = manifest.num_bytes / 1e6
        server, endpoint = start_server()
        try:
            make_bucket(endpoint, "bench")
            so = {"client_kwargs": {"endpoint_url": endpoint}}
            fs, _ = storage.filesystem("s3://bench", so)
            fs.put(local + "/", "bench/shards", recursive=True)
            results = {}
            for name, url, opts in (("local", local, None), ("s3", "s3://bench/shards", so)):
                runs = [one_epoch(url, opts, args.workers, args.batch_size, args.tokenizer)
                        for _ in range(args.repeat)]
                secs = statistics.median(t for _, t in runs)
                assert all(n == manifest.num_records for n, _ in runs), runs
                results[name] = {"seconds": round(secs, 3), "samples_per_s": round(manifest.num_records / secs),
                                 "mb_per_s": round(mb / secs, 2), "runs_s": [round(t, 3) for _, t in runs]}
        finally:
            server.terminate()
            server.wait(10)
    print(f"{manifest.num_records} records, {len(manifest.shards)} shards, {mb:.1f} MB; "
          f"{args.workers} workers, batch {args.batch_size}, tokenizer {args.tokenizer or 'none'}")
    for name, r in results.items():
        print(f"{name:6s} cold epoch {r['seconds']:7.2f} s  {r['samples_per_s']:8d} samples/s  "
              f"{r['mb_per_s']:7.2f} MB/s  runs {r['runs_s']}")
    print(f"s3 / local time: {results['s3']['seconds'] / results['local']['seconds']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "num_bytes": manifest.num_bytes, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
