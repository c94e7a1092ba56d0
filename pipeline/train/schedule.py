"""The LR schedule: linear warm-up, then linear decay to 0, as a pure function of the step.

    s = Schedule(total=300, warmup=30, peak=5e-5)
    s.lr(step)                  # the LR after ``step`` optimizer steps (what step + 1 applies)
    s = resumed(saved, step, total=600, warmup_fraction=0.1, peak=5e-5)   # on --resume

Without an anchor it is ``transformers.get_linear_schedule_with_warmup``'s rule
(``step / warmup`` during warm-up, then ``(total - step) / (total - warmup)``),
so runs that never change ``--steps`` train exactly as before.

Why an anchor: a resume with another ``--steps`` used to rebuild the schedule
for the new total and load the old step count over it, so the LR jumped (from
0 to 3e-5 when a finished run was extended).  The rule on a changed total, at
checkpoint step ``k``:

- still in the warm-up (``k < warmup < new total``): keep the original warm-up
  length in steps and decay over the new total; the warm-up part does not
  depend on the total, so the LR is continuous;
- otherwise: decay linearly from the LR at ``k`` to 0 at the new total (the
  anchor ``(k, factor at k)``), so the LR is continuous at ``k``.

The same total as the checkpoint's reuses the saved schedule unchanged, so a
plain resume is bit-identical to an uninterrupted run.  A checkpoint without a
saved schedule (older code) gets today's rebuilt schedule.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

from pipeline.train.config import TrainConfig

log = logging.getLogger("pipeline.train")


@dataclass(frozen=True)
class Schedule:
    total: int
    warmup: int
    peak: float
    anchor_step: int | None = None     # decay from (anchor_step, anchor_factor) to 0 at ``total``
    anchor_factor: float | None = None

    def factor(self, step: int) -> float:
        """The LR after ``step`` optimizer steps, as a fraction of ``peak``."""
        if self.anchor_step is not None and step >= self.anchor_step:
            left = self.total - self.anchor_step
            return self.anchor_factor * max(0.0, (self.total - step) / left) if left > 0 else 0.0
        if step < self.warmup:
            return step / max(1, self.warmup)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))

    def lr(self, step: int) -> float:
        return self.peak * self.factor(step)

    def meta(self, step: int) -> dict:
        """What a checkpoint at ``step`` records so that a resume can continue this schedule."""
        return {**asdict(self), "lr": self.lr(step)}


def fresh(total: int, warmup_fraction: float, peak: float) -> Schedule:
    return Schedule(total, int(warmup_fraction * total), peak)


def resumed(saved: dict | None, step: int, total: int, warmup_fraction: float, peak: float) -> Schedule:
    """The schedule a run resumed at ``step`` with ``--steps total`` follows (rule: module docstring).

    ``saved``: the checkpoint's ``schedule`` meta, None for one written before it was recorded.
    """
    if saved is None:
        return fresh(total, warmup_fraction, peak)
    old = Schedule(int(saved["total"]), int(saved["warmup"]), float(saved["peak"]), saved.get("anchor_step"),
                   saved.get("anchor_factor"))
    if total == old.total:
        return old
    if old.anchor_step is None and step < old.warmup < total:
        return Schedule(total, old.warmup, old.peak)
    return Schedule(total, old.warmup, old.peak, step, old.factor(step))


def describe(old: dict | None, new: Schedule, step: int) -> str | None:
    """One line when a resume changes the schedule's total, else None."""
    if old is None or int(old["total"]) == new.total:
        return None
    text = (f"--steps {new.total} (the checkpoint's run: {old['total']}): the LR continues from "
            f"{new.lr(step):.3g} at step {step}")
    if new.anchor_step is None:
        return text + f", warms up to {new.peak:.3g} at step {new.warmup} and decays to 0 at step {new.total}"
    return text + f" and decays linearly to 0 at step {new.total}"


def for_run(cfg: TrainConfig, state: dict | None, step: int | None) -> Schedule:
    """The schedule of a ``pipeline.train`` run: fresh, or continuing checkpoint ``state`` at ``step``."""
    if state is None:
        return fresh(cfg.steps, cfg.warmup, cfg.lr)
    saved = state.get("schedule")  # None: written before it was recorded, rebuilt as then
    lr = resumed(saved, step, cfg.steps, cfg.warmup, cfg.lr)
    change = describe(saved, lr, step)
    if change:
        log.info("%s", change)
    if cfg.steps > step and lr.lr(step) == 0.0 and saved is not None:
        log.warning("the checkpoint's LR is 0 (its schedule had ended): steps %d-%d train at LR 0; to train "
                    "further, start a new --out with --model %s", step + 1, cfg.steps,
                    os.path.join(cfg.out, "model"))
    return lr
