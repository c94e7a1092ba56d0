"""The command line of ``pipeline.train``: every option with a one-line description and its default.

    cfg = parse_args(["--train", "shards/train", "--steps", "100", "--batch-size", "32"])  # a TrainConfig
    cfg = resolve_defaults(cfg)   # --model / --tokenizer from --task; one-line ValueError if unusable

The parsed command line becomes a frozen ``TrainConfig`` here, in one place; the
training functions take it (and the ``World``) explicitly.  Its field names are
the options' argparse names: a checkpoint's saved run settings are compared by
those names, so they stay.

``--help`` shows each option's default (``(default: ...)``); options whose
default depends on another option (``--model``, ``--tokenizer``, ``--lr``) say
so in their description instead.  Usage errors exit with status 2 (argparse).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import shards
from pipeline.train import models

DEFAULT_LR = {"classify": 5e-5, "lm": 5e-4}
REPORT_TO = ("none", "tensorboard")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` except where there is nothing to show (None, or an off flag)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline.train", description=description, formatter_class=HelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--train", required=True, metavar="URL",
                      help="train shard set (folder or index.json URL), or a mixture URL:WEIGHT,URL:WEIGHT")
    data.add_argument("--eval", metavar="URL",
                      help="eval shard set, evaluated at the end (and, for lm, before step 1); default: none, no eval")
    data.add_argument("--max-length", type=int, default=128, metavar="N",
                      help="tokens per sample; longer samples are truncated")
    data.add_argument("--pack", type=int, metavar="SEQ_LEN",
                      help="lm: pack documents into blocks of SEQ_LEN tokens (pipeline.pack.stream); default: pad each "
                           "document to the batch's longest")
    data.add_argument("--num-workers", type=int, default=0, metavar="N", help="DataLoader worker processes per rank")
    data.add_argument("--group-by-length", action="store_true",
                      help="train batches of similar token length, cut from each shuffle window (less padding); "
                           "not with --pack or a mixture; default: off, batches in shuffled order")
    data.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                      help="fsspec storage option for remote shard sets and --out, repeatable (e.g. endpoint_url=...); "
                           "default: none, credentials from the environment")
    model = p.add_argument_group("model")
    model.add_argument("--task", choices=models.TASKS, default="classify",
                       help="classify: sequence classification on the shards' labels; lm: causal language model")
    model.add_argument("--model", metavar="NAME|DIR",
                       help=f"built-in name ({', '.join(models.BUILTIN)}) or a local Hugging Face "
                            f"model folder (e.g. an earlier run's OUT/model); "
                            f"default: minilm for classify, gpt2-random for lm")
    model.add_argument("--tokenizer", metavar="PATH",
                       help="tokenizer folder or tokenizer.json; default: the model folder's own "
                            "(MiniLM's for gpt2-random)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, required=True, metavar="N",
                     help="optimizer steps to train for; on --resume another N continues the LR without a jump "
                          "(the checkpoint's warm-up length and peak kept; past the warm-up, linearly from the "
                          "checkpoint's LR to 0 at the new N)")
    opt.add_argument("--batch-size", type=int, required=True, metavar="N", help="samples per rank per micro-batch")
    opt.add_argument("--grad-accum", type=int, default=1, metavar="N", help="micro-batches per optimizer step")
    opt.add_argument("--lr", type=float, metavar="LR",
                     help="peak learning rate; default: 5e-5 for classify, 5e-4 for lm")
    opt.add_argument("--warmup", type=float, default=0.1, metavar="FRACTION",
                     help="fraction of the steps spent in linear LR warm-up, then linear decay to 0")
    opt.add_argument("--seed", type=int, default=0, metavar="N",
                     help="seed of the shuffle order, initial weights and dropout")
    opt.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                     help="bf16: autocast the forward pass to bfloat16 (weights and optimizer stay fp32)")
    run = p.add_argument_group("outputs and runs")
    run.add_argument("--out", default="runs/train", metavar="DIR|URL",
                     help="run folder, local or any fsspec URL (s3://bucket/run; credentials from the environment "
                          "or --storage-option): metrics.json, train.png, model/, checkpoint/, audit/, tb/ (local only)")
    run.add_argument("--log-every", type=int, default=10, metavar="N",
                     help="steps between log lines (and TensorBoard points with --report-to tensorboard)")
    run.add_argument("--report-to", choices=REPORT_TO, default="none",
                     help="tensorboard: write live training and eval figures to OUT/tb/ "
                          "(pip install shardstream[tensorboard])")
    run.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                     help="steps between checkpoints (0: at the end only)")
    run.add_argument("--resume", nargs="?", const="yes", default="auto", choices=("auto", "yes", "never"),
                     help="auto: continue from the newest checkpoint in OUT/checkpoint that verifies when there is "
                          "one, else start from step 0 (what a torchrun --max-restarts restart needs); yes (the bare "
                          "flag): the same, saying so when there is none; never: start from step 0, deleting "
                          "OUT/checkpoint's steps")
    run.add_argument("--keep-checkpoints", type=int, default=2, metavar="N",
                     help="complete checkpoints kept (>= 2 leaves one to fall back to if the newest is damaged)")
    run.add_argument("--audit", action="store_true",
                     help="log every trained sample id per rank to OUT/audit/ (check with: shards audit OUT)")
    run.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    return p


@dataclass(frozen=True)
class TrainConfig:
    """One run's options, as parsed and checked by ``parse_args`` (field = the option's argparse name)."""
    train: str                       # a shard set URL, or a mixture URL:WEIGHT,URL:WEIGHT
    steps: int
    batch_size: int                  # per rank per micro-batch
    eval: str | None = None
    max_length: int = 128
    pack: int | None = None          # lm block length; None: pad each document
    num_workers: int = 0
    group_by_length: bool = False
    storage_option: tuple[str, ...] = ()   # as given (KEY=VALUE)
    storage_options: dict = field(default_factory=dict)  # parsed: what fsspec takes
    task: str = "classify"
    model: str | None = None         # None until resolve_defaults
    tokenizer: str | None = None     # None until resolve_defaults
    grad_accum: int = 1
    lr: float = DEFAULT_LR["classify"]
    warmup: float = 0.1
    seed: int = 0
    precision: str = "fp32"
    out: str = "runs/train"
    log_every: int = 10
    report_to: str = "none"
    checkpoint_every: int = 0
    resume: str = "auto"
    keep_checkpoints: int = 2
    audit: bool = False
    debug: bool = False


def parse_args(argv=None, description: str = "DDP training over shard streams") -> TrainConfig:
    p = build_parser(description)
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "grad_accum", "max_length", "log_every", "keep_checkpoints"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.pack is not None and (args.task != "lm" or args.pack < 2):
        p.error(f"--pack {args.pack}: needs --task lm and a block length >= 2 (typical: 512-4096)")
    if args.group_by_length and (args.pack is not None or "," in args.train):
        p.error("--group-by-length cuts padded batches from one shard set; use it without --pack and without "
                "a --train mixture")
    if args.audit and "," in args.train:
        p.error("--audit checks one shard set; a --train mixture repeats and cuts sets, so audit runs of one set")
    if args.report_to == "tensorboard" and shards.is_remote(args.out):
        p.error(f"--report-to tensorboard writes event files as they grow; give a local --out, not "
                f"{shards.redact(args.out)}")
    try:
        storage_options = shards.parse_storage_options(args.storage_option)
    except ValueError as exc:
        p.error(str(exc))
    return TrainConfig(**{**vars(args), "lr": args.lr or DEFAULT_LR[args.task],
                          "storage_option": tuple(args.storage_option), "storage_options": storage_options})


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``--model`` and ``--tokenizer`` filled in; ValueError (one line) for a model folder
    without a tokenizer."""
    model = cfg.model or models.DEFAULT_MODEL[cfg.task]
    return dataclasses.replace(cfg, model=model, tokenizer=cfg.tokenizer or models.default_tokenizer(model))
