"""A local file opened for writing that hashes what it is given.

The shard writers write through it, so a finished shard's sha256 and size come
for free instead of from reading the whole file back (a sixth of a tar build).
"""
from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor


class HashingSink:
    """Binary file-like sink: ``write`` goes to ``path`` and into a sha256.

    Accepts anything with the buffer protocol (bytes, memoryview, numpy arrays,
    ``pyarrow.Buffer``), so ``pyarrow.PythonFile(HashingSink(path), mode="w")``
    works as the sink of an Arrow IPC writer.
    """

    def __init__(self, path: str, background: bool = False):
        self.path = path
        self._file = open(path, "wb")
        self._hash = hashlib.sha256()
        self.num_bytes = 0
        # background: hashing and the write(2) run on two threads of their own (both release
        # the GIL), side by side, while the caller lays out its next buffer; at most one buffer
        # is in flight
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="shard-sink") if background else None
        self._pending: list[Future] = []

    def write(self, data) -> int:
        """Write (and hash) ``data``.  In background mode it returns before the bytes are
        written: the caller must leave ``data`` unchanged until its *next* write returns."""
        view = memoryview(data)
        if not view.c_contiguous:
            raise ValueError("HashingSink.write takes contiguous buffers; pass a copy (np.ascontiguousarray)")
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        self.num_bytes += view.nbytes
        if self._pool is None:
            self._hash.update(view)
            self._write(view)
        else:
            self.wait()
            self._pending = [self._pool.submit(self._hash.update, view), self._pool.submit(self._write, view)]
        return view.nbytes

    def _write(self, view: memoryview) -> None:
        try:
            self._file.write(view)
        except OSError as exc:
            raise self._named(exc) from exc

    def _named(self, exc: OSError) -> OSError:
        """A failed write(2) names no file; the one-line error (disk full ...) must."""
        if exc.filename is not None or exc.errno is None:
            return exc
        return OSError(exc.errno, exc.strerror or str(exc), self.path)

    def wait(self) -> None:
        """Until the write in flight (background mode) is done; raises its error."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def tell(self) -> int:
        return self.num_bytes

    def flush(self) -> None:
        self.wait()
        try:
            self._file.flush()
        except OSError as exc:
            raise self._named(exc) from exc

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()
            try:
                self._file.close()  # flushes the buffer: a full disk may show only here
            except OSError as exc:
                raise self._named(exc) from exc

    def digest(self) -> tuple[str, int]:
        """(sha256 hex digest, byte count) of everything written so far."""
        self.wait()
        return self._hash.hexdigest(), self.num_bytes
