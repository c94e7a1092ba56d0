"""The order a multi-worker loader delivers batches in: pure functions of integers.

torch's DataLoader hands out requests to its workers in turn (round robin over the
workers that have not run out) and delivers the answers in that order.  Our workers
answer each request with a *message* of up to ``group`` batches (one pipe transfer
per message instead of per batch), ending at multiples of ``group`` of the worker's
own batch index (or at its end), so messages line up again after a resume.

After a cut, what the loader records is enough to continue the same order: each
worker's batches delivered and the worker that delivered the last one.  The next
worker asked is that one when its message is unfinished, else the one after it; the
workers before it send one empty message first, which puts torch's round robin back
in place.  A worker that has run out answers with a stop whenever it is asked, as
in the uninterrupted run, so no batch counts are needed (packed and mixed streams
do not know theirs before reading).
"""
from __future__ import annotations

from typing import Iterator


def message_sizes(start: int, group: int) -> Iterator[int]:
    """Batches per message of a worker from its batch ``start`` on (its end cuts the last short)."""
    if group < 1:
        raise ValueError(f"group={group}: must be >= 1")
    size = group - start % group
    while True:
        yield size
        size = group


def next_worker(batches: list[int], last: int, group: int, delivered: int) -> int:
    """The worker torch asks next, given each worker's batches delivered and the last one's id."""
    if delivered == 0:
        return 0
    nxt = last if batches[last] % group else last + 1
    return nxt if nxt < len(batches) else 0


def leads(workers: int, nxt: int) -> list[bool]:
    """Which workers send one empty message first, so that worker ``nxt`` is served first."""
    return [w < nxt for w in range(workers)]
