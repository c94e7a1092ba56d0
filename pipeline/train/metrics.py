"""What a training run measures: throughput, time spent waiting on data, loss; metrics.json and a plot.

    meter = Meter(world_size)
    t = meter.clock(); batch = next(it); meter.waited(t)
    meter.step(step, loss, samples, tokens)
    log.info(meter.line(step))      # live figures every few steps

``data_wait_fraction`` is the time the step loop spent blocked on the loader
divided by the loop's wall time: near 0 means the model is the bottleneck,
near 1 means the data pipeline is.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time

import shards
from pipeline.train import model_folder
from pipeline.train.config import TrainConfig

log = logging.getLogger("pipeline.train")


class Meter:
    """Counters of one process's step loop (samples and tokens exclude pad samples)."""

    def __init__(self, world_size: int = 1):
        self.world_size = world_size
        self.start = time.perf_counter()
        self.wait_s = 0.0
        self.samples = 0
        self.tokens = 0
        self.steps = 0
        self.losses: list[float] = []
        self._window = (self.start, 0, 0, 0.0)  # (time, samples, tokens, wait) at the last log line

    @staticmethod
    def clock() -> float:
        return time.perf_counter()

    def waited(self, since: float) -> None:
        self.wait_s += time.perf_counter() - since

    def step(self, loss: float, samples: int, tokens: int) -> None:
        self.steps += 1
        self.samples += samples
        self.tokens += tokens
        self.losses.append(loss)

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def window(self) -> dict:
        """Figures since the previous call (this rank's rates × world size: the job's estimate)."""
        now = time.perf_counter()
        t0, s0, k0, w0 = self._window
        dt = max(now - t0, 1e-9)
        self._window = (now, self.samples, self.tokens, self.wait_s)
        return {"samples_per_s": (self.samples - s0) * self.world_size / dt,
                "tokens_per_s": (self.tokens - k0) * self.world_size / dt,
                "data_wait_fraction": (self.wait_s - w0) / dt}

    def line(self, step: int, total: int, lr: float, epoch: int, every: int) -> tuple[str, dict]:
        recent = self.losses[-every:]
        loss = sum(recent) / max(len(recent), 1)
        w = self.window()
        text = (f"step {step}/{total} epoch {epoch} loss {loss:.4f} lr {lr:.2e} "
                f"{w['samples_per_s']:.1f} samples/s {w['tokens_per_s']:.0f} tokens/s "
                f"data-wait {w['data_wait_fraction']:.1%}")
        return text, {"step": step, "loss": loss, "lr": lr, **w}


def totals(meter: Meter) -> list[float]:
    """This rank's sums, in the order ``summarise`` expects after an all-reduce."""
    recent = meter.losses[-10:]
    return [float(meter.samples), float(meter.tokens), meter.wait_s, meter.elapsed(),
            sum(recent) / max(len(recent), 1)]


def summarise(summed: list[float], world_size: int, steps: int) -> dict:
    """metrics.json figures from the all-reduced ``totals`` of every rank."""
    samples, tokens, wait_s, elapsed_sum, loss_sum = summed
    wall = elapsed_sum / world_size  # ranks run in lock-step; the mean is the job's wall time
    return {"steps": steps, "train_loss": loss_sum / world_size, "samples_per_s": samples / wall,
            "tokens_per_s": tokens / wall, "data_wait_fraction": wait_s / elapsed_sum,
            "train_seconds": wall, "world_size": world_size}


def eval_figures(task: str, correct: float, count: float, loss_sum: float, loss_count: float) -> dict:
    """eval_accuracy (classify) or eval_loss + perplexity (lm) from the all-reduced sums."""
    mean = loss_sum / max(loss_count, 1)
    if task == "classify":
        return {"eval_accuracy": correct / max(count, 1), "eval_loss": mean, "eval_samples": int(count)}
    return {"eval_loss": mean, "perplexity": math.exp(min(mean, 50.0)), "eval_tokens": int(loss_count)}


def write_json(path: str, data: dict) -> None:
    """``data`` as indented JSON at ``path`` (local or a URL), whole or not at all (the one atomic write)."""
    shards.write_bytes_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


NO_MATPLOTLIB = "no-matplotlib"  # what ``plot`` returns when the optional extra ``plot`` is not installed


def plot(path: str, history: list[dict]) -> str | None:
    """Loss and samples/s against step (PNG); None when nothing was logged, NO_MATPLOTLIB without it.

    matplotlib is imported here, not at module level: it is an optional extra.
    """
    if not history:
        return None
    try:
        import matplotlib
    except ImportError:
        return NO_MATPLOTLIB

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(steps, [h["loss"] for h in history])
    ax1.set(xlabel="step", ylabel="train loss", title="loss")
    ax2.plot(steps, [h["samples_per_s"] for h in history], label="samples/s")
    ax2.set(xlabel="step", ylabel="samples/s", title="throughput")
    wait = ax2.twinx()
    wait.plot(steps, [h["data_wait_fraction"] for h in history], color="tab:red", alpha=0.6)
    wait.set_ylabel("data-wait fraction", color="tab:red")
    wait.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(cfg: TrainConfig, model, history: list[dict], summary: dict, device) -> None:
    """Rank 0: OUT/model (weights, config with label names, tokenizer), metrics.json, train.png.

    For a remote OUT (any fsspec URL) they are made in a local temporary folder, then copied up."""
    remote = shards.is_remote(cfg.out)
    with tempfile.TemporaryDirectory(prefix="pipeline-train-out-") if remote else contextlib.nullcontext(cfg.out) \
            as local:
        model_folder.save(model, cfg.tokenizer, os.path.join(local, "model"))
        summary.update(task=cfg.task, model=shards.redact(cfg.model), precision=cfg.precision,
                       device=device.type, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                       num_workers=cfg.num_workers)
        write_json(os.path.join(local, "metrics.json"), summary)
        if plot(os.path.join(local, "train.png"), history) == NO_MATPLOTLIB:
            log.info("train.png skipped: matplotlib is not installed (pip install shardstream[plot])")
        if remote:
            shards.put_tree(local, cfg.out, cfg.storage_options)
    log.info("metrics: %s", " ".join(f"{k}={_fmt(v)}" for k, v in sorted(summary.items())))
    log.info("model -> %s (weights, config with label names, tokenizer)",
             shards.redact(f"{cfg.out.rstrip('/')}/model"))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
