"""The pure parts of a MixedStream (mix.py): its text (``parse_mixture``) and its draws (which source each item
comes from, as pure functions of integers)."""
from __future__ import annotations

import bisect
import math
from typing import Sequence

import numpy as np

STOP_RULES = ("first_exhausted", "cycle", "drain")
CHUNK = 4096  # uniform draws generated at once; resume regenerates one chunk and indexes into it


def choose(weights: Sequence[float], live: Sequence[bool], u: float) -> int:
    """Index of the live source whose share of [0, 1) contains ``u`` (weights renormalised)."""
    return Table(weights, live).pick(u)


def parse_mixture(text: str) -> list[tuple[str, float]]:
    """``"a.json:0.7,b.json:0.3"`` → ``[("a.json", 0.7), ("b.json", 0.3)]``.

    A source without ``:weight`` has weight 1; the weight is what follows the last
    colon, so ``s3://bucket/set:0.5`` works.  Weights are relative (need not sum to 1).
    """
    parts = [p.strip() for p in str(text).split(",")]
    if not text or not str(text).strip() or any(not p for p in parts):
        raise ValueError(f"mixture {text!r}: expected URL[:WEIGHT] items separated by commas, "
                         f"e.g. 'a/:0.7,b/:0.3'")
    out = []
    for part in parts:
        url, colon, tail = part.rpartition(":")
        weight = _number(tail) if colon else None
        if weight is None:
            url, weight = part, 1.0
        if not url or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"mixture item {part!r}: need URL:WEIGHT with a positive finite weight")
        out.append((url, weight))
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


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
