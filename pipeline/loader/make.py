"""``make_loader``: the resumable loader over any stream (ShardStream, PackedStream, MixedStream).

Every stream goes through ``BatchLoader`` (batch.py): whole batches made in the
workers, several per pipe message, one JSON state kind (settings.py).  The
stream's own collator (``stream.collator()``, e.g. a PackedStream's BlockCollator)
is its built-in batch layout, so passing it as ``collate_fn`` changes nothing; any
other ``collate_fn`` gets each batch's items (dicts) in the worker.
"""
from __future__ import annotations

from pipeline.loader.batch import BatchLoader, default_group
from shards import special_ids


def make_loader(dataset, batch_size: int, num_workers: int = 0, *, collate_fn=None,
                pin_memory: bool = False, prefetch_factor: int | None = None,
                persistent_workers: bool = False, pad_to_multiple_of: int | None = None,
                multiprocessing_context: str | None = None, batches_per_message: int | None = None):
    """Batches of dicts of tensors (ShardStream: input_ids, attention_mask, labels, is_pad,
    sample_id; PackedStream: see pipeline/pack/stream.py).

    Workers start with each epoch's iterator, so ``persistent_workers`` does not apply;
    ``batches_per_message`` batches travel per worker message (default: ~2048 samples'
    worth; 1 gives torch's one batch per request)."""
    del persistent_workers  # workers are started per epoch (their position is the loader's state)
    if collate_fn is not None and _own_collator(dataset, collate_fn):
        collate_fn = None
    batch_kw = dataset.batch_options(pad_id=pad_id(dataset), pad_to_multiple_of=pad_to_multiple_of) \
        if hasattr(dataset, "batch_options") else {}
    return BatchLoader(dataset, batch_size, num_workers, collate_fn=collate_fn, pin_memory=pin_memory,
                       prefetch_factor=prefetch_factor, group=batches_per_message or default_group(batch_size),
                       multiprocessing_context=multiprocessing_context, batch_kw=batch_kw)


def _own_collator(dataset, collate_fn) -> bool:
    own = getattr(dataset, "collator", None)
    if not callable(own):
        return False
    try:
        return collate_fn == own()
    except TypeError:  # a collator that cannot be compared is someone else's
        return False


def pad_id(dataset) -> int:
    tok = getattr(dataset, "tokenizer", None)
    if tok is None:
        return 0
    return special_ids(tok)["pad"]


def loader_stats(loader) -> dict:
    """Sums of the workers' counters (retries, skipped shards/samples, packing counts)."""
    return loader.stats()
