"""The member-by-member walk of a tar shard: the general reader, which accepts any safe layout
or names the problem.

Every header's checksum is checked, and only regular files with relative names and no ``..``
are accepted (links, devices, directories and extension headers are refused), each at most
``max_member_bytes``.  Members are grouped into samples by webdataset's rule.  A shard laid out
as writers lay it out takes the vectorised index instead (:mod:`shards.formats.tar_index`),
which never accepts what this walk refuses.
"""
from __future__ import annotations

import numpy as np

from shards.formats.base import CorruptShardError
from shards.formats.tar_index import Index
from shards.formats.tar_write import BLOCK

_ZERO_BLOCK = bytes(BLOCK)
REGULAR = (b"0", b"\x00")


def _octal(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for huge values
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.rstrip(b" \x00") or b"0", 8)
    except ValueError:
        raise ValueError(f"bad {what} field {bytes(field)!r}") from None


def _parse_header(data: bytes, offset: int, url: str, max_member_bytes: int) -> tuple[str, int, int]:
    """(name, size, stored checksum) of the member header at ``offset``, checked
    for safety; the checksums themselves are checked all at once afterwards."""
    where = f"shard {url}: tar header at byte {offset}"
    try:
        stored = _octal(data[offset + 148: offset + 156], "checksum")
        size = _octal(data[offset + 124: offset + 136], "size")
    except ValueError as exc:
        raise CorruptShardError(f"{where}: {exc}; rebuild the shard") from exc
    name = data[offset: offset + 100].split(b"\x00", 1)[0]
    if data[offset + 345]:  # ustar prefix: the directory part of a long name
        name = data[offset + 345: offset + 500].split(b"\x00", 1)[0] + b"/" + name
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptShardError(f"{where}: member name {name!r} is not UTF-8; rebuild the shard") from exc
    kind = data[offset + 156: offset + 157]
    if kind not in REGULAR:
        raise CorruptShardError(f"shard {url}: member {text!r} is not a regular file (type {kind!r}: "
                                f"links, directories, devices and extension headers are refused); "
                                f"rebuild the shard")
    if not text or text.startswith("/") or ".." in text.split("/"):
        raise CorruptShardError(f"shard {url}: unsafe member path {text!r} (absolute or with '..'); "
                                f"rebuild the shard")
    if size > max_member_bytes:
        raise CorruptShardError(f"shard {url}: member {text!r} is {size} bytes, over the "
                                f"{max_member_bytes}-byte record limit; refusing to load it")
    return text, size, stored


def _check_checksums(data: bytes, offsets: list[int], stored: list[int], url: str) -> None:
    """Every header's checksum (sum of its bytes, the checksum field as spaces), vectorised:
    a Python ``sum`` over 512 bytes would cost more than the rest of the read."""
    blocks = np.frombuffer(data, np.uint8, count=len(data) // BLOCK * BLOCK).reshape(-1, BLOCK)
    index = np.asarray(offsets, dtype=np.int64) // BLOCK
    want = np.asarray(stored, dtype=np.int64)
    for lo in range(0, len(index), 8192):
        headers = blocks[index[lo: lo + 8192]]
        actual = headers.sum(1, dtype=np.int64) - headers[:, 148:156].sum(1, dtype=np.int64) + 8 * 32
        bad = np.flatnonzero(actual != want[lo: lo + 8192])
        if len(bad):
            k = lo + int(bad[0])
            raise CorruptShardError(f"shard {url}: tar header at byte {offsets[k]}: checksum mismatch "
                                    f"(stored {stored[k]}, computed {int(actual[bad[0]])}); the shard is "
                                    f"damaged, rebuild it")


def members(data, url: str, max_member_bytes: int) -> list[tuple[str, int, int]]:
    """(name, start, end) of each member's payload in the shard bytes, all checked."""
    data = data if isinstance(data, bytes) else bytes(data)
    n, offset = len(data), 0
    found, offsets, stored = [], [], []
    while True:
        if offset + BLOCK > n:
            raise CorruptShardError(f"shard {url}: truncated tar (no end-of-archive block after byte "
                                    f"{offset}); rebuild it")
        if data[offset + 257: offset + 262] != b"ustar":
            if data[offset: offset + BLOCK] != _ZERO_BLOCK:
                raise CorruptShardError(f"shard {url}: tar header at byte {offset}: not a ustar header "
                                        f"(bad magic); the shard is damaged or not a tar file; rebuild it")
            # end-of-archive: only zero padding may follow (catches a zeroed-out start)
            if data[offset:].strip(b"\x00"):
                raise CorruptShardError(f"shard {url}: data after the end-of-archive block at byte "
                                        f"{offset}; the shard is damaged, rebuild it")
            break
        name, size, checksum = _parse_header(data, offset, url, max_member_bytes)
        start = offset + BLOCK
        if start + size > n:
            raise CorruptShardError(f"shard {url}: member {name!r} needs {size} bytes at {start} but the "
                                    f"shard has {n}; truncated, rebuild it")
        found.append((name, start, start + size))
        offsets.append(offset)
        stored.append(checksum)
        offset = start + size + (-size % BLOCK)
    _check_checksums(data, offsets, stored, url)
    return found


def walk_index(data, url: str, max_member_bytes: int) -> Index:
    """Members grouped into samples (webdataset's rule: the key is the path up to the
    first dot of the file name); every sample must have the same members, once each, and
    a sample's members must be consecutive (a key seen again later is a duplicate)."""
    spans: dict[str, list] = {}
    key, parts, n, done = None, {}, 0, set()

    def close_sample():
        if n == 0:
            for ext in parts:
                spans[ext] = []
        if parts.keys() != spans.keys():
            raise CorruptShardError(f"shard {url}: sample {key!r} has members {sorted(parts)}, the first "
                                    f"sample has {sorted(spans)}; rebuild the shard")
        for ext, span in parts.items():
            spans[ext].append(span)
        done.add(key)

    for name, start, end in members(data, url, max_member_bytes):
        slash = name.rfind("/") + 1
        dot = name.find(".", slash)
        k, ext = (name, "") if dot < 0 else (name[:dot], name[dot + 1:])
        if k != key and key is not None:
            close_sample()
            n += 1
            parts = {}
        if k in done or ext in parts:
            raise CorruptShardError(f"shard {url}: duplicate member {name!r} (record {n}): a sample's "
                                    f"members must appear once and together; rebuild the shard")
        key = k
        parts[ext] = (start, end)
    if key is not None:
        close_sample()
        n += 1
    return Index(n, {ext: np.asarray(v, dtype=np.int64).reshape(-1, 2) for ext, v in spans.items()})
