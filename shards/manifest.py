"""The manifest ``index.json``: what a shard set is, versioned, to and from JSON.

Readers dispatch on ``format`` and refuse versions they do not know, so a
future layout change cannot be misread silently.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from shards import storage

MANIFEST_NAME = "index.json"
VERSION = 1
FORMATS = ("arrow", "tar")
FIELDS = ("text", "label", "input_ids")


class ManifestError(ValueError):
    """index.json is missing, malformed, or of an unknown format/version."""


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to index.json
    num_records: int
    num_bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    format: str
    num_records: int
    fields: list[str]
    shards: list[ShardInfo]
    label_names: list[str] | None = None
    tokenizer: dict | None = None
    max_length: int | None = None
    bad_records: dict[str, int] = field(default_factory=dict)
    schema: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    # lines continuing a written multi-line record: input lines = num_records + continued_lines +
    # sum(bad_records) (+ 1 header line per CSV/TSV file); None in manifests written before it
    continued_lines: int | None = None
    label_counts: list[int] | None = None  # records per label id (label_names' order); None: not stored
    version: int = VERSION

    @property
    def shard_sizes(self) -> list[int]:
        return [s.num_records for s in self.shards]

    @property
    def num_bytes(self) -> int:
        return sum(s.num_bytes for s in self.shards)

    @property
    def identity(self) -> str:
        """What the data is, not how big: sha256 over the format and each shard's (sha256, records).

        Two sets of the same size but other content differ here, so a resume state or a
        checkpoint taken over one is refused over the other.
        """
        h = hashlib.sha256(self.format.encode())
        for s in self.shards:
            h.update(f"\n{s.sha256}:{s.num_records}".encode())
        return h.hexdigest()

    def to_json(self) -> str:
        data = asdict(self)
        data["shards"] = [asdict(s) for s in self.shards]
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict, where: str = "index.json") -> "Manifest":
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version != VERSION or isinstance(version, bool):
            raise ManifestError(f"{where}: manifest version {version!r} is not supported "
                                f"(this reader knows version {VERSION}); upgrade the package or rebuild")
        fmt = data.get("format")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise ManifestError(f"{where}: unknown shard format {fmt!r}; valid: {', '.join(FORMATS)}")
        raw = data.get("shards")
        if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
            raise ManifestError(f"{where}: 'shards' must be a list of objects; rebuild it with `shards build`")
        try:
            shards = [_checked_shard(ShardInfo(**s), where) for s in raw]
        except TypeError as exc:
            raise ManifestError(f"{where}: malformed shard entry ({exc}); rebuild it with `shards build`") from exc
        check_unique_shards(shards, where)
        known = {f for f in cls.__dataclass_fields__ if f != "shards"}
        rest = {k: v for k, v in data.items() if k in known}
        _check_fields(rest, sum(s.num_records for s in shards), where)
        return cls(shards=shards, **rest)


def check_unique_shards(shards: list[ShardInfo], where: str) -> None:
    """No shard path and no shard content listed twice: either would deliver the same
    records twice under distinct sample ids, which no audit can see."""
    seen_path: dict[str, int] = {}
    seen_hash: dict[str, int] = {}
    for i, s in enumerate(shards):
        if s.path in seen_path:
            j = seen_path[s.path]
            raise ManifestError(f"{where}: shards[{j}] and shards[{i}] both list path {s.path!r}; each "
                                f"shard may be listed once: rebuild the set with `shards build`")
        seen_path[s.path] = i
        if s.num_records == 0:
            continue  # two empty shards may be byte-identical and duplicate nothing
        if s.sha256 in seen_hash:
            j = seen_hash[s.sha256]
            raise ManifestError(f"{where}: shards[{j}] ({shards[j].path}) and shards[{i}] ({s.path}) have the "
                                f"same sha256 {s.sha256[:16]}…: the same data listed twice; rebuild the set")
        seen_hash[s.sha256] = i


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _check_fields(d: dict, shard_records: int, where: str) -> None:
    """Each top-level field has its type; a wrong one is a ManifestError naming the field."""
    def bad(name: str, want: str):
        raise ManifestError(f"{where}: field {name!r} = {d.get(name)!r:.80} must be {want}; "
                            f"rebuild the set with `shards build`")

    for name in ("num_records", "fields"):
        if name not in d:
            raise ManifestError(f"{where}: malformed manifest (missing {name!r}); rebuild it with `shards build`")
    if not _is_int(d["num_records"]):
        bad("num_records", "a count (int >= 0)")
    if d["num_records"] != shard_records:
        bad("num_records", f"the sum of the shards' num_records ({shard_records})")
    fields = d["fields"]
    if not _is_str_list(fields) or len(set(fields)) != len(fields) or not set(fields) <= set(FIELDS):
        bad("fields", f"a list of distinct names from {list(FIELDS)}")
    names = d.get("label_names")
    if names is not None and (not _is_str_list(names) or len(set(names)) != len(names)):
        bad("label_names", "null or a list of distinct strings")
    if ("label" in fields) != (names is not None):
        bad("label_names", "a list exactly when 'label' is in fields")
    tok = d.get("tokenizer")
    if tok is not None and not (isinstance(tok, dict) and isinstance(tok.get("name_or_path"), str)
                                and isinstance(tok.get("fingerprint"), str)):
        bad("tokenizer", "null or an object with string name_or_path and fingerprint")
    if d.get("max_length") is not None and not _is_int(d["max_length"], 1):
        bad("max_length", "null or an int >= 1")
    for name, ok in (("bad_records", _is_int), ("schema", lambda v: isinstance(v, str))):
        value = d.get(name, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) and ok(v) for k, v in value.items()):
            bad(name, "an object of " + ("counts (int >= 0)" if name == "bad_records" else "strings"))
    if not _is_str_list(d.get("sources", [])):
        bad("sources", "a list of strings")
    if d.get("continued_lines") is not None and not _is_int(d["continued_lines"]):
        bad("continued_lines", "null or a count (int >= 0)")
    counts = d.get("label_counts")
    if counts is not None and not (isinstance(counts, list) and all(_is_int(c) for c in counts)
                                   and names is not None and len(counts) == len(names)
                                   and sum(counts) == d["num_records"]):
        bad("label_counts", "null or one count per label name, summing to num_records")


def _checked_shard(info: ShardInfo, where: str) -> ShardInfo:
    """A shard entry must name a file under index.json's folder and carry sane counts."""
    path = info.path
    if not isinstance(path, str):
        raise ManifestError(f"{where}: shard path {path!r} must be a string; rebuild with `shards build`")
    parts = path.split("/")
    if "\\" in path or ":" in path or any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"{where}: shard path {path!r} must be relative to index.json, without "
                            f"'..'; rebuild with `shards build`")
    for name in ("num_records", "num_bytes"):
        value = getattr(info, name)
        if not _is_int(value):
            raise ManifestError(f"{where}: shard {path}: {name}={value!r} is not a count; rebuild it")
    if not (isinstance(info.sha256, str) and len(info.sha256) == 64
            and all(c in "0123456789abcdef" for c in info.sha256)):
        raise ManifestError(f"{where}: shard {path}: sha256={info.sha256!r} is not a hex digest; rebuild it")
    return info


SAMPLE_ID = "%05d:%06d"  # a sample's id: its shard's and its record's index in the manifest


def sample_ids(shards, records) -> list[str]:
    """Ids of (shard, record) pairs (two sequences of ints)."""
    return list(map(SAMPLE_ID.__mod__, zip(shards, records)))  # %-format: ~2x an f-string per id


def index_url(url: str) -> str:
    """The index.json URL for a shard-set folder or an index.json URL."""
    url = str(url)
    return url if url.endswith(".json") else storage.join(url, MANIFEST_NAME)


def base_url(url: str) -> str:
    """The folder that shard paths in the manifest are relative to."""
    idx = index_url(url)
    return idx.rsplit("/", 1)[0] if "/" in idx else "."


def shard_url(url: str, info: ShardInfo) -> str:
    return storage.join(base_url(url), info.path)


def load_manifest(url: str, storage_options: dict | None = None) -> Manifest:
    where = index_url(url)
    try:
        text = storage.read_text(where, storage_options)
    except (FileNotFoundError, storage.StorageError) as exc:
        raise ManifestError(f"{where}: cannot read manifest ({exc}); is this the output folder "
                            f"of `shards build`?") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc}); rebuild with `shards build`") from exc
    return Manifest.from_dict(data, where)


def write_manifest(url: str, manifest: Manifest, storage_options: dict | None = None) -> None:
    storage.write_bytes_atomic(index_url(url), manifest.to_json().encode(), storage_options)
