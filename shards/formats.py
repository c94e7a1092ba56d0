"""Shard formats by name: each has a writer of one shard and a reader of its batches.

A new format touches this package alone: add a module with ``Writer`` and
``read_batches`` and register it in ``FORMATS``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ragged import Ragged


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


def fields_of(labelled: bool, tokenized: bool, with_text: bool = True) -> list[str]:
    return (["text"] if with_text else []) + (["label"] if labelled else []) + (["input_ids"] if tokenized else [])


def get(name: str):
    formats = {"arrow": format_arrow, "tar": format_tar}
    if name not in formats:
        raise ValueError(f"unknown shard format {name!r}; valid: {', '.join(formats)}")
    return formats[name]


EXTENSIONS = {"arrow": ".arrow", "tar": ".tar"}

# The readers (pyarrow with them, ~0.15 s) load with the package, once per process: not inside the
# first stream a user times, and never after DataLoader workers fork.  Last, as they import Batch.
from . import format_arrow, format_tar  # noqa: E402
