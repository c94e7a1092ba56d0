"""Training checkpoints on a local folder or any fsspec URL: ``OUT/checkpoint/step-NNNNNNN/`` plus ``latest``.

    begin(out, step)                                   # rank 0, then a barrier: the step's folder is clean
    entry = write_part(out, step, rank, state)         # every rank > 0: its own loader/RNG state
    save(out, step, model, optimizer, scheduler, [rank0_state], meta, keep=2, parts=entries)  # rank 0
    name = choose(out)            # newest complete, verified step; None when there never was one
    ckpt = load(out, name, device)

Layout of one step:
    model.pt          the unwrapped model's state_dict (torch.save), by rank 0
    optim.pt          optimizer and LR-scheduler state dicts, by rank 0
    state.json        step, epoch, run settings and rank 0's loader and RNG states, by rank 0
    rank-RRRRR.json   rank R's loader and RNG states, written by rank R itself (R > 0)
    files.json        written by rank 0 once every other file is written: each file's size and sha256
Then rank 0 replaces ``latest`` (the commit) and only after that prunes older
steps (the newest ``keep`` complete ones stay), so a crash at any moment leaves
a complete checkpoint.  On a local folder the step is written under
``.step-NNNNNNN.staging/`` and renamed into place; an object store has no
rename, so the step's old objects are deleted first and ``files.json`` +
``latest`` make it count.  ``choose`` trusts a step only when its
``files.json`` matches the files byte for byte; it falls back to the previous
step with a one-line note, and raises ``CheckpointError`` naming the folder
when checkpoints exist but none verifies: a run never silently starts over.
``load`` checks every file it reads against the list again.  Reading uses
``torch.load(weights_only=True)``: a checkpoint cannot run code.  Paths in
messages are redacted (``shards.redact``): no credential reaches a log.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass

import numpy as np
import torch

import shards
from pipeline.train.checkpoint_files import (
    LIST,
    PART,
    CheckpointError,
    list_bytes,
    locate,
    part_name,
    read_checked,
    read_list,
    sha256_bytes,
    sha256_file,
    verify,
)

LATEST = "latest"
STAMP = "part_of"   # in each rank part: {"step", "rank"} it was written for
VERSION = 1
STEP_NAME = re.compile(r"step-(\d{7,})")
FIX = "restore the files, or start over with --resume never (it deletes them) or a new --out"
log = logging.getLogger("pipeline.train.checkpoint")


@dataclass
class Checkpoint:
    path: str
    state: dict            # state.json: step, epoch, meta, ranks[r] = {"loader", "rng"} (parts merged in)
    model: dict            # model state_dict
    optimizer: dict
    scheduler: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_root(out_dir: str) -> str:
    return locate(out_dir, "checkpoint")


def step_name(step: int) -> str:
    return f"step-{step:07d}"


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
def _staging(root: str, step: int) -> str:
    """Where step ``step`` is written: a hidden folder renamed into place locally, the step itself remotely."""
    return locate(root, step_name(step)) if shards.is_remote(root) else os.path.join(root, f".{step_name(step)}.staging")


def begin(out_dir: str, step: int, storage_options: dict | None = None) -> None:
    """Rank 0, before any rank writes step ``step`` (then a barrier): remove what a crashed save of it left."""
    root = checkpoint_root(out_dir)
    folder = _staging(root, step)
    if shards.is_remote(root):
        _remove_step(folder, storage_options)
        return
    os.makedirs(root, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)


def write_part(out_dir: str, step: int, rank: int, state: dict, storage_options: dict | None = None) -> list:
    """Rank ``rank`` > 0 writes its own loader/RNG state; returns [name, bytes, sha256] for rank 0's file list.

    The part is stamped with its step and rank: a part copied from another step or rank (with a file list
    made to match) is refused on load."""
    data = json.dumps({**state, STAMP: {"step": step, "rank": rank}}).encode()
    name = part_name(rank)
    _put(locate(_staging(checkpoint_root(out_dir), step), name), data, storage_options)
    return [name, *sha256_bytes(data)]


def save(out_dir: str, step: int, model, optimizer, scheduler, rank_states: list[dict], meta: dict,
         keep: int = 2, parts: list | tuple = (), storage_options: dict | None = None) -> str:
    """Rank 0: write its files of ``step``, list them and the ranks' ``parts``, commit; returns the step's folder."""
    root, so = checkpoint_root(out_dir), storage_options
    remote = shards.is_remote(root)
    folder, final = _staging(root, step), locate(root, step_name(step))
    if not remote:
        os.makedirs(folder, exist_ok=True)  # begin() made it, unless a single writer calls save alone
    try:
        entries = {name: (size, digest) for name, size, digest in parts}
        entries["model.pt"] = _save_torch(model.state_dict(), locate(folder, "model.pt"), so)
        entries["optim.pt"] = _save_torch({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                                          locate(folder, "optim.pt"), so)
        state = {"version": VERSION, "step": step, **meta, "ranks": rank_states}
        entries["state.json"] = _put(locate(folder, "state.json"), json.dumps(state).encode(), so)
        # the file list last: a folder holding it was complete when it was written
        _put(locate(folder, LIST), list_bytes(step, entries), so)
        if not remote:
            if os.path.exists(final):  # a rerun past an older crash: replace the stale copy
                shutil.rmtree(final)
            os.rename(folder, final)
            _fsync(root)
    except BaseException:
        if not remote:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    _put(locate(root, LATEST), step_name(step).encode(), so)  # the commit
    _prune(root, keep, so)
    return final


def _save_torch(obj, url: str, storage_options: dict | None) -> tuple[int, str]:
    """torch.save ``obj`` to ``url``; returns (bytes, sha256) of what was written."""
    if shards.is_remote(url):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return _put(url, buffer.getvalue(), storage_options)
    torch.save(obj, url)
    _fsync(url)
    return sha256_file(url)


def _put(url: str, data: bytes, storage_options: dict | None) -> tuple[int, str]:
    """Write ``data`` whole or not at all (the one atomic write: temp file + fsync + rename, or one PUT)."""
    shards.write_bytes_atomic(url, data, storage_options)
    return sha256_bytes(data)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _complete(folder: str, storage_options: dict | None) -> bool:
    if shards.is_remote(folder):
        return LIST in shards.list_names(folder, storage_options)
    return os.path.exists(os.path.join(folder, LIST))


def _remove_step(folder: str, storage_options: dict | None) -> None:
    """Delete a step folder, its file list first: half deleted, it never passes as complete."""
    if not shards.is_remote(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    shards.remove_url(locate(folder, LIST), storage_options)
    if shards.list_names(folder, storage_options):
        shards.remove_url(folder, storage_options, recursive=True)


def _prune(root: str, keep: int, storage_options: dict | None = None) -> None:
    """Keep the step ``latest`` names and the newest complete ones before it, ``keep`` in all.

    Runs only once the new step is complete and pointed to, so the previous one
    survives every crash before that.  Staging folders of crashed saves go too.
    """
    latest = _step_of(latest_name(root, storage_options) or "")
    kept = 0
    for step, name in steps(root, storage_options):
        folder = locate(root, name)
        if latest is not None and step <= latest and kept < keep and _complete(folder, storage_options):
            kept += 1
            continue
        _remove_step(folder, storage_options)
    if not shards.is_remote(root):
        for d in os.listdir(root):
            if d.startswith(".step-"):
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)


# -- find / load -------------------------------------------------------------
def latest_name(root: str, storage_options: dict | None = None) -> str | None:
    try:
        data = shards.read_object(locate(root, LATEST), storage_options)
    except FileNotFoundError:
        return None
    return data[:200].decode("utf-8", errors="replace").strip() or None


def _step_of(name: str) -> int | None:
    m = STEP_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def _names(root: str, storage_options: dict | None) -> list[str]:
    if shards.is_remote(root):
        return shards.list_names(root, storage_options)
    return os.listdir(root) if os.path.isdir(root) else []


def steps(root: str, storage_options: dict | None = None) -> list[tuple[int, str]]:
    """(step, folder name) of every step folder under ``root``, newest first."""
    remote = shards.is_remote(root)
    found = [(_step_of(d), d) for d in _names(root, storage_options)]
    return sorted(((s, d) for s, d in found if s is not None and (remote or os.path.isdir(os.path.join(root, d)))),
                  reverse=True)


def exists(out_dir: str, storage_options: dict | None = None) -> bool:
    """Whether ``out_dir`` holds checkpoints (or a ``latest`` pointer) an earlier run left."""
    root = checkpoint_root(out_dir)
    names = _names(root, storage_options)
    return LATEST in names or any(_step_of(n) is not None for n in names)


def choose(out_dir: str, storage_options: dict | None = None) -> str | None:
    """The folder name of the newest step that verifies; None when there is no checkpoint at all.

    Falls back past steps that fail verification, one log line each; raises
    ``CheckpointError`` when checkpoints (or ``latest``) exist but none verifies.
    """
    root = checkpoint_root(out_dir)
    if not exists(out_dir, storage_options):
        return None
    pointer = latest_name(root, storage_options)
    failures = []
    found = steps(root, storage_options)
    for i, (step, name) in enumerate(found):
        problem = verify(locate(root, name), step, storage_options)
        if problem is None:
            if pointer != name and not failures:
                log.warning("%s: `latest` names %r, not the newest complete step; resuming from %s",
                            shards.redact(root), pointer if pointer is None else pointer[:80], name)
            return name
        failures.append(problem)
        if i + 1 < len(found):
            log.warning("%s; falling back to %s", problem, found[i + 1][1])
    found = "; ".join(failures) if failures else f"no step folder, `latest` names {pointer!r}"
    raise CheckpointError(f"{shards.redact(root)}: no complete checkpoint verifies ({found}); refusing to start "
                          f"from step 0 over it. Fix: {FIX}")


def load(out_dir: str, name: str, device="cpu", storage_options: dict | None = None) -> Checkpoint:
    """Read step folder ``name`` (chosen by ``choose``), each file checked against its list again."""
    path, so = locate(checkpoint_root(out_dir), name), storage_options
    listed = read_list(path, _step_of(name), so)
    if isinstance(listed, str):
        raise CheckpointError(f"{listed}; {FIX}")
    state = _json(path, "state.json", listed, so)
    if state.get("version") != VERSION:
        raise CheckpointError(f"{shards.redact(path)}: checkpoint version {state.get('version')!r}, this code reads "
                              f"{VERSION}; resume with the version that wrote it or start a fresh --out")
    model = _torch(path, "model.pt", listed, device, so)
    optim = _torch(path, "optim.pt", listed, device, so)
    if not isinstance(optim, dict) or not {"optimizer", "scheduler"} <= optim.keys():
        raise CheckpointError(f"{shards.redact(path)}/optim.pt: no optimizer/scheduler state; {FIX}")
    state["ranks"] = _rank_states(path, state.get("ranks"), listed, so, _step_of(name))
    return Checkpoint(path, state, model, optim["optimizer"], optim["scheduler"])


def _rank_states(path: str, first, listed: dict, storage_options: dict | None, step: int | None):
    """state.json's rank states (rank 0's) followed by those of the parts ``rank-00001.json`` ..."""
    parts = sorted(n for n in listed if PART.fullmatch(n))
    if [int(PART.fullmatch(n).group(1)) for n in parts] != list(range(1, len(parts) + 1)):
        raise CheckpointError(f"{shards.redact(path)}/{LIST}: rank parts {parts} are not ranks 1..{len(parts)}; {FIX}")
    if not isinstance(first, list):
        return first  # check_settings names the damage
    return first + [_stamped(path, n, _json(path, n, listed, storage_options), step) for n in parts]


def _stamped(path: str, name: str, part: dict, step: int | None) -> dict:
    """A rank part, checked to be the one written for this step and rank (its stamp removed)."""
    rank = int(PART.fullmatch(name).group(1))
    stamp = part.pop(STAMP, None)
    if stamp != {"step": step, "rank": rank}:
        raise CheckpointError(f"{shards.redact(path)}/{name}: written for {stamp!r}, expected step {step} rank {rank} "
                              f"(a part copied from another step or rank, or from an older version); {FIX}")
    return part


def _json(path: str, name: str, listed: dict, storage_options: dict | None) -> dict:
    data = read_checked(path, name, listed[name], storage_options)
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{shards.redact(path)}/{name}: unreadable ({exc}); {FIX}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{shards.redact(path)}/{name}: expected a JSON object; {FIX}")
    return value


def _torch(path: str, name: str, listed: dict, device, storage_options: dict | None):
    data = read_checked(path, name, listed[name], storage_options)
    try:
        return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:  # zip / pickle damage
        raise CheckpointError(f"{shards.redact(path)}/{name}: unreadable ({str(exc).splitlines()[0][:200]}); "
                              f"{FIX}") from exc


def clear(out_dir: str, storage_options: dict | None = None) -> list[str]:
    """Delete every step folder and ``latest`` (``--resume never``); returns the names removed."""
    root = checkpoint_root(out_dir)
    gone = [name for _, name in steps(root, storage_options)]
    for name in gone:
        _remove_step(locate(root, name), storage_options)
    if shards.is_remote(root):
        shards.remove_url(locate(root, LATEST), storage_options)
    elif os.path.exists(os.path.join(root, LATEST)):
        os.unlink(os.path.join(root, LATEST))
    return gone
