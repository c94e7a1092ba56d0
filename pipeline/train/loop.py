"""DDP training over shard streams: fine-tune a classifier or train a small causal LM.

    python -m pipeline.train --train shards/train --eval shards/dev --task classify --model minilm \
        --steps 300 --batch-size 32 --out runs/sst2
    torchrun --nproc_per_node 2 -m pipeline.train ... --checkpoint-every 50 --audit
    torchrun --nproc_per_node 2 -m pipeline.train ... --resume     # same batches as if never stopped
    python -m pipeline.train ... --resume never                     # start over: deletes OUT/checkpoint's steps
    shards audit runs/sst2                                          # every sample exactly once per epoch

One process per device: gloo on CPU, nccl on CUDA (bf16 autocast with
``--precision bf16``).  Rank and world size come from torchrun (through
``pipeline.world.from_env``); each rank streams its own disjoint part of the
shards and leaves the flagged pad samples out of the loss.  Writes
``OUT/metrics.json``, ``OUT/train.png``, ``OUT/checkpoint/`` and, with
``--audit``, ``OUT/audit/rank{R}.jsonl``.  ``--resume`` continues the newest checkpoint
that verifies, with the same settings and data only (``pipeline.train.resume``).  A user
error ends the run with one line and exit status 2 (``pipeline.train.failure``; ``--debug``
for the traceback).

LR: linear warm-up over ``--warmup`` x ``--steps``, then linear decay to 0 at
``--steps`` (``pipeline.train.schedule``).  ``--resume`` with another ``--steps``
continues it without a jump: during the warm-up the original warm-up length (in
steps) is kept and the decay stretched over the new total; after it, the LR
decays linearly from its value at the checkpoint to 0 at the new ``--steps``.
The peak LR and warm-up length stay the checkpoint's.  A finished run's LR is 0,
so extending one trains at LR 0 (it says so): start from ``OUT/model`` instead.

Every node's first process (local rank 0) prints a start line (rank, node,
host, local rank, world sizes, threads) and the progress lines, prefixed with
its rank (and node when there are several).  On CPU each process uses
cpus / (processes on this host) intra-op threads unless OMP_NUM_THREADS is set.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

import shards
from pipeline.loader.make import make_loader
from pipeline.pack.stream import PackedStream
from pipeline.stream import ShardStream
from pipeline.train import checkpoint, failure, metrics, models, quiet, resume, schedule
from pipeline.train import config as train_options
from pipeline.train.audit_log import AuditLog, absolute_url
from pipeline.train.batches import Batches
from pipeline.train.config import DEFAULT_LR, TrainConfig  # noqa: F401  (DEFAULT_LR: the defaults' old home)
from pipeline.train.data import eval_identity, train_dataset
from pipeline.train.evaluate import all_sum, autocast, evaluate_run
from pipeline.train.resume import gather_or_raise, global_batch, resume_point, run_settings
from pipeline.train.tensorboard import Board, check_available, open_board
from pipeline.world import World, from_env, intra_op_threads
from shards import redact

log = logging.getLogger("pipeline.train")
node_log = logging.getLogger("pipeline.node")  # INFO on every node's local rank 0, not only rank 0


def parse_args(argv=None) -> TrainConfig:
    """The options (``pipeline.train.config``); ``--model``/``--tokenizer`` are filled in by ``main``."""
    return train_options.parse_args(argv, description=__doc__.split("\n\n")[0])


# -- process group -------------------------------------------------------------
def setup(world: World) -> torch.device:
    """Join the process group (world size > 1) and pick this rank's device."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", world.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world.world_size > 1:
        dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.world_size,
                                device_id=device if cuda else None, store=restart_store(world))
    return device


def restart_store(world: World):
    """After a ``torchrun --max-restarts`` restart, the rendezvous store under a prefix of its own.

    torchrun can hand the restarted group the store the failed group used, which still holds the dead
    ranks' addresses: a new rank reading one before its peer rewrites it connects to a closed port."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart in ("", "0"):
        return None  # env:// as usual
    store, _, _ = next(dist.rendezvous("env://", world.rank, world.world_size))
    return dist.PrefixStore(f"pipeline.train/restart-{restart}", store)


def announce(world: World, device) -> None:
    """Set this process's CPU threads; each node's local rank 0 prints who it is."""
    host = socket.gethostname()
    on_host = sum(h == host for h in all_gather(host, world))  # loopback "nodes" share a host
    threads, why = intra_op_threads(world, len(os.sched_getaffinity(0)), on_host)
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)
    elif device.type != "cpu":
        why = f"torch's default on {device.type}"
    node_log.info("start: rank %d/%d node %d (%s) local rank %d/%d, %d process(es) on this host, "
                  "%d torch threads (%s)", world.rank, world.world_size, world.group_rank, host,
                  world.local_rank, world.local_world_size, on_host, torch.get_num_threads(), why)


def all_gather(obj, world: World) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


# -- model -----------------------------------------------------------------------
@dataclass
class Parts:
    model: torch.nn.Module      # unwrapped
    ddp: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    schedule: schedule.Schedule


def build_parts(cfg: TrainConfig, train_ds: ShardStream, world: World, device, lr: schedule.Schedule) -> Parts:
    """Model (DDP-wrapped when world size > 1), AdamW and the LR schedule ``lr``."""
    labels = train_ds.label_names
    if cfg.task == "classify" and not labels:
        raise ValueError(f"--train {cfg.train}: shards have no labels; rebuild them with --label-field "
                         f"for --task classify, or use --task lm")
    tok = train_ds.tokenizer
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = models.load_model(cfg.task, cfg.model, num_labels=len(labels or []) or None,
                              vocab_size=tok.get_vocab_size() if tok else None,
                              max_positions=max(cfg.max_length, cfg.pack or 0, 128),
                              pad_id=shards.special_ids(tok)["pad"] if tok else 0,
                              label_names=labels if cfg.task == "classify" else None).to(device)
    ddp = None
    if world.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      gradient_as_bucket_view=True)  # no extra copy of the gradients
    # fused AdamW: one kernel over all parameters, several times faster than the loop on CPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, fused=True)
    # a plain function (not the bound method): LambdaLR then saves no state of it
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr.factor(step))
    return Parts(model, ddp, optimizer, scheduler, lr)


def forward_loss(net, batch: dict, task: str, device) -> tuple[torch.Tensor, int, int]:
    """(loss, samples counted, tokens counted) of one micro-batch; pads weigh nothing."""
    ids = batch["input_ids"].to(device, non_blocking=True)
    real = ~batch["is_pad"]
    if "position_ids" in batch:  # packed blocks: positions restart per document, which HF turns
        # into a per-document causal mask when no attention_mask is given
        logits = net(input_ids=ids, position_ids=batch["position_ids"].to(device), use_cache=False).logits
        tokens = int(batch["num_tokens"])
    else:
        logits = net(input_ids=ids, attention_mask=batch["attention_mask"].to(device, non_blocking=True)).logits
        tokens = int(batch["attention_mask"][real].sum())
    if task == "classify":
        loss, n = models.classify_loss(logits, batch)
        return loss, n, tokens
    summed, count = models.lm_loss(logits, models.lm_labels(batch))
    # mean over the tokens of all ranks: DDP averages gradients, so scale by world / global count;
    # a rank with fewer (or no: lockstep filler) tokens then weighs exactly its share
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    total = all_sum([float(count)], device)[0]
    return summed * (world_size / max(total, 1.0)), int(real.sum()), tokens


# -- the loop --------------------------------------------------------------------
@dataclass
class Result:
    summary: dict
    history: list[dict]
    parts: Parts
    label_names: list[str] | None


def train(cfg: TrainConfig, world: World, device, board: Board | None = None) -> Result:
    stream, train_ds, identity = train_dataset(cfg, world)
    settings = run_settings(cfg, world, identity, eval_identity(cfg))
    ckpt = resume_point(cfg, world, device, settings)  # before the model: refusals come fast
    loader = make_loader(train_ds, cfg.batch_size, cfg.num_workers, pin_memory=device.type == "cuda")
    mapped = resume.start_mapping(ckpt, settings)  # steps follow samples seen (another global batch: one line)
    plan = schedule.for_run(cfg, resume.scaled_state(ckpt, settings), mapped["step"])
    parts = build_parts(cfg, stream, world, device, plan)
    start, position, history = 0, {"epoch": 0, "exhausted": False}, []
    if ckpt is not None:
        start, position, history = resume.restore(ckpt, parts, train_ds, loader, world, mapped)
    torch.manual_seed(cfg.seed + 1 + world.rank)  # dropout: different masks per rank, same per run
    if ckpt is not None and world.rank < len(ckpt.state["ranks"]):  # a rank new to the run keeps its seed
        checkpoint.set_rng_state(ckpt.state["ranks"][world.rank]["rng"])
    seen = {"samples_seen": mapped["samples_seen"], "updates": mapped["updates"], "global": global_batch(settings)}
    filler = train_ds.collator().filler(cfg.batch_size) if cfg.pack and world.world_size > 1 else None
    batches = Batches(train_ds, loader, position["epoch"], lockstep=filler, exhausted=position["exhausted"])
    # audit lines are numbered by optimizer updates run: the same as the step until a global-batch change
    audit = AuditLog(cfg.out, world.rank, audit_header(cfg, stream, world), seen["updates"],
                     cfg.storage_options) if cfg.audit else None
    initial = before_training(cfg, parts.model, world, device, board, stream.label_names) if start == 0 else {}
    meter = metrics.Meter(world.world_size)
    net = parts.ddp or parts.model
    net.train()
    for step in range(start + 1, cfg.steps + 1):
        loss_value, samples, tokens = 0.0, 0, 0
        for micro in range(cfg.grad_accum):
            t = meter.clock()
            batch = batches.next()
            meter.waited(t)
            if audit:
                audit.record_batch(seen["updates"] + 1, batches.epoch, batch)  # sample ids, or packed document segments
            last = micro == cfg.grad_accum - 1
            sync = parts.ddp.no_sync() if parts.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast(cfg.precision, device):
                    loss, n, k = forward_loss(net, batch, cfg.task, device)
                (loss / cfg.grad_accum).backward()
            loss_value += loss.item() / cfg.grad_accum
            samples, tokens = samples + n, tokens + k
        torch.nn.utils.clip_grad_norm_(parts.model.parameters(), 1.0)
        parts.optimizer.step()
        parts.scheduler.step()
        parts.optimizer.zero_grad(set_to_none=True)
        seen["updates"] += 1
        seen["samples_seen"] += seen["global"]
        meter.step(loss_value, samples, tokens)
        if step % cfg.log_every == 0 or step == cfg.steps:
            lr = parts.scheduler.get_last_lr()[0]  # after this step's update: what step + 1 applies
            text, point = meter.line(step, cfg.steps, lr, batches.epoch, cfg.log_every)
            history.append(point)
            node_log.info("%s", text)
            if board:
                board.train(step, point, lr)
        if board and step == 1 and cfg.task == "lm" and not cfg.eval:  # the loss before any update
            board.scalar("train/perplexity", math.exp(min(loss_value, 50.0)), 0)
        if step == cfg.steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            save(cfg, world, parts, loader, batches, step, history, audit,
                 {**settings, "samples_seen": seen["samples_seen"], "updates": seen["updates"]})
    if audit:
        audit.close()
    summary = metrics.summarise(all_sum(metrics.totals(meter), device), world.world_size, cfg.steps)
    summary.update(resumed_from=start, epochs_started=batches.epoch + 1, **initial)
    return Result(summary, history, parts, stream.label_names)


def before_training(cfg: TrainConfig, model, world: World, device, board: Board | None, labels) -> dict:
    """lm with --eval: the eval perplexity at step 0, so that a run's drop can be seen."""
    if cfg.task != "lm" or not cfg.eval:
        return {}
    figures = evaluate_run(cfg, model, world, device, labels)
    log.info("before training: eval loss %.4f perplexity %.4g", figures["eval_loss"], figures["perplexity"])
    if board:
        board.evaluation(0, figures)
    return {"initial_eval_loss": figures["eval_loss"], "initial_perplexity": figures["perplexity"]}


def audit_header(cfg: TrainConfig, ds: ShardStream, world: World) -> dict:
    """The run the audit log belongs to; the URL without credentials (``shards audit`` takes those
    from its ``--storage-option``s), the identity so the audit refuses other data under that URL."""
    header = {"train": redact(absolute_url(cfg.train)), "identity": ds.manifest.identity,
              "world_size": world.world_size, "seed": cfg.seed,
              "shuffle": True, "num_records": ds.manifest.num_records, "samples_per_rank": len(ds),
              "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "num_workers": cfg.num_workers}
    if cfg.pack:  # the separator and stripped specials: the audit derives each document's token count
        fmt = PackedStream(ds, cfg.pack).format
        header["pack"] = {"seq_len": cfg.pack, "sep_id": fmt.sep_id, "prefix": list(fmt.prefix),
                          "suffix": list(fmt.suffix)}
    return header


def save(cfg: TrainConfig, world: World, parts: Parts, loader, batches: Batches, step: int, history, audit,
         settings: dict) -> None:
    """Every rank writes its own part of step ``step``; rank 0 lists them all and commits (``checkpoint``).

    Each phase ends in an all-gather, so a failure on any rank stops every rank with its one line."""
    options = cfg.storage_options
    mine = {"loader": loader.state_dict(), "rng": checkpoint.rng_state(), **batches.state_dict()}
    gather_or_raise(world, lambda: checkpoint.begin(cfg.out, step, options) if world.rank == 0 else None)

    def my_part():
        if audit:
            audit.sync()  # the audit lines a checkpoint vouches for are stored before it is
        return checkpoint.write_part(cfg.out, step, world.rank, mine, options) if world.rank else None
    entries = gather_or_raise(world, my_part)

    def commit():
        meta = {"epoch": batches.epoch, **settings, "train": redact(cfg.train),
                "eval": redact(cfg.eval) if cfg.eval else None, "history": history,
                "schedule": parts.schedule.meta(step)}  # what a resume with another --steps continues
        path = checkpoint.save(cfg.out, step, parts.model, parts.optimizer, parts.scheduler, [mine], meta,
                               keep=cfg.keep_checkpoints, parts=entries[1:], storage_options=options)
        log.info("checkpoint step %d -> %s", step, redact(path))
    gather_or_raise(world, lambda: commit() if world.rank == 0 else None)  # nobody runs ahead of a failed save


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        world = from_env()
    except ValueError as exc:
        return failure.report(exc, 0, 1)
    quiet.entry_point(world.rank)
    if world.local_rank == 0:
        node_log.setLevel(logging.INFO)
    if world.multi_node:  # which node a line comes from
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(f"[rank {world.rank} node {world.group_rank}] %(message)s"))
    try:
        cfg = train_options.resolve_defaults(cfg)
        check_available(cfg.report_to)
        return run(cfg, world)
    except failure.USER_ERRORS as exc:
        if cfg.debug:
            raise
        return failure.report(exc, world.rank, world.world_size)


def run(cfg: TrainConfig, world: World) -> int:
    device = setup(world)
    board = None
    try:
        announce(world, device)
        if not shards.is_remote(cfg.out):
            os.makedirs(cfg.out, exist_ok=True)
        board = open_board(cfg.report_to, cfg.out, world.rank)
        result = train(cfg, world, device, board)
        summary = result.summary
        if cfg.eval:
            figures = evaluate_run(cfg, result.parts.model, world, device, result.label_names)
            summary.update(figures)
            if board:
                board.evaluation(cfg.steps, figures)
        if world.rank == 0:
            metrics.write_outputs(cfg, result.parts.model, result.history, summary, device)
    finally:
        if board:
            board.close()
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
