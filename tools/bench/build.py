"""``shards build`` on one large file against the pyarrow floor, per input format (issue 17, target 1).

    python -m tools.bench.build [--mb 110] [--reps 3] [--workers 1,2] [--formats jsonl,csv,txt]

Generates ~``--mb`` MB JSONL, CSV and TXT files under ``--dir`` (SST-2 sentences and
WikiText-2 lines repeated from ../shared/corpora, or generated sentences when absent), then
times, interleaved, ``--reps`` times each and in a fresh process each:

* the floor: ``pyarrow.json.read_json`` / ``pyarrow.csv.read_csv`` (txt: read_csv with one
  column, no quoting) + an Arrow IPC file write, no checks, no manifest, no sha256;
* the whole command a user runs: ``shards build INPUT --out OUT --format arrow|tar --workers N``;
* with tar shards, the *bytes floor*: writing and hashing (sha256) as many bytes as the tar
  build wrote, from a ready buffer, in a fresh process (hash and write(2) on two threads, as the
  shard sink does).  On short texts a tar set is ~25x its input, so this, not the parse, bounds a
  tar build: the tar build is printed against it and against the Arrow build of the same workers.

It prints medians in MB/s of input and each build's ratio to its format's floor, by wall time and
by CPU time (user + system of the process and its threads and children: on a machine shared with
other work the wall ratio moves with the load, the CPU ratio much less).  Only the ratios within
one run mean something.

The ``shards`` package is byte-compiled first (``compileall``), as an installed package is:
with ``PYTHONDONTWRITEBYTECODE=1`` and no ``__pycache__`` each build would compile its ~80
modules again (0.2-0.5 s here), a cost the floor (pyarrow's own .pyc files) never pays.
``--no-compile`` leaves that out.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

CORPORA = os.environ.get("SHARDS_CORPORA", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "corpora"))
SHARDS = [sys.executable, "-m", "shards"]


def _sentences() -> list[tuple[str, int]]:
    path = os.path.join(CORPORA, "sst2", "train.tsv")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
        return [(s, int(label)) for s, label in rows]
    words = "the film a story with great acting but dull plot , moving and funny not bad".split()
    return [(" ".join(words[(i * k) % len(words)] for k in range(3, 3 + 5 + i % 20)), i % 2) for i in range(60000)]


def _txt_lines() -> list[str]:
    path = os.path.join(CORPORA, "wikitext-2", "test.txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    return [s for s, _ in _sentences()] + [""]


def _write_repeated(path: str, unit: str, mb: float, header: bytes = b"") -> None:
    """``header``, then ``unit`` (one pass over the source, as text) repeated to about ``mb`` MB."""
    if os.path.exists(path) and abs(os.path.getsize(path) - mb * 1e6) < len(unit.encode()) * 1.01:
        return
    data = unit.encode("utf-8")
    with open(path + ".tmp", "wb") as f:
        f.write(header)
        for _ in range(max(1, round(mb * 1e6 / len(data)))):
            f.write(data)
    os.replace(path + ".tmp", path)


def make_inputs(folder: str, mb: float, kinds: list[str]) -> dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    paths = {}
    if "jsonl" in kinds:
        unit = "".join(json.dumps({"text": s, "label": y}) + "\n" for s, y in _sentences())
        paths["jsonl"] = os.path.join(folder, "big.jsonl")
        _write_repeated(paths["jsonl"], unit, mb)
    if "csv" in kinds:
        import io
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(_sentences())
        paths["csv"] = os.path.join(folder, "big.csv")
        _write_repeated(paths["csv"], buf.getvalue(), mb, header=b"text,label\n")
    if "txt" in kinds:
        paths["txt"] = os.path.join(folder, "big.txt")
        _write_repeated(paths["txt"], "\n".join(_txt_lines()) + "\n", mb)
    return paths


def floor(kind: str, path: str, out: str) -> None:
    """The pyarrow floor for one format: read the whole file, write one Arrow IPC file."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pj

    if kind == "jsonl":
        table = pj.read_json(path)
    elif kind == "csv":
        table = pcsv.read_csv(path)
    else:
        table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(column_names=["text"]),
                              parse_options=pcsv.ParseOptions(delimiter="\x01", quote_char=False,
                                                              double_quote=False))
    os.makedirs(out, exist_ok=True)
    with pa.OSFile(os.path.join(out, "part-00000.arrow"), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1024)


BYTES_FLOOR_CHUNK = 256 << 10  # the tar writer's WRITE_SLICE: write(2) of larger buffers cost 3-8x the kernel time per byte here


def bytes_floor(nbytes: int, out: str) -> None:
    """Write ``nbytes`` to one file under ``out`` from a ready buffer, hashing them (sha256) as written."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    chunk = memoryview(os.urandom(BYTES_FLOOR_CHUNK))
    digest = hashlib.sha256()
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bytes.bin"), "wb") as f, ThreadPoolExecutor(1) as hasher:
        left = nbytes
        while left > 0:
            piece = chunk[:min(left, len(chunk))]
            hashed = hasher.submit(digest.update, piece)  # both release the GIL: they run side by side
            f.write(piece)
            hashed.result()
            left -= len(piece)
    digest.hexdigest()


def output_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def build_command(kind: str, path: str, out: str, fmt: str, workers: int, labelled: bool) -> list[str]:
    cmd = [*SHARDS, "build", path, "--out", out, "--format", fmt, "--workers", str(workers), "--no-progress"]
    if labelled and kind != "txt":
        cmd += ["--label-field", "label"]
    return cmd


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``cmd``."""
    t0, cpu0 = time.perf_counter(), _cpu_of_children()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, _cpu_of_children() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return seconds, cpu


def compile_package() -> None:
    """Byte-code for ``shards`` (written even under PYTHONDONTWRITEBYTECODE), as an install leaves it."""
    import compileall

    compileall.compile_dir(os.path.join(os.getcwd(), "shards"), quiet=1)


def run(args) -> dict:
    if not args.no_compile:
        compile_package()
    kinds = args.formats.split(",")
    workers = [int(w) for w in args.workers.split(",")]
    paths = make_inputs(args.dir, args.mb, kinds)
    cases = []  # (kind, name, command)
    tar_bytes: dict[str, int] = {}  # bytes the last tar build of each kind wrote (for its bytes floor)
    for kind in kinds:
        out = os.path.join(args.dir, f"out-{kind}")
        cases.append((kind, "pyarrow floor", [sys.executable, "-m", "tools.bench.build", "--floor", kind,
                                              paths[kind], out]))
        for fmt in args.shard_formats.split(","):
            for w in workers:
                cases.append((kind, f"{fmt} w{w}", build_command(kind, paths[kind], out, fmt, w, not args.unlabelled)))
        if "tar" in args.shard_formats.split(","):
            cases.append((kind, "bytes floor", lambda kind=kind, out=out: [
                sys.executable, "-m", "tools.bench.build", "--bytes-floor", str(tar_bytes[kind]), out]))
    times: dict[tuple[str, str], list[float]] = {(k, n): [] for k, n, _ in cases}
    cpus: dict[tuple[str, str], list[float]] = {(k, n): [] for k, n, _ in cases}
    for rep in range(args.reps):
        for kind, name, cmd in cases:  # interleaved: every case once per repetition
            shutil.rmtree(os.path.join(args.dir, f"out-{kind}"), ignore_errors=True)
            seconds, cpu = _timed(cmd() if callable(cmd) else cmd)
            if name.startswith("tar "):
                tar_bytes[kind] = output_bytes(os.path.join(args.dir, f"out-{kind}"))
            times[(kind, name)].append(seconds)
            cpus[(kind, name)].append(cpu)
            print(f"  rep {rep + 1} {kind:5s} {name:14s} {seconds:.2f} s ({cpu:.2f} CPU s)", file=sys.stderr, flush=True)
    report = {}
    for kind in kinds:
        size = os.path.getsize(paths[kind])
        floor_s = statistics.median(times[(kind, "pyarrow floor")])
        floor_cpu = statistics.median(cpus[(kind, "pyarrow floor")])
        print(f"{kind}: {size / 1e6:.1f} MB, {paths[kind]}")
        for (k, name), ts in times.items():
            if k != kind:
                continue
            med, cpu = statistics.median(ts), statistics.median(cpus[(k, name)])
            report[f"{kind} {name}"] = {"mb_per_s": size / 1e6 / med, "ratio": floor_s / med, "seconds": ts,
                                        "cpu_ratio": floor_cpu / cpu, "cpu_seconds": cpus[(k, name)]}
            print(f"  {name:14s} {size / 1e6 / med:7.1f} MB/s  {floor_s / med:5.2f}x floor  {floor_cpu / cpu:5.2f}x floor CPU  "
                  f"(median of {', '.join(f'{t:.2f}' for t in ts)} s; {cpu:.2f} CPU s)")
        _tar_lines(kind, times, cpus, workers, tar_bytes.get(kind), report)
    return report


def _tar_lines(kind: str, times: dict, cpus: dict, workers: list[int], nbytes: int | None, report: dict) -> None:
    """Each tar build against the Arrow build of its workers and against the bytes floor (wall and CPU)."""
    if (kind, "bytes floor") not in times:
        return
    floor_s, floor_cpu = statistics.median(times[(kind, "bytes floor")]), statistics.median(cpus[(kind, "bytes floor")])
    print(f"  tar output {nbytes / 1e6:.0f} MB; bytes floor (write + sha256 of it) {floor_s:.2f} s, {floor_cpu:.2f} CPU s")
    for w in workers:
        tar = (kind, f"tar w{w}")
        tar_s, tar_cpu = statistics.median(times[tar]), statistics.median(cpus[tar])
        line = {"vs_bytes_floor": floor_s / tar_s, "vs_bytes_floor_cpu": floor_cpu / tar_cpu}
        text = f"  tar w{w}: {floor_s / tar_s:5.2f}x bytes floor ({floor_cpu / tar_cpu:.2f}x CPU)"
        if (kind, f"arrow w{w}") in times:
            arrow_s, arrow_cpu = statistics.median(times[(kind, f"arrow w{w}")]), statistics.median(cpus[(kind, f"arrow w{w}")])
            line.update(vs_arrow=arrow_s / tar_s, vs_arrow_cpu=arrow_cpu / tar_cpu)
            text += f", {arrow_s / tar_s:5.2f}x arrow w{w} ({arrow_cpu / tar_cpu:.2f}x CPU)"
        report[f"{kind} tar w{w} ratios"] = line
        print(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=110, help="size of each input file (default 110)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions; medians are reported (default 3)")
    p.add_argument("--workers", default="1,2", help="--workers values to time (default 1,2)")
    p.add_argument("--formats", default="jsonl,csv,txt", help="input formats (default jsonl,csv,txt)")
    p.add_argument("--shard-formats", default="arrow,tar", help="shard formats (default arrow,tar)")
    p.add_argument("--unlabelled", action="store_true", help="no --label-field for jsonl/csv")
    p.add_argument("--dir", default="/tmp/shards-bench-build", help="inputs and outputs (default /tmp/shards-bench-build)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--no-compile", action="store_true", help="do not byte-compile the shards package first")
    p.add_argument("--floor", nargs=3, metavar=("KIND", "INPUT", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--bytes-floor", nargs=2, metavar=("BYTES", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.floor:
        floor(*args.floor)
        return
    if args.bytes_floor:
        bytes_floor(int(args.bytes_floor[0]), args.bytes_floor[1])
        return
    report = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
