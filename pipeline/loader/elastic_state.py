"""Elastic resume of a loader state: every old rank's state → the segments the new stretch reads after.

    loader.load_state_dict(state, all_ranks=[state_rank0, state_rank1, ...])

A mid-epoch ``pipeline.loader/2`` state saved at (world W, workers K, batch B)
resumes at (W', K', B') when only those (and the batches per message, which
follow B) changed: the loader needs every old rank's state, because the samples
left are those no (rank, worker) delivered (pipeline/elastic.py).  This module
checks the old states against each other (same epoch, same settings but the rank,
rank r at index r, same earlier segments) and builds the new ``Segment`` from their
per-worker positions.  Every other setting (seed, shuffle, shuffle window, block
size, identity, group_by_length, tokenizer, max_length) must match, as for any
mid-epoch resume (settings.check).  A ShardStream, a PackedStream over one (it
counts documents, and names those it left half-emitted: ``Segment.partial``) and
a MixedStream of ShardStreams (a Segment per source: its ``elastic_segment``,
pipeline/mix_elastic.py) resume elastically; any other stream is refused with
one line naming what changed.  A mixture records its world size and rank per
source (``sources[i].world_size``): those are its topology keys.
"""
from __future__ import annotations

import logging
import re
from collections import Counter

from pipeline import elastic, settings
from pipeline.elastic import MixedSegment, Segment
from pipeline.settings import ResumeError

log = logging.getLogger(__name__)
TOPOLOGY = ("world_size", "num_workers", "batch_size")   # what an elastic resume may change
FOLLOWS = ("rank", "group")                              # and what changes with them
_SOURCE_KEY = re.compile(r"sources\[\d+\]\.(world_size|rank)")  # a mixture's, per source


def _is_topology(key: str) -> bool:
    found = _SOURCE_KEY.fullmatch(key)
    return key in TOPOLOGY or (found is not None and found.group(1) == "world_size")


def _follows(key: str) -> bool:
    found = _SOURCE_KEY.fullmatch(key)
    return key in FOLLOWS or (found is not None and found.group(1) == "rank")


def _saved(saved: dict, key: str):
    """A topology value of a state: its own, or its first mixture source's."""
    return saved.get(key, saved.get(f"sources[0].{key}"))


def topology_changed(state, now: dict, all_ranks=None) -> bool:
    """A mid-epoch state whose saved world size, workers or batch size differ from ``now``.  With
    ``all_ranks`` the epoch is mid-way when any old rank's state is (``state`` itself may hold no batch)."""
    states = [x for x in ([state, *all_ranks] if isinstance(all_ranks, (list, tuple)) else [state])
              if isinstance(x, dict) and isinstance(x.get("settings"), dict)]
    if not states or not isinstance(state, dict) or not isinstance(state.get("settings"), dict) \
            or not any(settings.mid_epoch(x) for x in states):
        return False
    saved = state["settings"]
    keys = [k for k in now if _is_topology(k)]
    if any(k not in saved for k in keys):
        return False  # an older state: the plain check names what it did not record
    return any(saved.get(k) != now.get(k) for k in keys)


def refuse_other_changes(what: str, state: dict, now: dict, stream) -> None:
    """An elastic resume changes only the topology, and only over a stream that can follow it."""
    saved = state["settings"]
    others = {k: v for k, v in now.items() if not _is_topology(k) and not _follows(k)}
    if settings.changes(saved, others):
        settings.check(what, saved, others, mid_epoch=True)
    if not callable(getattr(stream, "set_segments", None)) or getattr(stream, "elastic_base", stream) is None:
        moved = "; ".join(settings.changes(saved, now, [k for k in now if _is_topology(k)]))
        raise ResumeError(f"cannot resume mid-epoch: {what}: {moved}: a {type(stream).__name__} resumes mid-epoch "
                          f"only with the saved world size, workers and batch size (a ShardStream, a "
                          f"PackedStream over one or a MixedStream of them resumes elastically); "
                          f"resume with the saved ones, or from a checkpoint at an epoch boundary")


def segments_after(what: str, state: dict, all_ranks, stream) -> list:
    """The epoch's segments once the stretch ``all_ranks`` recorded is done: theirs plus a new one."""
    saved = state["settings"]
    world = settings.count(what, "world_size", _saved(saved, "world_size"), low=1)
    if not isinstance(all_ranks, (list, tuple)) or len(all_ranks) != world:
        have = len(all_ranks) if isinstance(all_ranks, (list, tuple)) else "none"
        raise ResumeError(f"cannot resume mid-epoch: {what}: saved at world size {world}, workers "
                          f"{saved.get('num_workers')}, batch size {saved.get('batch_size')}, resumed under another "
                          f"topology: an elastic resume needs every "
                          f"old rank's state ({have} given, {world} needed); pass "
                          f"load_state_dict(state, all_ranks=[rank 0's state, ..., rank {world - 1}'s])")
    earlier = parse_segments(what, state.get("segments", []))
    positions = [_rank_positions(f"{what} (all_ranks[{r}])", other, state, r, stream)
                 for r, other in enumerate(all_ranks)]
    epoch = int(state["epoch"])
    try:
        build = getattr(stream, "elastic_segment", None)
        if callable(build):  # a mixture: a Segment per source
            return [*earlier, build(what, saved, epoch, earlier, positions)]
        return [*earlier, _stream_segment(what, saved, epoch, earlier, positions, stream)]
    except (ValueError, TypeError) as exc:  # counts that no run of this loader delivers
        raise ResumeError(f"{what}: {exc}; the states are damaged or from another run") from None


def _stream_segment(what: str, saved: dict, epoch: int, earlier: list, positions: list, stream) -> Segment:
    """The Segment of a ShardStream (whole batches) or a PackedStream (documents, and those begun)."""
    world, workers = len(positions), len(positions[0])
    batch = settings.count(what, "batch_size", saved.get("batch_size"), low=1)
    window = settings.count(what, "shuffle_buffer", saved.get("shuffle_buffer"), low=1)
    packed = getattr(stream, "elastic_progress", None)
    base = getattr(stream, "elastic_base", stream)  # the ShardStream whose samples the segments count
    if callable(packed):  # a PackedStream: documents finished, tokens of the one begun
        progress = [[packed(what, p) if p else (0, 0) for p in row] for row in positions]
    else:
        progress = [[(settings.count(what, "samples", p.get("samples", 0)), 0) if p else (0, 0) for p in row]
                    for row in positions]
    rows = [[done for done, _ in row] for row in progress]
    segment = Segment(world, workers, 1 if callable(packed) else batch, window, rows)
    begun = [(r, w, done, tokens) for r, row in enumerate(progress) for w, (done, tokens) in enumerate(row) if tokens]
    if begun:
        at = elastic.positions_at(base.manifest.num_records, earlier, segment, base.seed, epoch, base.shuffle,
                                  [(r, w, done) for r, w, done, _ in begun])
        segment = Segment(world, workers, 1, window, rows, [(p, t) for p, (*_, t) in zip(at, begun)])
    segments = [*earlier, segment]
    elastic.remaining(base.manifest.num_records, segments, base.seed, epoch, base.shuffle)
    elastic.partials(base.manifest.num_records, segments, base.seed, epoch, base.shuffle)
    return segment


def stats_after(what: str, state: dict, all_ranks, now: dict) -> dict:
    """This rank's counters (``stats``) after a resume: ``state``'s own, or, with ``all_ranks`` at another world
    size or an elastic resume, this rank's share of the old ranks' counters.  Every counter counts events over
    the run (records delivered, skipped or packed, retries, empty sources), so the new ranks' sum must be the
    old ranks' sum, whatever the change and however many follow: new rank r keeps old rank r's (rank-wise
    counts go on when only the workers or batch size change) and new rank 0 takes those of the old ranks
    beyond the new world as well; a new rank beyond the old world starts at 0.  Every rank names every
    counter (0 where it has none)."""
    saved = state["settings"]
    old_world, world, rank = _saved(saved, "world_size"), _saved(now, "world_size"), _saved(now, "rank")
    elastic = topology_changed(state, now, all_ranks)
    if not elastic and (all_ranks is None or old_world == world):
        if old_world != world:  # the other old ranks' counts are unknown here: summed, some go missing or twice
            log.warning("%s: saved at world size %s, resumed at %s without all_ranks: this rank keeps the saved "
                        "state's stats, so the ranks' summed stats miss or repeat some; pass load_state_dict(state, "
                        "all_ranks=[every old rank's state])", what, old_world, world)
        return settings.read_stats(what, state)
    if not isinstance(rank, int) or not isinstance(old_world, int):
        return settings.read_stats(what, state)  # a stream that records no rank: only its own state is known
    if not isinstance(all_ranks, (list, tuple)) or len(all_ranks) != old_world:
        have = len(all_ranks) if isinstance(all_ranks, (list, tuple)) else "none"
        raise ResumeError(f"{what}: saved at world size {old_world}, resumed at {world}: the stats need every old "
                          f"rank's state ({have} given, {old_world} needed); pass load_state_dict(state, "
                          f"all_ranks=[rank 0's state, ..., rank {old_world - 1}'s])")
    old = [Counter(_old_stats(f"{what} (all_ranks[{r}])", other)) for r, other in enumerate(all_ranks)]
    mine = Counter({name: 0 for stats in old for name in stats})
    for stats in old[rank:rank + 1] + (old[world:] if rank == 0 else []):
        mine.update(stats)
    return dict(mine)


def _old_stats(what: str, other) -> dict:
    if not isinstance(other, dict) or other.get("kind") != settings.STATE_KIND:
        raise ResumeError(f"{what}: not a {settings.STATE_KIND!r} state; pass every old rank's loader.state_dict()")
    return settings.read_stats(what, other)


def parse_segments(what: str, entries: list) -> list[Segment | MixedSegment]:
    """A state's ``segments`` as elastic segments; a one-line ResumeError for a damaged entry."""
    try:
        return [elastic.segment_from_json(entry) for entry in entries]
    except ValueError as exc:
        raise ResumeError(f"{what}: {exc}") from None


def _rank_positions(what: str, other, state: dict, rank: int, stream) -> list[dict | None]:
    """Rank ``rank``'s worker positions (None for a worker that delivered nothing), its state checked
    against ``state``'s, each position in the form the stream saves (``check_form``)."""
    if not isinstance(other, dict) or other.get("kind") != settings.STATE_KIND:
        raise ResumeError(f"{what}: not a {settings.STATE_KIND!r} state; pass every old rank's loader.state_dict()")
    saved, mine = state["settings"], settings.entry(what, other, "settings")
    if not isinstance(mine, dict) or _saved(mine, "rank") != rank:
        found = _saved(mine, "rank") if isinstance(mine, dict) else None
        raise ResumeError(f"{what}: the state of rank {found!r} at index {rank}; pass the states in rank order")
    settings.check(what, mine, {k: v for k, v in saved.items() if not _follows(k)}, mid_epoch=True)
    if other.get("epoch") != state.get("epoch") or other.get("segments", []) != state.get("segments", []):
        raise ResumeError(f"{what}: epoch {other.get('epoch')!r} / segments differ from the other ranks' "
                          f"(epoch {state.get('epoch')!r}); pass the states of one checkpoint")
    equal_steps = not callable(getattr(stream, "elastic_progress", None))  # packed ranks differ by a few blocks
    if equal_steps and other.get("batches") != state.get("batches"):
        raise ResumeError(f"{what}: {other.get('batches')!r} batches, another rank's state {state.get('batches')!r}; "
                          f"every rank takes the same steps: pass the states of one checkpoint")
    workers = max(saved.get("num_workers") or 0, 1)
    positions = settings.entry(what, other, "workers")
    if not isinstance(positions, list) or len(positions) != workers or not all(isinstance(p, dict) for p in positions):
        raise ResumeError(f"{what}: workers={positions!r:.80} must list {workers} positions; the state is damaged")
    check = getattr(stream, "check_form", None)
    batch = settings.count(what, "batch_size", saved.get("batch_size"), low=1)
    for worker, p in enumerate(positions):
        if p.get("batches") and callable(check):
            check(what, p, worker, batch)
    return [p if p.get("batches") else None for p in positions]
