"""What ``pipeline.train`` starts from: a verified checkpoint that fits this run, or step 0 when it may.

    settings = run_settings(cfg, world, train_identity, eval_identity)
    ckpt = resume_point(cfg, world, device, settings)   # None: start from step 0
    mapped = start_mapping(ckpt, settings)              # step, samples_seen, updates, line
    if ckpt is not None:                                # weights, optimizer, LR, loader state
        step, position, history = restore(ckpt, parts, train_ds, loader, world, mapped)

``--resume auto`` (the default) continues the newest checkpoint that verifies
(``checkpoint.choose``) when OUT holds checkpoints and starts from step 0 when it
holds none: so a group that ``torchrun --max-restarts N`` restarts after a
failure continues by itself.  ``--resume`` (``yes``) does the same but says so
when there is nothing to resume; ``--resume never`` starts over on purpose,
deleting the checkpoints first (saying so) so that the old run's higher step
numbers cannot outlive the new run's.  OUT may be any fsspec URL.  Rank 0
decides and tells the other ranks, so every rank loads the same step or fails
with the same line.  A checkpoint whose run settings differ from this run's,
the training and eval sets' identities included, is refused naming old and new,
except the topology (``ELASTIC``: world size, workers, batch size, grad
accumulation): each new rank then reads every old rank's loader state and the
rest of the epoch is spread over the new ranks (pipeline/loader/elastic_state.py).

Steps follow samples seen.  Every checkpoint records ``samples_seen`` (the sum of
the global batch, world x batch x grad_accum, over the steps trained) and
``updates`` (optimizer steps run, what the audit log numbers its lines by).  When
the global batch changes, the run continues at step ``samples_seen // new global
batch`` (rounded down: a step counts only whole global batches), the LR schedule's
steps are mapped the same way, and ``--steps`` counts steps of the new global
batch; one line says so (``step_mapping``).
"""
from __future__ import annotations

import logging
import os

import torch.distributed as dist

from pipeline.train import checkpoint
from pipeline.train.checkpoint_files import CheckpointError
from pipeline.train.config import TrainConfig
from pipeline.world import World
from shards import StorageError, redact

log = logging.getLogger("pipeline.train")


def run_settings(cfg: TrainConfig, world: World, train_identity: list[str], eval_identity: str | None) -> dict:
    """What the sequence of batches (and the meaning of the eval figures) depends on."""
    return {"world_size": world.world_size, "num_workers": cfg.num_workers, "seed": cfg.seed,
            "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "task": cfg.task, "pack": cfg.pack,
            "train_identity": train_identity, "eval_identity": eval_identity}


ELASTIC = ("world_size", "num_workers", "batch_size", "grad_accum")  # may change on resume


def global_batch(settings: dict) -> int:
    return int(settings["world_size"]) * int(settings["batch_size"]) * int(settings["grad_accum"])


def step_mapping(ckpt: checkpoint.Checkpoint, now: dict) -> dict:
    """Where a resumed run continues: ``step`` (of the new global batch), ``samples_seen``, ``updates``,
    and ``line`` (None unless the global batch changed)."""
    old_global, new_global = global_batch(ckpt.state), global_batch(now)
    samples = int(ckpt.state.get("samples_seen", ckpt.step * old_global))
    updates = int(ckpt.state.get("updates", ckpt.step))
    if old_global == new_global:
        return {"step": ckpt.step, "samples_seen": samples, "updates": updates, "line": None}
    step = samples // new_global
    line = (f"global batch {old_global} -> {new_global} (world x batch x grad_accum: {ckpt.state['world_size']} x "
            f"{ckpt.state['batch_size']} x {ckpt.state['grad_accum']} -> {now['world_size']} x {now['batch_size']} x "
            f"{now['grad_accum']}): step {ckpt.step} ({samples} samples seen) continues as step {step}")
    return {"step": step, "samples_seen": samples, "updates": updates, "line": line}


def start_mapping(ckpt: checkpoint.Checkpoint | None, now: dict) -> dict:
    """``step_mapping`` of the checkpoint this run continues (its line logged), or step 0 without one."""
    if ckpt is None:
        return {"step": 0, "samples_seen": 0, "updates": 0, "line": None}
    mapped = step_mapping(ckpt, now)
    if mapped["line"]:
        log.info("%s", mapped["line"])
    return mapped


def scaled_state(ckpt: checkpoint.Checkpoint | None, now: dict) -> dict | None:
    """The checkpoint's state with its LR schedule's steps mapped to this run's global batch."""
    if ckpt is None:
        return None
    return {**ckpt.state, "schedule": scale_schedule(ckpt.state.get("schedule"), global_batch(ckpt.state),
                                                     global_batch(now))}


def scale_schedule(saved: dict | None, old_global: int, new_global: int) -> dict | None:
    """A checkpoint's schedule meta with its steps mapped to the new global batch (rounded down)."""
    if saved is None or old_global == new_global:
        return saved
    def to_new(steps):
        return None if steps is None else int(steps) * old_global // new_global
    return {**saved, "total": to_new(saved["total"]), "warmup": to_new(saved["warmup"]),
            "anchor_step": to_new(saved.get("anchor_step"))}


def resume_point(cfg: TrainConfig, world: World, device, settings: dict) -> checkpoint.Checkpoint | None:
    """The checkpoint this run continues (settings checked), or None to start from step 0."""
    name = _agree(cfg, world)
    if name is None:
        return None
    ckpt = checkpoint.load(cfg.out, name, device, cfg.storage_options)
    check_settings(ckpt, settings, cfg)
    return ckpt


def _agree(cfg: TrainConfig, world: World) -> str | None:
    """Rank 0's decision (a step folder name or None) on every rank; its refusal raised on every rank."""
    decision = {"name": None, "error": None}
    if world.rank == 0:
        try:
            decision["name"] = decide(cfg)
        except (CheckpointError, OSError, StorageError) as exc:  # the other ranks wait for the decision: tell them
            decision["error"] = str(exc)
    if world.world_size > 1 and dist.is_initialized():
        box = [decision]
        dist.broadcast_object_list(box, src=0)
        decision = box[0]
    if decision["error"]:
        raise CheckpointError(decision["error"])
    return decision["name"]


def decide(cfg: TrainConfig) -> str | None:
    """Rank 0: which step folder to resume from under the --resume mode, None for step 0."""
    root, options = redact(checkpoint.checkpoint_root(cfg.out)), cfg.storage_options
    if cfg.resume == "never":
        gone = checkpoint.clear(cfg.out, options)
        if gone:
            log.warning("--resume never: deleted %d checkpoint(s) of an earlier run in %s (%s); starting "
                        "from step 0", len(gone), root, ", ".join(gone))
        return None
    if cfg.resume == "auto" and not checkpoint.exists(cfg.out, options):
        return None
    name = checkpoint.choose(cfg.out, options)
    if name is None:
        log.warning("--resume: no checkpoint in %s yet; starting from step 0", root)
    elif cfg.resume == "auto":
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        why = f"torchrun restart {restart}" if restart not in ("", "0") else f"{root} holds checkpoints"
        log.warning("--resume auto (%s): continuing from %s", why, name)
    return name


def restore(ckpt: checkpoint.Checkpoint, parts, ds, loader, world: World, mapped: dict):
    """Load weights, optimizer, scheduler and this rank's loader state into ``parts`` (the loop's model,
    optimizer, scheduler and schedule); returns (step, position, history).

    The run settings were checked by ``resume_point``.  Under another topology every old rank's
    loader state goes to the loader (elastic resume); a rank new to the run starts from rank 0's epoch."""
    parts.model.load_state_dict(ckpt.model)
    parts.optimizer.load_state_dict(ckpt.optimizer)
    parts.scheduler.load_state_dict(ckpt.scheduler)
    step = mapped["step"]
    if step != ckpt.step:  # the LR continues at the mapped step of the mapped schedule
        parts.scheduler.last_epoch = step
        lr = parts.schedule.lr(step)
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        parts.scheduler._last_lr = [lr] * len(parts.optimizer.param_groups)
    ranks = ckpt.state["ranks"]
    mine = ranks[world.rank] if world.rank < len(ranks) else ranks[0]
    ds.set_epoch(mine["epoch"])
    every = [r["loader"] for r in ranks]
    # a spent loader's state would replay the epoch (see batches.py); under another topology every new
    # rank takes a share of what the old ranks left, a spent one's included
    spent = bool(mine.get("exhausted")) and not loader.resumes_elastically(mine["loader"], every)
    if not spent:
        loader.load_state_dict(mine["loader"], all_ranks=every)
    log.info("resumed from %s (step %d, epoch %d)", ckpt.path, step, mine["epoch"])
    position = {"epoch": mine["epoch"], "exhausted": spent}
    return step, position, list(ckpt.state.get("history", []))


def gather_or_raise(world: World, action) -> list:
    """Run ``action()`` on every rank and all-gather the results; if it failed on any rank, every rank
    raises that rank's one line (so no rank waits forever in a collective the failed one never joins)."""
    try:
        mine = {"value": action(), "error": None}
    except (CheckpointError, OSError, StorageError, ValueError) as exc:
        mine = {"value": None, "error": f"rank {world.rank}: {redact(exc)}"}
    box = [mine]
    if world.world_size > 1 and dist.is_initialized():
        box = [None] * world.world_size
        dist.all_gather_object(box, mine)
    failed = [b["error"] for b in box if b["error"]]
    if failed:
        raise CheckpointError(f"checkpoint save failed ({failed[0]}); the previous checkpoint stays the one to "
                              f"resume from")
    return [b["value"] for b in box]


def check_settings(ckpt: checkpoint.Checkpoint, now: dict, cfg: TrainConfig) -> None:
    """Refuse a checkpoint taken under other settings, naming each old and new value."""
    changed = [_describe(k, ckpt.state.get(k), v, ckpt.state, cfg) for k, v in now.items()
               if ckpt.state.get(k) != v and k not in ELASTIC]
    if changed:
        raise CheckpointError(f"{redact(ckpt.path)}: " + "; ".join(changed) + ". Resume with the same values (the "
                              "batches depend on them), or start a new --out (or over: --resume never)")
    ranks, old_world = ckpt.state.get("ranks"), ckpt.state.get("world_size")
    if not isinstance(ranks, list) or len(ranks) != old_world or \
            not all(isinstance(r, dict) and {"loader", "rng", "epoch"} <= r.keys() for r in ranks):
        raise CheckpointError(f"{redact(ckpt.path)}/state.json: needs one loader state per rank ({old_world}); "
                              f"the file is damaged: restore it or start over with --resume never")
    bad = [k for k in ELASTIC if not isinstance(ckpt.state.get(k), int) or isinstance(ckpt.state.get(k), bool)]
    if not isinstance(ckpt.state.get("step"), int) or bad:
        raise CheckpointError(f"{redact(ckpt.path)}/state.json: step {ckpt.state.get('step')!r}, {bad} not integers; "
                              f"the file is damaged: restore it or start over with --resume never")
    step = step_mapping(ckpt, now)["step"]
    if step > cfg.steps:
        raise CheckpointError(f"{redact(ckpt.path)}: the checkpoint is at step {step}, past --steps {cfg.steps} (steps "
                              f"of this run's global batch); pass --steps >= that step to continue, or start a new --out")


def _describe(key: str, old, new, state: dict, cfg: TrainConfig) -> str:
    if key == "train_identity":
        return (f"--train changed: the checkpoint was trained on {state.get('train')} (identity "
                f"{_short(old)}), now {cfg.train} (identity {_short(new)})")
    if key == "eval_identity":
        return (f"--eval changed: the checkpoint was taken with {state.get('eval')} (identity "
                f"{_short(old)}), now {cfg.eval} (identity {_short(new)})")
    return f"{key} was {old!r}, now {new!r}"


def _short(identity) -> str:
    if isinstance(identity, list):
        return "+".join(_short(i) for i in identity)
    return str(identity)[:12] if identity else "none"
