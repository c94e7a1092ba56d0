"""How ``shards build`` runs its units of work: the progress bar and the local engine.

An engine is a callable ``engine(cfg, [(i, unit, labels, key), ...], bar, run_unit) ->
{i: UnitResult}`` that runs ``run_unit`` (:func:`shards.build.driver.run_unit`, passed in so
that engines never import the builder) for each item, anywhere, and calls
``bar.update(records, text_chars)`` as units finish.  It
may also offer ``scan_labels(cfg, units) -> [set, ...]`` (the first pass
that collects label values) and ``close()``.  :class:`LocalEngine` runs in
this process (``workers=1``) or a spawned process pool, whose workers end with
their driver even when it is SIGKILLed; ``shards.build.ray_engine`` runs on a Ray cluster.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import defaultdict

from shards.build import spill
from shards.corpus.read import scan_labels


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


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 0.5


def die_with_parent(parent: int) -> None:
    """Pool initializer: this worker ends when its driver does, even by SIGKILL.

    Linux sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); elsewhere, or if
    that fails, a thread sees the process re-parented and exits.  The pool's
    processes are spawned by the thread that submits, which lives until the pool closes.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no libc prctl here: the thread below still does it
    if os.getppid() != parent:
        os._exit(1)  # the driver died before prctl took effect
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-driver").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


class LocalEngine:
    """Units in this process (``workers <= 1``) or in a pool of spawned processes."""

    def __init__(self, workers: int = 1):
        self.workers = workers
        self._pool = None

    def _executor(self, tasks: int):
        """The process pool, or None to run ``tasks`` here: one task gains nothing from another
        process (its reader and writer already use two threads) and would pay its start-up."""
        if tasks <= 1 and self._pool is None:
            return None
        if self._pool is None and self.workers > 1:
            # imported here: a build of one unit (the common `shards build FILE`) never starts a pool
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=die_with_parent, initargs=(os.getpid(),))
        return self._pool

    def scan_labels(self, cfg, units) -> list[set[str]]:
        pool = self._executor(len(units))
        args = ([cfg.spec] * len(units), [cfg.storage_options] * len(units))
        # here, the scan keeps what it parsed for the write pass (shards.build.spill)
        return list(pool.map(scan_labels, units, *args) if pool else map(spill.scan, units, *args))

    def __call__(self, cfg, items, bar, run_unit) -> dict:
        pool = self._executor(len(items))
        results = {}
        if pool is None:
            for i, unit, labels, key in items:
                results[i] = run_unit(cfg, i, unit, labels, key, bar.update)
            return results
        from concurrent.futures import as_completed

        futures = [pool.submit(run_unit, cfg, i, unit, labels, key) for i, unit, labels, key in items]
        for fut in as_completed(futures):
            r = fut.result()
            results[r.index] = r
            bar.update(r.records, r.text_chars)
        return results

    def close(self, abort: bool = False) -> None:
        """Shut the pool down; ``abort`` (the build failed) kills running units instead of
        waiting for them: their temp files are cleaned, and a rerun redoes them."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if abort:
            # no public API kills a pool's running tasks; _processes is stable since 3.8
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
        pool.shutdown(cancel_futures=True)


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
