"""Where a tar shard's samples lie: ``Index``, and ``plain_index``, which finds and checks every
member at once with numpy instead of walking from member to member.

The walk (:mod:`shards.formats.tar_walk`) costs ~0.35 s per 50k-member shard, all before the
first record.  ``plain_index`` does the same checks over every header at once: magic, octal
size and checksum fields, type (regular files only), no ustar prefix, the size cap, safe names
and whole samples, no key twice.  It accepts only the plain layout writers produce (canonical
octal fields, [A-Za-z0-9_.-] names with a dot, every sample's members in the first sample's
order) and returns None for anything else, so the walk decides and names the problem: it never
accepts a shard the walk refuses, and gives exactly the walk's index for one it accepts.  Names
as our writer makes them (keys of one width, rising) are checked on their key bytes alone
(``_uniform_samples``); other names split at their first dot column by column (``_any_samples``).

The checks read each candidate header (``ustar`` at its magic) once: ``HeaderScan`` takes the
shard ``CHUNK`` blocks at a time, copies that chunk's candidates whole into a reused buffer (a
fresh process pays a page fault for every 4 KiB of each new large array) and reads every field
there; only the results per header are kept.  ``shards.reader`` feeds it each chunk of a local
shard as it reads it, while the chunk is still in the CPU cache.
"""
from __future__ import annotations

import numpy as np

from shards.formats.tar_write import BLOCK

CHUNK = 4096  # blocks scanned per step (2 MiB): their candidate headers fit one reused buffer
NAME_PEEK = 32  # name bytes read first: writers' names are shorter, so their NUL is in there

_NAME_CHARS = np.zeros(256, bool)
_NAME_CHARS[np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", np.uint8)] = True
_KEY_CHARS = _NAME_CHARS.copy()
_KEY_CHARS[ord(".")] = False  # a key ends at the name's first dot
_USTA = int.from_bytes(b"usta", "little")


class Index:
    """Where each sample's members lie: ``spans[ext]`` is an (n, 2) array of (start, end)."""

    def __init__(self, n: int, spans: dict[str, np.ndarray]):
        self.n, self.spans = n, spans
        self.labels: np.ndarray | None = None  # parsed on first use, then kept with the index


def blocks_of(data) -> np.ndarray:
    """The shard's whole 512-byte blocks as an (n, 512) uint8 view (no copy)."""
    return np.frombuffer(data, np.uint8, count=len(data) // BLOCK * BLOCK).reshape(-1, BLOCK)


def plain_index(data, max_member_bytes: int) -> Index | None:
    """The member index of a plainly laid out shard, or None (see the module docstring)."""
    scan = HeaderScan()
    scan.feed(np.frombuffer(data, np.uint8), len(data))
    return scan.index(data, max_member_bytes)


class HeaderScan:
    """What ``plain_index`` checks of every block that may be a member header (``ustar`` at its magic),
    gathered ``CHUNK`` blocks at a time: a chunk's candidate headers are copied whole into a reused buffer
    and every field is read there, not in a pass over the shard per field (each missing the CPU cache at
    every header).  ``feed`` takes the shard's bytes as they arrive (``shards.reader`` feeds each chunk it
    reads while the chunk is in the cache); ``index`` then decides, once all of them are in."""

    def __init__(self):
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.blocks = 0  # whole blocks scanned
        self._held = np.empty((CHUNK, BLOCK), np.uint8)

    def feed(self, data: np.ndarray, upto: int) -> None:
        """Scan the whole blocks of ``data[:upto]`` (uint8) not scanned yet."""
        blocks = data[self.blocks * BLOCK: upto // BLOCK * BLOCK].reshape(-1, BLOCK)
        for lo in range(0, len(blocks), CHUNK):
            self._add(blocks[lo: lo + CHUNK], self.blocks + lo)
        self.blocks += len(blocks)

    def _add(self, blocks: np.ndarray, first: int) -> None:
        """The candidate headers among ``blocks`` (the shard's blocks ``first``, ``first + 1``, ...)."""
        magic = np.flatnonzero(np.ascontiguousarray(blocks[:, 257:261]).view("<u4").ravel() == _USTA)
        magic = magic[blocks[magic, 261] == ord("r")]
        rows = np.take(blocks, magic, axis=0, out=self._held[: len(magic)], mode="clip")  # magic: valid rows
        stored = octal_column(rows[:, 148:156])
        rows[:, 148:156] = 32  # the checksum is the header's byte sum with its own field as spaces
        summed = rows.sum(1, dtype=np.uint32) == stored
        kind = rows[:, 156]
        plain = ((kind == 48) | (kind == 0)) & (rows[:, 345] == 0) & (stored >= 0) & summed  # regular, no prefix
        self.parts.append((magic + first, octal_column(rows[:, 124:136]), plain, rows[:, :NAME_PEEK].copy()))

    def index(self, data, max_member_bytes: int) -> Index | None:
        """The member index of ``data`` (every whole block of it fed), or None (see ``plain_index``)."""
        if self.blocks != len(data) // BLOCK:
            raise ValueError(f"HeaderScan.index: {self.blocks} blocks scanned of {len(data) // BLOCK}; feed them all first")
        if not self.blocks:
            return None
        at, sizes, plain, names = (np.concatenate(column) for column in zip(*self.parts))
        chain = _header_chain(data, at, sizes)
        if chain is None:
            return None
        at, sizes, plain, names = at[chain], sizes[chain], plain[chain], names[chain]
        if not len(at) or (sizes > max_member_bytes).any() or not plain.all():
            return None
        names = _member_names(blocks_of(data), at, names)
        found = _uniform_samples(names) or _any_samples(names)
        return None if found is None else _index(at, sizes, *found)


def _header_chain(data, magic: np.ndarray, sizes: np.ndarray) -> np.ndarray | slice | None:
    """Which candidate headers (at blocks ``magic``, of payload ``sizes``) are the members (an index, or
    a whole slice when all are), following each header's size from block 0; None when the chain is not
    plain (truncated, data after the end-of-archive block...)."""
    hops = np.where(sizes >= 0, magic + 1 + (sizes + BLOCK - 1) // BLOCK, -1)
    if len(magic) and magic[0] == 0 and (hops[:-1] == magic[1:]).all():
        chain, end = slice(None), int(hops[-1])
    else:  # a payload holding "ustar" where a header's magic would be: walk from header to header
        where, i, found = dict(zip(magic.tolist(), range(len(magic)))), 0, []
        while i in where:
            found.append(where[i])
            i = int(hops[where[i]])
        chain, end = np.asarray(found, np.int64), i
    if end < 0 or end >= len(data) // BLOCK or bytes(data[end * BLOCK:]).strip(b"\x00"):
        return None
    return chain


def octal_column(fields: np.ndarray) -> np.ndarray:
    """Each row's octal field as int64, -1 where it is not digits then only NUL/space.  One
    matrix product when every row has as many leading digits as the first (writers pad them)."""
    if not len(fields):
        return np.zeros(0, np.int64)
    digits = fields - np.uint8(48)  # uint8: anything but 0-7 wraps to >= 8
    is_digit = digits[0] < 8
    lead = len(is_digit) if is_digit.all() else int(np.argmin(is_digit))
    rest = fields[:, lead:]
    if lead and (digits[:, :lead] < 8).all() and ((rest == 0) | (rest == 32)).all():
        return digits[:, :lead].astype(np.int64) @ (8 ** np.arange(lead - 1, -1, -1, dtype=np.int64))
    return _octal_fields(fields)


def _octal_fields(fields: np.ndarray) -> np.ndarray:
    """Row by row forms of ``octal_column``: leading digits, then only NUL/space; -1 for any other."""
    width = fields.shape[1]
    digits = fields.astype(np.int64) - 48
    digit = (digits >= 0) & (digits <= 7)
    lead = np.where(digit.all(1), width, np.argmin(digit, 1))
    ok = (lead >= 1) & (digit | (fields == 0) | (fields == 32)).all(1) & (digit.sum(1) == lead)
    value = np.zeros(len(fields), np.int64)
    for c in range(width):  # Horner over the columns; 12 digits at most, within int64
        value = np.where(c < lead, value * 8 + digits[:, c], value)
    return np.where(ok, value, -1)


def _member_names(blocks: np.ndarray, at: np.ndarray, peeked: np.ndarray | None = None) -> np.ndarray:
    """Each member's name field, only its first bytes (``peeked``: those, gathered already) when every
    name ends there."""
    names = blocks[at, :NAME_PEEK] if peeked is None else peeked
    ends = not names[:, -1].any() or (names == 0).any(1).all()  # the first test settles writers' short names
    return names if ends else blocks[at, :100]


def _uniform_samples(names: np.ndarray) -> tuple[list[str], int] | None:
    """(extensions of a sample in order, members per sample) for names as writers make them:
    ``KEY.EXT`` with keys of one length, each sample's names after the key those of the first
    sample, keys rising.  A few passes over the key bytes; None for any other form
    (``_any_samples`` then judges)."""
    cut = bytes(names[0]).find(b".")
    if cut < 1 or not (names[:, cut] == 46).all() or not _key_chars(names[:, :cut]):
        return None
    keys = np.ascontiguousarray(names[:, :cut]).view(f"S{cut}").ravel()
    per = int(np.argmin(keys == keys[0])) or len(keys)
    if len(keys) % per:
        return None
    tails = names[:, cut + 1:].reshape(-1, per, names.shape[1] - cut - 1)
    exts = [bytes(t).split(b"\x00", 1)[0] for t in tails[0]]
    if len(set(exts)) != per or not all(e and _NAME_CHARS[np.frombuffer(e, np.uint8)].all() for e in exts):
        return None
    keys = keys.reshape(-1, per)
    rising = bool((keys[1:, 0] > keys[:-1, 0]).all())  # so no key twice, without sorting them
    if not rising or not (keys == keys[:, :1]).all() or not _tails_alike(names, cut, per):
        return None
    return [e.decode("ascii") for e in exts], per


def _key_chars(keys: np.ndarray) -> bool:
    """Every key byte is [A-Za-z0-9_-]; one pass when they are all digits (writers' keys)."""
    return bool(((keys - np.uint8(48)) < 10).all()) or bool(_KEY_CHARS[keys].all())


def _tails_alike(names: np.ndarray, cut: int, per: int) -> bool:
    """Each sample's name bytes after column ``cut`` are the first sample's, compared eight at a time
    when a row is whole words."""
    if names.shape[1] % 8:
        tails = names[:, cut + 1:].reshape(-1, per, names.shape[1] - cut - 1)
        return bool((tails == tails[0]).all())
    words = np.ascontiguousarray(names).view("<u8").reshape(-1, per, names.shape[1] // 8)
    words = words & np.frombuffer(bytes(cut + 1) + b"\xff" * (names.shape[1] - cut - 1), "<u8")
    return bool((words == words[0]).all())


def _any_samples(names: np.ndarray) -> tuple[list[str], int] | None:
    """(extensions of a sample in order, members per sample) for any [A-Za-z0-9_.-] names
    (``_checked_names``): runs of one key, each with the first sample's extensions in its order,
    no key twice; else None."""
    checked = _checked_names(names)
    if checked is None:
        return None
    keys, exts = checked
    per = int(np.argmin(keys == keys[0])) or len(keys)  # members of the first sample
    if len(keys) % per:
        return None
    keys, exts = keys.reshape(-1, per), exts.reshape(-1, per)
    first = [e.decode("ascii") for e in exts[0].tolist()]
    if len(set(first)) != per or not (keys == keys[:, :1]).all() or not (exts == exts[0]).all() \
            or len(np.unique(keys[:, 0])) != len(keys):
        return None
    return first, per


def _checked_names(names: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(key, extension) of each member as fixed-width bytes, split at the name's first dot;
    None unless every name is [A-Za-z0-9_.-] with a dot, not starting with one."""
    nul = names == 0
    length = np.where(nul.any(1), np.argmax(nul, 1), names.shape[1])
    names = names[:, :max(int(length.max()), 1)]  # the bytes after a name's NUL are not part of it
    col = np.arange(names.shape[1])
    inside = col < length[:, None]
    dot = inside & (names == 46)
    if not (_NAME_CHARS[names] | ~inside).all() or not dot.any(1).all() or (names[:, 0] == 46).any():
        return None
    cut = np.argmax(dot, 1)
    keys = np.where(col < cut[:, None], names, 0).astype(np.uint8)
    ext_len = length - cut - 1
    width = max(int(ext_len.max()), 1)
    at = np.minimum(cut[:, None] + 1 + np.arange(width), names.shape[1] - 1)
    exts = np.where(np.arange(width) < ext_len[:, None], np.take_along_axis(names, at, 1), 0).astype(np.uint8)
    return (np.ascontiguousarray(keys).view(f"S{names.shape[1]}").ravel(),
            np.ascontiguousarray(exts).view(f"S{width}").ravel())


def _index(at: np.ndarray, sizes: np.ndarray, exts: list[str], per: int) -> Index:
    start = at * BLOCK + BLOCK
    spans = np.stack([start, start + sizes], axis=1).reshape(-1, per, 2)
    return Index(len(spans), {ext: np.ascontiguousarray(spans[:, j]) for j, ext in enumerate(exts)})
