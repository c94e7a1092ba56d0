"""The project against its peers, side by side in one run; ratios are what count.

    python -m tools.bench --setup-peers            # once: the peers' own venv, .venv-bench
    python -m tools.bench --scale 3 --out bench.json --plot bench.png
    python -m tools.bench --peers none --scale 0.05 --reps 1 --no-lm   # quick, project only
    python -m tools.bench --report bench.json      # print a saved run's table again

Corpus: SST-2 train repeated ``--scale`` times as JSONL (a generated corpus
when ../shared/corpora is absent); the bundled MiniLM tokenizer, max_length
128; DataLoader batch 64 with 2 workers for every pipeline.  Sections:
build (JSONL → shards, MB/s), the raw tokenizer ceiling (1 and 2 processes),
stream + tokenize one shuffled epoch (samples/s, tokens/s, time to first
batch, peak PSS), peak PSS at 1x and 10x corpus, LM blocks (tokens/s).
Every measurement is a fresh subprocess: the project's with this python, the
peers' with ``--peer-python`` (default ``.venv-bench/bin/python``), since
mosaicml-streaming pins transformers<5.  A peer that is missing or fails is
reported as such in the table and bench.json, never dropped.  The table is
printed last; bench.json has every figure, every run and all versions.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time

from tools.bench import report as bench_report
from tools.bench.corpus import base_records, make_corpus, minilm_path
from tools.bench.run import OK, ROOT, Job, run_round_robin, summary, task_env

PEERS = {"webdataset": "webdataset", "hf-datasets": "datasets", "mosaic": "streaming", "litdata": "litdata"}
PEER_VENV = ROOT / ".venv-bench"
SHARDS_PER_SET = 8
PEER_PACKAGES = ["webdataset", "datasets", "litdata", "mosaicml-streaming==0.13.0", "transformers>=4.50,<5",
                 "tokenizers>=0.21", "numpy>=2,<2.2", "pyarrow", "psutil", "torchvision==0.28.0"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    p.add_argument("--peers", default="all", help=f"all | none | a comma list of {', '.join(PEERS)}")
    p.add_argument("--scale", type=float, default=1.0, help="corpus = SST-2 train x SCALE (default 1)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each measurement (median reported)")
    p.add_argument("--out", default="bench.json")
    p.add_argument("--plot", default=None, help="PNG chart of the ratios (matplotlib)")
    p.add_argument("--work", default=str(ROOT / "bench-out" / "bench"), help="corpora and shard sets go here")
    p.add_argument("--peer-python", default=None, help="python of the peer venv (default .venv-bench/bin/python)")
    p.add_argument("--no-memory", action="store_true", help="skip the 10x memory runs")
    p.add_argument("--no-lm", action="store_true", help="skip the LM-block section")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per measurement before it counts as failed")
    p.add_argument("--setup-peers", action="store_true", help="create .venv-bench with the peers, then exit")
    p.add_argument("--report", metavar="JSON", help="print the table of a saved bench.json and exit")
    return p.parse_args(argv)


def selected_peers(arg: str) -> list[str]:
    if arg == "all":
        return list(PEERS)
    if arg == "none":
        return []
    names = [n.strip() for n in arg.split(",") if n.strip()]
    bad = [n for n in names if n not in PEERS]
    if bad:
        raise SystemExit(f"--peers: unknown {', '.join(bad)}; valid: all, none, or a comma list of {', '.join(PEERS)}")
    return names


def setup_peers(venv: pathlib.Path = PEER_VENV) -> int:
    """The peer venv: CPU torch first (a bare torch pulls CUDA), the peers, then no torchvision.

    mosaicml-streaming requires torchvision, whose PyPI wheel is built for the
    CUDA torch and fails to import next to the CPU one; the benchmark stubs
    ``streaming.vision`` (never used for text) and the wheel is removed again.
    """
    py = venv / "bin" / "python"
    steps = [[sys.executable, "-m", "venv", str(venv)]] if not py.exists() else []
    steps += [[str(py), "-m", "pip", "install", "-q", "torch==2.13.0"],
              [str(py), "-m", "pip", "install", "-q", "torch==2.13.0", *PEER_PACKAGES],
              [str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision"]]
    for cmd in steps:
        print("+", " ".join(cmd), flush=True)
        if subprocess.call(cmd) != 0:
            print(f"setup failed at: {' '.join(cmd)}", file=sys.stderr)
            return 1
    print(f"peer venv ready: {py}")
    return 0


def peer_python(arg: str | None) -> tuple[str | None, str]:
    path = pathlib.Path(arg) if arg else PEER_VENV / "bin" / "python"
    if path.exists():
        return str(path), ""
    return None, f"no peer python at {path} (create it: python -m tools.bench --setup-peers)"


def machine() -> dict:
    import psutil

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    cores, mem = os.cpu_count(), psutil.virtual_memory().total / 2**30
    return {"cpu": model, "cores": cores, "memory_gib": round(mem, 1), "os": platform.platform(),
            "python": platform.python_version(), "load_avg_start": os.getloadavg(),
            "summary": f"{cores} cores ({model}), {mem:.0f} GiB, {platform.system()}"}


def job(section, name, task, params, python=sys.executable, missing=""):
    return Job(section, name, task, params, python, missing)


def plan(work: pathlib.Path, corpus, tok: str, peers: list[str], ppy: str | None, why: str, scale: float):
    """The build, ceiling and stream jobs on one corpus (each writer's output feeds its reader)."""
    per_shard = math.ceil(corpus.records / SHARDS_PER_SET)
    d = lambda name: str(work / f"x{scale:g}" / name)  # noqa: E731
    c = corpus.path
    build = [job("build", "ours-arrow", "build_ours", dict(corpus=c, out=d("ours-arrow"), max_records=per_shard)),
             job("build", "ours-tar", "build_ours", dict(corpus=c, out=d("ours-tar"), fmt="tar", max_records=per_shard)),
             job("build", "ours-pretok-arrow", "build_ours", dict(corpus=c, out=d("ours-pretok"), tokenizer=tok,
                                                                  max_records=per_shard)),
             job("build", "pyarrow-floor", "build_pyarrow", dict(corpus=c, out=d("pyarrow"), max_records=per_shard))]
    peer_build = {"webdataset": ("build_webdataset", dict(out=d("wds"), max_records=per_shard)),
                  "hf-datasets": ("build_hf", dict(out=d("hf"), num_shards=SHARDS_PER_SET, cache_dir=d("hf-cache"))),
                  "mosaic": ("build_mosaic", dict(out=d("mds"), size_limit=max(corpus.bytes // SHARDS_PER_SET, 1 << 16))),
                  "litdata": ("build_litdata", dict(out=d("litdata"), max_records=per_shard))}
    for p in peers:
        task, params = peer_build[p]
        build.append(job("build", p, task, dict(params, corpus=c), ppy, why))
    ceiling = [job("ceiling", "tokenizers-1proc", "ceiling", dict(corpus=c, tokenizer=tok, procs=1, reps=1)),
               job("ceiling", "tokenizers-2proc", "ceiling", dict(corpus=c, tokenizer=tok, procs=2, reps=1)),
               job("ceiling", "transformers-call-1proc", "ceiling", dict(corpus=c, tokenizer=tok, transformers=True,
                                                                         reps=1))]
    if peers:
        ceiling += [job("ceiling", "peer-venv-tokenizers-1proc", "ceiling", dict(corpus=c, tokenizer=tok, reps=1), ppy, why),
                    job("ceiling", "peer-venv-tokenizers-2proc", "ceiling", dict(corpus=c, tokenizer=tok, procs=2,
                                                                                 reps=1), ppy, why)]
    n = dict(expected=corpus.records)
    stream = [job("stream", "ours-otf", "stream_ours", dict(url=d("ours-arrow"), tokenizer=tok, **n)),
              job("stream", "ours-otf-tar", "stream_ours", dict(url=d("ours-tar"), tokenizer=tok, **n)),
              job("stream", "ours-pretok", "stream_ours", dict(url=d("ours-pretok"), tokenizer=tok, pretokenized=True, **n)),
              job("stream", "map-style", "stream_mapstyle", dict(corpus=c, tokenizer=tok, **n)),
              job("stream", "map-style-numpy-ipc", "stream_mapstyle", dict(corpus=c, tokenizer=tok, numpy_ipc=True,
                                                                           **n))]
    readers = {"webdataset": ("stream_webdataset", "wds"), "hf-datasets": ("stream_hf", "hf"),
               "mosaic": ("stream_mosaic", "mds"), "litdata": ("stream_litdata", "litdata")}
    for p in peers:
        task, folder = readers[p]
        stream.append(job("stream", p, task, dict(shards=d(folder), tokenizer=tok, **n), ppy, why))
    return build, ceiling, stream


def fail_dependents(build: list[Job], stream: list[Job]) -> None:
    """A reader whose writer failed cannot run: say so instead of a confusing read error."""
    made = {"ours-arrow": "ours-otf", "ours-tar": "ours-otf-tar", "ours-pretok-arrow": "ours-pretok"}
    made.update({p: p for p in PEERS})
    status = {j.name: j.status for j in build}
    for s in stream:
        writer = next((w for w, r in made.items() if r == s.name), None)
        if writer and status.get(writer, OK) != OK and not s.done:
            failed = status[writer]
            s.status = failed if failed.startswith("not installed") else f"failed: its build failed ({failed})"


def memory_section(args, work, tok, corpus1, stream_jobs, log) -> dict:
    """Peak PSS of ours and the map-style baseline at 10x the corpus, vs their 1x stream runs."""
    corpus10 = make_corpus(str(work), args.scale * 10)
    per_shard = math.ceil(corpus1.records / SHARDS_PER_SET)  # same shard size: memory must not follow corpus size
    out10 = str(work / f"x{args.scale * 10:g}" / "ours-arrow")
    prep = [job("memory", "ours-arrow-10x-build", "build_ours", dict(corpus=corpus10.path, out=out10,
                                                                     max_records=per_shard))]
    run_round_robin(prep, 1, args.timeout, log)
    n = dict(expected=corpus10.records)
    jobs = [job("memory", "ours-otf", "stream_ours", dict(url=out10, tokenizer=tok, **n)),
            job("memory", "map-style", "stream_mapstyle", dict(corpus=corpus10.path, tokenizer=tok, **n))]
    if prep[0].done:
        jobs[0].status = f"failed: 10x build failed ({prep[0].status})"
    run_round_robin(jobs, 1, args.timeout, log)
    by_name = {j.name: j for j in stream_jobs}
    out = {}
    for j in jobs:
        one = by_name.get(j.name)
        row = {"status": j.status if j.status != OK else (one.status if one else "failed: no 1x run"),
               "corpus_10x": corpus10.as_dict(), "run_10x": summary(j)}
        if row["status"] == OK and one.pss and j.pss:
            # the target is on the data part (anon + shmem): see tools/bench_memory.py
            row.update(pss_1x_mb=max(one.pss) / 2**20, pss_10x_mb=max(j.pss) / 2**20,
                       data_1x_mb=max(one.pss_data) / 2**20, data_10x_mb=max(j.pss_data) / 2**20)
            row["ratio_total"] = row["pss_10x_mb"] / row["pss_1x_mb"]
            row["ratio"] = row["data_10x_mb"] / row["data_1x_mb"]
        out[j.name] = row
    return out


def lm_section(args, work, tok, corpus, peers, ppy, why, log) -> dict:
    d = lambda name: str(work / f"x{args.scale:g}" / name)  # noqa: E731
    prep = [job("lm", "memmap-build", "lm_build_memmap", dict(corpus=corpus.path, out=d("memmap"), tokenizer=tok))]
    if "litdata" in peers:
        prep.append(job("lm", "litdata-tokens-build", "lm_build_litdata",
                        dict(corpus=corpus.path, out=d("litdata-tokens"), tokenizer=tok,
                             chunk_tokens=max(corpus.records * 16 // SHARDS_PER_SET, 4096)), ppy, why))
    run_round_robin(prep, 1, args.timeout, log)
    expected = (prep[0].runs[0]["tokens"] if prep[0].runs else None)
    jobs = [job("lm", "ours-packed", "lm_ours", dict(url=d("ours-pretok"), tokenizer=tok, expected=expected)),
            job("lm", "memmap-uint16", "lm_memmap", dict(out=d("memmap"), dtype="uint16", expected=expected)),
            job("lm", "memmap-uint32", "lm_memmap", dict(out=d("memmap"), dtype="uint32", expected=expected))]
    if "litdata" in peers:
        jobs.append(job("lm", "litdata-tokens", "lm_litdata", dict(out=d("litdata-tokens"), expected=expected),
                        ppy, why))
    for j in jobs:
        builder = {"memmap-uint16": prep[0], "memmap-uint32": prep[0], "litdata-tokens": prep[-1]}.get(j.name)
        if builder is not None and builder.done:
            j.status = f"failed: its build failed ({builder.status})"
    run_round_robin(jobs, args.reps, args.timeout, log)
    return {j.name: summary(j) for j in prep + jobs}


def versions_of(python: str | None) -> dict:
    if python is None:
        return {}
    code = ("import json,sys;from tools.bench.common import versions;print(json.dumps(versions(sys.argv[1:])))")
    names = ["torch", "tokenizers", "transformers", "pyarrow", "numpy", "webdataset", "datasets",
             "mosaicml-streaming", "litdata", "psutil", "shardstream"]
    try:
        out = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, env=task_env(),
                             cwd=str(ROOT), timeout=120)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def git_state() -> dict:
    """The commit measured and a hash of the project's code (others may be editing while it runs)."""
    import hashlib

    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=str(ROOT))
    files = {str(p.relative_to(ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
             for pkg in ("shards", "pipeline") for p in sorted((ROOT / pkg).rglob("*.py"))}
    return {"commit": out.stdout.strip() if out.returncode == 0 else None, "files": files}


def changed_files(start: dict, end: dict) -> list[str]:
    a, b = start.get("files", {}), end.get("files", {})
    return sorted(f for f in set(a) | set(b) if a.get(f) != b.get(f))


def run(args) -> dict:
    t_start = time.time()
    peers = selected_peers(args.peers)
    ppy, why = peer_python(args.peer_python)
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = minilm_path()
    base = base_records()
    corpus = make_corpus(str(work), args.scale, base)
    print(f"corpus: {corpus.records:,} records, {corpus.bytes / 1e6:.1f} MB ({corpus.source} x{args.scale:g})", flush=True)
    meta = {"command": "python -m tools.bench " + " ".join(sys.argv[1:]), "scale": args.scale, "reps": args.reps,
            "corpus": corpus.as_dict(), "machine": machine(), "git": git_state(), "peers": peers, "peer_python": ppy,
            "settings": {"batch": 64, "workers": 2, "max_length": 128, "shuffle": True, "shuffle_buffer": 8192,
                         "shards_per_set": SHARDS_PER_SET, "tokenizer": tok, "tokenizers_parallelism": "false"},
            "versions": {"project_venv": versions_of(sys.executable), "peer_venv": versions_of(ppy) if peers else {}}}
    with open(work / "runs.jsonl", "a") as log:
        build, ceiling, stream = plan(work, corpus, tok, peers, ppy, why, args.scale)
        print("build:", flush=True)
        run_round_robin(build, args.reps, args.timeout, log)
        fail_dependents(build, stream)
        print("ceiling + stream:", flush=True)
        run_round_robin(ceiling + stream, args.reps, args.timeout, log)
        results = {"meta": meta, "build": {j.name: summary(j) for j in build},
                   "ceiling": {j.name: summary(j) for j in ceiling}, "stream": {j.name: summary(j) for j in stream}}
        if not args.no_memory:
            print("memory 10x:", flush=True)
            results["memory"] = memory_section(args, work, tok, corpus, stream, log)
        if not args.no_lm:
            print("lm blocks:", flush=True)
            results["lm"] = lm_section(args, work, tok, corpus, peers, ppy, why, log)
    results["ratios"] = bench_report.ratios(results)
    results["targets"] = bench_report.targets(results, results["ratios"])
    results["mismatches"] = bench_report.mismatches(results)
    meta["machine"]["load_avg_end"] = os.getloadavg()
    end = git_state()
    meta["git_end"] = {"commit": end["commit"], "changed_during_run": changed_files(meta["git"], end)}
    if meta["git_end"]["changed_during_run"]:
        print(f"warning: project files changed during the run: {', '.join(meta['git_end']['changed_during_run'])}; "
              f"figures may mix versions: rerun for a clean table", file=sys.stderr)
    meta["duration_s"] = time.time() - t_start
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.setup_peers:
        return setup_peers()
    if args.report:
        print(bench_report.render(json.loads(pathlib.Path(args.report).read_text())))
        return 0
    results = run(args)
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    if args.plot:
        bench_report.plot(results, args.plot)
    print()
    print(bench_report.render(results))
    print(f"\nwrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
