"""pipeline.train: 1- and 2-process runs of both tasks, checkpoints, resume, metrics."""
from __future__ import annotations

import json
import os

import pytest
import torch

from pipeline.train import checkpoint
from pipeline.train import loop as train
from tests.helpers.data import build_set, minilm_path
from tests.helpers.trainkit import (
    audit_lines,
    final_weights,
    metrics,
    run_torchrun,
    same_weights,
    shard_sets,
    tiny_bert,
    tiny_gpt2,
    train_args,
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    tr, ev = shard_sets(tmp)
    return {"train": tr, "eval": ev, "bert": tiny_bert(tmp / "bert"), "gpt2": tiny_gpt2(tmp / "gpt2")}


@pytest.mark.timeout(120)
def test_classify_one_process_writes_metrics_plot_checkpoint(kit, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(kit["train"], kit["eval"], kit["bert"], out, 6, 4, "classify",
                                 "--checkpoint-every", "4", "--audit")) == 0
    m = metrics(out)
    for key in ("steps", "train_loss", "eval_accuracy", "samples_per_s", "tokens_per_s",
                "data_wait_fraction", "world_size"):
        assert key in m, key
    assert m["steps"] == 6 and m["world_size"] == 1 and m["eval_samples"] == 13
    assert 0 <= m["eval_accuracy"] <= 1 and 0 <= m["data_wait_fraction"] <= 1
    assert (out / "train.png").stat().st_size > 0
    assert (out / "checkpoint" / "latest").read_text() == "step-0000006"
    # the previous complete step stays as a fallback (--keep-checkpoints 2)
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["latest", "step-0000004", "step-0000006"]
    assert sorted(p.name for p in (out / "checkpoint" / "step-0000006").iterdir()) == [
        "files.json", "model.pt", "optim.pt", "state.json"]
    assert (out / "model" / "config.json").exists()
    assert sum(len(x["ids"]) for x in audit_lines(out, 0)) == 24


@pytest.mark.timeout(120)
def test_lm_one_process_builtin_gpt2_reports_perplexity(kit, tmp_path):
    out = tmp_path / "lm"
    assert train.main(train_args(kit["train"], kit["eval"], "gpt2-random", out, 3, 4, "lm")) == 0
    m = metrics(out)
    assert m["perplexity"] == pytest.approx(2.718281828 ** m["eval_loss"], rel=1e-6)
    assert m["eval_tokens"] > 0 and m["tokens_per_s"] > 0


@pytest.mark.timeout(120)
def test_bf16_autocast_path_runs_on_cpu(kit, tmp_path):
    out = tmp_path / "bf16"
    assert train.main(train_args(kit["train"], kit["eval"], kit["bert"], out, 2, 4, "classify",
                                 "--precision", "bf16", "--grad-accum", "2")) == 0
    assert metrics(out)["precision"] == "bf16"


@pytest.mark.dist
@pytest.mark.timeout(240)
@pytest.mark.parametrize("task", ["classify", "lm"])
def test_two_processes_gloo(kit, tmp_path, task):
    out = tmp_path / task
    model = kit["bert"] if task == "classify" else kit["gpt2"]
    run_torchrun(2, train_args(kit["train"], kit["eval"], model, out, 4, 4, task,
                               "--grad-accum", "2", "--num-workers", "2", "--audit"))
    m = metrics(out)
    assert m["world_size"] == 2 and m["steps"] == 4
    assert ("eval_accuracy" in m) if task == "classify" else ("perplexity" in m)
    ids = [set(i for x in audit_lines(out, r) if x["epoch"] == 0 for i in x["ids"]) for r in (0, 1)]
    assert ids[0].isdisjoint(ids[1])  # ranks train on disjoint samples within the epoch
    assert len(audit_lines(out, 0)) == len(audit_lines(out, 1)) == 8


class Crash(RuntimeError):
    pass


def crash_at(monkeypatch, step: int):
    """Make the run die right after optimizer step ``step`` (after any checkpoint before it)."""
    real = train.metrics.Meter.step
    seen = {"n": 0}

    def step_then_crash(self, *a):
        real(self, *a)
        seen["n"] += 1
        if seen["n"] == step:
            raise Crash(f"simulated crash at step {step}")
    monkeypatch.setattr(train.metrics.Meter, "step", step_then_crash)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers,accum", [(0, 1), (2, 2)])
def test_crash_and_resume_gives_same_batches_and_weights(kit, tmp_path, monkeypatch, workers, accum):
    extra = ["--checkpoint-every", "4", "--audit", "--num-workers", str(workers), "--grad-accum", str(accum),
             "--seed", "3"]
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    steps = 14  # 14 * 4 * accum samples: crosses the epoch boundary of 41 samples
    assert train.main(train_args(kit["train"], None, kit["bert"], ref, steps, 4, "classify", *extra)) == 0
    with monkeypatch.context() as m:
        crash_at(m, 6)
        with pytest.raises(Crash):
            train.main(train_args(kit["train"], None, kit["bert"], out, steps, 4, "classify", *extra))
    assert json.loads((out / "checkpoint" / "step-0000004" / "state.json").read_text())["step"] == 4
    assert max(x["step"] for x in audit_lines(out, 0)) == 6  # steps 5-6 will be replayed
    assert train.main(train_args(kit["train"], None, kit["bert"], out, steps, 4, "classify",
                                 *extra, "--resume")) == 0
    assert audit_lines(out, 0) == audit_lines(ref, 0)
    assert {0, 1} <= {x["epoch"] for x in audit_lines(ref, 0)}  # crossed an epoch boundary
    assert same_weights(final_weights(ref), final_weights(out)) == []
    assert metrics(out)["resumed_from"] == 4


@pytest.mark.timeout(60)
def test_resume_takes_other_worker_count_and_refuses_other_seed(kit, tmp_path, capsys):
    """--num-workers may change on resume (elastic: the rest of the epoch is re-spread); --seed may not."""
    out = tmp_path / "run"
    assert train.main(train_args(kit["train"], None, kit["bert"], out, 2, 4, "classify")) == 0
    capsys.readouterr()
    assert train.main(train_args(kit["train"], None, kit["bert"], out, 3, 4, "classify", "--resume",
                                 "--num-workers", "1")) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    capsys.readouterr()
    assert train.main(train_args(kit["train"], None, kit["bert"], out, 4, 4, "classify", "--resume",
                                 "--seed", "7")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pipeline.train: error: ") and "seed" in err[0], err
    with pytest.raises(checkpoint.CheckpointError, match="seed"):  # --debug: the traceback
        train.main(train_args(kit["train"], None, kit["bert"], out, 4, 4, "classify", "--resume",
                              "--seed", "7", "--debug"))


@pytest.mark.timeout(60)
def test_eval_set_with_other_labels_is_refused(kit, tmp_path):
    from tests.helpers.data import build_set

    other = build_set(tmp_path, n=10, max_records=5, name="other", label_names=("neg", "pos", "zzz"))
    with pytest.raises(ValueError, match="label names"):
        train.main(train_args(kit["train"], other, kit["bert"], tmp_path / "run", 1, 4, "classify", "--debug"))


def test_unlabelled_shards_refused_for_classify(tmp_path, kit, capsys):
    from tests.helpers.data import build_set

    plain = build_set(tmp_path, n=10, max_records=5, name="plain", labels=False)
    assert train.main(train_args(plain, None, kit["bert"], tmp_path / "run", 1, 4, "classify")) == 2
    err = capsys.readouterr().err
    assert "--label-field" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_model_name_lists_choices():
    with pytest.raises(ValueError, match="minilm, gpt2-random"):
        train.models.model_dir("no-such-model")


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    meta = {"epoch": 0, "world_size": 1, "num_workers": 0, "seed": 0}
    checkpoint.save(str(tmp_path), 1, model, opt, sched, [{"loader": {}, "rng": checkpoint.rng_state()}], meta)
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_save(obj, path)
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        checkpoint.save(str(tmp_path), 2, model, opt, sched, [{"loader": {}, "rng": {}}], meta)
    assert sorted(os.listdir(tmp_path / "checkpoint")) == ["latest", "step-0000001"]
    assert checkpoint.load(str(tmp_path), checkpoint.choose(str(tmp_path))).step == 1


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(checkpoint.rng_state()))
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    checkpoint.set_rng_state(state)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


@pytest.mark.timeout(300)
def test_real_minilm_fine_tunes_a_few_steps(kit, tmp_path):
    out = tmp_path / "minilm"
    assert train.main(train_args(kit["train"], kit["eval"], "minilm", out, 3, 8, "classify")) == 0
    m = metrics(out)
    assert m["model"] == "minilm" and m["eval_samples"] == 13
    assert minilm_path()  # the bundled model loaded offline


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
def test_batches_resume_at_every_step_across_epochs(kit, workers):
    """The data side of --resume: saved after any step (epoch ends and partial batches included),
    a fresh loader continues with exactly the batches and epoch numbers of the uninterrupted run."""
    from pipeline import ShardStream, make_loader

    def fresh():
        ds = ShardStream(kit["train"], tokenizer=minilm_path(), max_length=16, shuffle=True, seed=7,
                         rank=1, world_size=2)
        return ds, make_loader(ds, 4, workers)

    ds, loader = fresh()
    batches = train.Batches(ds, loader, 0)
    ref, states = [], []
    for _ in range(14):  # 21 samples per rank per epoch: 6 batches (the last partial) → 2+ epochs
        ids = batches.next()["sample_id"]
        ref.append((batches.epoch, ids))
        states.append((json.loads(json.dumps(loader.state_dict())), batches.epoch))
    assert {e for e, _ in ref} == {0, 1, 2}
    for step, (state, epoch) in enumerate(states[:-1]):
        ds2, loader2 = fresh()
        ds2.set_epoch(epoch)
        loader2.load_state_dict(state)
        again = train.Batches(ds2, loader2, epoch)
        got = []
        for _ in range(step + 1, len(ref)):
            ids = again.next()["sample_id"]
            got.append((again.epoch, ids))
        assert got == ref[step + 1:], f"resumed after step {step}"


@pytest.mark.timeout(120)
def test_lm_packed_blocks_one_process_and_crash_resume(kit, tmp_path, monkeypatch):
    extra = ["--pack", "24", "--checkpoint-every", "3", "--seed", "1"]
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    assert train.main(train_args(kit["train"], kit["eval"], kit["gpt2"], ref, 8, 2, "lm", *extra)) == 0
    m = metrics(ref)
    assert m["perplexity"] > 1 and m["tokens_per_s"] > 0
    with monkeypatch.context() as mp:
        crash_at(mp, 5)
        with pytest.raises(Crash):
            train.main(train_args(kit["train"], kit["eval"], kit["gpt2"], out, 8, 2, "lm", *extra))
    assert train.main(train_args(kit["train"], kit["eval"], kit["gpt2"], out, 8, 2, "lm", *extra, "--resume")) == 0
    assert same_weights(final_weights(ref), final_weights(out)) == []


@pytest.mark.parametrize("bad", [["--task", "classify", "--pack", "16"], ["--task", "lm", "--pack", "1"]])
def test_pack_flag_is_validated(bad, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--train", "x", "--steps", "1", "--batch-size", "1", *bad])
    assert "--pack" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_lockstep_filler_steps_resume_without_replaying_the_epoch(kit, monkeypatch):
    """A checkpoint taken while this rank's loader is spent and lockstep hands out fillers
    (other ranks still have blocks) resumes with fillers, then the next epoch, exactly."""
    import pipeline.pack.stream as pack
    from pipeline import ShardStream, make_loader

    filler = {"filler": True}
    other = {"pos": 0}  # steps the (simulated) other rank has taken in this epoch; it takes 8 per epoch

    def lockstep_with_a_longer_rank(batches, fill, **kw):
        it, done = iter(batches), False
        while True:
            b = None if done else next(it, None)
            done = b is None
            if done and other["pos"] >= 8:
                other["pos"] = 0
                return
            other["pos"] += 1
            yield fill if b is None else b
    monkeypatch.setattr(pack, "lockstep", lockstep_with_a_longer_rank)

    def fresh():
        ds = ShardStream(kit["train"], tokenizer=minilm_path(), max_length=16, shuffle=True, seed=2)
        return ds, make_loader(ds, 8, 0)

    def key(b):
        return "filler" if "filler" in b else tuple(b["sample_id"])

    ds, loader = fresh()
    batches = train.Batches(ds, loader, 0, lockstep=filler)
    ref, states = [], []
    for _ in range(15):  # 41 samples, batch 8: 6 batches + 2 fillers per epoch
        b = batches.next()
        ref.append((batches.epoch, key(b)))
        states.append((json.loads(json.dumps(loader.state_dict())), batches.state_dict()))
    assert [k for _, k in ref[:9]].count("filler") == 2 and ref[8][0] == 1
    for step, (state, position) in enumerate(states[:-1]):
        ds2, loader2 = fresh()
        ds2.set_epoch(position["epoch"])
        if not position["exhausted"]:
            loader2.load_state_dict(state)
        again = train.Batches(ds2, loader2, position["epoch"], lockstep=filler, exhausted=position["exhausted"])
        other["pos"] = [e for e, _ in ref[:step + 1]].count(position["epoch"])  # the other rank resumes too
        got = []
        for _ in range(step + 1, len(ref)):
            b = again.next()
            got.append((again.epoch, key(b)))
        assert got == ref[step + 1:], f"resumed after step {step} ({position})"


@pytest.mark.dist
@pytest.mark.timeout(240)
def test_two_processes_packed_lm_with_workers(kit, tmp_path):
    out = tmp_path / "packed"
    run_torchrun(2, train_args(kit["train"], kit["eval"], kit["gpt2"], out, 6, 2, "lm", "--pack", "24",
                               "--num-workers", "2", "--checkpoint-every", "2"))
    m = metrics(out)
    assert m["world_size"] == 2 and m["perplexity"] > 1


@pytest.mark.timeout(240)
def test_train_on_a_weighted_mixture_of_shard_sets(kit, tmp_path):
    other = build_set(tmp_path, n=30, max_records=5, name="other")
    out = tmp_path / "mixed"
    train.main(train_args(f"{kit['train']}:0.7,{other}:0.3", kit["eval"], kit["bert"], out, 4, 4, "classify",
                          "--checkpoint-every", "2"))
    assert metrics(out)["steps"] == 4
    train.main(train_args(f"{kit['train']}:0.7,{other}:0.3", kit["eval"], kit["bert"], out, 6, 4, "classify",
                          "--resume"))
    assert metrics(out)["steps"] == 6 and metrics(out)["resumed_from"] == 4


@pytest.mark.timeout(120)
def test_audit_header_has_identity_and_a_url_without_credentials(kit, tmp_path, capsys):
    from shards import load_manifest
    from shards.audit import main as audit_main

    out = tmp_path / "audited"
    assert train.main(train_args(kit["train"], None, kit["bert"], out, 2, 4, "classify", "--audit")) == 0
    log = out / "audit" / "rank0.jsonl"
    lines = log.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["identity"] == load_manifest(kit["train"]).identity
    assert header["train"] == os.path.abspath(kit["train"])
    # a URL logged with its userinfo hidden is re-opened without it (credentials: --storage-option)
    header["train"] = "file://***@" + header["train"]
    log.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    capsys.readouterr()
    assert audit_main([str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    # a hidden secret query value cannot be rebuilt: one line asking for the URL again
    header["train"] = "https://example.invalid/set?token=***"
    log.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert audit_main([str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--train URL" in err[0]
