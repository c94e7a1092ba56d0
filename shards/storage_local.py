"""A local POSIX path's filesystem without importing fsspec (~0.07-0.1 CPU-s of every build's start-up).

:class:`LocalFS` answers the calls a local build makes (exists, isdir, size, info, ls, rm, makedirs,
cat_file) as fsspec's ``LocalFileSystem`` does (``tests/build/test_storage_local.py`` holds it to that),
and hands any other call to it.  ``shards.storage.filesystem`` gives it for a plain path without
storage options; everything else goes through fsspec.
"""
from __future__ import annotations

import os
import shutil
import stat


class LocalFS:
    """fsspec's LocalFileSystem for a POSIX path without storage options, without importing fsspec for
    the calls a local build makes (each as LocalFileSystem answers it); any other call goes to it."""

    @staticmethod
    def _strip_protocol(path: str) -> str:
        """An absolute POSIX path, as LocalFileSystem._strip_protocol (and its make_path_posix) give it."""
        for prefix in ("file://", "file:", "local://", "local:"):
            if path.startswith(prefix):
                path = path.removeprefix(prefix)
                break
        if path.startswith("~"):
            path = os.path.expanduser(path)
        elif not path.startswith("/"):
            path = f"{os.getcwd()}/{'' if path == '.' else path.removeprefix('./')}"
        return path.rstrip("/") or "/"

    def exists(self, path: str, **kwargs) -> bool:
        return os.path.exists(self._strip_protocol(path))  # fsspec: info() raises for a broken link too

    def isdir(self, path: str) -> bool:
        return os.path.isdir(self._strip_protocol(path))

    def size(self, path: str) -> int:
        return os.stat(self._strip_protocol(path)).st_size

    def info(self, path: str, **kwargs) -> dict:
        """What LocalFileSystem.info gives for a path (a link: its target's stat, and where it points)."""
        path = self._strip_protocol(path)
        out = os.stat(path, follow_symlinks=False)
        link = stat.S_ISLNK(out.st_mode)
        if link:
            out = os.stat(path)
        kind = "directory" if stat.S_ISDIR(out.st_mode) else "file" if stat.S_ISREG(out.st_mode) else "other"
        result = {"name": path, "size": out.st_size, "type": kind, "created": getattr(out, "st_birthtime", out.st_ctime),
                  "islink": link, **{f: getattr(out, f"st_{f}") for f in ("mode", "uid", "gid", "mtime", "ino", "nlink")}}
        if link:
            result["destination"] = os.readlink(path)
        return result

    def ls(self, path: str, detail: bool = False, **kwargs) -> list[str]:
        if detail:
            return self._fsspec_fs().ls(path, detail=True, **kwargs)
        path = self._strip_protocol(path)
        if not os.path.isdir(path):
            os.stat(path)  # FileNotFoundError for a missing path (or a broken link), as fsspec's info()
            return [path]
        names = []
        with os.scandir(path) as entries:
            for entry in entries:
                names.append(self._strip_protocol(entry.path))
        return names

    def rm(self, path: str, recursive: bool = False, maxdepth: int | None = None) -> None:
        if maxdepth is not None:
            return self._fsspec_fs().rm(path, recursive=recursive, maxdepth=maxdepth)
        for p in path if isinstance(path, list) else [path]:
            p = self._strip_protocol(p)
            if os.path.isdir(p) and not os.path.islink(p):
                if not recursive:
                    raise ValueError("Cannot delete directory, set recursive=True")
                if os.path.abspath(p) == os.getcwd():
                    raise ValueError("Cannot delete current working directory")
                shutil.rmtree(p)
            else:
                os.remove(p)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs) -> bytes:
        if start is not None or end is not None or kwargs:
            return self._fsspec_fs().cat_file(path, start=start, end=end, **kwargs)
        with open(self._strip_protocol(path), "rb") as f:
            return f.read()

    def invalidate_cache(self, path: str | None = None) -> None:
        """Nothing is cached (as LocalFileSystem)."""

    @staticmethod
    def _fsspec_fs():
        import fsspec  # noqa: PLC0415 - on first use, for the calls answered above without it

        return fsspec.filesystem("file")

    def __getattr__(self, name: str):
        return getattr(self._fsspec_fs(), name)



LOCAL_FS = LocalFS()
