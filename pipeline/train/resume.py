"""What ``pipeline.train.loop`` starts from: a verified checkpoint that fits this run, or step 0 when it may.

    settings = run_settings(args, world, train_identity, eval_identity)
    ckpt = resume_point(args, world, device, settings)   # None: start from step 0

``--resume`` continues the newest checkpoint that verifies (``checkpoint.choose``);
without the flag a run refuses to start over existing checkpoints, and
``--resume never`` starts over on purpose, deleting them first (saying so) so
that the old run's higher step numbers cannot outlive the new run's.  Rank 0
decides and tells the other ranks, so every rank loads the same step or fails
with the same line.  A checkpoint whose run settings differ from this run's,
the training and eval sets' identities included, is refused naming old and new.
"""
from __future__ import annotations

import logging

import torch.distributed as dist

from pipeline.train import checkpoint
from pipeline.train.checkpoint_files import CheckpointError
from pipeline.world import World

log = logging.getLogger("pipeline.train.loop")


def run_settings(args, world: World, train_identity: list[str], eval_identity: str | None) -> dict:
    """What the sequence of batches (and the meaning of the eval figures) depends on."""
    return {"world_size": world.world_size, "num_workers": args.num_workers, "seed": args.seed,
            "batch_size": args.batch_size, "grad_accum": args.grad_accum, "task": args.task, "pack": args.pack,
            "train_identity": train_identity, "eval_identity": eval_identity}


def resume_point(args, world: World, device, settings: dict) -> checkpoint.Checkpoint | None:
    """The checkpoint this run continues (settings checked), or None to start from step 0."""
    name = _agree(args, world)
    if name is None:
        return None
    ckpt = checkpoint.load(args.out, name, device)
    check_settings(ckpt, settings, args)
    return ckpt


def _agree(args, world: World) -> str | None:
    """Rank 0's decision (a step folder name or None) on every rank; its refusal raised on every rank."""
    decision = {"name": None, "error": None}
    if world.rank == 0:
        try:
            decision["name"] = decide(args)
        except (CheckpointError, OSError) as exc:  # the other ranks wait for the decision: tell them
            decision["error"] = str(exc)
    if world.world_size > 1 and dist.is_initialized():
        box = [decision]
        dist.broadcast_object_list(box, src=0)
        decision = box[0]
    if decision["error"]:
        raise CheckpointError(decision["error"])
    return decision["name"]


def decide(args) -> str | None:
    """Rank 0: which step folder to resume from under the --resume mode, None for step 0."""
    root = checkpoint.checkpoint_root(args.out)
    if args.resume == "never":
        gone = checkpoint.clear(args.out)
        if gone:
            log.warning("--resume never: deleted %d checkpoint(s) of an earlier run in %s (%s); starting "
                        "from step 0", len(gone), root, ", ".join(gone))
        return None
    if args.resume is None:
        if checkpoint.exists(args.out):
            held = ", ".join(n for _, n in checkpoint.steps(root)) or "a `latest` pointer"
            raise CheckpointError(f"{root} holds checkpoints of an earlier run ({held}); continue it with "
                                  f"--resume, or start over with --resume never (deletes them) or a new --out")
        return None
    name = checkpoint.choose(args.out)
    if name is None:
        log.warning("--resume: no checkpoint in %s yet; starting from step 0", root)
    return name


def check_settings(ckpt: checkpoint.Checkpoint, now: dict, args) -> None:
    """Refuse a checkpoint taken under other settings, naming each old and new value."""
    changed = [_describe(k, ckpt.state.get(k), v, ckpt.state, args) for k, v in now.items()
               if ckpt.state.get(k) != v]
    if changed:
        raise CheckpointError(f"{ckpt.path}: " + "; ".join(changed) + ". Resume with the same values (the "
                              "batches depend on them) or start a new --out")
    ranks = ckpt.state.get("ranks")
    if not isinstance(ranks, list) or len(ranks) != now["world_size"] or \
            not all(isinstance(r, dict) and {"loader", "rng", "epoch"} <= r.keys() for r in ranks):
        raise CheckpointError(f"{ckpt.path}/state.json: needs one loader state per rank ({now['world_size']}); "
                              f"the file is damaged: restore it or start over with --resume never")
    if not isinstance(ckpt.state.get("step"), int) or ckpt.step > args.steps:
        raise CheckpointError(f"{ckpt.path}: the checkpoint is at step {ckpt.state.get('step')!r}, past --steps "
                              f"{args.steps}; pass --steps >= that step to continue, or start a new --out")


def _describe(key: str, old, new, state: dict, args) -> str:
    if key == "train_identity":
        return (f"--train changed: the checkpoint was trained on {state.get('train')} (identity "
                f"{_short(old)}), now {args.train} (identity {_short(new)})")
    if key == "eval_identity":
        return (f"--eval changed: the checkpoint was taken with {state.get('eval')} (identity "
                f"{_short(old)}), now {args.eval} (identity {_short(new)})")
    return f"{key} was {old!r}, now {new!r}"


def _short(identity) -> str:
    if isinstance(identity, list):
        return "+".join(_short(i) for i in identity)
    return str(identity)[:12] if identity else "none"
