"""The input files of a build: paths, directories, globs and URLs expanded, each file named once.

A file named twice would be ingested twice (every record duplicated), so it is refused,
naming both inputs: named twice over, by two globs, by a folder and a path in it, by a
symlink or another spelling of its path, or by a hard link (another name for the same
device and inode).
"""
from __future__ import annotations

import os

from shards.storage import filesystem, is_remote, protocol_of, redact


def expand_inputs(inputs: list[str], suffixes: tuple[str, ...],
                  storage_options: dict | None = None) -> list[str]:
    """Files named by paths, directories, globs or URLs: each input's matches sorted, in input order.

    Directories are walked recursively and keep only files whose name ends in
    one of ``suffixes``; explicitly named files are kept as given.
    """
    found: dict[object, tuple[str, str]] = {}  # the file's identity -> (its URL, the input that named it)
    urls: list[str] = []
    for item in inputs:
        for url in _matches(str(item), suffixes, storage_options):
            ident = _identity(url)
            if ident in found:
                raise ValueError(_twice(url, str(item), *found[ident]))
            found[ident] = (url, str(item))
            urls.append(url)
    return urls


def _identity(url: str) -> object:
    """What makes two names one file: (device, inode) locally (symlinks, re-spelled paths and hard
    links alike), the URL elsewhere."""
    if is_remote(url):
        return url
    st = os.stat(url)
    return ("inode", st.st_dev, st.st_ino)


def _twice(url: str, item: str, first: str, by: str) -> str:
    same, fix = "", "name each file once"
    if first != url and os.path.realpath(first) == os.path.realpath(url):
        same = f" (the same file as {redact(first)})"
    elif first != url:
        same = f" (a hard link to {redact(first)}: the same file under another name)"
        fix = "remove one of the links or leave it out of the inputs"
    return (f"input {redact(url)}{same} is named twice, by {redact(by)!r} and by {redact(item)!r}: it would be "
            f"ingested twice; {fix}")


def _matches(item: str, suffixes: tuple[str, ...], storage_options: dict | None) -> list[str]:
    fs, path = filesystem(item, storage_options)
    protocol = protocol_of(item)
    if protocol in ("http", "https"):
        # a URL names one object; '?' starts its query (e.g. a presigned URL), not a glob
        if not fs.exists(path):
            raise FileNotFoundError(f"input {redact(item)}: no such object (or no access); check the URL")
        return [item]
    if any(ch in path for ch in "*?["):
        matches = sorted(fs.glob(path))
    elif fs.isdir(path):
        matches = sorted(p for p in fs.find(path) if p.endswith(suffixes))
    elif fs.exists(path):
        matches = [path]
    else:
        raise FileNotFoundError(f"input {redact(item)}: no such file, directory or glob match")
    if not matches:
        raise FileNotFoundError(f"input {redact(item)}: matched no files ending in {', '.join(suffixes)}")
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    return [m if "://" in m else prefix + m for m in matches]


