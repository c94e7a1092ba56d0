"""A worker message: its batches with the big integer arrays in the narrowest dtype.

A message of ``group`` batches is pickled through the worker's pipe, and a pipe moves
every byte three times (pickle, write, read).  The token ids are most of the bytes: a
ShardStream's travel unpadded (``collate.RaggedIds``: values and lengths), an LM
block's as 2-D arrays with their position and document ids.  Their values fit 16 bits
in the common case (vocabularies under 65536, blocks under 32768 tokens): they travel
narrowed (int64/int32 → uint16/int16, by their range), and ``collate.to_tensors`` pads
and widens them to LongTensors in the main process, where an LM batch's ``labels`` and
``attention_mask`` are also derived (pack/blocks.py).  Shared memory per message was
measured slower here: a fresh segment's page faults cost more than the pipe's copies of
the narrowed bytes.
"""
from __future__ import annotations

import numpy as np

from pipeline.collate import RaggedIds

_NARROW = (np.uint8, np.int8, np.uint16, np.int16, np.int32)
_WIDE = (np.dtype(np.int64), np.dtype(np.int32))


def narrow(values: np.ndarray) -> np.ndarray:
    """``values`` (int64 or int32) in the narrowest dtype that holds them all."""
    if values.dtype not in _WIDE or not values.size:
        return values
    lo, hi = int(values.min()), int(values.max())
    for dtype in _NARROW:
        info = np.iinfo(dtype)
        if np.dtype(dtype).itemsize < values.itemsize and info.min <= lo and hi <= info.max:
            return values.astype(dtype)
    return values


def _lengths(ids: RaggedIds) -> np.ndarray:
    # 0 <= length <= width: the dtype follows from the width, no pass over the lengths
    dtype = np.uint8 if ids.width <= 0xFF else np.uint16 if ids.width <= 0xFFFF else ids.lengths.dtype
    return ids.lengths.astype(dtype, copy=False)


def _narrowed(value):
    if isinstance(value, RaggedIds):
        return RaggedIds(narrow(value.values), _lengths(value), value.width, value.pad_id)
    return narrow(value) if isinstance(value, np.ndarray) and value.ndim >= 2 else value


def pack(batches: list[dict]) -> list[dict]:
    """The batches with their ids and other 2-D integer arrays narrowed (see the module docstring)."""
    return [{k: _narrowed(v) for k, v in b.items()} for b in batches]
