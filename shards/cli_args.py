"""The options of the ``shards`` command: every one has a one-line description and shows its default."""
from __future__ import annotations

import argparse
import re

from shards.corpus.read import BAD_POLICIES, INPUT_FORMATS, TEXT_UNITS

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_size(text: str) -> int:
    """'64MB' -> 64_000_000, '1GiB' -> 2**30, '4096' -> 4096."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected a number with an optional unit "
                                         f"(B, KB, MB, GB, KiB, MiB, GiB), e.g. 64MB or 1GiB")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless it says its default itself.

    Options without a default value (None) say in words what happens without them, so no
    help line reads "(default: None)".
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or "default:" in text or action.default in (None, argparse.SUPPRESS)
                or action.required or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


STORAGE_HELP = "fsspec storage option, repeatable, e.g. endpoint_url=http://... (default: none)"


def add_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files, directories (walked), globs or fsspec URLs to read")
    p.add_argument("--out", required=True, help="output folder, a local path or fsspec URL (required)")
    p.add_argument("--format", default="arrow", choices=["arrow", "tar"],
                   help="shard format: Arrow IPC files or webdataset tar")
    p.add_argument("--input-format", default=None, choices=INPUT_FORMATS,
                   help="reader for every input whatever its extension, e.g. txt for rt-polarity.neg "
                        "(default: by extension; .gz/.zst still decompress)")
    p.add_argument("--text-unit", default="line", choices=TEXT_UNITS,
                   help="txt record: a non-blank line; a blank-line-separated paragraph (lines joined "
                        "with one space); or the whole file (line breaks kept)")
    p.add_argument("--text-field", default="text", help="field(s) holding the text, comma-separated "
                                                        "(joined with a newline)")
    p.add_argument("--label-field", default=None,
                   help="field holding the label (default: none, the set is unlabelled)")
    p.add_argument("--label-names", default=None,
                   help="label values in id order, comma-separated; other values are bad records "
                        "(default: every value found, sorted)")
    p.add_argument("--label-map", default=None, metavar="RAW=NAME,...|FILE.json",
                   help="map raw label values to names, ids in the map's order; values not in it are "
                        "bad records; not with --label-names (default: none)")
    p.add_argument("--columns", default=None,
                   help="column names of a CSV/TSV without a header row (default: none, the first row "
                        "is the header)")
    p.add_argument("--max-bytes", type=parse_size, default="64MB",
                   help="start a new shard past this size (64MB, 1GiB, ...)")
    p.add_argument("--max-records", type=int, default=None,
                   help="start a new shard past this many records (default: none, by size only)")
    p.add_argument("--tokenizer", default=None,
                   help="local HF tokenizer directory to pre-tokenize with (default: none, text only)")
    p.add_argument("--max-length", type=int, default=None,
                   help="truncate pre-tokenized ids to this length (default: none, no truncation)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (the output is the same for any)")
    p.add_argument("--on-bad-record", default="error", choices=BAD_POLICIES,
                   help="error: stop at the first bad record naming file:line; skip: count and report them")
    p.add_argument("--max-record-bytes", type=parse_size, default="8MiB",
                   help="a record (a line, row, paragraph or file) over this size is a bad record")
    p.add_argument("--split-bytes", type=parse_size, default="256MiB",
                   help="large txt/jsonl files are cut into units of this size (not a worker setting)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="run units in local processes or on a Ray cluster")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address for --engine ray (default: none, start or find a local one)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE", help=STORAGE_HELP)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: only on a terminal)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shards", description="Build, inspect and verify text shards.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    add_build_args(command("build", "corpus files -> shards + index.json"))
    inspect = command("inspect", "show a shard set's manifest, counts per label, shard sizes and records")
    verify = command("verify", "re-hash every shard and check record counts; exit 1 naming bad shards")
    for p in (inspect, verify):
        p.add_argument("url", help="the shard set: its folder, index.json or fsspec URL")
        p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE", help=STORAGE_HELP)
    inspect.add_argument("-n", type=int, default=5, help="records to show")
    audit = command("audit", "check a training run's audit logs against the manifest")
    audit.add_argument("dir", help="the training run's output folder (holds audit/)")
    audit.add_argument("--train", help="the train set's URL, with credentials where the logs hold it redacted "
                                       "(default: the URL recorded in the logs)")
    audit.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE", help=STORAGE_HELP)
    return parser
