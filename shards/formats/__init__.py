"""Shard formats by name: each has a writer of one shard and a reader of its batches.

A new format touches this package alone: add a module with ``Writer``,
``read_batches`` and ``check`` (record count, label ids and token ids against the
manifest entry, before any record is used) and register it in ``get``.  What the
formats share (``Batch``, ``CorruptShardError``, the checks) is in format_base.
"""
from __future__ import annotations

# The readers (pyarrow with them, ~0.15 s) load with the package, once per process: not inside the
# first stream a user times, and never after DataLoader workers fork.
from shards.formats import arrow as format_arrow
from shards.formats import tar_read as format_tar
from shards.formats.base import Batch, CorruptShardError, Memo, check_labels, fields_of, sniff

__all__ = ["Batch", "CorruptShardError", "Memo", "EXTENSIONS", "check_labels", "fields_of", "get", "sniff"]

EXTENSIONS = {"arrow": ".arrow", "tar": ".tar"}
FORMATS = {"arrow": format_arrow, "tar": format_tar}


def get(name: str):
    if name not in FORMATS:
        raise ValueError(f"unknown shard format {name!r}; valid: {', '.join(FORMATS)}")
    return FORMATS[name]
