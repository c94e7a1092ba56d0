"""Seeded, bounded buffer shuffle: an iterator in, the same items in a new order out.

Deterministic for (seed, epoch, rank, worker), so resuming by replaying the
stream reproduces the buffer's effect exactly.
"""
from __future__ import annotations

import random
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def rng_for(seed: int, epoch: int, rank: int, worker: int) -> random.Random:
    return random.Random(f"buffer:{seed}:{epoch}:{rank}:{worker}")


def buffer_shuffle(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """Yield every item once; each comes from a random slot of a ``size``-item buffer."""
    if size <= 1:
        yield from items
        return
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        out, buffer[i] = buffer[i], item
        yield out
    rng.shuffle(buffer)
    yield from buffer
