"""Run ``shards build`` on a Ray cluster: each unit of work is a Ray task.

    shards build s3://bucket/corpus/ --out s3://bucket/shards --engine ray --ray-address auto
    shards build big/*.jsonl --out /shared/shards --engine ray            # a local Ray instance

The units are those of the local engine (a file, or a byte range of a large
txt/jsonl file); each task runs :func:`shards.build.driver.run_unit`, which writes its
parts and done-marker straight to the ``--out`` URL (an object store, or a path
every node sees).  The driver collects the results, updates the progress bar as
tasks finish, and publishes the shards and ``index.json`` last, so the output is
byte-identical to a local build.

Fault tolerance: a task whose worker dies is retried by Ray (``max_retries``), and
one that fails with a transient I/O error (``retry.is_transient``: resets, timeouts,
5xx, throttling) is retried too; bad input, missing files and permission errors are
not retried.  Retries are safe because a unit always writes the same part names and
bytes (each attempt into its own temp file).  A restarted driver reuses the
units whose markers are complete, like a local rerun.

Every node needs this package installed (the same image or
``runtime_env={"py_modules": [...]}``) and read access to the inputs.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace

from shards import retry, storage
from shards.build.engines import EngineError, node_summary
from shards.corpus.read import scan_labels
from shards.storage import StorageError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[ray]'  (or: pip install 'ray>=2.9')"


class TransientUnitError(StorageError):
    """A unit failed on I/O that another attempt may pass (``retry.is_transient``)."""


def retry_transient(fn):
    """``fn`` with its transient failures raised as :class:`TransientUnitError`, the one type
    Ray retries: the same predicate as the read path's retry loop, so a missing file, a
    permission error or a bad record fails the build at once instead of 3 more times."""
    def run(*args):
        try:
            return fn(*args)
        except Exception as exc:
            if retry.is_transient(exc):
                raise TransientUnitError(f"{type(exc).__name__}: {storage.redact(exc)}") from exc
            raise
    return run


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray, which is not installed here: {INSTALL_HINT}; "
                           f"or build with the local engine (--engine local --workers N)") from exc
    return ray


def make_engine(address: str | None = None, **kw) -> "RayEngine":
    """An engine for :func:`shards.build.driver.build`; ``address``: None (an already
    initialised Ray, else a new local instance), ``auto`` or ``ray://host:port``."""
    return RayEngine(address, **kw)


def portable(cfg):
    """The config as every node must see it: local paths made absolute (workers do
    not share the driver's working directory)."""
    def absolute(path):
        return path if path is None or storage.is_remote(path) else os.path.abspath(path)
    return replace(cfg, out=absolute(cfg.out), tokenizer=absolute(cfg.tokenizer))


class RayEngine:
    """Submits ``run_unit`` per unit as a Ray task; see the module docstring.

    ``task`` replaces :func:`shards.build.driver.run_unit` (tests inject faults with it);
    ``runtime_env`` is passed to ``ray.init`` when this engine starts Ray.
    """

    def __init__(self, address: str | None = None, *, max_retries: int = 3, num_cpus: float = 1,
                 task=None, runtime_env: dict | None = None):
        self.ray = import_ray()
        self.address, self.max_retries, self.num_cpus = address, max_retries, num_cpus
        self.task, self.runtime_env = task, runtime_env
        self._started = False
        self.summary: list[str] = []

    def _connect(self) -> None:
        if self.ray.is_initialized():
            return
        kw = {"runtime_env": self.runtime_env} if self.runtime_env else {}
        self.ray.init(address=self.address, include_dashboard=False, **kw)
        self._started = True

    def _remote(self, fn):
        return self.ray.remote(retry_transient(fn)).options(num_cpus=self.num_cpus, max_retries=self.max_retries,
                                                            retry_exceptions=[TransientUnitError])

    def scan_labels(self, cfg, units) -> list[set[str]]:
        self._connect()
        remote = self._remote(scan_labels)
        return self.ray.get([remote.remote(u, cfg.spec, cfg.storage_options) for u in units])

    def __call__(self, cfg, items, bar, run_unit) -> dict:
        if not items:
            return {}
        self._connect()
        remote = self._remote(self.task or run_unit)
        cfg = portable(cfg)
        pending = [remote.remote(cfg, i, unit, labels, key) for i, unit, labels, key in items]
        results = {}
        try:
            while pending:
                done, pending = self.ray.wait(pending, num_returns=1)
                r = self.ray.get(done[0])
                results[r.index] = r
                bar.update(r.records, r.text_chars)
        except BaseException:
            for ref in pending:  # a failed unit fails the build: stop the others
                self.ray.cancel(ref)
            raise
        self.summary = node_summary(results.values())
        for line in self.summary:
            log.debug("%s", line)
        return results

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False
