"""Filesystem and partition-table signatures: detected in-process, ``blkid -p`` for the rest.

Reading the first 68 KiB of a device (plus two 4 KiB blocks near its end, where md
1.0/0.90 superblocks live) recognises the common signatures without a process:
xfs, ext2/3/4, swap, btrfs, LVM2, md RAID 1.x, GPT and DOS partition tables, with
TYPE/UUID/LABEL (PTTYPE/PTUUID) as ``blkid -p -o export`` prints them. Signatures
recognised but not decoded (vfat, iso9660, ntfs, LUKS, md 0.90...) and unknown
non-zero heads are left to ONE ``blkid -p -o export`` call covering all of them.
An all-zero head means "no signature" and costs no process.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import subprocess
import threading
from typing import Dict, Iterable, Optional, Tuple

from ..core.errors import CommandFailed

HEAD_SIZE = 65536 + 4096  # up to and including the btrfs superblock at 64 KiB
TAIL_BLOCK = 4096

Props = Dict[str, str]

# Results of detect(): a dict of blkid-style keys, or one of these markers.
UNKNOWN = "unknown"  # non-zero head we cannot name: ask blkid
DELEGATE = "delegate"  # a signature we recognise but do not decode: ask blkid


# --- blkid -o export ----------------------------------------------------------


def _unescape_export(value: str) -> str:
    """blkid -o export escapes shell-unsafe characters with a backslash."""
    if "\\" not in value:
        return value
    out = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            out.append(nxt)
        else:
            out.append(ch)
    return "".join(out)


def parse_blkid_export(text: str) -> Dict[str, Props]:
    """``blkid -p -o export`` output -> ``{devname: {"TYPE": ..., "UUID": ..., ...}}``.

    Blocks are separated by blank lines and start with DEVNAME=; a block without
    DEVNAME (single-device output) is keyed by "".
    """
    out: Dict[str, Props] = {}
    cur: Props = {}

    def flush() -> None:
        if cur:
            name = cur.pop("DEVNAME", "")
            out[name] = dict(cur)
            cur.clear()

    for line in text.splitlines():
        line = line.strip()
        if not line:
            flush()
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "DEVNAME" and "DEVNAME" in cur:
            flush()
        cur[key] = _unescape_export(value)
    flush()
    return out


def run_blkid(paths: Iterable[str], blkid: str = "blkid", timeout: float = 60.0) -> Dict[str, Props]:
    """One ``blkid -p -o export PATH...`` over all ``paths``; devices without a signature are absent.

    blkid exits 2 when some device has no signature: not an error. Raises
    CommandFailed when blkid is missing or fails otherwise.
    """
    paths = list(paths)
    if not paths:
        return {}
    cmd = [blkid, "-p", "-o", "export", *paths]
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except FileNotFoundError:
        raise CommandFailed(
            "blkid is not installed", "install util-linux (blkid) on this host", cmd=tuple(cmd), rc=127
        ) from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(
            f"blkid did not finish in {timeout:.0f} s", "check for hung devices (dmesg)", cmd=tuple(cmd), rc=-1
        ) from None
    if proc.returncode not in (0, 2):
        # Exit 4/8 (usage/ambivalent) on one device must not hide the others: keep what was printed.
        parsed = parse_blkid_export(proc.stdout)
        if parsed:
            return parsed
        raise CommandFailed(
            f"blkid failed with exit code {proc.returncode}: {proc.stderr.strip()}",
            "run the command by hand to see why",
            cmd=tuple(cmd),
            rc=proc.returncode,
            stderr=proc.stderr,
        )
    return parse_blkid_export(proc.stdout)


# --- in-process signatures ------------------------------------------------------


def format_uuid(raw: bytes) -> str:
    """16 raw bytes -> "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" ("" when all zero)."""
    if len(raw) != 16 or raw.count(0) == 16:
        return ""
    h = raw.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def format_guid(raw: bytes) -> str:
    """16 raw bytes of an EFI GUID (first three fields little-endian)."""
    if len(raw) != 16 or raw.count(0) == 16:
        return ""
    a, b, c = struct.unpack_from("<IHH", raw)
    rest = raw[8:].hex()
    return f"{a:08x}-{b:04x}-{c:04x}-{rest[0:4]}-{rest[4:16]}"


def _label(raw: bytes) -> str:
    text = raw.split(b"\x00", 1)[0].decode("utf-8", "replace")
    return text.rstrip(" ")


def _props(kind: str, uuid: str = "", label: str = "", **extra: str) -> Props:
    out: Props = {"TYPE": kind}
    if uuid:
        out["UUID"] = uuid
    if label:
        out["LABEL"] = label
    out.update({k: v for k, v in extra.items() if v})
    return out


def _xfs(head: bytes) -> Optional[Props]:
    if head[0:4] != b"XFSB":
        return None
    return _props("xfs", format_uuid(head[32:48]), _label(head[108:120]))


# ext feature bits (libblkid ext.c)
_EXT3_FEATURE_COMPAT_HAS_JOURNAL = 0x0004
_EXT3_FEATURE_INCOMPAT_JOURNAL_DEV = 0x0008
_EXT2_FEATURE_RO_COMPAT_SUPP = 0x0001 | 0x0002 | 0x0004
_EXT2_FEATURE_INCOMPAT_SUPP = 0x0002 | 0x0010
_EXT3_FEATURE_RO_COMPAT_SUPP = 0x0001 | 0x0002 | 0x0004
_EXT3_FEATURE_INCOMPAT_SUPP = 0x0002 | 0x0004 | 0x0010


def _ext(head: bytes) -> Optional[Props]:
    sb = 1024
    if len(head) < sb + 1024 or head[sb + 56 : sb + 58] != b"\x53\xef":
        return None
    compat, incompat, ro_compat = struct.unpack_from("<III", head, sb + 92)
    if incompat & _EXT3_FEATURE_INCOMPAT_JOURNAL_DEV:
        kind = "jbd"
    elif compat & _EXT3_FEATURE_COMPAT_HAS_JOURNAL:
        if (ro_compat & ~_EXT3_FEATURE_RO_COMPAT_SUPP) or (incompat & ~_EXT3_FEATURE_INCOMPAT_SUPP):
            kind = "ext4"
        else:
            kind = "ext3"
    elif (ro_compat & ~_EXT2_FEATURE_RO_COMPAT_SUPP) or (incompat & ~_EXT2_FEATURE_INCOMPAT_SUPP):
        kind = "ext4"
    else:
        kind = "ext2"
    return _props(kind, format_uuid(head[sb + 104 : sb + 120]), _label(head[sb + 120 : sb + 136]))


_SWAP_PAGES = (4096, 8192, 16384, 32768, 65536)


def _swap(head: bytes) -> Optional[Props]:
    for page in _SWAP_PAGES:
        if len(head) < page:
            break
        magic = head[page - 10 : page]
        if magic == b"SWAPSPACE2":
            version = struct.unpack_from("<I", head, 1024)[0]
            if version != 1:
                return None  # blkid refuses such a header too; let it say what it is
            return _props("swap", format_uuid(head[1036:1052]), _label(head[1052:1068]), VERSION="1")
        if magic == b"SWAP-SPACE":
            return _props("swap", VERSION="0")
        if magic[:9] in (b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND") or magic[:8] == b"LINHIB0001":
            return {"TYPE": DELEGATE}
    return None


def _btrfs(head: bytes) -> Optional[Props]:
    sb = 65536
    if len(head) < sb + 4096 or head[sb + 64 : sb + 72] != b"_BHRfS_M":
        return None
    return _props(
        "btrfs",
        format_uuid(head[sb + 32 : sb + 48]),
        _label(head[sb + 299 : sb + 299 + 256]),
        UUID_SUB=format_uuid(head[sb + 201 + 66 : sb + 201 + 82]),
    )


def _lvm2(head: bytes) -> Optional[Props]:
    for sector in range(4):
        off = sector * 512
        if head[off : off + 8] == b"LABELONE" and head[off + 24 : off + 32] == b"LVM2 001":
            pv_off = off + struct.unpack_from("<I", head, off + 20)[0]
            raw = head[pv_off : pv_off + 32].decode("ascii", "replace")
            uuid = "-".join((raw[0:6], raw[6:10], raw[10:14], raw[14:18], raw[18:22], raw[22:26], raw[26:32]))
            return _props("LVM2_member", uuid, VERSION="LVM2 001")
    return None


_MD_MAGIC = b"\xfc\x4e\x2b\xa9"  # 0xa92b4efc little-endian


def _md1(block: bytes, version: str) -> Optional[Props]:
    if block[0:4] != _MD_MAGIC or struct.unpack_from("<I", block, 4)[0] != 1:
        return None
    return _props(
        "linux_raid_member",
        format_uuid(block[16:32]),
        _label(block[32:64]),
        UUID_SUB=format_uuid(block[168:184]),
        VERSION=version,
    )


def _fat_or_other_boot_sector(head: bytes) -> Optional[Props]:
    """Boot-sector filesystems we recognise but leave to blkid to decode."""
    if head[3:11] in (b"NTFS    ", b"EXFAT   "):
        return {"TYPE": DELEGATE}
    if head[0] in (0xEB, 0xE9) and (head[54:59] in (b"FAT12", b"FAT16") or head[82:87] == b"FAT32"):
        return {"TYPE": DELEGATE}
    return None


def _gpt(head: bytes, sector: int) -> Optional[Props]:
    for lba in sorted({sector, 512, 4096}):
        if len(head) >= lba + 92 and head[lba : lba + 8] == b"EFI PART":
            return {"PTTYPE": "gpt", "PTUUID": format_guid(head[lba + 56 : lba + 72])}
    return None


def _dos(head: bytes) -> Optional[Props]:
    if head[510:512] != b"\x55\xaa":
        return None
    entries = [head[446 + 16 * i : 446 + 16 * (i + 1)] for i in range(4)]
    if any(e[0] not in (0x00, 0x80) for e in entries):
        return None
    if not any(e[4] for e in entries):
        return None
    disk_id = struct.unpack_from("<I", head, 440)[0]
    out = {"PTTYPE": "dos"}
    if disk_id:
        out["PTUUID"] = f"{disk_id:08x}"
    return out


def detect(head: bytes, tail: Tuple[bytes, bytes] = (b"", b""), sector: int = 512) -> Optional[Props]:
    """Signature of a device from its first bytes (and md 1.0 / 0.90 tail blocks).

    Returns blkid-style props ({"TYPE": "xfs", "UUID": ..., "LABEL": ...} or
    {"PTTYPE": "gpt", ...}), None for an all-zero head (no signature), or
    {"TYPE": UNKNOWN} / {"TYPE": DELEGATE} when blkid must be asked.
    """
    md10, md090 = tail
    if md10[:4] == _MD_MAGIC:
        found = _md1(md10, "1.0")
        return found if found is not None else {"TYPE": DELEGATE}
    if md090[:4] == _MD_MAGIC:
        return {"TYPE": DELEGATE}  # md 0.90: blkid decodes its split UUID
    if not head or head.count(0) == len(head):
        return None
    if head[0:4] == _MD_MAGIC:
        return _md1(head, "1.1") or {"TYPE": DELEGATE}
    if len(head) >= 8192 and head[4096:4100] == _MD_MAGIC:
        return _md1(head[4096:8192], "1.2") or {"TYPE": DELEGATE}
    for probe in (_xfs, _ext, _btrfs, _swap, _lvm2):
        found = probe(head)
        if found is not None:
            return found
    if head[0:6] == b"LUKS\xba\xbe" or head[0:6] == b"SKUL\xba\xbe":
        return {"TYPE": DELEGATE}
    if len(head) > 32774 and head[32769:32774] in (b"CD001", b"BEA01", b"NSR02", b"NSR03"):
        return {"TYPE": DELEGATE}
    boot = _fat_or_other_boot_sector(head)
    if boot is not None:
        return boot
    pt = _gpt(head, sector)
    if pt is not None:
        return pt
    pt = _dos(head)
    if pt is not None:
        return pt
    return {"TYPE": UNKNOWN}


def tail_offsets(size: int) -> Tuple[int, int]:
    """Offsets of the md 1.0 and md 0.90 superblocks of a device of ``size`` bytes (-1: too small)."""
    md10 = ((size - 8192) & ~4095) if size >= 8192 + 4096 else -1
    md090 = ((size & ~65535) - 65536) if size >= 2 * 65536 else -1
    return md10, md090


_local = threading.local()


BUFFER_SIZE = 128 * 1024  # the head, or both md tail blocks in one read


def _aligned_buffer() -> mmap.mmap:
    """A page-aligned buffer (O_DIRECT needs one), one per thread, reused: fresh pages cost page faults."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = mmap.mmap(-1, BUFFER_SIZE)
    return buf


class _Reader:
    """Reads of one device, with O_DIRECT when the file allows it.

    Direct reads skip the block device's page cache, which the kernel drops at
    every last close anyway: buffered reads of a device paid for readahead and
    cache teardown on every probe. Offsets and lengths used here are multiples of
    4 KiB, which O_DIRECT needs. Files without O_DIRECT (tmpfs) use plain reads.
    """

    _FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

    def __init__(self, path: str) -> None:
        self.path = path
        self.direct = False
        direct = getattr(os, "O_DIRECT", 0)
        if direct:
            try:
                self.fd = os.open(path, self._FLAGS | direct)
                self.direct = True
                self.buf = _aligned_buffer()
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        self.fd = os.open(path, self._FLAGS)

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if self.direct:
            view = memoryview(self.buf)[:length]
            try:
                n = os.preadv(self.fd, [view], offset)
                return bytes(view[:n])
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Alignment the device refuses: reopen for plain reads.
                os.close(self.fd)
                self.fd = os.open(self.path, self._FLAGS)
                self.direct = False
        return os.pread(self.fd, length, offset)

    def close(self) -> None:
        os.close(self.fd)


def _tails(reader: _Reader, size: int, head: bytes) -> Tuple[bytes, bytes]:
    """The md 1.0 and md 0.90 superblock blocks: from the head when it covers them, else ONE read
    spanning both (they lie within 128 KiB of each other), else two."""
    md10, md090 = tail_offsets(size)
    if 0 <= md090 <= md10 and md090 >= len(head) and md10 + TAIL_BLOCK - md090 <= BUFFER_SIZE:
        span = reader.read(md090, md10 + TAIL_BLOCK - md090)
        return span[md10 - md090 : md10 - md090 + TAIL_BLOCK], span[:TAIL_BLOCK]
    out = []
    for off in (md10, md090):
        if off < 0:
            out.append(b"")
        elif off + TAIL_BLOCK <= len(head):
            out.append(head[off : off + TAIL_BLOCK])
        else:
            out.append(reader.read(off, TAIL_BLOCK))
    return out[0], out[1]


def read_signature_blocks(path: str, size: int) -> Tuple[bytes, Tuple[bytes, bytes]]:
    """(first HEAD_SIZE bytes, (md 1.0 block, md 0.90 block)) of a device in two reads.

    Raises OSError when the device cannot be opened or read (EACCES, EIO, ENOMEDIUM...).
    """
    reader = _Reader(path)
    try:
        head = reader.read(0, min(HEAD_SIZE, size) if size > 0 else HEAD_SIZE)
        return head, _tails(reader, size, head)
    finally:
        reader.close()


def probe_device(path: str, size: int, sector: int = 512) -> Optional[Props]:
    """detect() over a device of ``size`` bytes; OSError when it cannot be read."""
    head, tails = read_signature_blocks(path, size)
    return detect(head, tails, sector)
