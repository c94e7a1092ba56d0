"""Shared fixtures: the bundled MiniLM, the real corpora (skipped when absent), tiny shard sets."""
from __future__ import annotations

import logging
import pathlib

import pytest
from hypothesis import settings

# the helpers live in tests/helpers/data.py; the names stay importable from here for older tests
from tests.helpers.data import CORPORA, ROOT, build_set, labelled_records, minilm_path, write_jsonl  # noqa: F401

# No per-example deadline: CI and this machine run the suite on 2 shared cores, where a draw that takes 50 ms alone
# takes 300 ms under load (a flake, not a finding); pytest-timeout still bounds every test.
settings.register_profile("shared-cores", deadline=None)
settings.load_profile("shared-cores")


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """An in-process ``pipeline.train`` main() points the root logger at the test's captured stdout, which
    pytest closes after the test; later warnings would hit a closed file ("--- Logging error ---")."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def minilm() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 model and tokenizer."""
    return minilm_path()


@pytest.fixture(scope="session")
def corpora() -> pathlib.Path:
    if not CORPORA.is_dir():
        pytest.skip(f"real corpora not found at {CORPORA} (they live in ../shared/corpora)")
    return CORPORA


@pytest.fixture
def tiny_set(tmp_path):
    return build_set(tmp_path)


SLOW_AREAS = ("dist", "s3")  # several processes or a server each: make test-slow (CI runs it too)


def pytest_collection_modifyitems(config, items):
    """Multi-process (torchrun/gloo, Ray) and S3-server tests run in make test-slow, not the default suite."""
    for item in items:
        area = pathlib.Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if area in SLOW_AREAS or item.get_closest_marker("dist") is not None:
            item.add_marker(pytest.mark.slow)
