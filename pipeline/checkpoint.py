"""Training checkpoints: ``OUT/checkpoint/step-NNNNNNN/`` plus a ``latest`` pointer.

    save(out, step, model, optimizer, scheduler, rank_states, meta)
    ckpt = load(out, device)      # None when there is no checkpoint yet

Layout of one checkpoint (all written by rank 0):
    model.pt     the unwrapped model's state_dict (torch.save)
    optim.pt     optimizer and LR-scheduler state dicts
    state.json   step, epoch, run settings and, per rank, the loader state and RNG states
Everything goes to a temporary folder that is renamed into place; only then is
``latest`` replaced (write + ``os.replace``), so a crash at any moment leaves the
previous checkpoint complete and pointed to.  Reading uses
``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

LATEST = "latest"
VERSION = 1


@dataclass
class Checkpoint:
    path: str
    state: dict            # state.json: step, epoch, meta, ranks[r] = {"loader", "rng"}
    model: dict            # model state_dict
    optimizer: dict
    scheduler: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_root(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoint")


# -- RNG states as JSON ------------------------------------------------------
def rng_state() -> dict:
    """This process's torch / CUDA / numpy / python RNG states, JSON-serialisable."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state().tolist(),
             "numpy": [np_state[0], np_state[1].tolist(), *map(_plain, np_state[2:])],
             "python": _lists(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _plain(x):
    return x.item() if hasattr(x, "item") else x


def _lists(x):
    return [_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


# -- save / load -------------------------------------------------------------
def save(out_dir: str, step: int, model, optimizer, scheduler, rank_states: list[dict], meta: dict) -> str:
    """Write the checkpoint of ``step`` atomically; returns its folder.  Rank 0 only."""
    root = checkpoint_root(out_dir)
    os.makedirs(root, exist_ok=True)
    name = f"step-{step:07d}"
    final = os.path.join(root, name)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=root)
    try:
        torch.save(model.state_dict(), os.path.join(tmp, "model.pt"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   os.path.join(tmp, "optim.pt"))
        state = {"version": VERSION, "step": step, **meta, "ranks": rank_states}
        _write(os.path.join(tmp, "state.json"), json.dumps(state).encode())
        for f in os.listdir(tmp):
            _fsync(os.path.join(tmp, f))
        if os.path.exists(final):  # a rerun past an older crash: replace the stale copy
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write(os.path.join(root, LATEST), name.encode())
    _prune(root)
    return final


def _write(path: str, data: bytes) -> None:
    """Write ``path`` through a temp file and ``os.replace`` (atomic on one filesystem)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync(os.path.dirname(path))


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(root: str) -> None:
    """Drop every checkpoint but the latest, and temp folders of crashed saves."""
    latest = latest_name(root)
    for d in os.listdir(root):
        if (d.startswith("step-") and d != latest) or d.startswith(".step-"):
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def latest_name(root: str) -> str | None:
    try:
        with open(os.path.join(root, LATEST), encoding="utf-8") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def load(out_dir: str, device="cpu") -> Checkpoint | None:
    """The newest complete checkpoint under ``out_dir``, or None when there is none."""
    root = checkpoint_root(out_dir)
    name = latest_name(root)
    if name is None:
        return None
    path = os.path.join(root, name)
    with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r}, this code reads {VERSION}; "
                         f"resume with the version that wrote it or start a fresh --out")
    model = torch.load(os.path.join(path, "model.pt"), map_location=device, weights_only=True)
    optim = torch.load(os.path.join(path, "optim.pt"), map_location=device, weights_only=True)
    return Checkpoint(path, state, model, optim["optimizer"], optim["scheduler"])
