"""Text corpora → Arrow IPC / webdataset-tar shards + a versioned manifest.

Public read API used by ``pipeline``: :func:`load_manifest`, :func:`fetch_shard`,
:func:`read_batches`, :func:`shard_url`.  This package never imports torch.
"""
from shards import audit_schema  # the audit line format (writer: pipeline.train.audit_log; checker: shards.audit)
from shards.cache import ShardCache
from shards.corpus.read import BadRecordError, CorpusSpec
from shards.formats import Batch, CorruptShardError
from shards.formats import get as format_reader
from shards.formats.ragged import Ragged
from shards.formats.ragged import concat as concat_ragged
from shards.manifest import SAMPLE_ID, Manifest, ManifestError, ShardInfo, index_url, load_manifest, sample_ids, shard_url
from shards.reader import fetch_shard, read_batches, verify_shard
from shards.storage import (
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
from shards.storage import join as join_url
from shards.storage import remove as remove_url
from shards.tokenizer import TokenizerError, encode_batch, encode_ragged, fingerprint, load_tokenizer, special_ids

__all__ = [
    "audit_schema",
    "BadRecordError",
    "Batch",
    "CorpusSpec",
    "CorruptShardError",
    "Manifest",
    "ManifestError",
    "Ragged",
    "SAMPLE_ID",
    "ShardCache",
    "ShardInfo",
    "StorageError",
    "TokenizerError",
    "concat_ragged",
    "encode_batch",
    "encode_ragged",
    "fetch_shard",
    "fingerprint",
    "format_reader",
    "index_url",
    "is_remote",
    "join_url",
    "list_names",
    "load_manifest",
    "load_tokenizer",
    "parse_storage_options",
    "put_tree",
    "read_batches",
    "read_object",
    "redact",
    "remove_url",
    "retry_count",
    "sample_ids",
    "shard_url",
    "special_ids",
    "verify_shard",
    "write_bytes_atomic",
]
