"""Time to the first batch: ``next(iter(make_loader(ShardStream(...), 64, W)))`` in fresh processes.

    python -m tools.bench.first_batch --scale 3 --work /tmp/fb      # builds arrow + tar sets, then times
    python -m tools.bench.first_batch --arrow DIR --tar DIR --reps 5 --workers 0 2

Each case (format x workers, and webdataset's first batch from the same tar shards when
webdataset is importable) runs ``--reps`` times, interleaved, each in a fresh process;
the clock starts after the imports, before the stream is made (manifest, tokenizer,
workers, first shard fetched and verified), as the benchmark's ``ttfb_s`` does.  The set's
files are read just before each run (``warm``), so every case finds them in the page cache.  The
medians, and each one over webdataset's with as many workers (``vs_webdataset``: the
figure to report, as the machine may be shared), are printed as one JSON object, with the
same for the CPU seconds the process and its loader workers spent (``median_cpu_s``,
``cpu_vs_webdataset``), which other work on a shared machine disturbs less.  The peer runs under ``.venv-bench``'s python
when it exists (the benchmark's peer venv), else under this python when it has
webdataset, else it is skipped with the reason.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
PEER_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
BATCH, MAX_LENGTH, SHARDS = 64, 128, 8
MARK = "FIRST_BATCH "


def cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and its live children (the loader's workers,
    forked after the clock started): on a shared machine a steadier figure than the wall clock.
    Read from Linux's /proc: importing psutil in the child made webdataset's first batch ~3x slower."""
    return time.process_time() + sum(_proc_cpu_seconds(pid) for pid in _children(os.getpid()))


def _children(pid: int) -> list[int]:
    """Live descendants of ``pid``; a thread or process that ends while they are listed is left out."""
    kids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            continue  # the thread ended after the listing (a loader's pin-memory or feeder thread)
    return kids + [grandchild for kid in kids for grandchild in _children(kid)]


def _proc_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name: state is field 3
    except FileNotFoundError:
        return 0.0  # ended after it was listed; its CPU went to its parent's children time
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def child_ours(url: str, workers: int, tokenizer: str) -> tuple[float, float]:
    """(seconds, CPU seconds) from creating the stream to holding its first batch (imports excluded)."""
    import pipeline  # noqa: F401  (imports outside the clock, as a training script has them)
    from pipeline import ShardStream, make_loader

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    ds = ShardStream(url, tokenizer=tokenizer, max_length=MAX_LENGTH, shuffle=True, seed=0)
    batches = iter(make_loader(ds, BATCH, num_workers=workers))  # held: its workers stop with it
    batch = next(batches)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    del batches
    if len(batch["input_ids"]) != BATCH:
        raise RuntimeError(f"first batch has {len(batch['input_ids'])} rows, expected {BATCH}")
    return seconds, cpu


def child_webdataset(url: str, workers: int, tokenizer: str) -> tuple[float, float]:
    """webdataset's first batch from the same tar shards, as tools.bench.peers streams them."""
    import glob

    import webdataset as wds
    from torch.utils.data import DataLoader

    from tools.bench.common import SHUFFLE_BUFFER, PadCollate

    urls = sorted(glob.glob(os.path.join(url, "*.tar")))
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), seed=0, workersplitter=wds.split_by_worker,
                         nodesplitter=wds.single_node_only, empty_check=False)
          .shuffle(SHUFFLE_BUFFER).decode().to_tuple("txt", "cls"))
    batches = iter(DataLoader(ds, batch_size=BATCH, num_workers=workers, collate_fn=PadCollate(tokenizer)))
    batch = next(batches)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    del batches
    if len(batch["input_ids"]) != BATCH:
        raise RuntimeError(f"webdataset's first batch has {len(batch['input_ids'])} rows, expected {BATCH}")
    return seconds, cpu


CHILDREN = {"ours": child_ours, "webdataset": child_webdataset}


def peer_python() -> tuple[str | None, str]:
    """(python that can import webdataset, why) or (None, why not)."""
    for python in (PEER_PYTHON, pathlib.Path(sys.executable)):
        if python.exists() and subprocess.run([str(python), "-c", "import webdataset"],
                                              capture_output=True).returncode == 0:
            return str(python), f"webdataset from {python}"
    return None, f"skipped: webdataset is not importable from {PEER_PYTHON} or {sys.executable}"


def warm(url: str) -> None:
    """Read every file of the set, so each child reads its shards from the page cache: a machine that
    reclaims idle file pages (this one runs DAMON) otherwise made whichever case ran first after a
    pause wait 0.3-0.7 s on the disk, a cost of the machine, not of the reader."""
    for entry in sorted(os.scandir(url), key=lambda e: e.name):
        if entry.is_file():
            with open(entry.path, "rb") as f:
                while f.read(8 << 20):
                    pass


def run_child(python: str, kind: str, url: str, workers: int, tokenizer: str) -> tuple[float, float]:
    """(seconds, CPU seconds) to the first batch in a fresh process, its shard set read just before."""
    warm(url)
    cmd = [python, "-m", "tools.bench.first_batch", "--child", kind, "--url", url,
           "--workers", str(workers), "--tokenizer", tokenizer]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    lines = [x for x in done.stdout.splitlines() if x.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"first_batch child {kind} {url} workers={workers} failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    seconds, cpu = lines[-1][len(MARK):].split()
    return float(seconds), float(cpu)


def build_sets(work: str, scale: float) -> dict[str, str]:
    """The benchmark's corpus and 8-shard arrow and tar sets under ``work`` (reused when built)."""
    from tools.bench.corpus import make_corpus
    from tools.bench.ours import task_build_ours

    corpus = make_corpus(work, scale)
    per_shard = math.ceil(corpus.records / SHARDS)
    sets = {}
    for fmt in ("arrow", "tar"):
        out = os.path.join(work, f"{fmt}-x{scale:g}")
        if not os.path.isfile(os.path.join(out, "index.json")):
            task_build_ours(corpus.path, out, fmt=fmt, max_records=per_shard)
        sets[fmt] = out
    return sets


def measure(sets: dict[str, str], workers: list[int], reps: int, tokenizer: str, peer: bool = True) -> dict:
    python, why = peer_python() if peer else (None, "skipped: --no-peer")
    cases = [(f"{fmt}-w{w}", sys.executable, "ours", url, w) for fmt, url in sets.items() for w in workers]
    if python is not None and "tar" in sets:
        cases += [(f"webdataset-w{w}", python, "webdataset", sets["tar"], w) for w in workers]
    times: dict[str, list[float]] = {name: [] for name, *_ in cases}
    cpu: dict[str, list[float]] = {name: [] for name, *_ in cases}
    for _ in range(reps):  # interleaved, so load on the shared machine falls on every case alike
        for name, py, kind, url, w in cases:
            seconds, cpu_s = run_child(py, kind, url, w, tokenizer)
            times[name].append(seconds)
            cpu[name].append(cpu_s)
    medians = {k: statistics.median(v) for k, v in times.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu.items()}
    return {"median_s": medians, "vs_webdataset": vs_peer(medians), "median_cpu_s": cpu_medians,
            "cpu_vs_webdataset": vs_peer(cpu_medians), "runs_s": times, "runs_cpu_s": cpu, "peer": why,
            "reps": reps, "sets": sets}


def vs_peer(medians: dict[str, float]) -> dict[str, float]:
    """Each case's median over webdataset's with as many workers, in this run (load on the shared
    machine falls on both alike, so this ratio is what is reported; absolute times are not)."""
    return {name: round(seconds / medians[f"webdataset-{name.rsplit('-', 1)[1]}"], 2)
            for name, seconds in medians.items()
            if not name.startswith("webdataset-") and f"webdataset-{name.rsplit('-', 1)[1]}" in medians}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arrow"), p.add_argument("--tar")
    p.add_argument("--scale", type=float, default=3.0, help="benchmark corpus scale when sets are built (default 3)")
    p.add_argument("--work", default="/tmp/first-batch", help="folder for the built corpus and sets")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the bundled MiniLM)")
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.tokenizer is None:
        from tools.bench.corpus import minilm_path
        a.tokenizer = minilm_path()
    if a.child:
        seconds, cpu = CHILDREN[a.child](a.url, a.workers[0], a.tokenizer)
        print(f"{MARK}{seconds!r} {cpu!r}", flush=True)
        return
    sets = {k: v for k, v in (("arrow", a.arrow), ("tar", a.tar)) if v} or build_sets(a.work, a.scale)
    print(json.dumps(measure(sets, a.workers, a.reps, a.tokenizer, not a.no_peer), indent=1))


if __name__ == "__main__":
    main()
