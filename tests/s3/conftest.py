"""Fixtures for tests against a real S3-protocol server (moto) on 127.0.0.1.

The session starts ``python -m tools.s3_server --port 0`` (moto's
ThreadedMotoServer on a free loopback port) in a child process, so nothing
outside the tests has to run and forked DataLoader workers never inherit the
server's threads.  For the whole session the environment points every AWS
client at it (``AWS_ENDPOINT_URL``, fake keys whose secret is a unique canary),
so subprocesses (torchrun, the ``shards`` CLI) inherit it.

Fixtures for other test files (import nothing; pytest finds them here):
- ``s3_env``: dict of the AWS_* variables set (endpoint, keys, region).
- ``s3_bucket``: name of a bucket that exists.  ``s3_options``: storage_options
  with the endpoint and keys given explicitly (``{"key", "secret", "client_kwargs"}``).
- ``s3_url``: a fresh ``s3://bucket/<test>-<uuid>`` prefix for this test.
- ``s3_build_set(n=200, max_records=16, fmt="arrow", labels=True, tokenizer=None,
  max_length=None) -> url``: builds a small labelled shard set on S3 (``shards.build.driver``
  straight to ``s3://``) and returns its URL; for training runs from S3.
- ``fault_proxy(fault_rate, seed=0, kinds=..., fail=None, methods=("GET",), stall_s=30)
  -> (proxy, storage_options)``: a seeded faulting proxy in front of the server.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from tests.helpers.data import ROOT, labelled_records, write_jsonl

BUCKET = "shardstream-tests"
CANARY = f"canary-secret-{uuid.uuid4().hex}"
ACCESS_KEY = "shardstream-test-key"


@pytest.fixture(scope="session")
def s3_endpoint():
    """Endpoint URL of a moto server started for this session (a child process)."""
    proc = subprocess.Popen([sys.executable, "-m", "tools.s3_server", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    match = re.match(r"endpoint (http://127\.0\.0\.1:\d+)", line)
    if not match:
        proc.kill()
        rest = proc.stdout.read()
        raise RuntimeError(f"tools.s3_server did not start: {line}{rest}")
    yield match.group(1)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def s3_env(s3_endpoint):
    """The AWS_* environment of the session (set in os.environ; the secret is the canary)."""
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": CANARY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never probe 169.254.169.254
        "AWS_CONFIG_FILE": os.devnull,        # ignore the machine's ~/.aws
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield env


@pytest.fixture(scope="session")
def s3_canary(s3_env) -> str:
    """The fake secret in AWS_SECRET_ACCESS_KEY and s3_options: must never be written anywhere."""
    return CANARY


@pytest.fixture(scope="session")
def s3_bucket(s3_env) -> str:
    from tools.s3_server import make_bucket

    make_bucket(s3_env["AWS_ENDPOINT_URL"], BUCKET)
    return BUCKET


@pytest.fixture(scope="session")
def s3_options(s3_env, s3_bucket) -> dict:
    """storage_options naming endpoint and keys explicitly (as a user without env vars would)."""
    return {"key": ACCESS_KEY, "secret": CANARY, "client_kwargs": {"endpoint_url": s3_env["AWS_ENDPOINT_URL"]}}


@pytest.fixture
def s3_url(s3_bucket, request) -> str:
    name = re.sub(r"[^a-zA-Z0-9-]+", "-", request.node.name)[:40].strip("-")
    return f"s3://{s3_bucket}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def s3_build_set(s3_bucket, tmp_path):
    """Factory: build a small labelled shard set straight to S3 and return its s3:// URL."""
    from shards.build.driver import BuildConfig, build
    from shards.build.writer import Limits
    from shards.corpus.read import CorpusSpec

    def make(n: int = 200, max_records: int = 16, fmt: str = "arrow", labels: bool = True,
             tokenizer=None, max_length=None, name: str = "set", storage_options=None) -> str:
        src = write_jsonl(tmp_path / f"{name}-src" / "data.jsonl", labelled_records(n))
        url = f"s3://{s3_bucket}/{name}-{uuid.uuid4().hex[:8]}"
        cfg = BuildConfig(out=url, format=fmt, spec=CorpusSpec(label_field="label" if labels else None),
                          limits=Limits(max_records=max_records), tokenizer=tokenizer, max_length=max_length,
                          storage_options=storage_options)
        build([src], cfg)
        return url

    return make


@pytest.fixture
def fault_proxy(s3_env, s3_bucket):
    """Factory: (proxy, storage_options through it); every proxy is stopped after the test."""
    from tools import fault_proxy as fp

    started = []

    def make(fault_rate: float, seed: int = 0, kinds=fp.DEFAULT_KINDS, fail=None, methods=("GET",),
             stall_s: float = 30.0):
        proxy, endpoint = fp.start(s3_env["AWS_ENDPOINT_URL"], fault_rate, seed, kinds, fail, methods, stall_s)
        started.append(proxy)
        return proxy, {"client_kwargs": {"endpoint_url": endpoint}}

    yield make
    for proxy in started:
        proxy.stop()
