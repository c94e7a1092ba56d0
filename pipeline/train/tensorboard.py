"""Live training figures for TensorBoard: ``--report-to tensorboard`` writes ``OUT/tb/`` (rank 0 only).

    board = open_board(cfg.report_to, cfg.out, rank)   # None unless asked for (and on ranks > 0)
    board.train(step, point, lr)                         # every --log-every steps
    board.evaluation(step, figures)                            # eval figures; lm: eval/perplexity at step 0 too
    board.close()

Tags: ``train/loss``, ``train/lr``, ``train/samples_per_s``, ``train/tokens_per_s``,
``train/data_wait_fraction``; ``eval/<figure>`` for every eval figure
(``eval/accuracy``, ``eval/loss``, ``eval/perplexity``).  Watch them with
``tensorboard --logdir OUT/tb``.  The ``tensorboard`` package is an optional
extra: asking for it without it installed is a one-line error before training.
"""
from __future__ import annotations

import importlib.util
import os

TRAIN_TAGS = ("loss", "samples_per_s", "tokens_per_s", "data_wait_fraction")
INSTALL = "pip install shardstream[tensorboard]"


def board_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "tb")


def check_available(report_to: str) -> None:
    """ValueError (one line) when TensorBoard is asked for but not installed; checked before training."""
    if report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"--report-to tensorboard: the tensorboard package is not installed; {INSTALL}, "
                         f"or pass --report-to none")


class Board:
    """A SummaryWriter with the run's tag names; flushed at every point so the dashboard is live."""

    def __init__(self, out_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.path = board_dir(out_dir)
        self.writer = SummaryWriter(self.path)

    def train(self, step: int, point: dict, lr: float) -> None:
        for tag in TRAIN_TAGS:
            self.writer.add_scalar(f"train/{tag}", point[tag], step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def evaluation(self, step: int, figures: dict) -> None:
        """``eval_accuracy`` -> ``eval/accuracy``, ``perplexity`` -> ``eval/perplexity``; counts left out."""
        for name, value in figures.items():
            if name in ("eval_samples", "eval_tokens"):
                continue
            self.writer.add_scalar("eval/" + name.removeprefix("eval_"), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_board(report_to: str, out_dir: str, rank: int) -> Board | None:
    if report_to != "tensorboard" or rank != 0:
        return None
    check_available(report_to)
    return Board(out_dir)
