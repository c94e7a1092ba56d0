"""Unsafe tar content is refused with CorruptShardError: ``..`` and absolute member
names, symlinks, hardlinks, directories, devices, extension headers, bad checksums,
and members over the size cap (refused from the header, before any allocation)."""
from __future__ import annotations

import io
import tarfile

import pytest

from shards import CorruptShardError
from shards.formats import tar_read as format_tar
from shards.manifest import Manifest, ShardInfo, write_manifest
from shards.reader import fetch_shard, read_batches, verify_shard

pytestmark = pytest.mark.timeout(30)


def make_tar(members, fmt=tarfile.USTAR_FORMAT) -> bytes:
    """members: (name, payload or None, tarfile type, linkname)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, payload, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = len(payload) if payload is not None and kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(payload) if info.size else None)
    return buf.getvalue()


GOOD = ("00000000.txt", b"fine", tarfile.REGTYPE, "")

UNSAFE = {
    "dotdot": (("../../etc/cron.d/x.txt", b"evil", tarfile.REGTYPE, ""), "unsafe member path"),
    "dotdot-inside": (("a/../../x.txt", b"evil", tarfile.REGTYPE, ""), "unsafe member path"),
    "absolute": (("/etc/passwd.txt", b"evil", tarfile.REGTYPE, ""), "unsafe member path"),
    "symlink": (("00000001.txt", None, tarfile.SYMTYPE, "/etc/passwd"), "not a regular file"),
    "hardlink": (("00000001.txt", None, tarfile.LNKTYPE, "00000000.txt"), "not a regular file"),
    "directory": (("00000001", None, tarfile.DIRTYPE, ""), "not a regular file"),
    "fifo": (("00000001.txt", None, tarfile.FIFOTYPE, ""), "not a regular file"),
    "chardev": (("00000001.txt", None, tarfile.CHRTYPE, ""), "not a regular file"),
}


@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_unsafe_member_rejected(kind):
    member, message = UNSAFE[kind]
    data = make_tar([GOOD, member])
    with pytest.raises(CorruptShardError, match=rf"shard evil\.tar: .*{message}.*rebuild"):
        list(format_tar.read_batches(data, "evil.tar"))
    print(f"\n{kind}: refused")


def test_pax_extension_headers_refused():
    data = make_tar([("ü" * 60 + ".txt", b"x", tarfile.REGTYPE, "")], fmt=tarfile.PAX_FORMAT)
    with pytest.raises(CorruptShardError, match="not a regular file.*extension headers"):
        list(format_tar.read_batches(data, "pax.tar"))


def test_oversized_member_refused_from_its_header():
    """A header claiming 1 TiB is refused before anything is allocated or read."""
    block = bytearray(format_tar.header("00000000.txt", 0))
    block[124:136] = b"\x80" + (1 << 40).to_bytes(11, "big")  # GNU base-256 size field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    data = bytes(block) + b"x" * 512 + bytes(1024)
    with pytest.raises(CorruptShardError, match=r"is 1099511627776 bytes, over the 268435456-byte record limit"):
        list(format_tar.read_batches(data, "huge.tar"))


def test_member_over_the_cap_refused(monkeypatch):
    monkeypatch.setattr(format_tar, "MAX_MEMBER_BYTES", 1000)
    data = make_tar([GOOD, ("00000001.txt", b"y" * 1001, tarfile.REGTYPE, "")])
    with pytest.raises(CorruptShardError, match="1001 bytes, over the 1000-byte record limit"):
        list(format_tar.read_batches(data, "big.tar"))


def test_bad_checksum_refused():
    data = bytearray(make_tar([GOOD]))
    data[0] = ord("1")  # rename the member without fixing the checksum
    with pytest.raises(CorruptShardError, match="checksum mismatch"):
        list(format_tar.read_batches(bytes(data), "flip.tar"))


def test_size_past_the_end_refused():
    data = format_tar.header("00000000.txt", 5000) + b"x" * 600
    with pytest.raises(CorruptShardError, match="truncated"):
        list(format_tar.read_batches(data, "short.tar"))


def test_unsafe_shard_refused_through_the_public_read_path(tmp_path):
    """Even with a manifest whose sha256 matches (a malicious producer), reading refuses it."""
    import hashlib

    data = make_tar([GOOD, UNSAFE["symlink"][0]])
    (tmp_path / "shard-00000.tar").write_bytes(data)
    info = ShardInfo("shard-00000.tar", 2, len(data), hashlib.sha256(data).hexdigest())
    manifest = Manifest(format="tar", num_records=2, fields=["text"], shards=[info])
    write_manifest(str(tmp_path), manifest)
    url = str(tmp_path / "shard-00000.tar")
    with pytest.raises(CorruptShardError, match="not a regular file"):
        fetch_shard(url, info)  # size and hash are fine, the content is not: refused at fetch ...
    with pytest.raises(CorruptShardError, match="not a regular file"):
        list(read_batches(manifest, url, data))  # ... and by the reader, given the bytes anyway
    with pytest.raises(CorruptShardError, match="not a regular file"):
        verify_shard(manifest, str(tmp_path), 0)
