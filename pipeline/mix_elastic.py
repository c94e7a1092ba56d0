"""Elastic mid-epoch resume of a MixedStream: one elastic Segment per source.

A mixture's sources (ShardStreams) are each split over ranks x workers as if alone, and a
mixture worker's position holds every source's own position (mix.py).  What source ``i``
delivered in a stretch, per (rank, worker):

- its whole part once it ran out in that worker (``passes[i] >= 1`` or ``dropped[i]``; under
  ``stop="cycle"`` the repeats after that are extra, not counted);
- else the samples of its own position (0 before it yielded in this pass).

Samples are the unit (``batch_size`` 1): a mixture batch takes any number from each source.
The next stretch reads, per source, what no stretch delivered (pipeline/elastic.py), and its
draws start at 0 again under the new worker layout; the stopping rule applies to what is left
(with ``first_exhausted``, a source that had run out ends the new stretch at its first draw;
with ``cycle``, a source that runs out restarts over what the earlier stretches left of it, so
its repeats fall there rather than over its whole part).  Under ``drain`` a source that ran out
is dropped and holds no position: a state that says otherwise is refused.
Equal steps on every rank still hold: every rank's workers read equal counts of each source.
"""
from __future__ import annotations

from pipeline import elastic, settings, split
from pipeline.elastic import MixedSegment, Segment


def mixed_segment(mixture, what: str, saved: dict, epoch: int, earlier: list, positions: list) -> MixedSegment:
    """The stretch ``positions`` (per rank, per worker: a mixture position or None) as a MixedSegment."""
    world, workers = len(positions), len(positions[0])
    check_segments(what, earlier, len(mixture.streams))
    found = []
    for i, source in enumerate(mixture.streams):
        before = [m.sources[i] for m in earlier]
        window = settings.count(what, f"sources[{i}].shuffle_buffer", saved.get(f"sources[{i}].shuffle_buffer"), low=1)
        total = source.manifest.num_records
        per = split.per_rank(len(elastic.remaining(total, before, source.seed, epoch, source.shuffle)), world)
        rows = [[_delivered(what, p, i, split.worker_range(per, w, workers), mixture.stop) for w, p in enumerate(row)]
                for row in positions]
        segment = Segment(world, workers, 1, window, rows)
        elastic.remaining(total, [*before, segment], source.seed, epoch, source.shuffle)  # checks the counts
        found.append(segment)
    return MixedSegment(tuple(found))


def check_segments(what: str, segments: list, n_sources: int) -> None:
    """Every entry a MixedSegment with one Segment per source."""
    for entry in segments:
        if not isinstance(entry, MixedSegment) or len(entry.sources) != n_sources:
            got = len(entry.sources) if isinstance(entry, MixedSegment) else "no"
            raise settings.ResumeError(f"{what}: an elastic segment with {got} source segments, this mixture has "
                                       f"{n_sources} sources; pass the state saved by this mixture")


def _delivered(what: str, position: dict | None, i: int, part: tuple[int, int], stop: str) -> int:
    if position is None:
        return 0
    lists = [position.get(key) for key in ("passes", "dropped", "sources")]
    if not all(isinstance(v, list) and len(v) > i for v in lists):
        raise settings.ResumeError(f"{what}: a mixture position without passes/dropped/sources for source {i}; "
                                   f"the state is damaged: pass the state saved by this mixture")
    passes, dropped, sources = lists
    count = part[1] - part[0]
    if stop == "drain" and (settings.count(what, f"passes[{i}]", passes[i]) >= 1) != (dropped[i] is True
                                                                                     and sources[i] is None):
        raise settings.ResumeError(f"{what}: source {i} has passes={passes[i]!r}, dropped={dropped[i]!r} and a "
                                   f"position: under stop='drain' a source that ran out is dropped with none; "
                                   f"the state is damaged")
    if settings.count(what, f"passes[{i}]", passes[i]) >= 1 or dropped[i] is True:
        return count
    if sources[i] is None:
        return 0
    if not isinstance(sources[i], dict):
        raise settings.ResumeError(f"{what}: sources[{i}]={sources[i]!r:.60} is not a position; the state is damaged")
    return settings.count(what, f"sources[{i}].samples", sources[i].get("samples", 0), count)
