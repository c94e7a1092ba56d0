"""http(s):// inputs through fsspec's HTTP filesystem, against a local server on 127.0.0.1.

Credentials in an input URL (``http://user:secret@host/...``) are used to fetch it and never
appear in the manifest's ``sources``, the summary, or an error message.
"""
from __future__ import annotations

import base64
import functools
import gzip
import http.server
import json
import subprocess
import sys
import threading

import pytest

from shards import load_manifest, storage
from shards.build.driver import BuildConfig, build
from shards.corpus.read import BadRecordError, CorpusSpec
from tests.helpers.data import ROOT

SECRET = "s3cr3t-t0ken"


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; paths under /private/ need HTTP basic auth as user:SECRET."""

    def do_GET(self):
        if self._allowed():
            super().do_GET()

    def do_HEAD(self):
        if self._allowed():
            super().do_HEAD()

    def _allowed(self) -> bool:
        want = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
        if self.path.startswith("/private/") and self.headers.get("Authorization") != want:
            self.send_error(401)
            return False
        return True

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    (root / "private").mkdir(parents=True)
    (root / "a.jsonl").write_text("".join(json.dumps({"text": f"a{i}", "label": "x"}) + "\n" for i in range(5)))
    (root / "private" / "b.txt.gz").write_bytes(gzip.compress(b"".join(b"b%d\n" % i for i in range(7))))
    (root / "private" / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n')
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_http_plain_and_gz_inputs_build_and_redact(tmp_path, server):
    inputs = [f"http://{server}/a.jsonl", f"http://user:{SECRET}@{server}/private/b.txt.gz"]
    run = subprocess.run([sys.executable, "-m", "shards", "build", *inputs, "--out", str(tmp_path / "out"),
                          "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    m = load_manifest(str(tmp_path / "out"))
    assert m.num_records == 12
    assert m.sources == [f"http://{server}/a.jsonl", f"http://***@{server}/private/b.txt.gz"]
    assert SECRET not in (tmp_path / "out" / "index.json").read_text() + run.stdout + run.stderr


def test_http_errors_never_show_credentials(tmp_path, server):
    missing = f"http://user:{SECRET}@{server}/private/none.txt"
    with pytest.raises(FileNotFoundError) as missing_err:
        build([missing], BuildConfig(out=str(tmp_path / "o1")))
    assert SECRET not in str(missing_err.value) and "***@" in str(missing_err.value)
    bad = f"http://user:{SECRET}@{server}/private/bad.jsonl"
    with pytest.raises(BadRecordError, match=r"malformed_json") as bad_err:
        build([bad], BuildConfig(out=str(tmp_path / "o2"), spec=CorpusSpec(label_field=None)))
    assert SECRET not in str(bad_err.value) and bad_err.value.__cause__ is None
    wrong = f"http://user:wrong-{SECRET}@{server}/private/b.txt.gz"
    run = subprocess.run([sys.executable, "-m", "shards", "build", wrong, "--out", str(tmp_path / "o3")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and SECRET not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_redact():
    assert storage.redact("s3://key:secret@bucket/x") == "s3://***@bucket/x"
    signed = "https://h/x.jsonl?X-Amz-Signature=abc&part=2"
    assert storage.redact(signed) == "https://h/x.jsonl?X-Amz-Signature=***&part=2"
    assert storage.redact("failed: http://t0k@h:80/a.txt:3: bad") == "failed: http://***@h:80/a.txt:3: bad"
    assert storage.redact("/data/a@b.txt s3://bucket/a@b") == "/data/a@b.txt s3://bucket/a@b"
