"""The ``shards`` command: build summary, inspect, verify (exit codes), sizes, errors."""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import pytest

from shards.cli import main, parse_size, parse_storage_options
from tests.helpers.data import labelled_records, write_jsonl

pytestmark = pytest.mark.timeout(120)
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def built(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", labelled_records(60))
    out = tmp_path / "out"
    assert main(["build", src, "--out", str(out), "--label-field", "label", "--max-records", "10",
                 "--format", "tar", "--no-progress"]) == 0
    capsys.readouterr()
    return out


def test_build_prints_one_line_summary(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "a", "label": 1}\n{"text": "b"}\n\n{oops\n{"text": "c", "label": 2}\n')
    code = main(["build", str(path), "--out", str(tmp_path / "o"), "--label-field", "label",
                 "--on-bad-record", "skip", "--no-progress"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1
    line = out[0]
    assert line.startswith("built 2 records into 1 arrow shard(s)")
    assert "MB/s input" in line and "records/s" in line
    assert "skipped: {'blank_line': 1, 'malformed_json': 1, 'missing_field': 1}" in line


def test_build_bad_record_exits_2_naming_file_line(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "b\n')
    assert main(["build", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: malformed_json" in err and "--on-bad-record skip" in err
    assert not (tmp_path / "o" / "index.json").exists()


def test_inspect_shows_summary_and_records(built, capsys):
    assert main(["inspect", str(built), "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "records     60" in out and "shards      6" in out and "['neg', 'pos']" in out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["sample_id"] for r in rows] == ["00000:000000", "00000:000001", "00000:000002"]
    assert rows[1] == {"sample_id": "00000:000001", "text": labelled_records(2)[1]["text"], "label": 1}


def test_verify_ok_then_names_the_corrupted_shard(built, capsys):
    assert main(["verify", str(built)]) == 0
    assert "verified 6 shard(s), 60 records: OK" in capsys.readouterr().out
    shard = built / "shard-00003.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0x01  # one bit inside a sample's text
    shard.write_bytes(bytes(data))
    assert main(["verify", str(built)]) == 1
    captured = capsys.readouterr()
    assert "1 bad shard(s): shard-00003.tar" in captured.out
    assert "shard-00003.tar: sha256 mismatch" in captured.err


def test_verify_missing_shard_and_record_count(built, capsys):
    (built / "shard-00001.tar").unlink()
    assert main(["verify", str(built)]) == 1
    assert "shard-00001.tar" in capsys.readouterr().out


def test_inspect_missing_manifest_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "cannot read manifest" in capsys.readouterr().err


def test_console_entry_point_runs(built):
    run = subprocess.run([sys.executable, "-m", "shards", "verify", str(built)], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0 and "OK" in run.stdout


@pytest.mark.parametrize("text,value", [("64MB", 64_000_000), ("1GiB", 1 << 30), ("4096", 4096),
                                        ("1.5kb", 1500), ("8MiB", 8 << 20), (" 2 GB ", 2_000_000_000)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MB", "12 parsecs", "-1MB"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="e.g. 64MB or 1GiB"):
        parse_size(text)


def test_storage_options_nest_and_parse_json():
    assert parse_storage_options(["anon=true", "client_kwargs.endpoint_url=http://127.0.0.1:9"]) == {
        "anon": True, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    assert parse_storage_options([]) is None


def test_ray_address_without_ray_engine_is_refused(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", labelled_records(3))
    assert main(["build", src, "--out", str(tmp_path / "o"), "--ray-address", "auto", "--no-progress"]) == 2
    assert "--engine ray" in capsys.readouterr().err


def test_progress_bar_shows_records_and_mb_per_s(tmp_path, capsys):
    src = write_jsonl(tmp_path / "a.jsonl", labelled_records(3000))
    assert main(["build", src, "--out", str(tmp_path / "o"), "--progress"]) == 0
    err = capsys.readouterr().err
    assert "shards build: " in err and "3.00k records" in err and "MB/s text" in err


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "shards", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def user_errors(tmp_path) -> dict[str, list[str]]:
    bad_json = tmp_path / "badjson"
    bad_json.mkdir(exist_ok=True)
    (bad_json / "index.json").write_text("{not json")
    wrong_type = tmp_path / "wrongtype"
    wrong_type.mkdir()
    (wrong_type / "index.json").write_text('{"version": 1, "format": "arrow", "shards": [], '
                                           '"num_records": "0", "fields": []}')
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    src = write_jsonl(tmp_path / "a.jsonl", labelled_records(3))
    return {
        "missing set": ["verify", str(tmp_path / "nope")],
        "manifest not JSON": ["inspect", str(bad_json)],
        "wrong-typed field": ["verify", str(wrong_type)],
        "missing input": ["build", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), "--no-progress"],
        "out under a file": ["build", src, "--out", str(a_file / "o"), "--no-progress"],
        "bad setting": ["build", src, "--out", str(tmp_path / "o2"), "--max-length", "0", "--tokenizer",
                        str(tmp_path / "no-tokenizer"), "--no-progress"],
    }


def test_user_errors_are_one_line_without_traceback_and_debug_shows_it(tmp_path):
    cases = user_errors(tmp_path)
    for case, args in cases.items():
        run = run_cli(*args)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2, (case, run.stderr)
        assert "Traceback" not in run.stderr and len(lines) == 1, (case, run.stderr)
        assert lines[0].startswith(f"shards {args[0]}: error: "), (case, lines)
    run = run_cli("--debug", *cases["missing set"])
    assert run.returncode != 0 and "Traceback" in run.stderr and "ManifestError" in run.stderr


def test_verify_reports_an_unreadable_shard_as_a_failure_in_one_line(built, capsys):
    (built / "shard-00002.tar").unlink()
    (built / "shard-00002.tar").mkdir()  # reading it is an OSError (IsADirectoryError)
    assert main(["verify", str(built)]) == 1
    captured = capsys.readouterr()
    assert "shard-00002.tar" in captured.out and "Traceback" not in captured.err


def test_summary_and_errors_never_show_url_credentials(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text('{"text": "x"}\n')
    assert main(["build", str(src), "--out", "memory://user:s3cret@bucket/out", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "memory://***@bucket/out" in out and "s3cret" not in out



def test_error_lines_are_redacted_by_the_command_itself(monkeypatch, capsys):
    def fail(url, storage_options=None):
        raise OSError(f"cannot read {url}/index.json")

    monkeypatch.setattr("shards.cli.load_manifest", fail)
    assert main(["inspect", "https://user:s3cret@host/set?X-Amz-Signature=t0ken"]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "t0ken" not in err and "https://***@host/set" in err and err.count("\n") == 1
