"""Extending --steps on --resume continues the LR schedule without a jump (pipeline.train.schedule)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.train import loop as train
from pipeline.train import schedule
from pipeline.train.checkpoint_files import write_file_list
from tests.helpers.trainkit import shard_sets, tiny_bert, train_args

PEAK = 1e-3


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lr")
    tr, _ = shard_sets(tmp, n_train=24, n_eval=5)
    return {"train": tr, "bert": tiny_bert(tmp / "bert")}


def run(kit, out, steps: int, *extra: str) -> int:
    return train.main(train_args(kit["train"], None, kit["bert"], out, steps, 4, "classify", "--log-every", "1",
                                 "--lr", str(PEAK), "--warmup", "0.25", *extra))


def lr_history(out) -> dict[int, float]:
    """step -> LR after that step, from the newest checkpoint (its history spans the resumes)."""
    ckpt = out / "checkpoint"
    state = json.loads((ckpt / (ckpt / "latest").read_text() / "state.json").read_text())
    return {p["step"]: p["lr"] for p in state["history"]}, state


class Stop(RuntimeError):
    pass


def stop_after(monkeypatch, step: int):
    """A preempted run: dies right after optimizer step ``step``."""
    real, seen = train.metrics.Meter.step, {"n": 0}

    def step_then_stop(self, *a):
        real(self, *a)
        seen["n"] += 1
        if seen["n"] == step:
            raise Stop(step)
    monkeypatch.setattr(train.metrics.Meter, "step", step_then_stop)


@pytest.mark.timeout(120)
def test_preempted_run_extended_on_resume_continues_the_lr(kit, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with monkeypatch.context() as m:  # planned 8 steps (warm-up 2), preempted after step 5
        stop_after(m, 5)
        with pytest.raises(Stop):
            run(kit, out, 8, "--checkpoint-every", "4")
    before, _ = lr_history(out)
    assert before[2] == pytest.approx(PEAK) and before[4] == pytest.approx(PEAK * 4 / 6)
    assert run(kit, out, 16, "--resume") == 0  # extended to 16 steps at the step-4 checkpoint
    lrs, state = lr_history(out)
    assert "continues from 0.000667 at step 4 and decays linearly to 0 at step 16" in capsys.readouterr().out
    assert sorted(lrs) == list(range(1, 17))
    step = PEAK * 4 / 6 / 12  # one step of the stretched decay
    assert lrs[5] == pytest.approx(lrs[4] - step)  # continuous: the rebuilt schedule jumped to 9.2e-4
    assert all(lrs[s] == pytest.approx(lrs[4] - (s - 4) * step) for s in range(5, 17))
    assert lrs[16] == 0.0 and state["schedule"]["lr"] == 0.0
    assert [lrs[s] for s in range(1, 5)] == [before[s] for s in range(1, 5)]  # the original run's part kept


@pytest.mark.timeout(120)
def test_finished_run_extended_stays_continuous_and_says_lr_is_zero(kit, tmp_path, capsys):
    out = tmp_path / "done"
    assert run(kit, out, 4, "--checkpoint-every", "2") == 0
    assert run(kit, out, 8, "--resume") == 0
    lrs, state = lr_history(out)
    assert lrs[4] == 0.0 and all(lrs[s] == 0.0 for s in range(5, 9))  # the rebuilt schedule jumped to 5e-4
    assert "the checkpoint's LR is 0 (its schedule had ended): steps 5-8 train at LR 0" in capsys.readouterr().out


@pytest.mark.timeout(120)
def test_checkpoint_without_schedule_resumes_as_before(kit, tmp_path):
    """A checkpoint from before the schedule was recorded: the schedule is rebuilt for the new total."""
    out = tmp_path / "old"
    assert run(kit, out, 4, "--checkpoint-every", "2") == 0
    ckpt = out / "checkpoint"
    path = ckpt / (ckpt / "latest").read_text() / "state.json"
    state = json.loads(path.read_text())
    del state["schedule"]
    path.write_text(json.dumps(state))
    write_file_list(str(path.parent), 4, lambda p, data: open(p, "wb").write(data))  # so that it verifies
    assert run(kit, out, 8, "--resume") == 0
    lrs, _ = lr_history(out)
    assert lrs[5] == pytest.approx(PEAK * (8 - 5) / (8 - 2))  # warm-up 0.25 x 8, decay over 8: today's rule


# -- the schedule function ------------------------------------------------------------------
def test_fresh_schedule_is_transformers_linear_warmup():
    import torch
    from transformers import get_linear_schedule_with_warmup

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PEAK)
    ref = get_linear_schedule_with_warmup(opt, 3, 20)
    s = schedule.fresh(20, 0.15, PEAK)
    for step in range(21):
        assert s.factor(step) == ref.lr_lambdas[0](step)  # bit-identical: old runs train as before


@given(total=st.integers(1, 400), warmup=st.floats(0, 1), k=st.integers(0, 400), extra=st.integers(-400, 400),
       again=st.integers(0, 400))
def test_resume_at_any_step_with_any_total_is_continuous(total, warmup, k, extra, again):
    k = min(k, total)
    new = max(k + 1, total + extra)  # --steps past the checkpoint: at least one step to train
    old = schedule.fresh(total, warmup, PEAK)
    s = schedule.resumed(old.meta(k), k, new, 0.5, 2 * PEAK)  # --warmup/--lr of the resume: the checkpoint's win
    assert s.peak == PEAK and s.warmup == old.warmup
    assert s.lr(k) == pytest.approx(old.lr(k), abs=1e-15)  # continuous at the resume point
    assert s.lr(new) == 0.0  # ends at 0 at the new total
    lrs = [s.lr(i) for i in range(k, new + 1)]  # up (rest of the warm-up) to at most the peak, then down
    top = lrs.index(max(lrs))
    assert max(lrs) <= PEAK * (1 + 1e-12)
    assert all(a <= b for a, b in zip(lrs[:top], lrs[1:top + 1])) and all(a >= b for a, b in zip(lrs[top:], lrs[top + 1:]))
    if new == total:
        assert s == old  # same total: the saved schedule as is (bit-identical resume)
    k2 = k + again % (new - k + 1)  # chained: resumed again, further on, with another total
    s2 = schedule.resumed(s.meta(k2), k2, max(k2 + 1, new + extra // 2), 0.1, PEAK)
    assert s2.lr(k2) == pytest.approx(s.lr(k2), abs=1e-15)


def test_warmup_is_kept_when_resumed_inside_it():
    old = schedule.Schedule(total=100, warmup=10, peak=PEAK)
    s = schedule.resumed(old.meta(4), 4, 200, 0.1, PEAK)
    assert s == schedule.Schedule(total=200, warmup=10, peak=PEAK)  # not 20: the original warm-up length
    assert [s.lr(i) for i in range(11)] == [old.lr(i) for i in range(11)] and s.lr(105) == pytest.approx(PEAK * 0.5)
