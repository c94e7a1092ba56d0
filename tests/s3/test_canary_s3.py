"""A unique fake secret (env AWS_SECRET_ACCESS_KEY and storage_options) must never be written anywhere."""
from __future__ import annotations

import json
import logging
import traceback

import pytest

import shards
from pipeline import ShardStream, make_loader
from shards import storage
from shards.cli import main as shards_main

pytestmark = [pytest.mark.s3, pytest.mark.timeout(180)]


def everything_about(exc: BaseException) -> str:
    """Message, repr and full traceback text of an exception and its causes."""
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


def test_secret_never_leaks(s3_build_set, s3_options, s3_canary, s3_env, s3_url, fault_proxy, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # botocore, s3fs, fsspec, ours: everything that logs
    assert s3_options["secret"] == s3_canary
    url = s3_build_set(n=40, max_records=8, storage_options=s3_options)
    index = storage.read_text(f"{url}/index.json", s3_options)
    written = [index]

    ds = ShardStream(url, storage_options=s3_options, rank=0, world_size=1)
    loader = make_loader(ds, 4, num_workers=2)
    it = iter(loader)
    for _ in range(3):
        next(it)
    written += [json.dumps(loader.state_dict(), default=str), json.dumps(ds.state_dict())]
    del it

    endpoint = f"client_kwargs.endpoint_url={s3_env['AWS_ENDPOINT_URL']}"
    assert shards_main(["verify", url, "--storage-option", endpoint]) == 0
    assert shards_main(["inspect", url, "-n", "1", "--storage-option", endpoint]) == 0
    for name in ("botocore", "aiobotocore"):  # the CLI quiets these for its users; this test reads everything
        caplog.set_level(logging.DEBUG, logger=name)

    errors = []
    _, so = fault_proxy(0.0, fail={"/shard-00001.arrow": "slowdown"})
    so = {**s3_options, **so}
    with pytest.raises(storage.StorageError) as info:
        storage.read_object(f"{url}/shard-00001.arrow", so, storage.RetryPolicy(attempts=2))
    errors.append(info.value)
    with pytest.raises(shards.ManifestError) as info:
        shards.load_manifest(f"{s3_url}/no-such-set", s3_options)
    errors.append(info.value)
    with pytest.raises(shards.ManifestError) as info:
        ShardStream("s3://no-such-bucket-anywhere/set", storage_options=s3_options)
    errors.append(info.value)

    out, err = capfd.readouterr()
    texts = {"logs": caplog.text, "stdout": out, "stderr": err, "written": "".join(written),
             "exceptions": "".join(everything_about(e) for e in errors)}
    assert len(caplog.text) > 1000, "expected debug logs to search"
    for where, text in texts.items():
        assert s3_canary not in text, f"the secret leaked into {where}"
