"""Text corpora → Arrow IPC / webdataset-tar shards + a versioned manifest.

Public read API used by ``pipeline``: :func:`load_manifest`, :func:`fetch_shard`,
:func:`read_batches`, :func:`shard_url`.  This package never imports torch.

The names below are imported on first use (PEP 562), not with the package: ``shards build``
runs ``import shards`` first and needs none of the read side (fsspec's async stack, the
shard cache, the tokenizer), which cost a build's start-up about 0.3 s when imported here.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

# exported name -> (module, attribute in it; None: the module itself)
_EXPORTS = {
    "audit_schema": ("shards.audit_schema", None),  # the audit line format (writer: pipeline.train.audit_log)
    "ShardCache": ("shards.cache", "ShardCache"),
    "BadRecordError": ("shards.corpus.read", "BadRecordError"),
    "CorpusSpec": ("shards.corpus.read", "CorpusSpec"),
    "Batch": ("shards.formats", "Batch"),
    "CorruptShardError": ("shards.formats", "CorruptShardError"),
    "format_reader": ("shards.formats", "get"),
    "Ragged": ("shards.formats.ragged", "Ragged"),
    "concat_ragged": ("shards.formats.ragged", "concat"),
    **{name: ("shards.manifest", name) for name in (
        "SAMPLE_ID", "Manifest", "ManifestError", "ShardInfo", "index_url", "load_manifest", "sample_ids",
        "shard_url")},
    **{name: ("shards.reader", name) for name in ("fetch_shard", "read_batches", "verify_shard")},
    **{name: ("shards.storage", name) for name in (
        "StorageError", "is_remote", "list_names", "parse_storage_options", "put_tree", "read_object", "redact",
        "retry_count", "write_bytes_atomic")},
    "join_url": ("shards.storage", "join"),
    "remove_url": ("shards.storage", "remove"),
    **{name: ("shards.tokenizer", name) for name in (
        "TokenizerError", "encode_batch", "encode_ragged", "fingerprint", "load_tokenizer", "special_ids")},
}

__all__ = sorted(_EXPORTS, key=str.lower)


def __getattr__(name: str):
    """An exported name, imported the first time it is asked for (then cached in the package)."""
    if name not in _EXPORTS:
        # a subpackage (shards.formats, shards.manifest, ...) that code reached as an attribute
        # when this file imported them all: imported now, as it was then
        if name.startswith("_") or importlib.util.find_spec(f"shards.{name}") is None:
            raise AttributeError(f"module 'shards' has no attribute {name!r}")
        return importlib.import_module(f"shards.{name}")
    module, attr = _EXPORTS[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from shards import audit_schema  # noqa: F401
    from shards.cache import ShardCache  # noqa: F401
    from shards.corpus.read import BadRecordError, CorpusSpec  # noqa: F401
    from shards.formats import Batch, CorruptShardError  # noqa: F401
    from shards.formats import get as format_reader  # noqa: F401
    from shards.formats.ragged import Ragged  # noqa: F401
    from shards.formats.ragged import concat as concat_ragged  # noqa: F401
    from shards.manifest import SAMPLE_ID, Manifest, ManifestError, ShardInfo, index_url, load_manifest, sample_ids, shard_url  # noqa: F401
    from shards.reader import fetch_shard, read_batches, verify_shard  # noqa: F401
    from shards.storage import (  # noqa: F401
        StorageError,
        is_remote,
        list_names,
        parse_storage_options,
        put_tree,
        read_object,
        redact,
        retry_count,
        write_bytes_atomic,
    )
    from shards.storage import join as join_url  # noqa: F401
    from shards.storage import remove as remove_url  # noqa: F401
    from shards.tokenizer import TokenizerError, encode_batch, encode_ragged, fingerprint, load_tokenizer, special_ids  # noqa: F401
