"""storage_local.LocalFS (a local path's filesystem, fsspec not imported) answers as fsspec's LocalFileSystem,
and a local build never imports fsspec."""
from __future__ import annotations

import os
import subprocess
import sys

import fsspec
import pytest

from shards import storage
from shards.storage_local import LocalFS

REF = fsspec.filesystem("file")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_bytes(b"hello")
    (tmp_path / "d" / "sub" / "b.txt").write_bytes(b"x" * 300)
    os.symlink(tmp_path / "d" / "a.txt", tmp_path / "d" / "link.txt")
    os.symlink(tmp_path / "d" / "sub", tmp_path / "d" / "dirlink")
    os.symlink(tmp_path / "nowhere", tmp_path / "d" / "broken")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _answer(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the type and message are compared
        return type(exc).__name__


NAMES = ["d", "d/", "./d", "d/a.txt", "d/link.txt", "d/dirlink", "d/broken", "d/missing", ".", "~", "/", "d/sub/b.txt"]


@pytest.mark.parametrize("name", NAMES)
def test_local_fs_answers_as_fsspec(tree, name):
    mine = LocalFS()
    for url in (name, str(tree / name) if not name.startswith(("~", "/")) else name, f"file://{tree / name}"):
        assert mine._strip_protocol(url) == REF._strip_protocol(url)
        for method in ("exists", "isdir", "size", "ls", "info", "cat_file"):
            if method in ("ls", "cat_file", "info") and name in ("~", "/", "."):
                continue  # large or slow; the path stripping above is what differs there
            got, want = _answer(getattr(mine, method), url), _answer(getattr(REF, method), url)
            if method == "ls" and isinstance(want, list):
                got, want = sorted(got), sorted(want)
            assert got == want, (method, url)


def test_local_fs_rm_and_makedirs_as_fsspec(tree):
    for fs, root in ((LocalFS(), tree / "mine"), (REF, tree / "ref")):
        fs.makedirs(str(root / "x" / "y"))
        (root / "x" / "f").write_bytes(b"1")
        assert _answer(fs.makedirs, str(root / "x")) == "FileExistsError"
        fs.makedirs(str(root / "x"), exist_ok=True)
        assert _answer(fs.rm, str(root / "x")) == "ValueError"  # a folder without recursive=True
        fs.rm(str(root / "x" / "f"))
        assert not os.path.exists(root / "x" / "f")
        assert _answer(fs.rm, str(root / "x" / "f")) == "FileNotFoundError"
        fs.rm(str(root / "x"), recursive=True)
        assert os.listdir(root) == []


def test_a_remote_or_optioned_url_goes_to_fsspec(tree):
    assert isinstance(storage.filesystem(str(tree / "d"))[0], LocalFS)
    assert not isinstance(storage.filesystem("memory://bucket/x")[0], LocalFS)
    assert not isinstance(storage.filesystem(str(tree / "d"), {"auto_mkdir": True})[0], LocalFS)
    for url in ("s3://b/k", "memory://x", "simplecache::s3://b/k", "/abs/path", "rel/path", "file:///x", "local://x",
                "http://h/p?q=a://b"):
        assert storage.protocol_of(url) == fsspec.utils.get_protocol(url)


def test_a_local_build_does_not_import_fsspec(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f'{{"text": "line {i}", "label": "{i % 2}"}}\n' for i in range(50)))
    code = ("import sys\nfrom shards.cli import main\n"
            f"sys.argv = ['shards', 'build', {str(src)!r}, '--out', {str(tmp_path / 'out')!r}, '--label-field', 'label',"
            " '--no-progress']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('fsspec' in sys.modules)\n")
    for _ in range(2):  # a new build, then one that finds the output built
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
