"""What a user sees from ``pipeline.train``: ``--help`` that explains every option, and quiet runs.

The quiet check trains 2 steps from S3 (a local moto server, credentials in the
environment) with a model folder that has no classifier head: the three
third-party messages would all appear without ``pipeline.train.quiet``.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pipeline.train import loop as train
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
