"""XFS primary superblock reader: capacity, UUID and label from raw bytes.

``parse_xfs_superblock(data)`` is pure (bytes in, ``XfsSuperblock`` out);
``read_xfs_superblock(path_or_fileobj)`` reads the first sector of a device or
image and parses it. No xfsprogs process, no mount: this is how a drive is
recognised by its filesystem UUID after it was renamed (sdb -> sdc, loop3 -> loop7).

On-disk layout (big-endian, ``struct xfs_dsb`` in the kernel's
``fs/xfs/libxfs/xfs_format.h``); the offsets used here::

      0 magic "XFSB"          4 blocksize u32       8 dblocks u64
     32 uuid [16]            48 logstart u64       96 logblocks u32
    100 versionnum u16      102 sectsize u16      108 fname [12] (label)
    120 blocklog u8         127 imax_pct u8       224 crc u32 (v5 only)
    248 meta_uuid [16] (v5, when the META_UUID incompat feature is set)

``capacity`` is what ``statfs`` reports as the filesystem's size: the data blocks
minus the internal log (``(dblocks - logblocks) * blocksize`` when ``logstart`` is
non-zero, else ``dblocks * blocksize``). ``device_bytes`` is ``dblocks * blocksize``.
"""

from __future__ import annotations

import struct
import uuid as _uuid
from dataclasses import dataclass
from typing import BinaryIO, List, Union

from ..core.errors import InvalidArgument, NotFound

XFS_MAGIC = b"XFSB"
SUPERBLOCK_READ_SIZE = 512  # the smallest sector; the v5 checksum covers sectsize bytes
_MIN_V4 = 208  # bytes needed for every field a v4 superblock has that we read
_MIN_V5 = 264  # up to and including sb_meta_uuid
_VERSION_NUMBITS = 0x000F
_INCOMPAT_META_UUID = 1 << 2
_CRC_OFFSET = 224


def _crc32c_table() -> List[int]:
    table = []
    for n in range(256):
        c = n
        for _round in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of XFS v5 metadata."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass(frozen=True)
class XfsSuperblock:
    uuid: str  # the filesystem UUID (what blkid reports; our drive id)
    label: str  # sb_fname, NUL-trimmed ("DIRECTPV-CSI" for our drives, "DIRECTPV" for MinIO DirectPV's)
    block_size: int
    data_blocks: int  # sb_dblocks
    capacity: int  # bytes usable as statfs reports them: (dblocks - internal log blocks) * blocksize
    version: int = 0  # 4 or 5 (sb_versionnum & 0xF)
    sector_size: int = 512
    log_blocks: int = 0
    internal_log: bool = True
    imax_pct: int = 0
    meta_uuid: str = ""  # v5 metadata UUID (differs from uuid after xfs_admin -U); "" when equal/absent
    checksum_verified: bool = False  # v5 CRC checked (True) or not checkable/v4 (False)

    @property
    def device_bytes(self) -> int:
        """Size of the data section including an internal log: dblocks * blocksize."""
        return self.data_blocks * self.block_size


def parse_xfs_superblock(data: bytes, source: str = "superblock") -> XfsSuperblock:
    """Parse an XFS primary superblock from the first bytes of a device.

    Raises ``NotFound`` when the bytes are not XFS (no filesystem, or another one) and
    ``InvalidArgument`` when they are XFS but truncated, inconsistent or fail the v5 checksum.
    ``source`` only names the data in error messages.
    """
    if len(data) < 4 or data[:4] != XFS_MAGIC:
        raise NotFound(
            f"{source}: no XFS superblock (magic {bytes(data[:4])!r}, expected {XFS_MAGIC!r})",
            "the device holds no XFS filesystem or another filesystem; it was not formatted by directpv",
        )
    if len(data) < _MIN_V4:
        raise InvalidArgument(
            f"{source}: XFS superblock truncated ({len(data)} bytes, need at least {_MIN_V4})",
            f"read at least {SUPERBLOCK_READ_SIZE} bytes from the start of the device",
        )
    (block_size,) = struct.unpack_from(">I", data, 4)
    (dblocks,) = struct.unpack_from(">Q", data, 8)
    raw_uuid = bytes(data[32:48])
    (logstart,) = struct.unpack_from(">Q", data, 48)
    (logblocks,) = struct.unpack_from(">I", data, 96)
    versionnum, sectsize = struct.unpack_from(">HH", data, 100)
    fname = bytes(data[108:120])
    blocklog = data[120]
    imax_pct = data[127]
    version = versionnum & _VERSION_NUMBITS
    hint = "the superblock is damaged: run xfs_repair -n on the device to inspect it"
    if version not in (4, 5):
        raise InvalidArgument(f"{source}: unsupported XFS superblock version {version}", hint)
    if block_size < 512 or block_size > 65536 or block_size & (block_size - 1) or (1 << blocklog) != block_size:
        raise InvalidArgument(f"{source}: XFS superblock has an invalid block size {block_size}", hint)
    if sectsize < 512 or sectsize > 32768 or sectsize & (sectsize - 1):
        raise InvalidArgument(f"{source}: XFS superblock has an invalid sector size {sectsize}", hint)
    if dblocks == 0 or (logstart and logblocks >= dblocks):
        raise InvalidArgument(f"{source}: XFS superblock has an invalid size ({dblocks} blocks, log {logblocks})", hint)
    meta_uuid = ""
    verified = False
    if version == 5:
        if len(data) < _MIN_V5:
            raise InvalidArgument(
                f"{source}: XFS v5 superblock truncated ({len(data)} bytes, need at least {_MIN_V5})",
                f"read at least {SUPERBLOCK_READ_SIZE} bytes from the start of the device",
            )
        if len(data) >= sectsize:
            (stored,) = struct.unpack_from("<I", data, _CRC_OFFSET)  # xfs stores the crc little-endian
            sector = bytearray(data[:sectsize])
            sector[_CRC_OFFSET : _CRC_OFFSET + 4] = b"\0\0\0\0"
            if crc32c(bytes(sector)) != stored:
                raise InvalidArgument(f"{source}: XFS superblock checksum mismatch", hint)
            verified = True
        (incompat,) = struct.unpack_from(">I", data, 216)
        if incompat & _INCOMPAT_META_UUID:
            meta = bytes(data[248:264])
            if meta != raw_uuid:
                meta_uuid = str(_uuid.UUID(bytes=meta))
    internal = logstart != 0
    usable = dblocks - (logblocks if internal else 0)
    return XfsSuperblock(
        uuid=str(_uuid.UUID(bytes=raw_uuid)),
        label=fname.split(b"\0", 1)[0].decode("utf-8", "replace"),
        block_size=block_size,
        data_blocks=dblocks,
        capacity=usable * block_size,
        version=version,
        sector_size=sectsize,
        log_blocks=logblocks,
        internal_log=internal,
        imax_pct=imax_pct,
        meta_uuid=meta_uuid,
        checksum_verified=verified,
    )


def read_xfs_superblock(path_or_fileobj: Union[str, BinaryIO]) -> XfsSuperblock:
    """Read and parse the primary superblock of a device, image file or open binary file.

    Reads the first sector (more when the superblock says its sector is larger, so the
    v5 checksum can be verified). A file object is read from its current position.
    """
    if isinstance(path_or_fileobj, str):
        try:
            with open(path_or_fileobj, "rb", buffering=0) as f:
                return _read(f, path_or_fileobj)
        except FileNotFoundError:
            raise NotFound(f"{path_or_fileobj}: no such device or file", "check the device path") from None
        except PermissionError:
            raise InvalidArgument(
                f"{path_or_fileobj}: permission denied reading the superblock", "run as root"
            ) from None
    return _read(path_or_fileobj, getattr(path_or_fileobj, "name", "superblock") or "superblock")


def _read(f: BinaryIO, source: str) -> XfsSuperblock:
    data = f.read(SUPERBLOCK_READ_SIZE) or b""
    if len(data) >= 104 and data[:4] == XFS_MAGIC:
        (sectsize,) = struct.unpack_from(">H", data, 102)
        if SUPERBLOCK_READ_SIZE < sectsize <= 32768:
            data += f.read(sectsize - len(data)) or b""
    return parse_xfs_superblock(data, str(source))
