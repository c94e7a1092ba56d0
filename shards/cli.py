"""The ``shards`` command: build | inspect | verify | audit.

    shards build corpus/*.jsonl.gz --out shards/ --label-field label --workers 4
    shards inspect shards/ -n 3
    shards verify s3://bucket/shards
    shards audit runs/demo
"""
from __future__ import annotations

import json
import logging
import os
import sys

from shards import storage
from shards.build.engines import EngineError, node_summary
from shards.build.writer import Limits
from shards.cli_args import make_parser, parse_size
from shards.corpus.labels import parse_label_map
from shards.corpus.read import CorpusSpec
from shards.formats import CorruptShardError
from shards.manifest import SAMPLE_ID, load_manifest
from shards.storage import parse_storage_options, redact

__all__ = ["main", "parse_size", "parse_storage_options"]

# What a user can cause (bad input or settings, a missing, unreadable or full path, a damaged
# shard): one line `shards CMD: error: ...`, exit 2.  Anything else is a bug: its traceback.
USER_ERRORS = (ValueError, OSError, CorruptShardError, EngineError, storage.StorageError)

def _csv_list(text: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None


def cmd_build(args) -> int:
    from shards.build.driver import BuildConfig, build

    spec = CorpusSpec(text_fields=_csv_list(args.text_field) or ("text",), label_field=args.label_field,
                      columns=_csv_list(args.columns), on_bad_record=args.on_bad_record,
                      max_record_bytes=args.max_record_bytes, text_unit=args.text_unit,
                      input_format=args.input_format)
    label_map = parse_label_map(args.label_map) if args.label_map is not None else None
    cfg = BuildConfig(out=args.out, format=args.format, spec=spec,
                      limits=Limits(args.max_bytes, args.max_records), tokenizer=args.tokenizer,
                      max_length=args.max_length, label_names=_csv_list(args.label_names), label_map=label_map,
                      workers=args.workers, split_bytes=args.split_bytes,
                      storage_options=parse_storage_options(args.storage_option), progress=args.progress)
    engine = None
    if args.engine == "ray":
        from shards.build.ray_engine import make_engine
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
          f"{m.num_bytes / 1e6:.1f} MB at {redact(args.out)} in {result.seconds:.2f} s "
          f"({result.mb_per_s:.1f} MB/s input, {m.num_records / max(result.seconds, 1e-9):.0f} records/s); "
          f"skipped: {skipped or 'none'}; reused units: {result.reused_units}")
    return 0


def cmd_inspect(args) -> int:
    from shards.reader import iter_shard

    so = parse_storage_options(args.storage_option)
    m = load_manifest(args.url, so)
    print(f"format      {m.format} (version {m.version})")
    print(f"records     {m.num_records}")
    print(f"shards      {len(m.shards)} ({m.num_bytes / 1e6:.2f} MB)")
    print(f"fields      {', '.join(m.fields)}")
    if m.label_names is not None:
        print(f"labels      {m.label_names}")
        for line in label_lines(m):
            print(line)
    print(shard_summary(m))
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
    from shards.reader import verify_shard

    so = parse_storage_options(args.storage_option)
    m = load_manifest(args.url, so)
    total, failed = 0, []
    for i, info in enumerate(m.shards):
        try:
            total += verify_shard(m, args.url, i, so)
        except (CorruptShardError, storage.StorageError, OSError) as exc:
            failed.append(info.path)
            print(f"FAIL {redact(one_line(exc))}", file=sys.stderr)
    if total != m.num_records and not failed:
        failed.append("index.json")
        print(f"FAIL manifest says {m.num_records} records, shards hold {total}", file=sys.stderr)
    status = "OK" if not failed else f"{len(failed)} bad shard(s): {', '.join(failed)}"
    print(f"verified {len(m.shards)} shard(s), {total} records: {status}")
    return 0 if not failed else 1


def cmd_audit(args) -> int:
    from shards.audit import main as audit_main

    train = ["--train", args.train] if args.train else []
    return audit_main([args.dir, *train] + [a for pair in args.storage_option for a in ("--storage-option", pair)])


def label_lines(m) -> list[str]:
    """One line per label: id, name, records and share (stored at build time in ``label_counts``)."""
    if m.label_counts is None:
        return ["  (counts per label are not in this manifest: rebuild it with this version to see them)"]
    width = max(len(n) for n in m.label_names) if m.label_names else 0
    return [f"  {i:>3}  {name:<{width}}  {n:>10} records  {100 * n / max(m.num_records, 1):5.1f}%"
            for i, (name, n) in enumerate(zip(m.label_names, m.label_counts))]


def shard_summary(m) -> str:
    """Shard count and records / bytes per shard (min / median / max)."""
    import statistics  # only `shards inspect` needs it

    if not m.shards:
        return "per shard   no shards"
    recs = [s.num_records for s in m.shards]
    size = [s.num_bytes for s in m.shards]
    return (f"per shard   records min {min(recs)} / median {statistics.median(recs):g} / max {max(recs)}; "
            f"bytes min {_human(min(size))} / median {_human(statistics.median(size))} / max {_human(max(size))}")


def _human(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:g} B"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for chatty in ("botocore", "aiobotocore"):  # "Found credentials in environment variables." on every run
        logging.getLogger(chatty).setLevel(logging.WARNING)
    commands = {"build": cmd_build, "inspect": cmd_inspect, "verify": cmd_verify, "audit": cmd_audit}
    try:
        return commands[args.command](args)
    except BrokenPipeError:  # `shards inspect ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as exc:
        if args.debug:
            raise
        # URLs in the message may carry user:token@ or a presigned signature
        print(f"shards {args.command}: error: {redact(one_line(exc))}", file=sys.stderr)
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
