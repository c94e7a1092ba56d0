"""Evaluation and the small collective helpers of ``pipeline.train``.

    figures = evaluate(model, loader, "classify", device)   # {"eval_accuracy", "eval_loss", ...}
    figures = evaluate_run(cfg, model, world, device, train_labels)   # the --eval set of a run

Every rank scores its own part of the eval stream (flagged pad samples
excluded) and the sums are all-reduced, so the figures cover the whole eval
set exactly once whatever the world size.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from pipeline.loader.make import make_loader
from pipeline.train import metrics, models
from pipeline.train.config import TrainConfig
from pipeline.train.data import make_stream
from pipeline.world import World


def autocast(precision: str, device: torch.device):
    """bf16 autocast when asked (CUDA; also runs on CPU, which the tests use), else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_sum(values: list[float], device) -> list[float]:
    """Element-wise sum over all ranks (float64; identity without a process group)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(model, loader, task: str, device, precision: str = "fp32") -> dict:
    """eval_accuracy + eval_loss (classify) or eval_loss + perplexity (lm) over every rank's part."""
    was_training = model.training
    model.train(False)  # inference mode: dropout off
    correct = count = loss_sum = loss_count = 0.0
    for batch in loader:
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with autocast(precision, device):
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        real = (~batch["is_pad"]).to(device)
        if task == "classify":
            labels = batch["labels"].to(device)
            per_sample = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            correct += float(((logits.argmax(-1) == labels) & real).sum())
            count += float(real.sum())
            loss_sum, loss_count = loss_sum + float((per_sample * real).sum()), count
        else:
            summed, n = models.lm_loss(logits, models.lm_labels(batch))
            loss_sum, loss_count = loss_sum + float(summed), loss_count + n
    model.train(was_training)
    return metrics.eval_figures(task, *all_sum([correct, count, loss_sum, loss_count], device))


def evaluate_run(cfg: TrainConfig, model, world: World, device, train_labels) -> dict:
    """The figures of ``--eval`` (this rank's part, all-reduced); its label names must be the train set's."""
    ds = make_stream(cfg.eval, cfg, world, shuffle=False)
    if cfg.task == "classify" and ds.label_names != train_labels:
        raise ValueError(f"--eval {cfg.eval}: label names {ds.label_names} differ from the train set's "
                         f"{train_labels}; build both with the same --label-names")
    loader = make_loader(ds, cfg.batch_size, cfg.num_workers, pin_memory=device.type == "cuda")
    return evaluate(model, loader, cfg.task, device, cfg.precision)
