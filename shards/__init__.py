"""Text corpora → Arrow IPC / webdataset-tar shards + a versioned manifest.

Public read API used by ``pipeline``: :func:`load_manifest`, :func:`fetch_shard`,
:func:`read_batches`, :func:`shard_url`.  This package never imports torch.
"""
from .cache import ShardCache
from .corpus import BadRecordError, CorpusSpec
from .formats import Batch, CorruptShardError
from .formats import get as format_reader
from .index import SAMPLE_ID, Manifest, ManifestError, ShardInfo, index_url, load_manifest, sample_ids, shard_url
from .ragged import Ragged
from .reader import fetch_shard, read_batches, verify_shard
from .storage import parse_storage_options
from .tokenizer import TokenizerError, encode_batch, encode_ragged, fingerprint, load_tokenizer, special_ids

__all__ = ["BadRecordError", "Batch", "CorpusSpec", "CorruptShardError", "Manifest", "ManifestError",
           "ShardInfo", "TokenizerError", "encode_batch", "encode_ragged", "fetch_shard", "fingerprint", "index_url",
           "load_manifest", "load_tokenizer", "read_batches", "shard_url", "special_ids", "verify_shard",
           "Ragged", "SAMPLE_ID", "ShardCache", "format_reader", "sample_ids", "parse_storage_options"]
