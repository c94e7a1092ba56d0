"""A worker message: its batches with the big integer arrays in the narrowest dtype.

A message of ``group`` batches is pickled through the worker's pipe, and a pipe moves
every byte three times (pickle, write, read).  The 2-D integer arrays (``input_ids``
and, for LM blocks, position and document ids) are most of the bytes, and their
values fit 16 bits in the common case (vocabularies under 65536, blocks under 32768
tokens): they travel narrowed (int64 → uint16/int16/int32, by their range), and
``collate.to_tensors`` widens them to LongTensors in the main process, where an LM
batch's ``labels`` and ``attention_mask`` are also derived (pack/blocks.py).  Shared
memory per message was measured slower here: a fresh segment's page faults cost more
than the pipe's copies of the narrowed bytes.
"""
from __future__ import annotations

import numpy as np

_NARROW = (np.uint8, np.int8, np.uint16, np.int16, np.int32)


def narrow(values: np.ndarray) -> np.ndarray:
    """``values`` (integers) in the narrowest dtype that holds them all."""
    if values.dtype != np.int64 or not values.size:
        return values
    lo, hi = int(values.min()), int(values.max())
    for dtype in _NARROW:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return values.astype(dtype)
    return values


def pack(batches: list[dict]) -> list[dict]:
    """The batches with their 2-D integer arrays narrowed (see the module docstring)."""
    return [{k: narrow(v) if isinstance(v, np.ndarray) and v.ndim >= 2 else v for k, v in b.items()}
            for b in batches]
