"""Run a generator in a thread, a few items ahead of its consumer.

A unit's reader (file reads, pyarrow parsing, numpy checks) and its writer (Arrow IPC
layout or tar headers, sha256, write(2)) spend most of their time in C code that releases
the GIL, so with the reader on its own thread one unit keeps two cores busy.  The items
and their order are the generator's own: the output does not depend on the threads.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

T = TypeVar("T")
_END = object()
POLL_S = 0.1  # how often a blocked reader looks whether the consumer has gone


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """The items of ``items`` in order, produced by a daemon thread up to ``depth`` ahead.

    An exception in the producer is raised here, at the item where it happened; a consumer
    that stops early (an error, ``close()``) stops the producer at its next item.
    """
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Raised(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None and stop.is_set():
                close()

    thread = threading.Thread(target=produce, name="unit-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
