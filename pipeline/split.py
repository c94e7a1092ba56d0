"""Which records each (rank, worker) reads in an epoch: pure functions of integers.

The sample space is the manifest's shards, cut into blocks of at most
``block_size`` records.  An epoch orders the blocks (shards permuted, blocks
permuted inside each shard, when shuffling) and lays them end to end as one
sequence of N positions.  Rank r takes positions [r*P, (r+1)*P) with
P = ceil(N / world); positions past N wrap to the start and are flagged
``pad`` (at most world-1 of them), so every rank yields exactly P samples and
no record is dropped.  Inside a rank, worker w takes the contiguous part
[w*P//W, (w+1)*P//W), identical on every rank, so every rank also has the same
number of batches.  No I/O here: everything is property-tested.
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from itertools import accumulate


@dataclass(frozen=True)
class Slice:
    """Records [start, stop) of one shard; ``pad`` marks repeats that even out ranks."""

    shard: int
    start: int
    stop: int
    pad: bool = False

    def __len__(self) -> int:
        return self.stop - self.start


def per_rank(total: int, world_size: int) -> int:
    """Samples every rank yields in an epoch (padded up so all ranks are equal)."""
    return -(-total // world_size) if total else 0


def epoch_blocks(shard_sizes: list[int], block_size: int, seed: int, epoch: int,
                 shuffle: bool) -> list[Slice]:
    """All records of the epoch as blocks, in the epoch's order."""
    order = list(range(len(shard_sizes)))
    rng = random.Random(f"{seed}:{epoch}")
    if shuffle:
        rng.shuffle(order)
    blocks: list[Slice] = []
    for shard in order:
        size = shard_sizes[shard]
        inner = [Slice(shard, s, min(s + block_size, size)) for s in range(0, size, block_size)]
        if shuffle:
            rng.shuffle(inner)
        blocks.extend(inner)
    return blocks


def take(blocks: list[Slice], begin: int, end: int, total: int) -> list[Slice]:
    """Positions [begin, end) of the epoch sequence; positions >= total wrap and are pads."""
    starts = [0, *accumulate(len(b) for b in blocks)]
    out: list[Slice] = []
    pos = begin
    while pos < end:
        wrapped = pos % total
        i = bisect.bisect_right(starts, wrapped) - 1
        block = blocks[i]
        offset = wrapped - starts[i]
        n = min(len(block) - offset, end - pos, total - wrapped)
        out.append(Slice(block.shard, block.start + offset, block.start + offset + n, pad=pos >= total))
        pos += n
    return out


def worker_range(count: int, worker: int, workers: int) -> tuple[int, int]:
    return worker * count // workers, (worker + 1) * count // workers


def plan(shard_sizes: list[int], rank: int, world_size: int, worker: int, workers: int,
         seed: int = 0, epoch: int = 0, shuffle: bool = False, block_size: int = 1024) -> list[Slice]:
    """The slices that (rank, worker) reads in this epoch, in order."""
    if not (0 <= rank < world_size and 0 <= worker < workers):
        raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{workers}: out of range")
    if block_size < 1:
        raise ValueError(f"block_size={block_size}: must be >= 1")
    total = sum(shard_sizes)
    if total == 0:
        return []
    count = per_rank(total, world_size)
    lo, hi = worker_range(count, worker, workers)
    blocks = epoch_blocks(shard_sizes, block_size, seed, epoch, shuffle)
    return take(blocks, rank * count + lo, rank * count + hi, total)


def skip(slices: list[Slice], n: int) -> list[Slice]:
    """``slices`` without their first ``n`` positions."""
    out: list[Slice] = []
    for s in slices:
        if n >= len(s):
            n -= len(s)
            continue
        out.append(Slice(s.shard, s.start + n, s.stop, s.pad))
        n = 0
    return out


def worker_counts(total: int, world_size: int, workers: int) -> list[int]:
    """Samples each DataLoader worker of any rank yields per epoch (the same on every rank)."""
    count = per_rank(total, world_size)
    return [hi - lo for lo, hi in (worker_range(count, w, workers) for w in range(workers))]
