"""``shards build``: corpus files → shards + index.json, parallel, resumable, atomic.

The work is cut into units (a file, or a byte range of a large txt/jsonl) that
do not depend on the worker count, so the output is byte-identical for any
``workers``.  Each unit writes its parts into ``OUT/.staging/`` with a
``.done.json`` marker; a rerun skips marked units.  When all are done, parts
get their global names (``shard-00000.arrow`` ...), ``index.json`` is written
last, and the staging folder is removed.

Output safety (:mod:`shards.build.lock`): one builder per ``--out`` (a lock), and a
failed or killed rebuild never damages the set already there.  Its
``index.json`` stays until the new one replaces it (the commit point), and no
file it lists is overwritten with other bytes before then: a new shard whose
plain name the old index lists with other content is published as
``shard-NNNNN-<sha256[:16]>.ext`` first and gets its plain name after the
commit (a hard link or server-side copy, then a second index swap), so the
finished output is the same as a fresh build's.  Disk full or read-only
output ends in one line naming the path, with staging cleaned.
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

from shards import formats, storage
from shards.build import in_pass, spill
from shards.build.engines import EngineError, LocalEngine, Progress
from shards.build.lock import (
    OutputLock,
    clean_after_failure,
    commit,
    final_name,
    listed_shards,
    output_error,
    part_in_place,
    publish_parts,
    redacted,
    sigterm_raises,
)
from shards.build.prefetch import prefetch
from shards.build.unit_columns import counting, unit_columns
from shards.build.writer import Limits, Part, PartWriter
from shards.corpus.inputs import expand_inputs
from shards.corpus.labels import check_label_map, check_label_names, normalized_values
from shards.corpus.read import ALL_SUFFIXES, BadRecords, CorpusSpec, Unit, plan_units, scan_labels
from shards.manifest import Manifest
from shards.tokenizer import fingerprint, load_tokenizer

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
    label_map: tuple[tuple[str, str], ...] | None = None  # (raw value, name) in id order; see shards.corpus.labels
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
    continued: int = 0  # lines continuing a written multi-line record (BadRecords.continued)
    label_counts: list[int] | None = None  # records written per label id
    labels: list[str] | None = None  # the label values in id order, when found in the write pass (in_pass)


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
        found = in_pass.FoundLabels() if labels == in_pass.IN_PASS else None
        if found is not None:
            columns, text_chars = in_pass.unit_columns(cfg, unit, bad, found)
            label_counts = None  # counted by found
        else:
            columns, text_chars = unit_columns(cfg, unit, labels, bad)
            label_counts = [0] * len(labels) if labels is not None else None
        columns = counting(prefetch(columns), label_counts)  # the reader runs a few blocks ahead on a thread
        tok = _tokenizer(cfg.tokenizer)
        fields = formats.fields_of(labels is not None, tok is not None)
        writer = PartWriter(cfg.format, local_dir, f"u{index:05d}", fields, cfg.limits, tok,
                            cfg.max_length, on_progress)
        parts = writer.write_columns(columns)
        if found is not None:
            labels = sort_labels(found.values)
            parts, label_counts = found.finish(parts, labels)
        staged = []
        for part in parts:
            url = storage.join(_staging(cfg), os.path.basename(part.path))
            if remote:
                storage.publish_file(part.path, url, cfg.storage_options)
            staged.append(Part(url, part.num_records, part.num_bytes, part.sha256))
    finally:
        if remote:
            shutil.rmtree(local_dir, ignore_errors=True)
    result = UnitResult(index, staged, dict(bad.counts), sum(p.num_records for p in staged), key,
                        text_chars["n"], _unit_bytes(unit, cfg.storage_options), time.perf_counter() - t0,
                        socket.gethostname(), bad.continued, label_counts, labels if found is not None else None)
    marker = {"key": key, "parts": [asdict(p) for p in staged], "bad": result.bad, "continued": bad.continued,
              "label_counts": label_counts, "labels": result.labels}
    storage.write_bytes_atomic(_marker_url(cfg, index), json.dumps(marker).encode(), cfg.storage_options)
    return result


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
    return UnitResult(index, parts, data["bad"], sum(p.num_records for p in parts), key,
                      continued=data.get("continued", 0), label_counts=data.get("label_counts"), labels=data.get("labels"))


def _labels(cfg: BuildConfig, units: list[Unit], engine, own_engine: bool) -> list[str] | str | None:
    """The raw label values in id order (a label map's keys; the stored names are its values), or
    ``in_pass.IN_PASS`` when the unit finds them as it is written."""
    if cfg.spec.label_field is None:
        return None
    if in_pass.applies(cfg, units, own_engine):
        return in_pass.IN_PASS
    if cfg.label_map is not None:
        return [raw for raw, _ in cfg.label_map]
    if cfg.label_names is not None:
        return normalized_values(cfg.label_names)
    scan = getattr(engine, "scan_labels", None)
    if scan is not None:
        found = scan(cfg, units)
    else:
        found = [scan_labels(u, cfg.spec, cfg.storage_options) for u in units]
    return sort_labels(set().union(*found)) if found else []


def check_labels(cfg: BuildConfig) -> None:
    """--label-names and --label-map: valid, exclusive, and used only with --label-field."""
    check_label_names(cfg.label_names)
    if cfg.label_map is None:
        return
    check_label_map(cfg.label_map)
    if cfg.label_names is not None:
        raise ValueError("--label-map and --label-names both given; a label map already fixes the label set "
                         "and its order: drop --label-names")
    if cfg.spec.label_field is None:
        raise ValueError("--label-map needs --label-field NAME (the field holding the raw label values)")


def build(inputs: list[str], cfg: BuildConfig, engine=None) -> BuildResult:
    """Build a shard set at ``cfg.out`` from ``inputs``; see the module docstring.

    ``engine`` runs the units (see :mod:`shards.build.engines`); default: a
    :class:`~shards.build.engines.LocalEngine` with ``cfg.workers`` processes.
    Holds the lock on ``cfg.out`` throughout; errors never show credentials of URLs.
    """
    with redacted():
        formats.get(cfg.format)  # fail fast on a bad format name
        check_labels(cfg)
        t0 = time.perf_counter()
        # with --input-format a folder gives all its files, whatever their extension
        suffixes = ALL_SUFFIXES if cfg.spec.input_format is None else ("",)
        urls = expand_inputs(inputs, suffixes, cfg.storage_options)
        units = plan_units(urls, cfg.split_bytes, cfg.storage_options, cfg.spec)
        input_bytes = sum(storage.size(u, cfg.storage_options) for u in urls)
        try:
            storage.makedirs(cfg.out, cfg.storage_options)
            with OutputLock(cfg.out, cfg.storage_options), sigterm_raises():
                try:
                    return _build_locked(cfg, urls, units, engine, t0, input_bytes)
                except BaseException as exc:
                    full = isinstance(exc, OSError) and output_error(exc, cfg.out) is not None
                    clean_after_failure(_staging(cfg), cfg.storage_options, everything=full)
                    raise
        except OSError as exc:
            err = output_error(exc, cfg.out)
            if err is None:
                raise
            raise err from exc


def _build_locked(cfg: BuildConfig, urls: list[str], units: list[Unit], engine, t0: float,
                  input_bytes: int) -> BuildResult:
    tok = _tokenizer(cfg.tokenizer)
    tok_fp = fingerprint(tok) if tok is not None else None
    listed = listed_shards(cfg)
    own_engine = engine is None
    engine = LocalEngine(cfg.workers) if own_engine else engine
    bar = None
    failed = True
    try:
        spill.use_folder(None if storage.is_remote(cfg.out) else storage.filesystem(_staging(cfg))[1])
        labels = _labels(cfg, units, engine, own_engine)
        keys = [unit_key(cfg, u, labels, tok_fp) for u in units]
        done = _finished_units(cfg, keys, listed)
        todo = [(i, units[i], labels, keys[i]) for i in range(len(units)) if i not in done]
        bar = Progress(cfg.progress)
        bar.update(sum(r.records for r in done.values()))
        ran = engine(cfg, todo, bar, run_unit)
        failed = False
    finally:
        if bar is not None:
            bar.close()
        if own_engine:
            engine.close(abort=failed)  # a failed unit stops the others now, not when they finish
        spill.discard_all()
    missing = [i for i, *_ in todo if i not in ran]
    if missing:
        raise EngineError(f"engine {type(engine).__name__} returned no result for unit(s) {missing}")
    results = {**done, **ran}
    ordered = [results[i] for i in range(len(units))]
    if labels == in_pass.IN_PASS:
        labels = ordered[0].labels
    manifest = _finish(cfg, urls, ordered, labels, tok_fp, listed)
    return BuildResult(manifest, time.perf_counter() - t0, input_bytes, len(done), list(ran.values()))


def _finished_units(cfg: BuildConfig, keys: list[str], listed: dict) -> dict[int, UnitResult]:
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
        finals = [storage.join(cfg.out, final_name(cfg, number + k, p, listed)) if number is not None else ""
                  for k, p in enumerate(result.parts)]
        if all(part_in_place(cfg, p, f) for p, f in zip(result.parts, finals)):
            done[i] = result
        if number is not None:
            number += len(result.parts)
    return done


def _finish(cfg: BuildConfig, urls: list[str], results: list[UnitResult], labels, tok_fp, listed) -> Manifest:
    shards = publish_parts(cfg, results, listed)
    bad = Counter()
    for r in results:
        bad.update(r.bad)
    tok_info = {"name_or_path": str(cfg.tokenizer), "fingerprint": tok_fp} if tok_fp else None
    fields = formats.fields_of(labels is not None, tok_fp is not None)
    names = [name for _, name in cfg.label_map] if cfg.label_map is not None and labels is not None else labels
    manifest = Manifest(
        format=cfg.format, num_records=sum(s.num_records for s in shards), fields=fields,
        shards=shards, label_names=names, tokenizer=tok_info, max_length=cfg.max_length,
        bad_records=dict(sorted(bad.items())), schema=_schema(cfg.format, fields),
        sources=[storage.redact(u) for u in urls], continued_lines=sum(r.continued for r in results),
        label_counts=_label_counts(results, labels))
    return commit(cfg, manifest, _staging(cfg))


def _label_counts(results: list[UnitResult], labels) -> list[int] | None:
    """Records per label id over all units; None when unlabelled or a reused unit's marker lacks them."""
    if labels is None or any(r.label_counts is None for r in results):
        return None
    return [sum(r.label_counts[i] for r in results) for i in range(len(labels))]


def _schema(fmt: str, fields: list[str]) -> dict[str, str]:
    if fmt == "arrow":
        from shards.formats.arrow_write import schema
        return {f.name: str(f.type) for f in schema(fields)}
    names = {"text": "KEY.txt (utf-8)", "label": "KEY.cls (decimal id)", "input_ids": "KEY.input_ids.npy (int32)"}
    return {f: names[f] for f in fields}
