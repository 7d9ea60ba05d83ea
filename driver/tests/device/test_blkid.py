"""device/blkid.py: blkid export parsing and in-process signatures checked against blkid itself.

Filesystems are made by the real tools (mkfs.xfs, mkfs.ext4, mkswap) on sparse
regular files; partition tables and md/LVM/btrfs headers that this host has no
tool for are written byte by byte from their on-disk formats.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path
from typing import Dict, Tuple

import pytest
from directpv_csi.core.errors import CommandFailed
from directpv_csi.device import blkid as B

from testsupport import needs_tool


def test_parse_export_fixture(fixtures_dir: Path) -> None:
    got = B.parse_blkid_export((fixtures_dir / "blkid" / "export-mixed.txt").read_text())
    assert set(got) == {"/dev/xfs", "/dev/ext4", "/dev/swap", "/dev/ext2"}, "a device without signature is absent"
    assert got["/dev/xfs"]["TYPE"] == "xfs" and got["/dev/xfs"]["LABEL"] == "my data"
    assert got["/dev/ext4"]["TYPE"] == "ext4" and got["/dev/ext4"]["LABEL"] == "root"
    assert got["/dev/swap"] == {
        "LABEL": "swp",
        "UUID": got["/dev/swap"]["UUID"],
        "VERSION": "1",
        "TYPE": "swap",
        "USAGE": "other",
    }
    assert len(got["/dev/ext2"]["UUID"]) == 36 and "DEVNAME" not in got["/dev/ext2"]


def test_parse_export_single_device_and_back_to_back_blocks() -> None:
    assert B.parse_blkid_export("TYPE=xfs\nUUID=u\n") == {"": {"TYPE": "xfs", "UUID": "u"}}
    got = B.parse_blkid_export("DEVNAME=/dev/a\nTYPE=xfs\nDEVNAME=/dev/b\nTYPE=ext4\nLABEL=a\\\\b\\=c\n")
    assert got == {"/dev/a": {"TYPE": "xfs"}, "/dev/b": {"TYPE": "ext4", "LABEL": "a\\b=c"}}
    assert B.parse_blkid_export("") == {}


def _image(tmp_path: Path, name: str, size: str = "64M") -> Path:
    p = tmp_path / name
    subprocess.run(["truncate", "-s", size, str(p)], check=True)
    return p


def _detect_file(path: Path) -> Dict[str, str]:
    size = path.stat().st_size
    head, tail = B.read_signature_blocks(str(path), size)
    got = B.detect(head, tail)
    assert got is not None, f"{path.name}: no signature detected"
    return got


def _blkid(path: Path) -> Dict[str, str]:
    return B.run_blkid([str(path)]).get(str(path), {})


def _same(ours: Dict[str, str], theirs: Dict[str, str], keys: Tuple[str, ...]) -> None:
    for k in keys:
        assert ours.get(k, "") == theirs.get(k, ""), f"{k}: ours {ours.get(k)!r} blkid {theirs.get(k)!r}"


@needs_tool("blkid")
@needs_tool("mkfs.xfs")
def test_xfs_agrees_with_blkid(tmp_path: Path) -> None:
    img = _image(tmp_path, "xfs.img", "300M")
    subprocess.run(["mkfs.xfs", "-q", "-L", "DIRECTPV", str(img)], check=True)
    ours = _detect_file(img)
    assert ours["TYPE"] == "xfs" and ours["LABEL"] == "DIRECTPV"
    _same(ours, _blkid(img), ("TYPE", "UUID", "LABEL"))


@needs_tool("blkid")
@pytest.mark.parametrize(
    ("tool", "args"),
    [("mkfs.ext4", ["-L", "my label"]), ("mkfs.ext4", []), ("mkfs.ext3", ["-L", "e3"]), ("mkfs.ext2", [])],
)
def test_ext_agrees_with_blkid(tmp_path: Path, tool: str, args: list) -> None:  # type: ignore[type-arg]
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (e2fsprogs)")
    img = _image(tmp_path, "ext.img")
    subprocess.run([tool, "-q", "-F", *args, str(img)], check=True)
    ours = _detect_file(img)
    assert ours["TYPE"] == tool.split(".")[1]
    _same(ours, _blkid(img), ("TYPE", "UUID", "LABEL"))


@needs_tool("blkid")
@needs_tool("mkswap")
@pytest.mark.parametrize("label", ["", "swp"])
def test_swap_agrees_with_blkid(tmp_path: Path, label: str) -> None:
    img = _image(tmp_path, "swap.img")
    subprocess.run(["mkswap", *(["-L", label] if label else []), str(img)], check=True, capture_output=True)
    ours = _detect_file(img)
    assert ours["TYPE"] == "swap" and len(ours["UUID"]) == 36
    _same(ours, _blkid(img), ("TYPE", "UUID", "LABEL"))


def _mbr(disk_id: int, entries: list) -> bytearray:  # type: ignore[type-arg]
    buf = bytearray(512)
    struct.pack_into("<I", buf, 440, disk_id)
    for i, (boot, ptype, start, count) in enumerate(entries):
        struct.pack_into("<B3sB3sII", buf, 446 + 16 * i, boot, b"\xff\xff\xff", ptype, b"\xff\xff\xff", start, count)
    buf[510:512] = b"\x55\xaa"
    return buf


def _write(path: Path, offset: int, data: bytes | bytearray) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@needs_tool("blkid")
def test_dos_partition_table_agrees_with_blkid(tmp_path: Path) -> None:
    img = _image(tmp_path, "dos.img")
    _write(img, 0, _mbr(0x1A2B3C4D, [(0x80, 0x83, 2048, 40960), (0, 0x82, 43008, 20480)]))
    ours = _detect_file(img)
    assert ours == {"PTTYPE": "dos", "PTUUID": "1a2b3c4d"}
    _same(ours, _blkid(img), ("PTTYPE", "PTUUID", "TYPE"))


def _gpt(total_sectors: int, disk_guid: uuid.UUID) -> Tuple[bytes, bytes]:
    """(protective MBR + header at LBA 1, zeroed entry array) with valid CRCs."""
    entries = bytes(128 * 128)
    header = bytearray(92)
    struct.pack_into(
        "<8sIIIIQQQQ16sQIII",
        header,
        0,
        b"EFI PART",
        0x00010000,
        92,
        0,
        0,
        1,
        total_sectors - 1,
        34,
        total_sectors - 34,
        disk_guid.bytes_le,
        2,
        128,
        128,
        zlib.crc32(entries),
    )
    struct.pack_into("<I", header, 16, zlib.crc32(bytes(header)))
    pmbr = _mbr(0, [(0, 0xEE, 1, min(total_sectors - 1, 0xFFFFFFFF))])
    return bytes(pmbr) + bytes(header) + bytes(512 - 92), entries


@needs_tool("blkid")
def test_gpt_agrees_with_blkid(tmp_path: Path) -> None:
    img = _image(tmp_path, "gpt.img")
    guid = uuid.UUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    head, entries = _gpt(64 * 2048, guid)
    _write(img, 0, head)
    _write(img, 1024, entries)
    ours = _detect_file(img)
    assert ours == {"PTTYPE": "gpt", "PTUUID": str(guid)}
    _same(ours, _blkid(img), ("PTTYPE", "PTUUID"))


def test_zero_head_is_no_signature() -> None:
    assert B.detect(bytes(B.HEAD_SIZE)) is None
    assert B.detect(b"") is None


def test_unknown_and_delegated_signatures() -> None:
    junk = bytearray(B.HEAD_SIZE)
    junk[100:104] = b"junk"
    assert B.detect(bytes(junk)) == {"TYPE": B.UNKNOWN}
    fat = bytearray(B.HEAD_SIZE)
    fat[0] = 0xEB
    fat[82:87] = b"FAT32"
    fat[510:512] = b"\x55\xaa"
    assert B.detect(bytes(fat)) == {"TYPE": B.DELEGATE}, "vfat is handed to blkid, not mistaken for an MBR"
    iso = bytearray(B.HEAD_SIZE)
    iso[32769:32774] = b"CD001"
    assert B.detect(bytes(iso)) == {"TYPE": B.DELEGATE}
    luks = bytearray(B.HEAD_SIZE)
    luks[0:6] = b"LUKS\xba\xbe"
    assert B.detect(bytes(luks)) == {"TYPE": B.DELEGATE}


def _md1_block(set_uuid: uuid.UUID, name: bytes) -> bytes:
    sb = bytearray(4096)
    struct.pack_into("<II", sb, 0, 0xA92B4EFC, 1)
    sb[16:32] = set_uuid.bytes
    sb[32 : 32 + len(name)] = name
    sb[168:184] = uuid.UUID(int=7).bytes
    return bytes(sb)


def test_md_raid_superblocks_at_each_position() -> None:
    u = uuid.UUID("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9")
    head = bytearray(B.HEAD_SIZE)
    head[4096:8192] = _md1_block(u, b"host:0")
    got = B.detect(bytes(head))
    assert got == {
        "TYPE": "linux_raid_member",
        "UUID": str(u),
        "LABEL": "host:0",
        "UUID_SUB": str(uuid.UUID(int=7)),
        "VERSION": "1.2",
    }
    head11 = _md1_block(u, b"x") + bytes(B.HEAD_SIZE - 4096)
    assert B.detect(head11)["VERSION"] == "1.1"  # type: ignore[index]
    # md 1.0 lives at the end: found even when the head holds the array's own filesystem.
    xfs = bytearray(B.HEAD_SIZE)
    xfs[0:4] = b"XFSB"
    got10 = B.detect(bytes(xfs), (_md1_block(u, b"end"), b""))
    assert got10 is not None and got10["TYPE"] == "linux_raid_member" and got10["VERSION"] == "1.0"
    # md 0.90 (end of device): blkid decodes it.
    assert B.detect(bytes(xfs), (b"", b"\xfc\x4e\x2b\xa9" + bytes(100))) == {"TYPE": B.DELEGATE}


def test_md_tail_offsets() -> None:
    size = 1 << 30
    md10, md090 = B.tail_offsets(size)
    assert md10 == size - 8192 and md090 == size - 65536
    assert B.tail_offsets(4096) == (-1, -1)


def test_lvm2_label() -> None:
    head = bytearray(B.HEAD_SIZE)
    off = 512
    head[off : off + 8] = b"LABELONE"
    struct.pack_into("<QII", head, off + 8, 1, 0, 32)
    head[off + 24 : off + 32] = b"LVM2 001"
    head[off + 32 : off + 64] = b"AbCdEf0123456789GhIjKlMnOpQrStUv"
    got = B.detect(bytes(head))
    assert got == {"TYPE": "LVM2_member", "UUID": "AbCdEf-0123-4567-89Gh-IjKl-MnOp-QrStUv", "VERSION": "LVM2 001"}


def test_btrfs_superblock() -> None:
    head = bytearray(B.HEAD_SIZE)
    sb = 65536
    fsid = uuid.UUID("11111111-2222-3333-4444-555555555555")
    head[sb + 32 : sb + 48] = fsid.bytes
    head[sb + 64 : sb + 72] = b"_BHRfS_M"
    head[sb + 299 : sb + 304] = b"pool1"
    got = B.detect(bytes(head))
    assert got is not None and got["TYPE"] == "btrfs" and got["UUID"] == str(fsid) and got["LABEL"] == "pool1"


def test_format_uuid_and_guid() -> None:
    u = uuid.UUID("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    assert B.format_uuid(u.bytes) == str(u)
    assert B.format_guid(u.bytes_le) == str(u)
    assert B.format_uuid(bytes(16)) == "" and B.format_guid(bytes(16)) == ""


@needs_tool("blkid")
@needs_tool("mkswap")
def test_one_blkid_call_covers_many_devices(tmp_path: Path) -> None:
    a, b, c = _image(tmp_path, "a.img"), _image(tmp_path, "b.img"), _image(tmp_path, "c.img")
    for p in (a, b):
        subprocess.run(["mkswap", str(p)], check=True, capture_output=True)
    got = B.run_blkid([str(a), str(b), str(c)])
    assert set(got) == {str(a), str(b)} and got[str(a)]["TYPE"] == "swap"
    assert B.run_blkid([]) == {}


def test_missing_blkid_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as info:
        B.run_blkid([str(tmp_path)], blkid=str(tmp_path / "no-blkid"))
    assert "not installed" in info.value.message and info.value.hint


def _file_with(tmp_path: Path, name: str, chunks: Dict[int, bytes], size: int = 64 * 2**20) -> Path:
    img = _image(tmp_path, name, str(size))
    for off, data in chunks.items():
        _write(img, off, data)
    return img


def test_probe_device_on_files(tmp_path: Path) -> None:
    """Each kind of head and tail, as probe_device reads it from a file (head + one merged tail read)."""
    fsid = uuid.UUID("11111111-2222-3333-4444-555555555555")
    btrfs = bytearray(4096)
    btrfs[32:48] = fsid.bytes
    btrfs[64:72] = b"_BHRfS_M"
    u = uuid.UUID("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9")
    expected = {
        "empty": None,
        "btrfs": "btrfs",
        "iso": B.DELEGATE,
        "xfs": "xfs",
        "md10": "linux_raid_member",
        "md090": B.DELEGATE,
        "junk": B.UNKNOWN,
    }
    for size in (64 * 2**20, 64 * 2**20 + 12 * 4096):  # md tails 64 KiB-aligned or not
        md10, md090 = B.tail_offsets(size)
        cases = {
            "empty": {},
            "btrfs": {65536: bytes(btrfs)},
            "iso": {32769: b"CD001"},
            "xfs": {0: b"XFSB" + bytes(28) + fsid.bytes},
            "md10": {0: b"XFSB", md10: _md1_block(u, b"end")},
            "md090": {0: b"XFSB", md090: b"\xfc\x4e\x2b\xa9"},
            "junk": {9000: b"junk"},
        }
        for name, chunks in cases.items():
            img = _file_with(tmp_path, f"{name}-{size}.img", chunks, size)
            got = B.probe_device(str(img), size)
            assert (got or {}).get("TYPE") == expected[name], (name, size)
            _, (t10, t090) = B.read_signature_blocks(str(img), size)
            with open(img, "rb") as f:
                f.seek(md10)
                assert t10 == f.read(4096)
                f.seek(md090)
                assert t090 == f.read(4096)


def test_probe_device_small_and_unreadable(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.img"
    tiny.write_bytes(b"XFSB" + bytes(1020))
    assert B.probe_device(str(tiny), 1024) == {"TYPE": "xfs"}
    with pytest.raises(OSError):
        B.probe_device(str(tmp_path), 4096)  # a directory: EISDIR
    with pytest.raises(OSError):
        B.probe_device(str(tmp_path / "missing"), 4096)
