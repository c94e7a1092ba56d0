"""Bytes and lines of an input file: checked decompression, BOM, line breaks, byte ranges.

* ``.gz`` and ``.zst`` are decompressed here, member by member (frame by frame), so a
  file that is truncated, corrupt or followed by garbage is *seen*: the stream ends
  at the damage with :attr:`Source.error` saying what and at which compressed byte,
  after delivering every byte decoded before it.  (``zstandard``'s stream reader
  returns a clean EOF for a cut file; ``gzip`` raises errors naming no file.)
  Zero padding after the last gzip member is accepted, as ``gzip`` does.
* Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (``bytes.splitlines``); a UTF-8
  byte-order mark at the start of a file is dropped.
* :func:`line_blocks` gives blocks of whole lines with the number of their first
  line.  A byte range owns the lines that *start* inside it.  A line longer than
  ``max_record_bytes`` is counted ``too_long`` and drained, never held.  In a damaged
  file the cut-off remainder (the partial last line, if any) is never a record: it is
  counted once as ``corrupt_file``, naming the file, the line and the byte.
"""
from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np

from shards import storage
from shards.corpus.spec import CORRUPT_FILE, BadRecords, Unit
from shards.storage import redact

BOM = b"\xef\xbb\xbf"
IN_CHUNK = 1 << 14  # compressed bytes fed to the decoder at a time (what decodes before damage is kept)
READ_BYTES = 1 << 20  # block size of the per-line readers


class Source:
    """A file's bytes, decompressed when ``compression`` is set; ``read`` returns b"" at the end.

    ``error`` is None at a clean end, else why the data stopped early.
    """

    def __init__(self, url: str, compression: str | None, storage_options: dict | None):
        fs, path = storage.filesystem(url, storage_options)
        # a local file is opened plainly: fsspec's LocalFileOpener wraps every read in Python
        self.raw = open(path, "rb", buffering=0) if not storage.is_remote(url) else fs.open(path, "rb")
        self.compression = compression
        self.error: str | None = None
        self._dec = None  # decoder of the current gzip member / zstd frame
        self._members = 0  # members / frames finished
        self._fed = 0  # compressed bytes read so far
        self._out = b""  # decoded, not yet returned
        self._done = compression is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.raw.close()

    def seek(self, pos: int) -> None:
        if self.compression is not None:
            raise ValueError("a compressed file is read from its start")  # plan_units never splits one
        self.raw.seek(pos)

    def read(self, n: int) -> bytes:
        if self.compression is None:
            return self.raw.read(n)
        while not self._out and not self._done:
            self._fill()
        out, self._out = self._out[:n], self._out[n:]
        return out

    def _fill(self) -> None:
        data = self.raw.read(IN_CHUNK)
        at = self._fed
        self._fed += len(data)
        if not data:
            self._done = True
            if self._dec is not None:
                self.error = (f"truncated {self.compression} data: the file ends inside a "
                              f"{'member' if self.compression == 'gzip' else 'frame'} at compressed byte {at}")
            return
        out: list[bytes] = []
        try:
            self._decode(data, out)
        except (zlib.error, _zstd_error()) as exc:
            self._done = True
            self.error = (f"corrupt {self.compression} data in compressed bytes {at}-{self._fed} "
                          f"({'member' if self.compression == 'gzip' else 'frame'} {self._members + 1}): {exc}")
        self._out = b"".join(out)  # what decoded before the damage is still delivered

    def _decode(self, data: bytes, out: list[bytes]) -> None:
        while data:
            if self._dec is None:
                if self.compression == "gzip" and self._members:
                    data = data.lstrip(b"\0")  # zero padding after a member, as gzip allows
                    if not data:
                        break
                self._dec = _decoder(self.compression)
            out.append(self._dec.decompress(data))
            if not self._dec.eof:
                break
            data, self._dec = self._dec.unused_data, None
            self._members += 1


def _decoder(compression: str):
    if compression == "gzip":
        return zlib.decompressobj(31)
    import zstandard
    return zstandard.ZstdDecompressor().decompressobj()


def _zstd_error():
    import zstandard
    return zstandard.ZstdError


def read_all(url: str, compression: str | None, storage_options: dict | None) -> tuple[bytes, str | None]:
    """The whole (decompressed) file and the damage found, if any (for formats read whole)."""
    with Source(url, compression, storage_options) as src:
        parts = []
        while chunk := src.read(READ_BYTES):
            parts.append(chunk)
        return b"".join(parts), src.error


def count_lines(data: bytes) -> int:
    """Line breaks in ``data`` (``\\r\\n`` is one) — the number of lines it ends."""
    # numpy counts a large block's line feeds 5-7x faster than bytes.count
    lines = data.count(b"\n") if len(data) < 1 << 16 else int(np.count_nonzero(np.frombuffer(data, np.uint8) == 10))
    if b"\r" in data:  # most files have none: one pass over the bytes instead of three
        lines += data.count(b"\r") - data.count(b"\r\n")
    return lines


def content_length(line: bytes) -> int:
    """Bytes of a line without its line break."""
    if line.endswith(b"\n"):
        return len(line) - (2 if line.endswith(b"\r\n") else 1)
    return len(line) - 1 if line.endswith(b"\r") else len(line)


class Where:
    """``file:line`` for messages; a byte range's line offset is counted only when needed."""

    def __init__(self, unit: Unit, storage_options):
        self.unit, self.storage_options = unit, storage_options
        self.base: int | None = None
        self.name = redact(unit.url)  # messages never show a URL's credentials or signature

    def __call__(self, line: int) -> str:
        if self.base is None:
            self.base = self._lines_before() if self.unit.start > 0 else 0
        return f"{self.name}:{self.base + line}"

    def _lines_before(self) -> int:
        """Lines starting before the range's start: the line at 0, and one after each line break
        ending before ``start - 1`` (a break ending at ``start - 1`` starts the range's own first line)."""
        count, done, prev, stop = 1, 0, b"", self.unit.start - 1
        with Source(self.unit.url, None, self.storage_options) as f:
            while done < stop:
                block = f.read(min(1 << 22, stop - done))
                if not block:
                    break
                count += count_lines(block) - (prev == b"\r" and block.startswith(b"\n"))
                prev, done = block[-1:], done + len(block)
            if prev == b"\r" and f.read(1) == b"\n":
                count -= 1  # a \r\n ending at start - 1
        return count


def _safe_cut(buf: bytes, eof: bool) -> int:
    """End of the last whole line in ``buf`` (0: none); a final ``\\r`` waits for a ``\\n``."""
    n = buf.rfind(b"\n")
    r = buf.rfind(b"\r", n + 1)  # only a CR after the last LF can end a later line (no search of the whole block)
    if r == len(buf) - 1 and not eof:
        r = buf.rfind(b"\r", n + 1, r)
    return max(n, r) + 1


def _next_start(buf: bytes, i: int, eof: bool) -> int:
    """Offset of the first line start after a line break at or after ``i``; -1: need more bytes."""
    k = min((j for j in (buf.find(b"\n", i), buf.find(b"\r", i)) if j >= 0), default=-1)
    if k < 0:
        return -1
    if buf[k] == 13:  # \r
        if k + 1 == len(buf):
            return k + 1 if eof else -1
        return k + 2 if buf[k + 1] == 10 else k + 1
    return k + 1


class _Blocks:
    def __init__(self, src: Source, unit: Unit, limit: int, bad: BadRecords, where: Where, block_bytes: int,
                 shape=None):
        self.src, self.unit, self.limit, self.bad, self.where = src, unit, limit, bad, where
        self.block_bytes = block_bytes
        self.shape = shape  # (block, first line) -> (lines it ends or None: count them, what the caller wants)
        self.buf, self.pos, self.line, self.eof = b"", 0, 1, False
        self.dropped: dict[int, int] = {}  # line drained as too_long -> its '"' count (for CSV quoting)
        self._quotes = 0

    def more(self) -> bool:
        chunk = self.src.read(self.block_bytes)
        self.eof = not chunk
        self.buf += chunk
        return bool(chunk)

    def skip_to_line_start(self, i: int) -> bool:
        """Drop bytes up to the first line start after a break at or after ``buf[i]``; False at the end."""
        while True:
            q = _next_start(self.buf, i, self.eof)
            if q >= 0:
                self._quotes += self.buf.count(b'"', 0, q)
                self.pos, self.buf = self.pos + q, self.buf[q:]
                return True
            if self.eof:
                return False
            if self.buf[-1:] != b"\r":  # nothing here ends a line: drop it (a long line is never held)
                self._quotes += self.buf.count(b'"')
                self.pos, self.buf, i = self.pos + len(self.buf), b"", 0
            else:
                i = len(self.buf) - 1
            self.more()

    def _shaped(self, block: bytes) -> tuple[tuple[bytes, int, object], int | None]:
        """((block, its first line, its shape), the lines it ends if the shape counted them)."""
        if self.shape is None:
            return (block, self.line, None), None
        ended, shaped = self.shape(block, self.line)
        return (block, self.line, shaped), ended

    def __iter__(self) -> Iterator[tuple[bytes, int, object]]:
        unit, end = self.unit, self.unit.end
        if unit.start > 0:
            self.src.seek(unit.start - 1)
            self.pos = unit.start - 1
            self.more()
            if not self.skip_to_line_start(0):
                return
        else:
            while len(self.buf) < len(BOM) and self.more():
                pass
            if self.buf.startswith(BOM):
                self.buf = self.buf[len(BOM):]
                self.pos = len(BOM)
        # the first line of a file starts at 0, before a dropped BOM
        while end is None or self.pos < end or (unit.start == 0 and self.line == 1):
            cut = _safe_cut(self.buf, self.eof)
            if end is not None and cut and self.pos + cut >= end:
                q = _next_start(self.buf, max(end - 1 - self.pos, 0), True)
                yield self._shaped(self.buf[:q])[0]
                return
            if cut:
                block = self.buf[:cut] if cut < len(self.buf) else self.buf
                item, ended = self._shaped(block)
                yield item
                self.line += count_lines(block) if ended is None else ended
                self.pos, self.buf = self.pos + cut, self.buf[cut:]
            if content_length(self.buf) > self.limit:
                self.bad.add("too_long", self.where(self.line), f"over {self.limit} bytes (--max-record-bytes)")
                self._quotes = 0
                done = self.skip_to_line_start(0)
                self.dropped[self.line] = self._quotes
                self.line += 1
                if not done:
                    self._end_of_data(drained=True)
                    return
                continue
            if self.eof:
                self._end_of_data(drained=False)
                if self.buf and self.src.error is None:
                    yield self._shaped(self.buf)[0]  # the last line, without a line break
                return
            self.more()

    def _end_of_data(self, drained: bool) -> None:
        if self.src.error is not None:
            partial = "" if drained or not self.buf else f" (its last {len(self.buf)} bytes end mid-line)"
            self.bad.add(CORRUPT_FILE, self.where(self.line),
                         f"{self.src.error}{partial}; the lines before are read; re-create or re-download "
                         f"the file", lines=1)


def line_blocks(unit: Unit, limit: int, bad: BadRecords, where: Where, compression: str | None,
                storage_options: dict | None, block_bytes: int | None = None, dropped: dict | None = None
                ) -> Iterator[tuple[bytes, int]]:
    """(block of whole lines with their line breaks, number of its first line) for the lines the unit owns.

    ``dropped``, if given, is filled with {line drained as too_long: its count of '"'} as they go.
    """
    with Source(unit.url, compression, storage_options) as src:
        blocks = _Blocks(src, unit, limit, bad, where, block_bytes or READ_BYTES)
        if dropped is not None:
            blocks.dropped = dropped
        for block, first, _ in blocks:
            yield block, first


def shaped_line_blocks(unit: Unit, limit: int, bad: BadRecords, where: Where, compression: str | None,
                       storage_options: dict | None, block_bytes: int, shape) -> Iterator[tuple[bytes, int, object]]:
    """:func:`line_blocks` with ``shape(block, first line)`` of each block: (block, first line, shape).

    ``shape`` returns (the lines the block ends, or None to have them counted here; what the caller
    wants of the block).  It runs as each block is cut, before the next is read: a reader that
    finds its line ends anyway (numpy) gives the count, and the block is not scanned again for it.
    """
    with Source(unit.url, compression, storage_options) as src:
        yield from _Blocks(src, unit, limit, bad, where, block_bytes, shape)


def split_lines(block: bytes, first: int, limit: int, bad: BadRecords, where: Where
                ) -> Iterator[tuple[bytes, int]]:
    """(line without its break, number) of a block of whole lines; lines over ``limit`` are counted."""
    for k, piece in enumerate(block.splitlines()):
        if len(piece) > limit:
            bad.add("too_long", where(first + k), f"over {limit} bytes (--max-record-bytes)")
            continue
        yield piece, first + k


def unit_lines(unit: Unit, limit: int, bad: BadRecords, where: Where, compression: str | None,
               storage_options: dict | None) -> Iterator[tuple[bytes, int]]:
    """(line without its break, number) of each line the unit owns."""
    for block, first in line_blocks(unit, limit, bad, where, compression, storage_options):
        yield from split_lines(block, first, limit, bad, where)
