"""How ``shards build`` runs its units of work: the progress bar and the local engine.

An engine is a callable ``engine(cfg, [(i, unit, labels, key), ...], bar) ->
{i: UnitResult}`` that runs :func:`shards.build.run_unit` for each item,
anywhere, and calls ``bar.update(records, text_chars)`` as units finish.  It
may also offer ``scan_labels(cfg, units) -> [set, ...]`` (the first pass
that collects label values) and ``close()``.  :class:`LocalEngine` runs in
this process (``workers=1``) or a spawned process pool; ``shards.ray_engine``
runs on a Ray cluster.
"""
from __future__ import annotations

import multiprocessing as mp
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed

from .corpus import scan_labels


class EngineError(RuntimeError):
    """An engine is missing, misconfigured, or lost units of work."""


class Progress:
    """A tqdm bar counting records, with text MB/s in its postfix; inert when hidden."""

    def __init__(self, show: bool | None):
        show = sys.stderr.isatty() if show is None else show
        self.records = 0
        self.chars = 0
        self._t0 = time.perf_counter()
        self._bar = None
        if show:
            from tqdm import tqdm
            self._bar = tqdm(unit=" records", unit_scale=True, desc="shards build", file=sys.stderr,
                             smoothing=0.1, dynamic_ncols=True)

    def update(self, records: int, text_chars: int = 0) -> None:
        self.records += records
        self.chars += text_chars
        if self._bar is not None:
            elapsed = max(time.perf_counter() - self._t0, 1e-9)
            self._bar.set_postfix_str(f"{self.chars / 1e6 / elapsed:.1f} MB/s text", refresh=False)
            self._bar.update(records)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class LocalEngine:
    """Units in this process (``workers <= 1``) or in a pool of spawned processes."""

    def __init__(self, workers: int = 1):
        self.workers = workers
        self._pool = None

    def _executor(self):
        if self._pool is None and self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        return self._pool

    def scan_labels(self, cfg, units) -> list[set[str]]:
        pool = self._executor()
        args = ([cfg.spec] * len(units), [cfg.storage_options] * len(units))
        return list((pool.map if pool else map)(scan_labels, units, *args))

    def __call__(self, cfg, items, bar) -> dict:
        from .build import run_unit

        pool = self._executor()
        results = {}
        if pool is None:
            for i, unit, labels, key in items:
                results[i] = run_unit(cfg, i, unit, labels, key, bar.update)
            return results
        futures = [pool.submit(run_unit, cfg, i, unit, labels, key) for i, unit, labels, key in items]
        for fut in as_completed(futures):
            r = fut.result()
            results[r.index] = r
            bar.update(r.records, r.text_chars)
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def node_summary(results) -> list[str]:
    """One line per host: units, records, input MB and MB/s of busy time."""
    nodes: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    for r in results:
        if not r.node:
            continue  # reused from an earlier run
        n = nodes[r.node]
        n[0] += 1
        n[1] += r.records
        n[2] += r.input_bytes
        n[3] += r.seconds
    return [f"node {host}: {u} unit(s), {rec} records, {b / 1e6:.1f} MB in {s:.1f} task-s "
            f"({b / 1e6 / max(s, 1e-9):.1f} MB/s per task)"
            for host, (u, rec, b, s) in sorted(nodes.items())]
