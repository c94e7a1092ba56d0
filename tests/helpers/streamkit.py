"""Helpers shared by the stream tests: the id stream of a fresh (optionally resumed) loader."""
from __future__ import annotations

import json

from pipeline import ShardStream, make_loader


def loader_run(url, batch, workers=0, cut=None, state=None, group_size=None, epochs=(0,), **kw):
    """Batches (lists of ids) from a fresh loader, optionally resumed from ``state``, stopping after ``cut``."""
    ds = ShardStream(url, **kw)
    loader = make_loader(ds, batch, num_workers=workers, batches_per_message=group_size)
    if state is not None:
        loader.load_state_dict(json.loads(state))
    out = []
    for epoch in epochs:
        if state is None:
            ds.set_epoch(epoch)
        for b in loader:
            out.append(list(b["sample_id"]))
            if len(out) == cut:
                return out, json.dumps(loader.state_dict())
        state = None
    return out, json.dumps(loader.state_dict())
