"""Hostile review of checkpoints/audit on URLs (pipeline/train, shards/audit.py) and of pipeline/elastic.py,
in-process (memory:// or tmp_path).  Plain tests guard right behaviour; each ``xfail(strict=True)`` shows an
open hole (its reason: where, and the fix).  Elastic plans are compared with a brute-force reference."""
from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from types import SimpleNamespace

import fsspec
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import shards
from pipeline import elastic, split
from pipeline.elastic import Segment
from pipeline.shuffle import window_order
from pipeline.train import audit_log, checkpoint
from pipeline.train.checkpoint_files import CheckpointError, verify
from shards import audit
from tests.conftest import build_set

pytestmark = pytest.mark.timeout(60)
MEM = fsspec.filesystem("memory")


class Boom(RuntimeError):
    """The crash injected into a write."""


def mem_url() -> str:
    return f"memory://hostile-{uuid.uuid4().hex[:10]}/run"


def save_step(out: str, step: int, world: int = 2, keep: int = 2) -> None:
    """What the loop does: begin, rank 1.. write their parts, rank 0 lists them and commits."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    checkpoint.begin(out, step)
    parts = [checkpoint.write_part(out, step, r, {"loader": {"r": r, "step": step}, "rng": {}, "epoch": 0})
             for r in range(1, world)]
    checkpoint.save(out, step, model, opt, sched, [{"loader": {"r": 0}, "rng": {}, "epoch": 0}], {"epoch": 0},
                    keep=keep, parts=parts)


def step_file(out: str, step: int, name: str = "") -> str:
    return checkpoint.locate(out, "checkpoint", checkpoint.step_name(step), *([name] if name else []))


def put(url: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.pipe_file(path, data)


def cat(url: str) -> bytes:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.cat_file(path)


def rm(url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    fs.rm(path, recursive=True)


@pytest.fixture(params=["memory", "local"])
def out(request, tmp_path):
    return mem_url() if request.param == "memory" else str(tmp_path / "run")


# -- checkpoints: a crash at every write of the save order ------------------------------------
# writes through checkpoint._put, world 2: remote: part, model, optim, state, files.json, latest;
# local: part, state, files.json, latest (torch files are saved in the staging folder directly)
CRASHES = [("memory", k, k >= 5) for k in range(6)] + [("local", k, k >= 3) for k in range(4)]


@pytest.mark.parametrize("where,crash_at,new_counts", CRASHES)
def test_a_crash_at_any_write_leaves_the_previous_or_the_complete_new_step(where, crash_at, new_counts,
                                                                         tmp_path, monkeypatch):
    out = mem_url() if where == "memory" else str(tmp_path / "run")
    save_step(out, 2)
    real, calls = checkpoint._put, []

    def crashing(url, data, options):
        calls.append(url)
        if len(calls) - 1 == crash_at:
            raise Boom(url)
        return real(url, data, options)
    monkeypatch.setattr(checkpoint, "_put", crashing)
    with pytest.raises(Boom):
        save_step(out, 4)
    monkeypatch.undo()
    name = checkpoint.choose(out)
    assert name == ("step-0000004" if new_counts else "step-0000002")
    ckpt = checkpoint.load(out, name)
    assert [r["loader"]["r"] for r in ckpt.state["ranks"]] == [0, 1]


def test_a_crash_while_pruning_keeps_the_committed_step(out, monkeypatch):
    for step in (1, 2, 3):
        save_step(out, step, keep=10)
    real = checkpoint._remove_step

    def crash_on_old_steps(folder, options):  # begin() clears step 4 itself: let that through
        if "step-0000004" not in folder:
            raise Boom(folder)
        real(folder, options)
    monkeypatch.setattr(checkpoint, "_remove_step", crash_on_old_steps)
    with pytest.raises(Boom):
        save_step(out, 4, keep=1)
    monkeypatch.undo()
    assert checkpoint.choose(out) == "step-0000004"


def test_interleaved_prunes_keep_latest_and_the_newest_complete_steps(out, monkeypatch):
    for step in (1, 2, 3, 4):
        save_step(out, step, keep=10)
    root, real, nested = checkpoint.checkpoint_root(out), checkpoint._remove_step, []

    def remove_after_another_prune(folder, options):
        if not nested:  # a second pruner runs to the end in the middle of the first one
            nested.append(folder)
            checkpoint._prune(root, 2)
        real(folder, options)
    monkeypatch.setattr(checkpoint, "_remove_step", remove_after_another_prune)
    checkpoint._prune(root, 2)
    assert [n for _, n in checkpoint.steps(root)] == ["step-0000004", "step-0000003"]
    assert all(verify(step_file(out, s), s) is None for s in (4, 3))


@pytest.mark.parametrize("damage", ["pruned", "half-deleted", "missing-listed", "swapped-parts", "renamed"])
def test_stale_latest_or_a_lying_file_list_falls_back_with_a_note(out, damage, caplog):
    save_step(out, 2, world=3)
    save_step(out, 4, world=3)
    if damage == "pruned":
        rm(step_file(out, 4))
    elif damage == "half-deleted":  # files.json kept, a listed file gone
        rm(step_file(out, 4, "optim.pt"))
    elif damage == "missing-listed":  # files.json names a rank part that is not there
        rm(step_file(out, 4, "rank-00002.json"))
    elif damage == "swapped-parts":
        one, two = cat(step_file(out, 4, "rank-00001.json")), cat(step_file(out, 4, "rank-00002.json"))
        put(step_file(out, 4, "rank-00001.json"), two)
        put(step_file(out, 4, "rank-00002.json"), one)
    else:  # step 4's folder renamed to step 6: its files.json names step 4
        fs, src = fsspec.core.url_to_fs(step_file(out, 4))
        fs.mv(src, fsspec.core.url_to_fs(step_file(out, 6))[1], recursive=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.train.checkpoint"):
        assert checkpoint.choose(out) == "step-0000002"
    assert caplog.records  # the fallback is said, never silent
    assert checkpoint.load(out, "step-0000002").step == 2


def test_a_rank_part_from_another_step_is_refused():
    out = mem_url()
    save_step(out, 2)
    save_step(out, 4)
    stale = cat(step_file(out, 2, "rank-00001.json"))
    put(step_file(out, 4, "rank-00001.json"), stale)
    listed = json.loads(cat(step_file(out, 4, "files.json")))
    size, digest = checkpoint.sha256_bytes(stale)
    listed["files"]["rank-00001.json"] = {"bytes": size, "sha256": digest}
    put(step_file(out, 4, "files.json"), json.dumps(listed).encode())
    with pytest.raises(CheckpointError, match="rank-00001.json"):
        checkpoint.load(out, "step-0000004")


# -- credentials never written -----------------------------------------------------------------
def header_for(train_url: str) -> str:
    from pipeline.train.loop import audit_header
    args = SimpleNamespace(train=train_url, seed=0, batch_size=2, grad_accum=1, num_workers=0, pack=None)
    ds = type("DS", (), {"manifest": SimpleNamespace(identity="id", num_records=4), "__len__": lambda self: 4})()
    return json.dumps(audit_header(args, ds, SimpleNamespace(world_size=1)))


@pytest.mark.parametrize("url", ["https://alice:SECRETXYZ@host/train", "https://h/t?X-Amz-Signature=SECRETXYZ",
                                 "https://h/t?token=SECRETXYZ&x=1"])
def test_the_audit_header_and_checkpoint_meta_hold_no_credential(url):
    assert "SECRETXYZ" not in header_for(url) and "SECRETXYZ" not in shards.redact(url)


def test_a_password_with_an_at_sign_is_not_written():
    assert "XYZ" not in header_for("https://alice:s3cr@tXYZ@host/train")


# -- audit parts (remote form) ---------------------------------------------------------------
N = 8  # records; world 1, batches of 2: 4 steps per epoch, two epochs = steps 1..8


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    return build_set(tmp_path_factory.mktemp("hostile-audit"), n=N, max_records=4, name="train")


HEADER = {"audit": 1, "rank": 0, "train": "memory://x", "world_size": 1, "seed": 0, "shuffle": True,
          "num_records": N, "samples_per_rank": N, "first_step": 1}


def step_line(step: int) -> str:
    epoch, i = divmod(step - 1, 4)
    ids = [audit.sample_id(k // 4, k % 4) for k in (2 * i, 2 * i + 1)]
    return json.dumps({"step": step, "epoch": epoch, "ids": ids, "pads": []})


def write_audit_part(run: str, steps: list[int], header: dict = HEADER, name_step: int | None = None,
                     lines: list[str] | None = None) -> str:
    url = audit_log.part_url(f"{run}/audit", 0, name_step or steps[-1])
    MEM.pipe(url, ("\n".join([json.dumps(header), *(lines or map(step_line, steps))]) + "\n").encode())
    return url


def audited(run: str, train_set: str) -> audit.Finding:
    return audit.audit(run, train_url=train_set)


def two_epochs(kept=(2, 4, 6, 8)) -> str:
    """A run whose parts each hold steps last-1 and last, for each last in ``kept``."""
    run = mem_url()
    for last in kept:
        write_audit_part(run, [last - 1, last])
    return run


def test_two_clean_epochs_in_parts_pass(train_set):
    assert audited(two_epochs(), train_set).ok


@pytest.mark.parametrize("kept", [(2, 6, 8), (2, 4, 8)], ids=["epoch0-gap", "last-epoch-gap"])
def test_a_lost_part_fails_the_audit(train_set, kept):
    assert not audited(two_epochs(kept), train_set).ok  # one part (two steps) missing on the only rank


def test_overlapping_parts_fail_as_duplicates(train_set):
    run = two_epochs()
    write_audit_part(run, [3], name_step=3)  # step 3 logged twice
    found = audited(run, train_set)
    assert not found.ok and any("more than once" in line for line in found.lines)


def test_a_part_of_another_run_is_refused(train_set):
    run = mem_url()
    write_audit_part(run, [1, 2])
    write_audit_part(run, [3, 4], header={**HEADER, "seed": 7})
    try:
        found = audited(run, train_set)
    except ValueError as exc:  # refused outright, naming the part
        assert "rank0.part-0000004" in str(exc)
        return
    assert not found.ok and any("seed=7" in line for line in found.lines)


@pytest.mark.parametrize("bad", ["torn", "no epoch"])
def test_a_damaged_line_in_a_part_is_one_line_naming_the_part(train_set, bad):
    run = mem_url()
    line = step_line(2)[:20] if bad == "torn" else json.dumps({"step": 2, "ids": [], "pads": []})
    write_audit_part(run, [1, 2], lines=[step_line(1), line])
    with pytest.raises(ValueError, match=r"rank0\.part-0000002\.jsonl"):
        audited(run, train_set)


# -- audit parts cut back on resume (pipeline/train/audit_log.py truncate_parts) -----------------
RESUME_HEADER = {"train": "memory://x", "identity": "id", "world_size": 1, "seed": 0, "shuffle": True,
                 "num_records": 6, "samples_per_rank": 6}


def stored_steps(run: str) -> list[int]:
    folder = f"{run}/audit"
    lines = [x for n in shards.list_names(folder) for x in MEM.cat(f"{folder}/{n}").decode().splitlines()[1:]]
    return sorted(json.loads(x)["step"] for x in lines if x.strip())


def six_steps(run: str) -> None:
    log = audit_log.AuditLog(run, 0, RESUME_HEADER)
    for step in range(1, 7):
        log.record(step, 0, [f"00000:{step:06d}"], [False])
    log.close()


def test_a_resume_under_another_seed_is_refused_naming_the_part():
    run = mem_url()
    six_steps(run)
    with pytest.raises(ValueError, match=r"rank0\.part-0000006\.jsonl.*seed=0.*1"):
        audit_log.AuditLog(run, 0, {**RESUME_HEADER, "seed": 1}, 4)


def test_a_damaged_line_before_the_checkpoint_is_refused_not_dropped():
    run = mem_url()
    six_steps(run)
    url = f"{run}/audit/rank0.part-0000006.jsonl"
    lines = MEM.cat(url).decode().split("\n")
    lines[2] = lines[2][:15]  # step 2's line torn
    MEM.pipe(url, "\n".join(lines).encode())
    with pytest.raises(ValueError, match="rank0.part-0000006.jsonl:3"):
        audit_log.AuditLog(run, 0, RESUME_HEADER, 4)


def test_a_failure_while_cutting_a_part_loses_no_line_before_the_checkpoint(monkeypatch):
    run = mem_url()
    six_steps(run)
    monkeypatch.setattr(audit_log, "write_bytes_atomic", lambda *a: (_ for _ in ()).throw(Boom("write")))
    with pytest.raises(Boom):
        audit_log.AuditLog(run, 0, RESUME_HEADER, 4)
    assert [s for s in stored_steps(run) if s <= 4] == [1, 2, 3, 4]


def test_a_part_whose_name_understates_its_steps_is_cut_by_its_lines():
    run = mem_url()
    six_steps(run)
    MEM.mv(f"{run}/audit/rank0.part-0000006.jsonl", f"{run}/audit/rank0.part-0000003.jsonl")
    try:
        audit_log.AuditLog(run, 0, RESUME_HEADER, 4).close()
    except ValueError:
        return  # refusing is as good as cutting
    assert stored_steps(run) == [1, 2, 3, 4]


# -- elastic: an independent brute-force reference ---------------------------------------------
def ref_order(part: list[int], window: int, key: tuple, shuffle: bool) -> list[int]:
    """The order a worker's stream yields its part: windows, each permuted by window_order."""
    if not shuffle:
        return part
    wins = [part[i:i + window] for i in range(0, len(part), window)]
    return [w[j] for k, w in enumerate(wins) for j in window_order(len(w), *key, k)]


def ref_layout(seq: list[int], world: int, workers: int) -> dict:
    """(rank, worker) -> [(sequence index)] of one segment reading ``seq``; indices >= len(seq) are pads."""
    size = -(-len(seq) // world) if seq else 0
    return {(r, w): list(range(r * size + w * size // workers, r * size + (w + 1) * size // workers))
            for r in range(world) for w in range(workers)}


def ref_positions(plan: list, where: dict) -> list[tuple[int, bool]]:
    return [(where[s.shard, rec], s.pad) for s in plan for rec in range(s.start, s.stop)]


@settings(max_examples=150, deadline=None)
@given(st.data(), st.lists(st.integers(0, 25), min_size=1, max_size=5), st.integers(1, 9), st.integers(0, 2**31),
       st.booleans(), st.lists(st.tuples(st.integers(1, 12), st.integers(1, 4), st.integers(1, 40),
                                         st.integers(1, 40)), min_size=1, max_size=4),
       st.integers(1, 12), st.integers(1, 4))
def test_elastic_chain_matches_a_brute_force_reference(data, sizes, block, seed, shuffle, changes, world, workers):
    total, epoch = sum(sizes), 1
    where, pos = {}, 0
    for b in split.epoch_blocks(sizes, block, seed, epoch, shuffle):
        for rec in range(b.start, b.stop):
            where[b.shard, rec], pos = pos, pos + 1
    seq, segments, delivered = list(range(total)), [], Counter()
    for world_s, workers_s, batch, window in changes:
        assert elastic.remaining(total, segments, seed, epoch, shuffle).tolist() == seq
        counts, gone = [[0] * workers_s for _ in range(world_s)], set()
        for (r, w), part in ref_layout(seq, world_s, workers_s).items():
            plan = elastic.plan_after(sizes, block, seed, epoch, shuffle, segments, r, world_s, w, workers_s)
            assert ref_positions(plan, where) == [(seq[i % len(seq)], i >= len(seq)) for i in part]
            done = min(len(part), batch * data.draw(st.integers(0, -(-len(part) // batch) + 1)))
            counts[r][w] = done
            gone.update(i for i in ref_order(part, window, (seed, epoch, r, w), shuffle)[:done] if i < len(seq))
        delivered.update(seq[i] for i in gone)
        segments.append(Segment.from_json(json.loads(json.dumps(Segment(world_s, workers_s, batch, window,
                                                                        counts).to_json()))))
        seq = [p for i, p in enumerate(seq) if i not in gone]
    final = ref_layout(seq, world, workers)
    for (r, w), part in final.items():
        plan = elastic.plan_after(sizes, block, seed, epoch, shuffle, segments, r, world, w, workers)
        assert ref_positions(plan, where) == [(seq[i % len(seq)], i >= len(seq)) for i in part]
        delivered.update(seq[i] for i in part if i < len(seq))
    assert delivered == Counter(range(total))  # exactly once: none lost, none twice
    sized = elastic.worker_counts_after(total, segments, seed, epoch, shuffle, world, workers)
    assert sized == [len(final[0, w]) for w in range(workers)]


@pytest.mark.parametrize("done", [-2, 3, 12, 2**70], ids=["negative", "not-whole-batch", "past-the-part", "huge"])
def test_impossible_counts_are_one_line_naming_rank_and_worker(done):
    segment = Segment(2, 1, 2, 4, [[2], [done]])  # 10 records: 5 per rank
    with pytest.raises(ValueError, match=rf"rank 1 worker 0 delivered {done}; valid: a multiple of 2 up to 5"):
        elastic.remaining(10, [segment], 0, 0, True)


def test_windows_larger_than_parts_empty_epochs_and_a_world_beyond_the_records():
    assert elastic.remaining(6, [Segment(2, 1, 1, 10**12, [[2], [3]])], 3, 0, True).size == 1
    assert elastic.plan_after([0, 0], 3, 0, 0, True, [], 0, 4, 0, 2) == []
    assert elastic.worker_counts_after(0, [], 0, 0, True, 3, 2) == [0, 0]
    plans = [elastic.plan_after([2], 1, 0, 0, False, [], r, 5, 0, 1) for r in range(5)]
    assert [p[0].pad for p in plans] == [False, False, True, True, True]


@pytest.mark.parametrize("field", ["world", "workers", "batch_size", "window"])
@pytest.mark.parametrize("value", [0, -1, 2.0, "2", True, None])
def test_bad_topology_fields_name_the_field(field, value):
    entry = {"world": 1, "workers": 1, "batch_size": 1, "window": 4, "delivered": [[0]], field: value}
    with pytest.raises(ValueError, match=rf"Segment\({field}="):
        Segment.from_json(entry)


def entry_with(delivered, workers: int = 1) -> dict:
    return {"world": 1, "workers": workers, "batch_size": 1, "window": 4, "delivered": delivered}


@pytest.mark.parametrize("entry", [entry_with([[4.7]]), entry_with([["4"]]), entry_with([[True]]),
                                   entry_with(["12"], workers=2), entry_with({"0": [0]}), None, 7,
                                   "world workers batch_size window delivered"])
def test_a_segment_entry_of_the_wrong_json_types_is_a_value_error(entry):
    with pytest.raises(ValueError, match="elastic segment|delivered"):
        Segment.from_json(entry)


def test_a_segment_of_numpy_integers_saves_as_json():
    segment = Segment(np.int64(2), np.int64(1), np.int64(4), np.int64(8), [[np.int64(4)], [np.int64(0)]])
    assert Segment.from_json(json.loads(json.dumps(segment.to_json()))) == segment


@pytest.mark.parametrize("call", ["negative shard", "world 0", "world -1"])
def test_bad_plan_arguments_are_value_errors_naming_them(call):
    with pytest.raises(ValueError, match="shard_sizes|world|workers"):
        if call == "negative shard":
            elastic.plan_after([-3, 5], 2, 0, 0, False, [], 0, 1, 0, 1)
        else:
            elastic.worker_counts_after(10, [], 0, 0, False, int(call.split()[1]), 1)
