"""The order a multi-worker loader delivers batches in: pure functions of integers.

torch's DataLoader hands out requests to its workers in turn (round robin
over the workers that have not run out) and delivers the answers in that
order.  Our workers answer each request with a *message* of up to ``group``
batches (one pipe transfer per message instead of per batch), so the
delivered order is: round j = the j-th message of each worker that has one,
workers in id order.  A worker's messages start at multiples of ``group`` of
its own batch index, so they line up again after a resume.
"""
from __future__ import annotations

from typing import Iterator


def schedule(batches: list[int], group: int) -> Iterator[tuple[int, int, int]]:
    """(worker, first batch, number of batches) of every message, in delivery order."""
    if group < 1:
        raise ValueError(f"group={group}: must be >= 1")
    rounds = max((-(-b // group) for b in batches), default=0)
    for j in range(rounds):
        for worker, count in enumerate(batches):
            first = j * group
            if first < count:
                yield worker, first, min(group, count - first)


def resume_point(batches: list[int], group: int, delivered: int) -> tuple[list[int], list[bool]]:
    """After ``delivered`` batches: the batch each worker starts at, and which workers send
    one empty message first (those already past the current round), so that the
    round robin of the resumed loader continues the uninterrupted order exactly."""
    if not 0 <= delivered <= sum(batches):
        raise ValueError(f"delivered={delivered}: this epoch has {sum(batches)} batches")
    starts = [0] * len(batches)
    remaining = delivered
    for worker, first, n in schedule(batches, group):
        if remaining < n:  # delivery continues inside (or at the start of) this message
            starts[worker] = first + remaining
            floor = first  # this round's first batch index
            lead = [v < worker and batches[v] > floor for v in range(len(batches))]
            return starts, lead
        remaining -= n
        starts[worker] = first + n
    return starts, [False] * len(batches)


def messages(start: int, count: int, group: int, lead_empty: bool) -> Iterator[int]:
    """Sizes of the messages one worker sends from batch ``start`` of its ``count``."""
    if lead_empty:
        yield 0
    index = start
    while index < count:
        n = min(group - index % group, count - index)
        yield n
        index += n
