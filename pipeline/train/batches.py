"""Endless training batches over epochs, resumable: what ``pipeline.train`` pulls each micro-step.

    batches = Batches(ds, loader, epoch=0)                 # ShardStream or PackedStream
    batch = batches.next()                                  # next epoch starts by itself
    state = batches.state_dict()                            # with loader.state_dict(), in a checkpoint

With ``lockstep=filler`` (packed LM blocks, whose count differs by a few
between ranks) a rank that ran out gets filler batches (nothing to learn)
until every rank has, so the DDP collectives stay matched.  A checkpoint taken
during those filler steps records ``exhausted``: resuming then skips the
spent loader (whose state would replay the epoch) and goes on with fillers.
"""
from __future__ import annotations

import torch


class Batches:
    def __init__(self, dataset, loader, epoch: int = 0, *, lockstep: dict | None = None,
                 exhausted: bool = False):
        self.dataset, self.loader, self.epoch = dataset, loader, int(epoch)
        self.filler = lockstep
        self.exhausted = bool(exhausted)
        self.dataset.set_epoch(self.epoch)
        self._it = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "exhausted": self.exhausted}

    def _iter(self):
        # creating a loader iterator draws a seed from the global RNG; fork it so the
        # dropout stream does not depend on when epochs start or a resume happened
        with torch.random.fork_rng(devices=[]):
            source = iter(()) if self.exhausted else iter(self.loader)
        if self.filler is None:
            return source
        from pipeline.pack.stream import lockstep

        return lockstep(self._watch(source), self.filler)

    def _watch(self, source):
        yield from source
        self.exhausted = True  # this rank's part of the epoch is spent; fillers follow

    def next(self) -> dict:
        if self._it is None:
            self._it = self._iter()
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self.exhausted = False
            self.dataset.set_epoch(self.epoch)
            self._it = self._iter()
        try:
            return next(self._it)
        except StopIteration:
            raise ValueError("the training stream is empty: the shard set has no records") from None
