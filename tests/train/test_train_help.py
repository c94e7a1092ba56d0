"""What a user sees from ``pipeline.train``: ``--help`` that explains every option, and quiet runs.

The quiet check trains 2 steps from S3 (a local moto server, credentials in the
environment) with a model folder that has no classifier head: the three
third-party messages would all appear without ``pipeline.train.quiet``.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.train import loop as train
from pipeline.train.config import DEFAULT_LR, TrainConfig, resolve_defaults
from pipeline.train.resume import run_settings
from pipeline.world import World
from tests.helpers.data import ROOT, build_set, minilm_path
from tests.helpers.trainkit import ENV

NOISE = ("LOAD REPORT", "MISSING", "newly initialized", "set_vital", "Found credentials")


def help_entries(text: str) -> dict[str, str]:
    """option -> its help text, from argparse's --help output (entries are indented two spaces)."""
    entries, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-[-\w]+(?:[ ,][^ ]+)*?)(?:\s{2,}(.*))?$", line)
        if m and line.startswith("  -"):
            current = m.group(1).split()[0].rstrip(",")
            entries[current] = m.group(2) or ""
        elif current and line.startswith(" " * 4) and line.strip():
            entries[current] += " " + line.strip()
        elif not line.strip():
            current = None
    return entries


def test_every_option_has_help_and_shows_its_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as done:
        train.main(["--help"])  # what `python -m pipeline.train --help` prints
    assert done.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    parser = train.train_options.build_parser("x")
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 20
    for action in options:
        name = action.option_strings[0]
        text = " ".join(entries.get(name, "").split())
        assert len(text) > 15, f"{name} has no help text: {text!r}"
        if action.default not in (None, False, []):
            assert f"(default: {action.default})" in text, f"{name} does not show its default: {text!r}"
        else:
            # no fixed default: either required, a flag, or the help says what happens without it
            assert action.required or action.nargs == 0 or "default" in text, f"{name}: {text!r}"


REQUIRED = ["--train", "x", "--steps", "3", "--batch-size", "2"]


def test_config_fields_are_the_options_and_share_their_defaults():
    """Every option lands in a TrainConfig field of its argparse name, with the parser's default."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for action in train.train_options.build_parser("x")._actions:
        if action.dest == "help":
            continue
        assert action.dest in fields, f"--{action.dest} has no TrainConfig field"
        field = fields[action.dest]
        default = field.default_factory() if field.default is dataclasses.MISSING and \
            field.default_factory is not dataclasses.MISSING else field.default
        if action.required:
            assert default is dataclasses.MISSING, action.dest
        elif action.dest == "lr":  # None in the parser: the task's default, classify's for the field
            assert action.default is None and default == DEFAULT_LR["classify"]
        else:
            assert default == (tuple(action.default) if isinstance(action.default, list) else action.default), \
                action.dest
    assert set(fields) - {a.dest for a in train.train_options.build_parser("x")._actions} == {"storage_options"}


def test_parse_args_gives_a_frozen_config_with_the_derived_values():
    cfg = train.parse_args([*REQUIRED, "--task", "lm", "--storage-option", "anon=true"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.lr == DEFAULT_LR["lm"] and cfg.storage_option == ("anon=true",)
    assert cfg.storage_options == {"anon": True}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 5  # type: ignore[misc]


def test_resolve_defaults_returns_a_filled_copy():
    cfg = train.parse_args([*REQUIRED, "--task", "lm"])
    filled = resolve_defaults(cfg)
    assert cfg.model is None and cfg.tokenizer is None  # the parsed config is left as it was
    assert filled.model == "gpt2-random" and filled.tokenizer
    assert dataclasses.replace(filled, model=None, tokenizer=None) == cfg


def test_run_settings_keep_the_names_checkpoints_are_compared_by():
    """A checkpoint written before the config was a dataclass is compared key by key: the names stay."""
    cfg = train.parse_args([*REQUIRED, "--seed", "7", "--grad-accum", "2", "--num-workers", "1"])
    got = run_settings(cfg, World(1, 2), ["tid"], None)
    assert got == {"world_size": 2, "num_workers": 1, "seed": 7, "batch_size": 2, "grad_accum": 2,
                   "task": "classify", "pack": None, "train_identity": ["tid"], "eval_identity": None}


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(1, 10**6), batch=st.integers(1, 4096), accum=st.integers(1, 64), seed=st.integers(0, 2**31),
       warmup=st.floats(0, 1), lr=st.one_of(st.none(), st.floats(1e-8, 1.0)), task=st.sampled_from(["classify", "lm"]))
def test_config_holds_what_the_command_line_said(steps, batch, accum, seed, warmup, lr, task):
    argv = ["--train", "a/", "--steps", str(steps), "--batch-size", str(batch), "--grad-accum", str(accum),
            "--seed", str(seed), "--warmup", repr(warmup), "--task", task] + (["--lr", repr(lr)] if lr else [])
    cfg = train.parse_args(argv)
    assert (cfg.steps, cfg.batch_size, cfg.grad_accum, cfg.seed, cfg.task) == (steps, batch, accum, seed, task)
    assert cfg.warmup == warmup and cfg.lr == (lr or DEFAULT_LR[task])


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint, env) of a moto S3 server with a bucket; stopped after the module."""
    proc = subprocess.Popen([sys.executable, "-m", "tools.s3_server", "--port", "0", "--bucket", "quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    m = re.match(r"endpoint (http://127\.0\.0\.1:\d+)", line)
    if not m:
        proc.kill()
        pytest.fail(f"tools.s3_server did not start: {line}")
    env = {**ENV, "AWS_ENDPOINT_URL": m.group(1), "AWS_ACCESS_KEY_ID": "quiet-key",
           "AWS_SECRET_ACCESS_KEY": "quiet-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    yield env
    proc.terminate()
    proc.wait(10)


def headless_bert(path) -> str:
    """A tiny BERT encoder without a classifier head (as sentence-transformers models ship), with a tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.timeout(400)
def test_a_run_is_quiet_and_says_what_the_noise_meant(s3, tmp_path):
    import fsspec

    local = build_set(tmp_path, n=16, max_records=8)
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3["AWS_ENDPOINT_URL"]},
                           key=s3["AWS_ACCESS_KEY_ID"], secret=s3["AWS_SECRET_ACCESS_KEY"])
    fs.put(local, "quiet/set", recursive=True)
    proc = subprocess.run([sys.executable, "-m", "pipeline.train", "--train", "s3://quiet/set",
                           "--model", headless_bert(tmp_path / "enc"), "--steps", "2", "--batch-size", "4",
                           "--max-length", "16", "--log-every", "1", "--num-workers", "1",
                           "--out", str(tmp_path / "run")], env=s3, cwd=ROOT, capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert [n for n in NOISE if n in said] == [], said[-3000:]
    assert "classifier head initialised for 2 labels (neg, pos)" in proc.stdout
    assert "step 2/2" in proc.stdout
