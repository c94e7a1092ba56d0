"""The packed LM audit: every token of every document trained exactly once per complete epoch.

The writer turns packed batches into document segments (pipeline.train.audit_log.Segments);
``shards audit`` tiles them.  Real packed streams (workers 0 and 2, blocks shorter than a
document) and real training runs pass; tampered logs (a segment duplicated, dropped,
overlapping, a length changed) fail naming the document and the epoch.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from pipeline.loader.make import make_loader
from pipeline.pack.stream import PackedStream
from pipeline.stream import ShardStream, StreamConfig
from pipeline.train import loop
from pipeline.train.audit_log import AuditLog
from shards import audit, load_manifest
from tests.conftest import ROOT, build_set, minilm_path
from tests.helpers.trainkit import ENV, tiny_gpt2, train_args

N = 41


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit-lm")
    return {"pretok": build_set(tmp, n=N, max_records=5, name="pretok", labels=False, tokenizer=minilm_path()),
            "plain": build_set(tmp, n=N, max_records=5, name="plain", labels=False),
            "gpt2": tiny_gpt2(tmp / "gpt2")}


def header_of(packed: PackedStream, ds: ShardStream, url: str) -> dict:
    fmt = packed.format
    return {"train": str(pathlib.Path(url).resolve()), "identity": ds.manifest.identity, "world_size": 1,
            "seed": 0, "shuffle": True, "num_records": ds.manifest.num_records, "samples_per_rank": len(ds),
            "pack": {"seq_len": packed.seq_len, "sep_id": fmt.sep_id, "prefix": list(fmt.prefix),
                     "suffix": list(fmt.suffix)}}


def audited(run, capsys) -> tuple[int, str]:
    rc = audit.main([str(run)])
    return rc, capsys.readouterr().out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind,workers,seq_len", [("pretok", 0, 5), ("plain", 2, 3), ("pretok", 2, 32)])
def test_packed_stream_segments_tile_every_document(sets, tmp_path, capsys, kind, workers, seq_len):
    """Blocks shorter than a document (a document in 2-3 blocks), two epochs, workers 0 and 2."""
    ds = ShardStream(sets[kind], tokenizer=None if kind == "pretok" else minilm_path(), max_length=None,
                     shuffle=True, seed=3, config=StreamConfig(keep_text=False))
    packed = PackedStream(ds, seq_len)
    log = AuditLog(str(tmp_path), 0, header_of(packed, ds, sets[kind]))
    loader = make_loader(packed, 3, workers)
    step = 0
    for epoch in (0, 1):
        packed.set_epoch(epoch)
        for batch in loader:
            step += 1
            log.record_batch(step, epoch, batch)
    log.close()
    rc, out = audited(tmp_path, capsys)
    assert rc == 0, out
    assert out.count("(complete): 41/41 documents whole") == 2, out
    assert "0 duplicated, 0 overlapping, 0 unknown" in out
    segs = [s for line in (tmp_path / "audit" / "rank0.jsonl").read_text().splitlines()[1:]
            for s in json.loads(line)["segs"]]
    assert max(s[1] for s in segs) > 0  # some documents really were cut across blocks


def train_packed(argv: list[str]) -> int:
    """``python -m pipeline.train ... --pack 32 --audit`` in this process."""
    return loop.main(argv)


def lm_args(sets, kind: str, out, steps: int, *extra: str) -> list[str]:
    return train_args(sets[kind], None, sets["gpt2"], out, steps, 2, "lm", "--pack", "32", "--audit",
                      "--seed", "1", *extra)


@pytest.fixture(scope="module")
def packed_run(sets, tmp_path_factory):
    """A one-process packed run over a full epoch and a part of the next (pre-tokenized set)."""
    out = tmp_path_factory.mktemp("packed-run") / "run"
    assert train_packed(lm_args(sets, "pretok", out, 7)) == 0  # 5 steps an epoch
    return out


@pytest.mark.timeout(120)
def test_one_process_packed_run_passes(packed_run, capsys):
    rc, out = audited(packed_run, capsys)
    assert rc == 0, out
    complete = [x for x in out.splitlines() if "(complete)" in x]
    assert len(complete) == 1 and "41/41 documents whole" in complete[0], out
    tokens = complete[0].split(" tokens trained")[0].split()[-1]  # "T/T": every stored token once
    assert tokens.split("/")[0] == tokens.split("/")[1], complete[0]
    assert "(partial)" in out and "OK: 1 complete epoch(s), 1 partial; each token of each document" in out


@pytest.mark.timeout(120)
def test_on_the_fly_tokenized_run_passes(sets, tmp_path, capsys):
    assert train_packed(lm_args(sets, "plain", tmp_path / "run", 7)) == 0
    rc, out = audited(tmp_path / "run", capsys)
    assert rc == 0, out
    assert "epoch 0 (complete): 41/41 documents whole" in out


@pytest.mark.timeout(180)
def test_resume_mid_document_continues_the_segments(sets, tmp_path, capsys):
    """Stopped at step 3 (a checkpoint inside a document), extended to 7: the resumed writer
    continues the open documents from the log, and the audit passes."""
    out = tmp_path / "run"
    assert train_packed(lm_args(sets, "pretok", out, 3, "--checkpoint-every", "3")) == 0
    assert train_packed(lm_args(sets, "pretok", out, 7, "--checkpoint-every", "3", "--resume")) == 0
    rc, text = audited(out, capsys)
    assert rc == 0, text
    assert "epoch 0 (complete): 41/41 documents whole" in text
    assert not any(s[1] is None for line in (out / "audit" / "rank0.jsonl").read_text().splitlines()[1:]
                   for s in json.loads(line)["segs"])


def test_cli_accepts_pack_with_audit():
    """The real command line takes --audit with --pack (the audit checks token segments)."""
    args = loop.parse_args(["--train", "x", "--steps", "1", "--batch-size", "1", "--task", "lm",
                            "--pack", "32", "--audit"])
    assert args.audit and args.pack == 32


# -- tampering ---------------------------------------------------------------------------
def tampered(run: pathlib.Path, tmp_path: pathlib.Path, edit) -> pathlib.Path:
    """A copy of the run whose rank-0 log has gone through ``edit(lines) -> doc``."""
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    path = bad / "audit" / "rank0.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    doc = edit(lines)
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return bad, doc


def epoch0_segments(lines):
    return [(line, i) for line in lines[1:] if line.get("epoch") == 0 for i in range(len(line["segs"]))]


def continued_segment(lines):
    """An epoch-0 segment that does not start its document (offset > 0)."""
    return next((line, i) for line, i in epoch0_segments(lines) if line["segs"][i][1] > 0)


def duplicate(lines):
    line, i = epoch0_segments(lines)[3]
    line["segs"].append(list(line["segs"][i]))
    return line["segs"][i][0]


def drop(lines):
    line, i = continued_segment(lines)
    return line["segs"].pop(i)[0]


def overlap(lines):
    line, i = continued_segment(lines)
    line["segs"][i][1] -= 1
    line["segs"][i][2] += 1
    return line["segs"][i][0]


def change_length(lines):
    line, i = next((x, i) for x, i in epoch0_segments(lines) if len(x["segs"][i]) == 4)
    line["segs"][i][3] += 1
    return line["segs"][i][0]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("edit,words", [(duplicate, "duplicated"), (drop, "never trained"),
                                        (overlap, "overlapping"), (change_length, "lengths that disagree")])
def test_tampered_log_fails_naming_document_and_epoch(packed_run, tmp_path, capsys, edit, words):
    bad, doc = tampered(packed_run, tmp_path, edit)
    rc, out = audited(bad, capsys)
    assert rc == 1, out
    fails = [x for x in out.splitlines() if x.startswith("FAIL")]
    assert any(x.startswith("FAIL epoch 0:") and doc in x and words in x for x in fails), out


def test_filler_batch_that_lists_segments_fails(packed_run, tmp_path, capsys):
    def filler(lines):
        lines.append({"step": lines[-1]["step"] + 1, "epoch": lines[-1]["epoch"], "segs": [["00000:000000", 0, 1]],
                      "filler": True})
        return "00000:000000"
    bad, _ = tampered(packed_run, tmp_path, filler)
    rc, out = audited(bad, capsys)
    assert rc == 1 and "a filler micro-batch lists 1 segment(s)" in out, out


def test_stored_token_counts_are_the_expected_lengths(sets, packed_run):
    """The checker's lengths come from the shards: a document's stored ids minus [CLS]/[SEP], plus the separator."""
    header = json.loads((packed_run / "audit" / "rank0.jsonl").read_text().splitlines()[0])
    manifest = load_manifest(sets["pretok"])
    lengths = audit.document_lengths(manifest, sets["pretok"], header["pack"], None)
    assert header["pack"]["prefix"] and header["pack"]["suffix"]  # MiniLM adds [CLS] ... [SEP]
    assert len(lengths) == N and all(n >= 2 for n in lengths.values())


# -- two processes -------------------------------------------------------------------------
@pytest.mark.dist
@pytest.mark.timeout(300)
def test_two_process_packed_run_passes(sets, tmp_path, capsys):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pipeline.train",
           *lm_args(sets, "pretok", out, 8, "--num-workers", "2")]
    proc = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rc, text = audited(out, capsys)
    print(text)
    assert rc == 0, text
    assert "world size 2" in text and "epoch 0 (complete): 41/41 documents whole" in text
