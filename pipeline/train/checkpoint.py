"""Training checkpoints: ``OUT/checkpoint/step-NNNNNNN/`` plus a ``latest`` pointer.

    save(out, step, model, optimizer, scheduler, rank_states, meta, keep=2)
    name = choose(out)            # newest complete, verified step; None when there never was one
    ckpt = load(out, name, device)

Layout of one checkpoint (all written by rank 0):
    model.pt     the unwrapped model's state_dict (torch.save)
    optim.pt     optimizer and LR-scheduler state dicts
    state.json   step, epoch, run settings and, per rank, the loader state and RNG states
    files.json   written last: every file above with its size and sha256
Everything goes to a temporary folder that is renamed into place; only then is
``latest`` replaced (write + ``os.replace``) and only after that are older steps
pruned (the newest ``keep`` complete ones stay), so a crash at any moment
leaves a complete checkpoint.  ``choose`` trusts a step only when its
``files.json`` matches the files byte for byte; it falls back to the previous
step with a one-line note, and raises ``CheckpointError`` naming the folder
when checkpoints exist but none verifies: a run never silently starts over.
Reading uses ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.train.checkpoint_files import FILES, CheckpointError, verify, write_file_list

LATEST = "latest"
VERSION = 1
STEP_NAME = re.compile(r"step-(\d{7,})")
FIX = "restore the files, or start over with --resume never (it deletes them) or a new --out"
log = logging.getLogger("pipeline.train.checkpoint")


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


# -- save --------------------------------------------------------------------
def save(out_dir: str, step: int, model, optimizer, scheduler, rank_states: list[dict], meta: dict,
         keep: int = 2) -> str:
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
        for f in FILES:
            _fsync(os.path.join(tmp, f))
        # the file list last: a folder holding it was complete when it was written
        write_file_list(tmp, step, _write)
        if os.path.exists(final):  # a rerun past an older crash: replace the stale copy
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write(os.path.join(root, LATEST), name.encode())
    _prune(root, keep)
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


def _prune(root: str, keep: int) -> None:
    """Keep the step ``latest`` names and the newest complete ones before it, ``keep`` in all.

    Runs only once the new step is complete and pointed to, so the previous one
    survives every crash before that.  Temp folders of crashed saves go too.
    """
    latest = _step_of(latest_name(root) or "")
    kept = 0
    for step, name in steps(root):
        complete = os.path.exists(os.path.join(root, name, "files.json"))
        if latest is not None and step <= latest and complete and kept < keep:
            kept += 1
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    for d in os.listdir(root):
        if d.startswith(".step-"):
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)


# -- find / load -------------------------------------------------------------
def latest_name(root: str) -> str | None:
    try:
        with open(os.path.join(root, LATEST), encoding="utf-8", errors="replace") as f:
            return f.read(200).strip() or None
    except FileNotFoundError:
        return None


def _step_of(name: str) -> int | None:
    m = STEP_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def steps(root: str) -> list[tuple[int, str]]:
    """(step, folder name) of every step folder under ``root``, newest first."""
    if not os.path.isdir(root):
        return []
    found = [(_step_of(d), d) for d in os.listdir(root)]
    return sorted(((s, d) for s, d in found if s is not None and os.path.isdir(os.path.join(root, d))),
                  reverse=True)


def exists(out_dir: str) -> bool:
    """Whether ``out_dir`` holds checkpoints (or a ``latest`` pointer) an earlier run left."""
    root = checkpoint_root(out_dir)
    return bool(steps(root)) or os.path.exists(os.path.join(root, LATEST))


def choose(out_dir: str) -> str | None:
    """The folder name of the newest step that verifies; None when there is no checkpoint at all.

    Falls back past steps that fail verification, one log line each; raises
    ``CheckpointError`` when checkpoints (or ``latest``) exist but none verifies.
    """
    root = checkpoint_root(out_dir)
    if not exists(out_dir):
        return None
    pointer = latest_name(root)
    failures = []
    found = steps(root)
    for i, (step, name) in enumerate(found):
        problem = verify(os.path.join(root, name), step)
        if problem is None:
            if pointer != name and not failures:
                log.warning("%s: `latest` names %r, not the newest complete step; resuming from %s",
                            root, pointer if pointer is None else pointer[:80], name)
            return name
        failures.append(problem)
        if i + 1 < len(found):
            log.warning("%s; falling back to %s", problem, found[i + 1][1])
    found = "; ".join(failures) if failures else f"no step folder, `latest` names {pointer!r}"
    raise CheckpointError(f"{root}: no complete checkpoint verifies ({found}); refusing to start from "
                          f"step 0 over it. Fix: {FIX}")


def load(out_dir: str, name: str, device="cpu") -> Checkpoint:
    """Read step folder ``name`` (chosen by ``choose``); CheckpointError names the file that fails."""
    path = os.path.join(checkpoint_root(out_dir), name)
    state = _read_json(os.path.join(path, "state.json"))
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')!r}, this code reads "
                              f"{VERSION}; resume with the version that wrote it or start a fresh --out")
    model = _torch_load(os.path.join(path, "model.pt"), device)
    optim = _torch_load(os.path.join(path, "optim.pt"), device)
    if not isinstance(optim, dict) or not {"optimizer", "scheduler"} <= optim.keys():
        raise CheckpointError(f"{path}/optim.pt: no optimizer/scheduler state; {FIX}")
    return Checkpoint(path, state, model, optim["optimizer"], optim["scheduler"])


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); {FIX}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object; {FIX}")
    return data


def _torch_load(path: str, device):
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:  # zip / pickle damage
        raise CheckpointError(f"{path}: unreadable ({str(exc).splitlines()[0][:200]}); {FIX}") from exc


def clear(out_dir: str) -> list[str]:
    """Delete every step folder and ``latest`` (``--resume never``); returns the names removed."""
    root = checkpoint_root(out_dir)
    gone = [name for _, name in steps(root)]
    for name in gone:
        shutil.rmtree(os.path.join(root, name))
    if os.path.exists(os.path.join(root, LATEST)):
        os.unlink(os.path.join(root, LATEST))
    return gone
