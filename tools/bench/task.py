"""Run one benchmark task in this process and print its figures as one JSON line.

    python -m tools.bench.task stream_ours --params '{"url": "bench-out/x/ours-arrow", ...}'

The driver (``python -m tools.bench``) starts this with the project's python
for the project's tasks and with the peer venv's python for the peers', so
the two sets of libraries never meet.  Task modules are imported lazily: a
peer task never imports the project, and the project's never imports a peer.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

# Set before any tokenizer loads: one process means one core for every pipeline.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TASKS = {
    "ceiling": "tools.bench.common:task_ceiling",
    "build_ours": "tools.bench.ours:task_build_ours",
    "build_pyarrow": "tools.bench.ours:task_build_pyarrow",
    "stream_ours": "tools.bench.ours:task_stream_ours",
    "stream_mapstyle": "tools.bench.ours:task_stream_mapstyle",
    "build_webdataset": "tools.bench.peers:build_webdataset",
    "build_hf": "tools.bench.peers:build_hf",
    "build_mosaic": "tools.bench.peers:build_mosaic",
    "build_litdata": "tools.bench.peers:build_litdata",
    "stream_webdataset": "tools.bench.peers:stream_webdataset",
    "stream_hf": "tools.bench.peers:stream_hf",
    "stream_mosaic": "tools.bench.peers:stream_mosaic",
    "stream_litdata": "tools.bench.peers:stream_litdata",
    "lm_build_memmap": "tools.bench.lm:build_memmap",
    "lm_memmap": "tools.bench.lm:stream_memmap",
    "lm_build_litdata": "tools.bench.lm:build_litdata_tokens",
    "lm_litdata": "tools.bench.lm:stream_litdata_tokens",
    "lm_ours": "tools.bench.lm:stream_ours_blocks",
}


def resolve(name: str):
    if name not in TASKS:
        raise SystemExit(f"unknown task {name!r}; valid: {', '.join(sorted(TASKS))}")
    module, func = TASKS[name].split(":")
    return getattr(importlib.import_module(module), func)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help=f"one of: {', '.join(sorted(TASKS))}")
    parser.add_argument("--params", default="{}", help="the task's keyword arguments as a JSON object")
    args = parser.parse_args(argv)
    from tools.bench.common import emit

    try:
        result = resolve(args.task)(**json.loads(args.params))
    except ImportError as exc:
        emit({"error": f"not installed: {exc}"})
        return 3
    except Exception as exc:  # reported to the driver, which records it as "failed: ..."
        traceback.print_exc()
        emit({"error": f"failed: {type(exc).__name__}: {exc}"})
        return 1
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
