"""The one resume state kind, and the one check it goes through: same settings, counters in range.

Every state (the loader's, and a stream's own for per-sample iteration) is one JSON dict::

    {"kind": "pipeline.loader/2", "epoch": 3, "batches": 120, "last": 1,
     "workers": [{"batches": 60, ...position}, {"batches": 60, ...position}],
     "settings": {...}, "stats": {...}}

``batches``: batches delivered this epoch (their sum over ``workers``); ``last``: the
worker that delivered the last one (the round robin resumes after it, loader/batch.py);
``segments`` (only after an elastic resume, pipeline/elastic.py): the epoch's earlier
stretches under other topologies, oldest first; ``batches`` and ``workers`` then count
from the start of this stretch;
``workers[w]``: worker w's position after its last delivered batch, plain integers:
- ShardStream: ``{"samples": n}``: samples of the worker's epoch delivered;
- PackedStream: ``{"inner": <inner position at the chunk start>, "skip": k, "offset": t,
  "blocks": b}``: the next token is ``t`` tokens into the document ``k`` items after
  ``inner`` (for a ShardStream inner: document index ``inner.samples + k`` of the worker);
- MixedStream: ``{"draws": d, "passes": [...], "dropped": [...], "sources": [position|None]}``.
A stream's own state (per-sample ``__iter__``) is the same kind with one worker entry and
``batch_size`` 1.  Every entry is a function of integers, so a later resume at another
layout (world size, workers, batch size) can be computed from them.

Every state records the settings that decide which sample comes next: seed, shuffle,
shuffle window, block size, batch size, world size, rank, workers, the data's
identity (``Manifest.identity``: the shard hashes, not the record count), and
for packed blocks the tokenizer and ``max_length``.  A mid-epoch state resumed
under any other value would replay some samples and skip others, so
:func:`check` refuses it, naming every changed setting with both values.  A
state at an epoch boundary (nothing of the epoch delivered yet) only has to
be over the same data: the epoch starts afresh under the new layout.

A state written before a setting was recorded reads it as ``NOT_RECORDED``: a
mid-epoch one is refused (it cannot be checked), an epoch-boundary one is
accepted.  A setting added with a default that reproduces the older
behaviour (``ADDED``: ``group_by_length`` is False) reads as that default
instead, so older states keep resuming.  ``group_batches`` (batches per sorted
sub-window, pipeline/group.py) is recorded with ``group_by_length`` on; a state
without it was grouped over whole windows (0), so a mid-epoch one is refused
under sub-windows rather than resumed into another order.
"""
from __future__ import annotations

from pipeline import group

NOT_RECORDED = "not recorded"
DATA_KEYS = ("identity", "identities")   # what the data is: checked at epoch boundaries too
_SHORT = ("identity", "tokenizer")       # sha256 hex: the first 16 digits name it in a message
ADDED = {"group_by_length": False, "group_batches": 0}  # settings added later: what a state without them did


STATE_KIND = "pipeline.loader/2"


class ResumeError(ValueError):
    """A resume state that does not fit this loader or stream (changed setting, bad counter)."""


def make_state(epoch: int, batches: int, workers: list, last: int, now: dict, stats: dict,
               segments: list | None = None) -> dict:
    state = {"kind": STATE_KIND, "epoch": epoch, "batches": batches, "last": last, "workers": workers,
             "settings": group.recorded(now), "stats": dict(stats)}
    if segments:  # an elastic stretch: the epoch's earlier topologies (pipeline/elastic.py)
        state["segments"] = list(segments)
    return state


def mid_epoch(state: dict) -> bool:
    """Something of the epoch delivered: batches in this stretch, or earlier elastic stretches."""
    return bool(state.get("batches")) or bool(state.get("segments"))


def read_state(what: str, state, now: dict, most: int | None = None) -> tuple[int, int, list, int]:
    """(epoch, batches, worker positions, last worker) of ``state``, checked against ``now``
    (the settings that decide the batches) and ``most`` batches per epoch when known; a
    one-line ResumeError for anything off."""
    if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
        kind = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ResumeError(f"{what}: state of kind {kind!r}; this reads {STATE_KIND!r} "
                          f"(pass loader.state_dict() or the stream's state_dict() output)")
    epoch = count(what, "epoch", entry(what, state, "epoch"))
    batches = count(what, "batches", entry(what, state, "batches"))
    saved = entry(what, state, "settings")
    now = group.recorded(now)
    segments = state.get("segments", [])
    if not isinstance(segments, list):
        raise ResumeError(f"{what}: segments={segments!r:.60} must be a list of elastic segments; pass the saved state")
    check(what, saved, now, mid_epoch=batches > 0 or bool(segments))
    count(what, "batches", batches, most)  # same settings: the same epoch length
    workers = entry(what, state, "workers")
    if not isinstance(workers, list) or not all(isinstance(w, dict) for w in workers):
        raise ResumeError(f"{what}: workers={workers!r} must be a list of position dicts; pass the saved state")
    if batches and len(workers) != max(now.get("num_workers", 1), 1):
        raise ResumeError(f"{what}: {len(workers)} worker positions, this loader has "
                          f"{max(now.get('num_workers', 1), 1)}; pass the state saved with it")
    last = count(what, "last", state.get("last", 0), max(len(workers) - 1, 0))
    if batches and sum(count(what, "workers[].batches", w.get("batches")) for w in workers) != batches:
        raise ResumeError(f"{what}: batches={batches} is not the sum of the workers' batches "
                          f"{[w.get('batches') for w in workers]}; the state is damaged")
    read_stats(what, state)
    return epoch, batches, workers if batches else [], last


def read_stats(what: str, state: dict) -> dict:
    """The state's counters (``stats``): a dict of names to integers >= 0, or a one-line ResumeError
    (a bad value would otherwise break ``loader.stats()`` far from the load)."""
    stats = state.get("stats", {})
    if not isinstance(stats, dict):
        raise ResumeError(f"{what}: stats={stats!r} is not a dict of counts; pass the saved state")
    for name, value in stats.items():
        count(what, f"stats[{name!r}]", value)
    return stats


def _show(key: str, value) -> str:
    if value is NOT_RECORDED:
        return NOT_RECORDED
    if key == "group_batches" and value == 0:
        return "0 (whole windows: a state from before sub-windows)"
    if key in _SHORT and isinstance(value, str):
        return repr(value[:16])
    if key == "identities" and isinstance(value, list):
        return repr([v[:16] if isinstance(v, str) else v for v in value])
    return repr(value)


def changes(saved: dict, now: dict, keys=None) -> list[str]:
    """``"seed was 1, now 2"`` for each key of ``now`` (or of ``keys``) whose saved value differs."""
    out = []
    for key in (now if keys is None else keys):
        old = saved.get(key, ADDED.get(key, NOT_RECORDED)) if isinstance(saved, dict) else NOT_RECORDED
        if old != now[key]:
            out.append(f"{key} was {_show(key, old)}, now {_show(key, now[key])}")
    return out


def check(what: str, saved, now: dict, mid_epoch: bool) -> None:
    """Refuse a resume of ``what`` (e.g. "loader state") whose recorded settings differ from ``now``.

    Mid-epoch every key of ``now`` must match; at an epoch boundary only the data keys."""
    keys = list(now) if mid_epoch else [k for k in now if k in DATA_KEYS and k in saved]
    diffs = changes(saved, now, keys)
    if not diffs:
        return
    when = "mid-epoch" if mid_epoch else "over other data"
    old = " (a state from an older version: what it did not record cannot be checked)" \
        if any(NOT_RECORDED in d for d in diffs) else ""
    raise ResumeError(f"cannot resume {when}: {what}: " + "; ".join(diffs) + old
                      + ". Resume with the same settings and data (they decide which sample comes next), "
                        "or start afresh (a new run / no state)")


def count(what: str, name: str, value, high: int | None = None, low: int = 0) -> int:
    """``value`` as a counter in ``[low, high]``; a one-line ResumeError otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        valid = f"{low}..{high}" if high is not None else f"an integer >= {low}"
        raise ResumeError(f"{what}: {name}={value!r} is out of range (valid: {valid}); the state is damaged "
                          f"or from another run: pass the state saved with this loader, or none")
    return value


def entry(what: str, state, name: str):
    """``state[name]``, or a one-line ResumeError naming the missing key."""
    if not isinstance(state, dict) or name not in state:
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ResumeError(f"{what}: no {name!r} in the state (has: {have}); pass a state saved by "
                          f"state_dict() of the same kind")
    return state[name]


def version(what: str, state, known: tuple[int, ...], source: str) -> int:
    """The state's format version, or a one-line ResumeError naming the versions this reader knows."""
    found = state.get("version") if isinstance(state, dict) else type(state).__name__
    if not isinstance(state, dict) or found not in known:
        raise ResumeError(f"{what}: version {found!r}; this reader knows {', '.join(map(str, known))} "
                          f"(pass {source}.state_dict() output)")
    return found
