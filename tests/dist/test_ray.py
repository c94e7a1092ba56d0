"""The Ray engine on a local Ray instance (``ray.init(num_cpus=2)``): same output as the
local engine, retried tasks (a worker killed mid-unit, a transient error) still give a
complete and identical shard set, bad input fails fast, and a clear error without Ray."""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

from shards.build.driver import BuildConfig, build, run_unit
from shards.corpus.read import BadRecordError, CorpusSpec
from shards.build.engines import EngineError
from shards.build.writer import Limits
from tests.helpers.data import labelled_records, write_jsonl

pytestmark = pytest.mark.timeout(300)
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    # workers import this module by name for the fault-injecting tasks below
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def corpus(tmp_path):
    recs = labelled_records(3000)
    return [write_jsonl(tmp_path / "in" / f"f{k}.jsonl", recs[k * 1000:(k + 1) * 1000]) for k in range(3)]


def cfg(out, **kw):
    return BuildConfig(out=str(out), format="tar", spec=CorpusSpec(label_field="label"),
                       limits=Limits(max_records=37), split_bytes=30_000, progress=False, **kw)


def snapshot(out) -> dict[str, bytes]:
    out = pathlib.Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _first_attempt(cfg, index) -> bool:
    """True once per unit: leaves a marker beside the output folder."""
    flag = pathlib.Path(cfg.out).parent / f"attempted-{index}"
    if flag.exists():
        return False
    flag.write_text(str(os.getpid()))
    return True


def die_mid_unit(cfg, index, unit, labels, key, on_progress=None):
    """Unit 1's first attempt writes some of its parts, then its worker process dies."""
    def progress(*_):
        if index == 1 and _first_attempt(cfg, index):
            os._exit(1)
    return run_unit(cfg, index, unit, labels, key, progress)


def flaky_io(cfg, index, unit, labels, key, on_progress=None):
    if index == 2 and _first_attempt(cfg, index):
        raise ConnectionResetError("injected: connection reset by peer")
    return run_unit(cfg, index, unit, labels, key, on_progress)


def test_same_output_as_local_engine(tmp_path, corpus, ray_local):
    from shards.build.ray_engine import make_engine

    local = build(corpus, cfg(tmp_path / "local"))
    engine = make_engine()
    result = build(corpus, cfg(tmp_path / "ray"), engine=engine)
    assert len(result.units) > 3  # several units, some byte ranges
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
    assert result.manifest == local.manifest
    assert engine.summary and engine.summary[0].startswith("node ")
    engine.close()
    assert ray_local.is_initialized()  # an engine never shuts down a Ray it did not start


def test_worker_killed_mid_unit_is_retried(tmp_path, corpus, ray_local):
    from shards.build.ray_engine import RayEngine

    build(corpus, cfg(tmp_path / "local"))
    result = build(corpus, cfg(tmp_path / "ray"), engine=RayEngine(task=die_mid_unit))
    assert (tmp_path / "attempted-1").exists()  # the fault did happen
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
    assert result.manifest.num_records == 3000


def test_transient_error_is_retried(tmp_path, corpus, ray_local):
    from shards.build.ray_engine import RayEngine

    build(corpus, cfg(tmp_path / "local"))
    build(corpus, cfg(tmp_path / "ray"), engine=RayEngine(task=flaky_io))
    assert (tmp_path / "attempted-2").exists()
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")


def lost_file(cfg, index, unit, labels, key, on_progress=None):
    """Unit 2 fails with a permanent error, counting its attempts beside the output folder."""
    if index == 2:
        flag = pathlib.Path(cfg.out).parent / "lost-attempts"
        flag.write_text(str(int(flag.read_text()) + 1 if flag.exists() else 1))
        raise FileNotFoundError(2, "injected: no such file", "gone.jsonl")
    return run_unit(cfg, index, unit, labels, key, on_progress)


def test_permanent_error_is_not_retried(tmp_path, corpus, ray_local):
    from shards.build.ray_engine import RayEngine

    with pytest.raises(FileNotFoundError, match="injected"):
        build(corpus, cfg(tmp_path / "ray"), engine=RayEngine(task=lost_file))
    assert (tmp_path / "lost-attempts").read_text() == "1"  # once: a missing file stays missing


def test_bad_input_fails_fast_with_the_reason(tmp_path, corpus, ray_local):
    from shards.build.ray_engine import RayEngine

    pathlib.Path(corpus[1]).write_text(pathlib.Path(corpus[1]).read_text() + "{broken\n")
    with pytest.raises(BadRecordError, match=r"f1\.jsonl:1001: malformed_json"):
        build(corpus, cfg(tmp_path / "ray"), engine=RayEngine())
    assert not (tmp_path / "ray" / "index.json").exists()


def test_cli_engine_ray_prints_per_node_summary(tmp_path, corpus, ray_local, capsys):
    from shards.cli import main

    assert main(["build", *corpus, "--out", str(tmp_path / "o"), "--engine", "ray", "--label-field", "label",
                 "--max-records", "100", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "built 3000 records" in out and "\nnode " in "\n" + out and "MB/s per task" in out


def test_missing_ray_gives_install_hint(monkeypatch):
    from shards.build.ray_engine import make_engine

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(EngineError, match=r"pip install -e '\.\[ray\]'"):
        make_engine()


@pytest.mark.slow
def test_throughput_local_pool_vs_ray(tmp_path, ray_local):
    """Build MB/s of a ~50 MB jsonl corpus: local pool (2 workers) vs Ray (2 CPUs). Printed."""
    from shards.build.ray_engine import make_engine

    text = "the quick brown fox jumps over the lazy dog " * 4
    recs = [{"text": f"{i} {text}", "label": ("neg", "pos")[i % 2]} for i in range(280_000)]
    inputs = [write_jsonl(tmp_path / "in" / f"f{k}.jsonl", recs[k::8]) for k in range(8)]
    size = sum(os.path.getsize(p) for p in inputs) / 1e6
    figures = {}
    for name, engine, workers in (("local pool", None, 2), ("ray", make_engine(), 1)):
        c = BuildConfig(out=str(tmp_path / name.replace(" ", "-")), spec=CorpusSpec(label_field="label"),
                        progress=False, workers=workers)
        r = build(inputs, c, engine=engine)
        figures[name] = r.mb_per_s
        assert r.manifest.num_records == len(recs)
    assert snapshot(tmp_path / "local-pool") == snapshot(tmp_path / "ray")
    print(f"\nbuild of {size:.0f} MB jsonl (arrow, labels): " +
          ", ".join(f"{k} {v:.1f} MB/s" for k, v in figures.items()))
