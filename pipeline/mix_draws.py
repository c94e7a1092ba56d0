"""The draws of a MixedStream (mix.py): which source each item comes from, as pure functions of integers."""
from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np

STOP_RULES = ("first_exhausted", "cycle", "drain")
CHUNK = 4096  # uniform draws generated at once; resume regenerates one chunk and indexes into it


def choose(weights: Sequence[float], live: Sequence[bool], u: float) -> int:
    """Index of the live source whose share of [0, 1) contains ``u`` (weights renormalised)."""
    return Table(weights, live).pick(u)


class Table:
    """Cumulative weights of the live sources, built once per change of the live set."""

    def __init__(self, weights: Sequence[float], live: Sequence[bool]):
        self.live = tuple(bool(x) for x in live)
        self.idx = [i for i, ok in enumerate(self.live) if ok]
        self.cum = [float(c) for c in np.cumsum([weights[i] for i in self.idx])]

    def pick(self, u: float) -> int:
        k = bisect.bisect_right(self.cum, u * self.cum[-1])
        return self.idx[min(k, len(self.idx) - 1)]


class Draws:
    """The uniform draws of one (seed, epoch, worker), addressable by their index."""

    def __init__(self, seed: int, epoch: int, worker: int, start: int = 0):
        self.key = (int(seed), int(epoch), int(worker))
        self.count = int(start)
        self._chunk, self._values = -1, None

    def next(self) -> float:
        chunk, k = divmod(self.count, CHUNK)
        if chunk != self._chunk:
            seed, epoch, worker = self.key
            self._values = np.random.default_rng([seed, epoch, worker, chunk, 0x6D6978]).random(CHUNK)
            self._chunk = chunk
        self.count += 1
        return float(self._values[k])
