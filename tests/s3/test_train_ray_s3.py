"""From s3:// end to end: a 2-process torchrun training run, and a Ray build straight to S3."""
import json
import subprocess
import sys

import pytest

import shards
from pipeline import ShardStream
from tests.helpers import trainkit
from tests.helpers.data import ROOT, labelled_records, write_jsonl

pytestmark = pytest.mark.s3


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_torchrun_two_processes_train_from_s3(s3_build_set, s3_env, s3_canary, tmp_path):
    train, evalset = s3_build_set(n=41, max_records=5, name="train"), s3_build_set(n=13, max_records=5, name="eval")
    out = tmp_path / "run"
    model = trainkit.tiny_bert(tmp_path / "bert")
    args = trainkit.train_args(train, evalset, model, out, 4, 4, "classify", "--num-workers", "2", "--audit",
                               "--checkpoint-every", "2")
    proc = subprocess.run(trainkit.torchrun(2, args), env={**trainkit.ENV, **s3_env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = trainkit.metrics(out)
    assert m["world_size"] == 2 and m["steps"] == 4 and "eval_accuracy" in m
    ids = [{i for x in trainkit.audit_lines(out, r) for i in x["ids"]} for r in (0, 1)]
    assert ids[0] and ids[1] and ids[0].isdisjoint(ids[1])
    audit = subprocess.run([sys.executable, "-m", "shards", "audit", str(out)], env={**trainkit.ENV, **s3_env},
                           capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    # the credentials reach boto through the environment only: nothing written holds them
    written = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".json", ".jsonl"))
    assert s3_canary not in written + proc.stdout + proc.stderr


@pytest.mark.timeout(300)
def test_ray_engine_builds_straight_to_s3(s3_env, s3_url, tmp_path):
    ray = pytest.importorskip("ray")
    from shards.build.driver import BuildConfig, build
    from shards.build.ray_engine import make_engine
    from shards.build.writer import Limits
    from shards.corpus.read import CorpusSpec

    recs = labelled_records(600)
    inputs = [write_jsonl(tmp_path / "in" / f"f{k}.jsonl", recs[k * 200:(k + 1) * 200]) for k in range(3)]
    cfg = lambda out: BuildConfig(out=out, spec=CorpusSpec(label_field="label"), limits=Limits(max_records=37),
                                  progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {**s3_env, "PYTHONPATH": str(ROOT)}})
    try:
        remote = build(inputs, cfg(s3_url), engine=make_engine(None)).manifest
    finally:
        ray.shutdown()
    local = build(inputs, cfg(str(tmp_path / "local"))).manifest
    assert json.loads(remote.to_json()) == json.loads(local.to_json())
    ids = [it["sample_id"] for it in ShardStream(s3_url)]
    assert len(ids) == 600 == len(set(ids))
    assert shards.load_manifest(s3_url).num_records == 600
