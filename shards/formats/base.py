"""What every shard format shares: the columnar ``Batch``, ``CorruptShardError`` and the checks.

The format modules (format_arrow, format_tar) build on this; :mod:`shards.formats`
names them.  Kept apart so that neither format imports the registry that imports it.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from shards.formats.ragged import Ragged


class CorruptShardError(RuntimeError):
    """A shard failed a check (size, sha256, format); names the URL and the fix."""


@dataclass
class Batch:
    """Consecutive records of one shard, as columns."""

    start: int  # index in the shard of the first record
    text: list[str] | None
    label: np.ndarray | None
    ids: Ragged | None  # token ids, flat + offsets

    def __len__(self) -> int:
        for column in (self.text, self.label, self.ids):
            if column is not None:
                return len(column)
        return 0

    @property
    def input_ids(self) -> list[np.ndarray] | None:
        """Token ids as one int32 array per record."""
        return None if self.ids is None else self.ids.rows()


class Memo:
    """A small thread-safe LRU map (the prefetch thread and the consumer both read shards)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def check_labels(labels: np.ndarray, url: str, label_count: int | None, first: int = 0) -> None:
    """Label ids must index label_names: a negative or too large id is a corrupt record."""
    high = label_count if label_count is not None else np.iinfo(np.int64).max
    bad = np.flatnonzero((labels < 0) | (labels >= high))
    if len(bad):
        r = int(bad[0])
        raise CorruptShardError(f"shard {url}: record {first + r} has label id {int(labels[r])}, outside "
                                f"label_names (ids 0..{'' if label_count is None else label_count - 1}); "
                                f"{len(bad)} record(s) so; rebuild the shard")


def sniff(data) -> str | None:
    """The format of a shard's bytes, from its magic: 'arrow', 'tar' or None."""
    head = bytes(data[:262])
    if head[:6] == b"ARROW1":
        return "arrow"
    if head[257:262] == b"ustar" or (len(data) >= 1024 and not bytes(data[:1024]).strip(b"\x00")):
        return "tar"
    return None


def fields_of(labelled: bool, tokenized: bool, with_text: bool = True) -> list[str]:
    return (["text"] if with_text else []) + (["label"] if labelled else []) + (["input_ids"] if tokenized else [])
