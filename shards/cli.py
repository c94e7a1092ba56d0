"""The ``shards`` command: build | inspect | verify | audit.

    shards build corpus/*.jsonl.gz --out shards/ --label-field label --workers 4
    shards inspect shards/ -n 3
    shards verify s3://bucket/shards
    shards audit runs/demo
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys

from . import storage
from .corpus import BAD_POLICIES, CorpusSpec
from .engines import EngineError, node_summary
from .formats import CorruptShardError
from .index import SAMPLE_ID, load_manifest
from .storage import parse_storage_options
from .writer import Limits

# What a user can cause (bad input or settings, a missing, unreadable or full path, a damaged
# shard): one line `shards CMD: error: ...`, exit 2.  Anything else is a bug: its traceback.
USER_ERRORS = (ValueError, OSError, CorruptShardError, EngineError, storage.StorageError)

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_size(text: str) -> int:
    """'64MB' -> 64_000_000, '1GiB' -> 2**30, '4096' -> 4096."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected a number with an optional unit "
                                         f"(B, KB, MB, GB, KiB, MiB, GiB), e.g. 64MB or 1GiB")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def _csv_list(text: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None


def add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories, globs or fsspec URLs")
    p.add_argument("--out", required=True, help="output folder (local path or fsspec URL)")
    p.add_argument("--format", default="arrow", choices=["arrow", "tar"])
    p.add_argument("--text-field", default="text", help="field(s) holding the text, comma-separated")
    p.add_argument("--label-field", default=None)
    p.add_argument("--label-names", default=None, help="label values in id order; others are bad records")
    p.add_argument("--columns", default=None, help="column names of a CSV/TSV without a header row")
    p.add_argument("--max-bytes", type=parse_size, default=parse_size("64MB"))
    p.add_argument("--max-records", type=int, default=None)
    p.add_argument("--tokenizer", default=None, help="local HF tokenizer directory to pre-tokenize with")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--on-bad-record", default="error", choices=BAD_POLICIES)
    p.add_argument("--max-record-bytes", type=parse_size, default=parse_size("8MiB"))
    p.add_argument("--split-bytes", type=parse_size, default=parse_size("256MiB"),
                   help="large txt/jsonl files are cut into units of this size (not a worker setting)")
    p.add_argument("--engine", default="local", choices=["local", "ray"])
    p.add_argument("--ray-address", default=None)
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)


def cmd_build(args) -> int:
    from .build import BuildConfig, build

    spec = CorpusSpec(text_fields=_csv_list(args.text_field) or ("text",), label_field=args.label_field,
                      columns=_csv_list(args.columns), on_bad_record=args.on_bad_record,
                      max_record_bytes=args.max_record_bytes)
    cfg = BuildConfig(out=args.out, format=args.format, spec=spec,
                      limits=Limits(args.max_bytes, args.max_records), tokenizer=args.tokenizer,
                      max_length=args.max_length, label_names=_csv_list(args.label_names),
                      workers=args.workers, split_bytes=args.split_bytes,
                      storage_options=parse_storage_options(args.storage_option), progress=args.progress)
    engine = None
    if args.engine == "ray":
        from .ray_engine import make_engine
        engine = make_engine(args.ray_address)
    elif args.ray_address:
        raise ValueError("--ray-address is only used with --engine ray")
    try:
        result = build(args.inputs, cfg, engine=engine)
    finally:
        if engine is not None:
            engine.close()
    if engine is not None:
        for line in node_summary(result.units):
            print(line)
    m = result.manifest
    skipped = {k: v for k, v in m.bad_records.items()}
    print(f"built {m.num_records} records into {len(m.shards)} {m.format} shard(s), "
          f"{m.num_bytes / 1e6:.1f} MB at {args.out} in {result.seconds:.2f} s "
          f"({result.mb_per_s:.1f} MB/s input, {m.num_records / max(result.seconds, 1e-9):.0f} records/s); "
          f"skipped: {skipped or 'none'}; reused units: {result.reused_units}")
    return 0


def cmd_inspect(args) -> int:
    from .reader import iter_shard

    so = parse_storage_options(args.storage_option)
    m = load_manifest(args.url, so)
    print(f"format      {m.format} (version {m.version})")
    print(f"records     {m.num_records}")
    print(f"shards      {len(m.shards)} ({m.num_bytes / 1e6:.2f} MB)")
    print(f"fields      {', '.join(m.fields)}")
    if m.label_names is not None:
        print(f"labels      {m.label_names}")
    if m.tokenizer:
        print(f"tokenizer   {m.tokenizer['name_or_path']} (fingerprint {m.tokenizer['fingerprint'][:16]}, "
              f"max_length {m.max_length})")
    print(f"bad records {m.bad_records or 'none'}")
    shown = 0
    for i in range(len(m.shards)):
        for batch in iter_shard(m, args.url, i, so, verify="none"):
            for j in range(len(batch)):
                if shown >= args.n:
                    return 0
                row = {"sample_id": SAMPLE_ID % (i, batch.start + j)}
                if batch.text is not None:
                    row["text"] = batch.text[j]
                if batch.label is not None:
                    row["label"] = int(batch.label[j])
                if batch.input_ids is not None:
                    row["input_ids"] = batch.input_ids[j].tolist()
                print(json.dumps(row, ensure_ascii=False))
                shown += 1
    return 0


def cmd_verify(args) -> int:
    from .reader import verify_shard

    so = parse_storage_options(args.storage_option)
    m = load_manifest(args.url, so)
    total, failed = 0, []
    for i, info in enumerate(m.shards):
        try:
            total += verify_shard(m, args.url, i, so)
        except (CorruptShardError, storage.StorageError, OSError) as exc:
            failed.append(info.path)
            print(f"FAIL {one_line(exc)}", file=sys.stderr)
    if total != m.num_records and not failed:
        failed.append("index.json")
        print(f"FAIL manifest says {m.num_records} records, shards hold {total}", file=sys.stderr)
    status = "OK" if not failed else f"{len(failed)} bad shard(s): {', '.join(failed)}"
    print(f"verified {len(m.shards)} shard(s), {total} records: {status}")
    return 0 if not failed else 1


def cmd_audit(args) -> int:
    from .audit import main as audit_main

    return audit_main([args.dir] + [a for pair in args.storage_option for a in ("--storage-option", pair)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shards", description="Build, inspect and verify text shards.")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", required=True)
    add_build_args(sub.add_parser("build", help="corpus files -> shards + index.json"))
    for name in ("inspect", "verify"):
        p = sub.add_parser(name, help=f"{name} a shard set")
        p.add_argument("url")
        p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
        if name == "inspect":
            p.add_argument("-n", type=int, default=5, help="records to show")
    p = sub.add_parser("audit", help="check a training run's audit logs against the manifest")
    p.add_argument("dir")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    commands = {"build": cmd_build, "inspect": cmd_inspect, "verify": cmd_verify, "audit": cmd_audit}
    try:
        return commands[args.command](args)
    except BrokenPipeError:  # `shards inspect ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"shards {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"shards {args.command}: interrupted", file=sys.stderr)
        return 130


def one_line(exc: BaseException) -> str:
    """The message on one line; an OSError without one still says what and where."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and getattr(exc, "filename", None) and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text or type(exc).__name__

if __name__ == "__main__":
    sys.exit(main())
