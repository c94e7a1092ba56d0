"""The audit on object stores: parts cut back on resume by the steps their lines hold, a cut that
fails halfway repaired by the next resume (each kept step exactly once), damaged or mixed parts
refused naming the part; and ``shards audit`` failing on steps missing from the logs (a lost part
in a partial epoch, a gap between stretches, a line before its stretch), in-process on memory://."""
from __future__ import annotations

import json
import uuid

import fsspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import shards
from pipeline.train import audit_log
from shards import audit
from tests.conftest import build_set

pytestmark = pytest.mark.timeout(60)
MEM = fsspec.filesystem("memory")
FIELDS = {"train": "memory://x", "identity": "id", "world_size": 1, "seed": 0, "shuffle": True,
          "num_records": 6, "samples_per_rank": 6}


class Boom(RuntimeError):
    """The failure injected into a write or a delete."""


def mem_url() -> str:
    return f"memory://audit-parts-{uuid.uuid4().hex[:10]}/run"


def logged(run: str, steps: int, syncs=(), accum: int = 1) -> None:
    """A rank-0 run of ``steps`` steps (``accum`` lines each), a part flushed at each step of ``syncs``."""
    log = audit_log.AuditLog(run, 0, FIELDS)
    for step in range(1, steps + 1):
        for micro in range(accum):
            log.record(step, 0, [f"00000:{step:04d}{micro:02d}"], [False])
        if step in syncs:
            log.sync()
    log.close()


def stored(run: str) -> dict[str, list[int]]:
    """part name -> the steps of its lines."""
    folder = f"{run}/audit"
    return {n: [json.loads(t)["step"] for t in MEM.cat(f"{folder}/{n}").decode().splitlines()[1:]]
            for n in shards.list_names(folder)}


def all_steps(run: str) -> list[int]:
    return sorted(s for steps in stored(run).values() for s in steps)


def failing_once(monkeypatch, name: str, at: int) -> None:
    """The ``at``-th call of audit_log.``name`` raises Boom (0: the first)."""
    real, calls = getattr(audit_log, name), []

    def once(*args):
        calls.append(args)
        if len(calls) - 1 == at:
            raise Boom(name)
        return real(*args)
    monkeypatch.setattr(audit_log, name, once)


# -- cutting parts on resume -----------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 10), syncs=st.sets(st.integers(1, 10)), resume=st.integers(0, 10),
       again=st.integers(0, 10), call=st.sampled_from(["write_bytes_atomic", "remove_url"]), at=st.integers(0, 3))
@example(steps=6, syncs={2}, resume=4, again=4, call="write_bytes_atomic", at=0)  # the cut copy not written
@example(steps=6, syncs={2}, resume=4, again=3, call="remove_url", at=0)  # the old part not deleted
def test_a_cut_that_fails_anywhere_is_repaired_by_the_next_resume(steps, syncs, resume, again, call, at):
    """Any write or delete of a cut fails; a resume after it (at that step or an earlier one) keeps every
    step up to it exactly once, each part named by its last step."""
    run, again = mem_url(), min(again, resume)
    logged(run, steps, syncs, accum=2)
    with pytest.MonkeyPatch.context() as patch:
        failing_once(patch, call, at)
        try:
            audit_log.AuditLog(run, 0, FIELDS, resume).close()
        except Boom:
            assert {s for s in all_steps(run) if s <= resume} == set(range(1, min(steps, resume) + 1))
    audit_log.AuditLog(run, 0, FIELDS, again).close()
    assert all_steps(run) == sorted(2 * list(range(1, min(steps, again) + 1)))
    assert all(int(n.split("-")[1][:7]) == max(s) for n, s in stored(run).items())


@pytest.mark.parametrize("name", [3, 9], ids=["understated", "overstated"])
def test_a_part_misnamed_is_cut_by_its_lines_and_renamed(name):
    run = mem_url()
    logged(run, 6, syncs=(2,))
    MEM.mv(f"{run}/audit/rank0.part-0000006.jsonl", f"{run}/audit/rank0.part-{name:07d}.jsonl")
    audit_log.AuditLog(run, 0, FIELDS, 4).close()
    assert stored(run) == {"rank0.part-0000002.jsonl": [1, 2], "rank0.part-0000004.jsonl": [3, 4]}


def test_two_parts_with_other_lines_for_one_step_are_refused_naming_both():
    run = mem_url()
    logged(run, 4, syncs=(2,))
    text = MEM.cat(f"{run}/audit/rank0.part-0000002.jsonl").decode().replace("00000:0002", "00000:9999")
    MEM.pipe(f"{run}/audit/rank0.part-0000003.jsonl", text.encode())  # step 2 again, other samples
    with pytest.raises(ValueError, match=r"rank0\.part-0000003\.jsonl: step 2 is also in .*rank0\.part-0000002"):
        audit_log.AuditLog(run, 0, FIELDS, 4)


def test_a_cut_copy_never_overwrites_another_part():
    run = mem_url()
    logged(run, 6, syncs=(2,))
    misnamed = f"{run}/audit/rank0.part-0000004.jsonl"
    MEM.mv(f"{run}/audit/rank0.part-0000002.jsonl", misnamed)  # steps 1, 2 under the name of step 4
    before = MEM.cat(misnamed)
    with pytest.raises(ValueError, match=r"would replace rank0\.part-0000004\.jsonl"):
        audit_log.AuditLog(run, 0, FIELDS, 4)
    assert MEM.cat(misnamed) == before


@pytest.mark.parametrize("line", [3, 6])
def test_a_damaged_line_in_a_part_is_refused_naming_part_and_line(line):
    """Parts are written whole: a damaged line is no torn write, and its step (before or past the
    checkpoint) cannot be known, so it is never dropped."""
    run = mem_url()
    logged(run, 6)
    url = f"{run}/audit/rank0.part-0000006.jsonl"
    texts = MEM.cat(url).decode().split("\n")
    texts[line - 1] = texts[line - 1][:12]
    MEM.pipe(url, "\n".join(texts).encode())
    with pytest.raises(ValueError, match=rf"rank0\.part-0000006\.jsonl:{line}: not an audit line"):
        audit_log.AuditLog(run, 0, FIELDS, 4)
    assert MEM.cat(url).decode().split("\n") == texts  # left as found


# -- shards audit: steps missing from the logs ---------------------------------------------------
N = 8  # world 1, batches of 2: 4 steps per epoch


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    return build_set(tmp_path_factory.mktemp("audit-parts"), n=N, max_records=4, name="train")


def header(world: int, first: int, rank: int = 0) -> dict:
    return {"audit": 1, "rank": rank, "train": "memory://x", "world_size": world, "seed": 0, "shuffle": True,
            "num_records": N, "samples_per_rank": N // world, "first_step": first}


def line(step: int, ids: list[int], epoch: int = 0) -> dict:
    return {"step": step, "epoch": epoch, "ids": [audit.sample_id(k // 4, k % 4) for k in ids], "pads": []}


def audit_of(train_set: str, sections: dict[int, list]) -> audit.Finding:
    """rank -> [header or line, ...] written as local rank files, audited."""
    run = mem_url()
    for rank, entries in sections.items():
        MEM.pipe(f"{run}/audit/rank{rank}.jsonl", ("\n".join(map(json.dumps, entries)) + "\n").encode())
    return audit.audit(run, train_url=train_set)


def fails_with(found: audit.Finding, text: str) -> bool:
    return not found.ok and any(x.startswith("FAIL") and text in x for x in found.lines)


def test_steps_in_order_with_micro_batches_repeating_a_step_pass(train_set):
    found = audit_of(train_set, {0: [header(1, 1), line(1, [0]), line(1, [1]), line(2, [2, 3]), line(3, [4])]})
    assert found.ok, found.lines


def test_a_gap_inside_a_partial_epoch_fails(train_set):
    found = audit_of(train_set, {0: [header(1, 1), line(1, [0, 1]), line(4, [6, 7], 0)]})
    assert fails_with(found, "2 step(s) between 1 and 4 are not in the logs, e.g. [2, 3]")


def test_a_gap_between_stretches_fails(train_set):
    """Stretch 1 (world 1) logged steps 1-2; the next stretch (world 2) starts at step 4: step 3 is lost."""
    found = audit_of(train_set, {0: [header(1, 1), line(1, [0]), line(2, [1]), header(2, 4), line(4, [2])],
                                 1: [header(2, 4, rank=1), line(4, [3])]})
    assert fails_with(found, "steps 3..3 are not in the logs (the stretch from step 4)")


def test_a_line_before_its_stretch_fails(train_set):
    found = audit_of(train_set, {0: [header(1, 1), line(1, [0]), line(2, [1]), header(2, 3), line(2, [2])],
                                 1: [header(2, 3, rank=1), line(2, [3])]})
    assert fails_with(found, "step 2 logged before its stretch's first step 3")


def test_stretches_that_continue_each_other_pass(train_set):
    found = audit_of(train_set, {0: [header(1, 1), line(1, [0, 1]), line(2, [2, 3]), header(2, 3), line(3, [4])],
                                 1: [header(2, 3, rank=1), line(3, [5])]})
    assert found.ok, found.lines


@pytest.mark.parametrize("counts,fails", [((2, 2, 2), False), ((2, 2, 1), False), ((2, 1, 2), True),
                                          ((2, 3, 2), True)], ids=["whole", "last-cut", "one-lost", "one-extra"])
def test_every_step_but_the_last_holds_grad_accum_micro_batches(train_set, counts, fails):
    ids = iter(range(N))
    lines = [line(step, [next(ids)]) for step, n in enumerate(counts, start=1) for _ in range(n)]
    found = audit_of(train_set, {0: [{**header(1, 1), "grad_accum": 2}, *lines]})
    assert found.ok != fails, found.lines
    assert not fails or fails_with(found, "with other than grad_accum=2 micro-batch lines")
