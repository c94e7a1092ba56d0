"""Checks of a per-item position: what a MixedStream keeps per source and a PackedStream per chunk.

Such a position has no ``batches`` of its own; its item count is the stream's own counter
(ShardStream ``samples``, PackedStream ``blocks``, MixedStream ``items``), so the stream's
``check_position`` sees it as a position after that many batches of one item.
"""
from __future__ import annotations

from pipeline.settings import ResumeError

ITEM_COUNTS = ("samples", "blocks", "items")  # ShardStream, PackedStream, MixedStream: items before the position


def count_key(stream) -> str | None:
    """The key of ``stream``'s positions that counts its items; None for a stream of unknown form."""
    found = getattr(stream, "POSITION_COUNT", None)
    if found is not None:
        return found
    return "samples" if callable(getattr(stream, "read_chunks", None)) else None  # ShardStream


def check_item_position(stream, what: str, position, worker_id: int, workers: int) -> None:
    """Refuse (one-line ResumeError) a per-item position of ``stream`` that is not a dict of its
    form, or that the stream's own ``check_position`` refuses."""
    if not isinstance(position, dict):
        raise ResumeError(f"{what}={position!r:.60} is not a position of {type(stream).__name__} (a dict); "
                          f"the state is damaged: pass the state saved with this loader, or none")
    key = count_key(stream)
    check = getattr(stream, "check_position", None)
    if key is None or not callable(check):  # a stream of another form: it checks its position on seek
        return
    if key not in position:
        raise ResumeError(f"{what}: no {key!r} in the position {position!r:.80} of {type(stream).__name__}; "
                          f"the state is damaged: pass the state saved with this loader, or none")
    check(what, {**position, "batches": position[key]}, worker_id, workers, 1)

