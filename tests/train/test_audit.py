"""shards audit: a real 2-rank run over a full epoch passes; duplicated, missing or pad-counted samples fail."""
from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from shards import audit, cli
from tests.conftest import build_set
from tests.helpers.trainkit import audit_lines, run_torchrun, tiny_bert, train_args
from tools import audit as tools_audit

N = 41  # odd: 2 ranks need one pad per epoch


def write_logs(run: pathlib.Path, train: str, per_rank_lines: list[list[dict]], per_rank: int = 21, **extra):
    (run / "audit").mkdir(parents=True, exist_ok=True)
    for rank, lines in enumerate(per_rank_lines):
        header = {"audit": 1, "rank": rank, "train": train, "world_size": len(per_rank_lines), "seed": 0,
                  "shuffle": True, "num_records": N, "samples_per_rank": per_rank, "first_step": 1, **extra}
        text = "\n".join(json.dumps(x) for x in [header, *lines]) + "\n"
        (run / "audit" / f"rank{rank}.jsonl").write_text(text)


def ids_of(train: str) -> list[str]:
    sizes = [s["num_records"] for s in json.loads((pathlib.Path(train) / "index.json").read_text())["shards"]]
    return [audit.sample_id(s, r) for s, n in enumerate(sizes) for r in range(n)]


def one_epoch(train: str) -> list[list[dict]]:
    """A correct 2-rank epoch: rank 0 the first 21 ids, rank 1 the other 20 + one pad repeat."""
    ids = ids_of(train)
    r0, r1 = ids[:21], ids[21:]
    return [[{"step": 1, "epoch": 0, "ids": r0[:11], "pads": []}, {"step": 2, "epoch": 0, "ids": r0[11:], "pads": []}],
            [{"step": 1, "epoch": 0, "ids": r1[:11], "pads": []},
             {"step": 2, "epoch": 0, "ids": r1[11:], "pads": [ids[0]]}]]


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    return build_set(tmp_path_factory.mktemp("audit"), n=N, max_records=5, name="train")


def test_correct_epoch_passes_and_prints_figures(train_set, tmp_path, capsys):
    write_logs(tmp_path, train_set, one_epoch(train_set))
    assert audit.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "epoch 0 (complete): 41/41 samples trained (100.0%)" in out
    assert "1 pad items excluded, 0 duplicated" in out and out.strip().endswith("complete epoch")


def test_duplicated_sample_fails(train_set, tmp_path, capsys):
    logs = one_epoch(train_set)
    dup = logs[0][0]["ids"][3]
    logs[1][0]["ids"][0] = dup  # rank 1 trains rank 0's sample instead of its own
    write_logs(tmp_path, train_set, logs)
    assert audit.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{dup} x2" in out and "never trained" in out  # the replaced one is now missing


def test_missing_sample_fails(train_set, tmp_path, capsys):
    logs = one_epoch(train_set)
    gone = logs[1][1]["ids"].pop()
    logs[1][1]["pads"].append(gone)  # flagged as pad instead of trained: the epoch is still "full"
    write_logs(tmp_path, train_set, logs)
    assert audit.main([str(tmp_path)]) == 1
    assert f"1 sample(s) never trained, e.g. ['{gone}']" in capsys.readouterr().out


def test_pad_counted_as_trained_fails(train_set, tmp_path, capsys):
    logs = one_epoch(train_set)
    logs[1][1]["ids"] += logs[1][1]["pads"]
    logs[1][1]["pads"] = []
    write_logs(tmp_path, train_set, logs)
    assert audit.main([str(tmp_path)]) == 1
    assert "trained more than once" in capsys.readouterr().out


def test_missing_rank_log_and_unknown_ids_fail(train_set, tmp_path, capsys):
    logs = one_epoch(train_set)
    logs[0][0]["ids"][0] = "00999:000000"
    write_logs(tmp_path, train_set, logs)
    (tmp_path / "audit" / "rank1.jsonl").unlink()
    assert audit.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "no audit log for rank(s) [1]" in out and "not in the manifest" in out


def test_partial_epoch_passes_with_coverage(train_set, tmp_path, capsys):
    logs = [[x for x in rank if x["step"] == 1] for rank in one_epoch(train_set)]
    write_logs(tmp_path, train_set, logs)
    assert audit.main([str(tmp_path)]) == 0
    assert "epoch 0 (partial): 22/41 samples trained (53.7%)" in capsys.readouterr().out


def test_no_logs_is_an_error_with_the_fix(tmp_path, capsys):
    assert audit.main([str(tmp_path)]) == 2
    assert "train with --audit" in capsys.readouterr().err


def test_cli_and_tool_entry_points(train_set, tmp_path, capsys):
    write_logs(tmp_path, train_set, one_epoch(train_set))
    assert cli.main(["audit", str(tmp_path)]) == 0
    assert tools_audit.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("OK: 1 complete epoch") == 2


@pytest.mark.dist
@pytest.mark.timeout(240)
def test_two_rank_run_over_full_epochs_passes_and_tampering_fails(train_set, tmp_path, capsys):
    run = tmp_path / "run"
    model = tiny_bert(tmp_path / "bert")
    # 2 ranks x 2 workers x batch 4: 21 samples per rank per epoch in 6 batches; 9 steps x accum 2
    # = 18 micro-batches = 3 full epochs
    run_torchrun(2, train_args(train_set, None, model, run, 9, 4, "classify", "--grad-accum", "2",
                               "--num-workers", "2", "--audit"))
    assert audit.main([str(run)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert out.count("(complete): 41/41 samples trained (100.0%)") == 3
    assert "1 pad items excluded, 0 duplicated, 0 unknown" in out
    assert "OK: 3 complete epoch(s), 0 partial" in out
    pads = [p for r in (0, 1) for x in audit_lines(run, r) for p in x["pads"]]
    assert len(pads) == 3  # one per epoch, flagged, never trained

    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    lines = (bad / "audit" / "rank1.jsonl").read_text().splitlines()
    entry = json.loads(lines[1])
    entry["ids"].append(json.loads((bad / "audit" / "rank0.jsonl").read_text().splitlines()[1])["ids"][0])
    lines[1] = json.dumps(entry)
    (bad / "audit" / "rank1.jsonl").write_text("\n".join(lines) + "\n")
    assert audit.main([str(bad)]) == 1
    assert "trained more than once" in capsys.readouterr().out


def test_other_data_of_the_same_size_fails_by_identity(train_set, tmp_path, capsys):
    from shards import load_manifest

    logs = one_epoch(train_set)
    write_logs(tmp_path / "run", train_set, logs, identity=load_manifest(train_set).identity)
    assert audit.main([str(tmp_path / "run")]) == 0
    other = build_set(tmp_path, n=N, max_records=5, name="other", labels=False)  # same size, other bytes
    assert audit.main([str(tmp_path / "run"), "--train", other]) == 1
    assert "identity" in capsys.readouterr().out


def test_manifest_listing_a_shard_twice_cannot_be_audited(train_set, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(train_set, copy)
    index = json.loads((copy / "index.json").read_text())
    index["shards"][1] = dict(index["shards"][0])  # duplicates would get distinct ids: refused
    (copy / "index.json").write_text(json.dumps(index))
    write_logs(tmp_path / "run", str(copy), one_epoch(train_set))
    assert audit.main([str(tmp_path / "run")]) == 2
    assert "shards[0] and shards[1]" in capsys.readouterr().err
