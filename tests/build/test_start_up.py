"""What a ``shards`` command loads at start-up: nothing it does not use (issue 17, build speed)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return proc.stdout.strip().splitlines()[-1]


def test_txt_build_never_imports_pyarrow_compute(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("one line\n\nanother line\n" * 50)
    code = ("import sys\nfrom shards.__main__ import main\n"
            f"rc = main(['build', {str(corpus)!r}, '--out', {str(tmp_path / 'out')!r}, '--no-progress'])\n"
            "print(rc, 'pyarrow.compute' in sys.modules)")
    assert _python(code) == "0 False"


def test_jsonl_build_still_gets_pyarrow_compute_when_it_calls_it(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n' * 50)
    code = ("import sys\nfrom shards.__main__ import main\n"
            f"rc = main(['build', {str(corpus)!r}, '--out', {str(tmp_path / 'out')!r}, '--label-field', 'label',"
            " '--no-progress'])\n"
            "print(rc, 'pyarrow.compute' in sys.modules)")
    assert _python(code) == "0 True"


@pytest.mark.parametrize("given, expected", [(None, "1"), ("3", "3")])
def test_command_starts_no_blas_threads_unless_the_user_asks(given, expected, tmp_path):
    """numpy's OpenBLAS reads OPENBLAS_NUM_THREADS once, at import: the command sets it first."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("a line\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    code = ("import os, sys\nfrom shards.__main__ import main\n"
            f"rc = main(['build', {str(corpus)!r}, '--out', {str(tmp_path / 'out')!r}, '--no-progress'])\n"
            "print(rc, 'numpy' in sys.modules, os.environ.get('OPENBLAS_NUM_THREADS'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=True)
    assert proc.stdout.strip().splitlines()[-1] == f"0 True {expected}"
