"""``shards build``: corpus files → shards + index.json, parallel, resumable, atomic.

The work is cut into units (a file, or a byte range of a large txt/jsonl) that
do not depend on the worker count, so the output is byte-identical for any
``workers``.  Each unit writes its parts into ``OUT/.staging/`` with a
``.done.json`` marker; a rerun skips marked units.  When all are done, parts
get their global names (``shard-00000.arrow`` ...), ``index.json`` is written
last, and the staging folder is removed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from . import corpus_jsonl, formats, storage
from .corpus import (ALL_SUFFIXES, BadRecords, CorpusSpec, Unit, Where, kind_of, plan_units, read_unit,
                     scan_labels)
from .engines import EngineError, LocalEngine, Progress
from .index import MANIFEST_NAME, Manifest, ShardInfo, index_url, write_manifest
from .tokenizer import fingerprint, load_tokenizer
from .writer import Limits, Part, PartWriter, columns_of

log = logging.getLogger(__name__)
STAGING = ".staging"


@dataclass(frozen=True)
class BuildConfig:
    out: str
    format: str = "arrow"
    spec: CorpusSpec = field(default_factory=CorpusSpec)
    limits: Limits = field(default_factory=Limits)
    tokenizer: str | None = None
    max_length: int | None = None
    label_names: tuple[str, ...] | None = None
    workers: int = 1
    split_bytes: int = 256 << 20
    storage_options: dict | None = None
    progress: bool | None = None  # None: only on a terminal


@dataclass
class UnitResult:
    index: int
    parts: list[Part]
    bad: dict[str, int]
    records: int
    key: str
    text_chars: int = 0
    input_bytes: int = 0
    seconds: float = 0.0  # time spent running the unit (0 when reused from a marker)
    node: str = ""  # host that ran it, for the per-node summary of distributed engines


@dataclass
class BuildResult:
    manifest: Manifest
    seconds: float
    input_bytes: int
    reused_units: int
    units: list[UnitResult] = field(default_factory=list)  # the units run by this call

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / 1e6 / max(self.seconds, 1e-9)


def sort_labels(values) -> list[str]:
    """Label names in id order: numerically if all are numbers, else as strings."""
    values = set(values)
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


_TOKENIZERS: dict = {}


def _tokenizer(path):
    if path is None:
        return None
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = load_tokenizer(path)
    return _TOKENIZERS[path]


def unit_key(cfg: BuildConfig, unit: Unit, labels, tok_fp) -> str:
    """Everything that decides a unit's bytes; a marker with another key is stale.

    The input's size and version (mtime locally, ETag on S3) make a changed
    input invalidate its unit.
    """
    desc = {"unit": asdict(unit), "format": cfg.format, "spec": asdict(cfg.spec),
            "limits": asdict(cfg.limits), "tokenizer": tok_fp, "max_length": cfg.max_length,
            "labels": labels, "input": _input_version(unit.url, cfg.storage_options)}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


# Fields of fsspec's info() that change when an object's content does (local, S3, GCS).
VERSION_FIELDS = ("size", "mtime", "ETag", "LastModified", "md5Hash", "generation")


def _input_version(url: str, storage_options) -> dict:
    fs, path = storage.filesystem(url, storage_options)
    info = fs.info(path)
    return {k: str(info[k]) for k in VERSION_FIELDS if k in info}


def _staging(cfg: BuildConfig) -> str:
    return storage.join(cfg.out, STAGING)


def _marker_url(cfg: BuildConfig, index: int) -> str:
    return storage.join(_staging(cfg), f"u{index:05d}.done.json")


def run_unit(cfg: BuildConfig, index: int, unit: Unit, labels: list[str] | None, key: str,
             on_progress=None) -> UnitResult:
    """Write one unit's parts into the staging folder, then its done marker.

    Idempotent: the same unit writes the same part names and bytes, so a
    retried or repeated run (a killed worker, a Ray retry) replaces rather
    than duplicates.  ``on_progress(records, text_chars)`` is called per batch.
    Parts for an object store are written to a local temp folder, then uploaded.
    """
    t0 = time.perf_counter()
    bad = BadRecords(cfg.spec.on_bad_record)
    remote = storage.is_remote(cfg.out)
    local_dir = tempfile.mkdtemp(prefix="shards-") if remote else storage.filesystem(_staging(cfg))[1]
    try:
        os.makedirs(local_dir, exist_ok=True)
        columns, text_chars = _unit_columns(cfg, unit, labels, bad)
        tok = _tokenizer(cfg.tokenizer)
        fields = formats.fields_of(labels is not None, tok is not None)
        writer = PartWriter(cfg.format, local_dir, f"u{index:05d}", fields, cfg.limits, tok,
                            cfg.max_length, on_progress)
        staged = []
        for part in writer.write_columns(columns):
            url = storage.join(_staging(cfg), os.path.basename(part.path))
            if remote:
                storage.publish_file(part.path, url, cfg.storage_options)
            staged.append(Part(url, part.num_records, part.num_bytes, part.sha256))
    finally:
        if remote:
            shutil.rmtree(local_dir, ignore_errors=True)
    result = UnitResult(index, staged, dict(bad.counts), sum(p.num_records for p in staged), key,
                        text_chars["n"], _unit_bytes(unit, cfg.storage_options), time.perf_counter() - t0,
                        socket.gethostname())
    marker = {"key": key, "parts": [asdict(p) for p in staged], "bad": result.bad}
    storage.write_bytes_atomic(_marker_url(cfg, index), json.dumps(marker).encode(), cfg.storage_options)
    return result


def _unit_columns(cfg: BuildConfig, unit: Unit, labels: list[str] | None, bad: BadRecords):
    """(generator of :class:`Columns` with label ids, counter of text chars read) for one unit.

    JSONL goes through pyarrow's JSON reader (:mod:`shards.corpus_jsonl`), which
    gives the same records, counts and errors as the per-record path below.
    """
    text_chars = Counter()
    kind, _ = kind_of(unit.url)
    if kind == "jsonl" and cfg.spec.block_parse:
        def columns():
            for col in corpus_jsonl.read_columns(unit, cfg.spec, bad, labels, cfg.storage_options):
                text_chars["n"] += col.text_chars
                yield col
        return columns(), text_chars
    label_ids = {name: i for i, name in enumerate(labels)} if labels is not None else None
    where = Where(unit, cfg.storage_options)

    def records():
        for raw in read_unit(unit, cfg.spec, bad, cfg.storage_options):
            text_chars["n"] += len(raw.text)
            if label_ids is None:
                yield raw.text, None
            elif raw.label in label_ids:
                yield raw.text, label_ids[raw.label]
            else:
                bad.add("unknown_label", where(raw.line), f"{raw.label!r} not in {labels} (--label-names)")

    return columns_of(records(), labels is not None), text_chars


def _unit_bytes(unit: Unit, storage_options) -> int:
    return unit.end - unit.start if unit.end is not None else storage.size(unit.url, storage_options)


def _load_marker(cfg: BuildConfig, index: int, key: str) -> UnitResult | None:
    url = _marker_url(cfg, index)
    if not storage.exists(url, cfg.storage_options):
        return None
    data = json.loads(storage.read_text(url, cfg.storage_options))
    if data.get("key") != key:
        return None
    # part names are resolved against this run's staging URL, so a marker
    # written by a worker that saw the folder by another path still matches
    parts = [Part(**{**p, "path": storage.join(_staging(cfg), p["path"].rsplit("/", 1)[-1])})
             for p in data["parts"]]
    return UnitResult(index, parts, data["bad"], sum(p.num_records for p in parts), key)


def _final_url(cfg: BuildConfig, number: int) -> str:
    return storage.join(cfg.out, f"shard-{number:05d}{formats.EXTENSIONS[cfg.format]}")


def _part_in_place(cfg: BuildConfig, part: Part, final: str) -> bool:
    """A part moved by an earlier, interrupted finalize is already under its final name."""
    if storage.exists(part.path, cfg.storage_options):
        return True
    if not final or not storage.exists(final, cfg.storage_options):
        return False
    if storage.is_remote(final):
        return storage.size(final, cfg.storage_options) == part.num_bytes
    digest, n = storage.sha256_file(storage.filesystem(final)[1])
    return (digest, n) == (part.sha256, part.num_bytes)


def _publish_parts(cfg: BuildConfig, results: list[UnitResult]) -> list[ShardInfo]:
    shards = []
    for part in (p for r in results for p in r.parts):
        final = _final_url(cfg, len(shards))
        if storage.exists(part.path, cfg.storage_options):
            fs, src = storage.filesystem(part.path, cfg.storage_options)
            _, dst = storage.filesystem(final, cfg.storage_options)
            if storage.is_remote(final):
                fs.copy(src, dst)  # server-side copy; the staged part goes with the folder
            else:
                os.replace(src, dst)
        shards.append(ShardInfo(final.rsplit("/", 1)[-1], part.num_records, part.num_bytes, part.sha256))
    return shards


def _remove_leftovers(cfg: BuildConfig, keep: int) -> None:
    """Remove what index.json does not list: shards numbered ``keep`` and up (or of the
    other format) from earlier builds, and temp manifests of killed ones."""
    fs, path = storage.filesystem(cfg.out, cfg.storage_options)
    ext = formats.EXTENSIONS[cfg.format]
    for name in fs.ls(path, detail=False):
        base = name.rsplit("/", 1)[-1]
        stem, dot, suffix = base.rpartition(".")
        number = stem[6:] if stem.startswith("shard-") else ""
        stale_shard = number.isdigit() and f".{suffix}" in formats.EXTENSIONS.values() and (
            int(number) >= keep or f".{suffix}" != ext)
        if stale_shard or base.startswith(f"{MANIFEST_NAME}.tmp-"):
            fs.rm(name)


def _labels(cfg: BuildConfig, units: list[Unit], engine) -> list[str] | None:
    if cfg.spec.label_field is None:
        return None
    if cfg.label_names is not None:
        return list(cfg.label_names)
    scan = getattr(engine, "scan_labels", None)
    if scan is not None:
        found = scan(cfg, units)
    else:
        found = [scan_labels(u, cfg.spec, cfg.storage_options) for u in units]
    return sort_labels(set().union(*found)) if found else []


def build(inputs: list[str], cfg: BuildConfig, engine=None) -> BuildResult:
    """Build a shard set at ``cfg.out`` from ``inputs``; see the module docstring.

    ``engine`` runs the units (see :mod:`shards.engines`); default: a
    :class:`~shards.engines.LocalEngine` with ``cfg.workers`` processes.
    """
    formats.get(cfg.format)  # fail fast on a bad format name
    t0 = time.perf_counter()
    urls = storage.expand_inputs(inputs, ALL_SUFFIXES, cfg.storage_options)
    units = plan_units(urls, cfg.split_bytes, cfg.storage_options)
    input_bytes = sum(storage.size(u, cfg.storage_options) for u in urls)
    storage.makedirs(cfg.out, cfg.storage_options)
    storage.remove(index_url(cfg.out), cfg.storage_options)  # never leave an old manifest over new shards
    tok = _tokenizer(cfg.tokenizer)
    tok_fp = fingerprint(tok) if tok is not None else None
    own_engine = engine is None
    engine = LocalEngine(cfg.workers) if own_engine else engine
    bar = None
    try:
        labels = _labels(cfg, units, engine)
        keys = [unit_key(cfg, u, labels, tok_fp) for u in units]
        done = _finished_units(cfg, keys)
        todo = [(i, units[i], labels, keys[i]) for i in range(len(units)) if i not in done]
        bar = Progress(cfg.progress)
        bar.update(sum(r.records for r in done.values()))
        ran = engine(cfg, todo, bar)
    finally:
        if bar is not None:
            bar.close()
        if own_engine:
            engine.close()
    missing = [i for i, *_ in todo if i not in ran]
    if missing:
        raise EngineError(f"engine {type(engine).__name__} returned no result for unit(s) {missing}")
    results = {**done, **ran}
    ordered = [results[i] for i in range(len(units))]
    manifest = _finish(cfg, urls, ordered, labels, tok_fp)
    return BuildResult(manifest, time.perf_counter() - t0, input_bytes, len(done), list(ran.values()))


def _finished_units(cfg: BuildConfig, keys: list[str]) -> dict[int, UnitResult]:
    """Units whose marker matches and whose parts are all still there.

    Parts are moved to their final names only once every unit is done, so a
    part missing from staging is looked for under the final name it got then
    (known while all earlier units are marked); units are deterministic, so a
    unit redone after a partial move writes the same bytes under the same names.
    """
    done: dict[int, UnitResult] = {}
    number: int | None = 0
    for i, key in enumerate(keys):
        result = _load_marker(cfg, i, key)
        if result is None:
            number = None
            continue
        finals = [_final_url(cfg, number + k) if number is not None else "" for k in range(len(result.parts))]
        if all(_part_in_place(cfg, p, f) for p, f in zip(result.parts, finals)):
            done[i] = result
        if number is not None:
            number += len(result.parts)
    return done


def _finish(cfg: BuildConfig, urls: list[str], results: list[UnitResult], labels, tok_fp) -> Manifest:
    shards = _publish_parts(cfg, results)
    bad = Counter()
    for r in results:
        bad.update(r.bad)
    tok_info = {"name_or_path": str(cfg.tokenizer), "fingerprint": tok_fp} if tok_fp else None
    fields = formats.fields_of(labels is not None, tok_fp is not None)
    manifest = Manifest(
        format=cfg.format, num_records=sum(s.num_records for s in shards), fields=fields,
        shards=shards, label_names=labels, tokenizer=tok_info, max_length=cfg.max_length,
        bad_records=dict(sorted(bad.items())), schema=_schema(cfg.format, fields), sources=urls)
    write_manifest(cfg.out, manifest, cfg.storage_options)
    storage.remove(_staging(cfg), cfg.storage_options, recursive=True)
    _remove_leftovers(cfg, len(shards))
    return manifest


def _schema(fmt: str, fields: list[str]) -> dict[str, str]:
    if fmt == "arrow":
        from .format_arrow import schema
        return {f.name: str(f.type) for f in schema(fields)}
    names = {"text": "KEY.txt (utf-8)", "label": "KEY.cls (decimal id)", "input_ids": "KEY.input_ids.npy (int32)"}
    return {f: names[f] for f in fields}
