"""A local file opened for writing that hashes what it is given.

The shard writers write through it, so a finished shard's sha256 and size come
for free instead of from reading the whole file back (a sixth of a tar build).
"""
from __future__ import annotations

import hashlib


class HashingSink:
    """Binary file-like sink: ``write`` goes to ``path`` and into a sha256.

    Accepts anything with the buffer protocol (bytes, memoryview, numpy arrays,
    ``pyarrow.Buffer``), so ``pyarrow.PythonFile(HashingSink(path), mode="w")``
    works as the sink of an Arrow IPC writer.
    """

    def __init__(self, path: str):
        self._file = open(path, "wb")
        self._hash = hashlib.sha256()
        self.num_bytes = 0

    def write(self, data) -> int:
        view = memoryview(data)
        if not view.c_contiguous:
            raise ValueError("HashingSink.write takes contiguous buffers; pass a copy (np.ascontiguousarray)")
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        self._hash.update(view)
        self._file.write(view)
        self.num_bytes += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.num_bytes

    def flush(self) -> None:
        self._file.flush()

    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()

    def digest(self) -> tuple[str, int]:
        """(sha256 hex digest, byte count) of everything written so far."""
        return self._hash.hexdigest(), self.num_bytes
