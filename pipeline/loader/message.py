"""A worker message: its batches' big arrays in shared memory, one tensor per field.

A message of ``group`` batches is pickled through the worker's pipe.  Its small
fields (sample ids, ``is_pad``, ``cu_seqlens``) pickle cheaply, but the 2-D arrays
(``input_ids`` and, for LM blocks, labels, positions, document ids, mask) are most of
the bytes, and a pipe moves every byte three times (pickle, write, read).  Here each
such field of the whole message is written once into one shared-memory tensor in the
worker; the main process gets a handle (one file descriptor per field per message,
not per batch) and hands out each batch as a zero-copy view of it.
"""
from __future__ import annotations

import numpy as np
import torch


def _stackable(batches: list[dict], key: str) -> bool:
    first = batches[0][key]
    return all(isinstance(b.get(key), np.ndarray) and b[key].shape[1:] == first.shape[1:]
               and b[key].dtype == first.dtype for b in batches)


def pack(batches: list[dict]) -> tuple[dict, dict, list[dict]]:
    """(shared tensors by field, rows per batch by field, the batches without those fields)."""
    if not batches:
        return {}, {}, []
    keys = [k for k, v in batches[0].items() if isinstance(v, np.ndarray) and v.ndim >= 2 and _stackable(batches, k)]
    shared, rows = {}, {}
    for key in keys:
        parts = [b[key] for b in batches]
        first = parts[0]
        dtype = torch.from_numpy(np.empty(0, first.dtype)).dtype
        tensor = torch.empty((sum(len(p) for p in parts), *first.shape[1:]), dtype=dtype).share_memory_()
        np.concatenate(parts, out=tensor.numpy())
        shared[key], rows[key] = tensor, [len(p) for p in parts]
    rest = [{k: v for k, v in b.items() if k not in shared} for b in batches]
    return shared, rows, rest


def unpack(shared: dict, rows: dict, rest: list[dict]) -> list[dict]:
    """The message's batches again, their shared fields as views."""
    out = [dict(b) for b in rest]
    for key, tensor in shared.items():
        lo = 0
        for batch, n in zip(out, rows[key]):
            batch[key] = tensor[lo:lo + n]
            lo += n
    return out
