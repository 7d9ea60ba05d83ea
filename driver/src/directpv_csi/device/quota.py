"""XFS project quota by ioctl and quotactl(2): no ``xfs_quota`` process.

A volume is a directory on a drive carrying an XFS project ID (set with
``FS_IOC_FSSETXATTR``, ``FS_XFLAG_PROJINHERIT`` so new files inherit it) and a
block/inode hard limit for that project (``Q_XSETQLIM``). Usage and limits are
read back with ``Q_XGETQUOTA``. Project IDs come from the store (smallest unused
per drive), never from a hash of the volume name.

Tagging a directory with a project ID works on any XFS filesystem; limits need a
kernel built with ``CONFIG_XFS_QUOTA`` and the drive mounted with ``prjquota``.
Without them the quota calls raise ``Unsupported`` with what to do. Nothing here
assumes a particular host: the same code runs in the QEMU guest tests.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, Optional

from ..core.errors import FailedPrecondition, InvalidArgument, NotFound, Unsupported
from .mountinfo import MountInfo, read_mountinfo

# <linux/fs.h>: struct fsxattr { u32 xflags, extsize, nextents, projid, cowextsize; u8 pad[8]; }
_FSXATTR = struct.Struct("=IIIII8s")
FS_IOC_FSGETXATTR = 0x801C581F  # _IOR('X', 31, struct fsxattr)
FS_IOC_FSSETXATTR = 0x401C5820  # _IOW('X', 32, struct fsxattr)
FS_XFLAG_PROJINHERIT = 0x00000200

# <linux/quota.h>, <linux/dqblk_xfs.h>
PRJQUOTA = 2
SUBCMDSHIFT = 8


def _xqm_cmd(x: int) -> int:
    return (ord("X") << 8) + x


Q_XGETQUOTA = _xqm_cmd(3)
Q_XSETQLIM = _xqm_cmd(4)
Q_XGETQSTAT = _xqm_cmd(5)
FS_DQUOT_VERSION = 1
FS_PROJ_QUOTA = 2
FS_DQ_ISOFT = 1 << 0
FS_DQ_IHARD = 1 << 1
FS_DQ_BSOFT = 1 << 2
FS_DQ_BHARD = 1 << 3
FS_QUOTA_PDQ_ACCT = 1 << 4
FS_QUOTA_PDQ_ENFD = 1 << 5
BASIC_BLOCK = 512  # fs_disk_quota block counts are in 512-byte basic blocks

# struct fs_disk_quota (112 bytes): version s8, flags s8, fieldmask u16, id u32,
# blk_hard, blk_soft, ino_hard, ino_soft, bcount, icount u64, itimer, btimer s32,
# iwarns, bwarns u16, itimer_hi, btimer_hi, rtbtimer_hi, padding2 s8,
# rtb_hard, rtb_soft, rtbcount u64, rtbtimer s32, rtbwarns u16, padding3 s16, padding4[8]
_DQ = struct.Struct("=bbHI6QiiHHbbbb3QiHh8s")
assert _DQ.size == 112

MAX_PROJECT_ID = 0xFFFFFFFF - 1  # 32-bit project IDs (projid32bit, the mkfs.xfs default); -1 is reserved

UNSUPPORTED_HINT = (
    "project quotas need a kernel built with CONFIG_XFS_QUOTA and the drive mounted with prjquota "
    "(mount_drive(..., quota=True) does this when the kernel allows it)"
)

_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.quotactl.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
        lib.quotactl.restype = ctypes.c_int
        _libc = lib
    return _libc


def _qcmd(cmd: int, qtype: int) -> int:
    return (cmd << SUBCMDSHIFT) | (qtype & 0x00FF)


@dataclass(frozen=True)
class ProjectQuota:
    """Limits and usage of one project, in bytes and inodes (0 limit: none)."""

    bytes_limit: int
    bytes_used: int
    inodes_limit: int
    inodes_used: int
    project_id: int = 0
    bytes_soft_limit: int = 0
    inodes_soft_limit: int = 0


def _check_project_id(project_id: int) -> None:
    if isinstance(project_id, bool) or not isinstance(project_id, int) or not 0 < project_id <= MAX_PROJECT_ID:
        raise InvalidArgument(
            f"project ID {project_id!r} is out of range (1..{MAX_PROJECT_ID})",
            "use the project ID the store assigned to the volume (smallest unused > 0 per drive)",
        )


def _check_limit(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(
            f"{what} {value!r} must be a non-negative integer", f"give {what} in bytes/inodes, 0 for none"
        )


def _open_dir(directory: str) -> int:
    if not isinstance(directory, str) or not directory or "\0" in directory:
        raise InvalidArgument(f"invalid directory {directory!r}", "give an absolute directory path")
    if not os.path.isabs(directory):
        raise InvalidArgument(f"directory {directory!r} is not absolute", "give an absolute directory path")
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"directory {directory} does not exist", "create the volume directory first") from None
    except NotADirectoryError:
        if os.path.islink(directory):
            raise InvalidArgument(f"{directory} is a symlink", "give the real directory path") from None
        raise InvalidArgument(f"{directory} is not a directory", "project IDs are set on volume directories") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidArgument(f"{directory} is a symlink", "give the real directory path") from None
        raise
    return fd


def _get_xattr(fd: int, directory: str) -> tuple[int, int, int, int, int, bytes]:
    buf = bytearray(_FSXATTR.size)
    try:
        fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf, True)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
            raise Unsupported(
                f"{directory}: the filesystem does not support project IDs (FS_IOC_FSGETXATTR: {e.strerror})",
                "volume directories must live on an XFS drive",
            ) from None
        raise
    return _FSXATTR.unpack(bytes(buf))


def get_project(directory: str) -> int:
    """The XFS project ID of ``directory`` (0: none)."""
    fd = _open_dir(directory)
    try:
        return int(_get_xattr(fd, directory)[3])
    finally:
        os.close(fd)


def project_inherit(directory: str) -> bool:
    """True when new files in ``directory`` inherit its project ID."""
    fd = _open_dir(directory)
    try:
        return bool(_get_xattr(fd, directory)[0] & FS_XFLAG_PROJINHERIT)
    finally:
        os.close(fd)


def set_project(directory: str, project_id: int) -> None:
    """Give ``directory`` the project ID with PROJINHERIT (files created inside inherit it).
    Works on XFS with or without quota support; idempotent."""
    _check_project_id(project_id)
    fd = _open_dir(directory)
    try:
        xflags, extsize, nextents, projid, cow, pad = _get_xattr(fd, directory)
        want = xflags | FS_XFLAG_PROJINHERIT
        if projid == project_id and want == xflags:
            return
        buf = bytearray(_FSXATTR.pack(want, extsize, nextents, project_id, cow, pad))
        try:
            fcntl.ioctl(fd, FS_IOC_FSSETXATTR, buf, False)
        except OSError as e:
            if e.errno == errno.EPERM:
                raise FailedPrecondition(
                    f"{directory}: not permitted to set project ID {project_id} ({e.strerror})",
                    "run as root in the host's user namespace",
                ) from None
            if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP):
                raise Unsupported(
                    f"{directory}: the filesystem does not support project IDs ({e.strerror})",
                    "volume directories must live on an XFS drive",
                ) from None
            if e.errno == errno.EINVAL:
                raise InvalidArgument(
                    f"{directory}: the filesystem refused project ID {project_id} ({e.strerror})",
                    "project IDs above 65535 need an XFS formatted with projid32bit=1 (the mkfs.xfs default)",
                ) from None
            raise
    finally:
        os.close(fd)


def _mount_for(mountpoint: str) -> MountInfo:
    if not isinstance(mountpoint, str) or not os.path.isabs(mountpoint):
        raise InvalidArgument(f"mount point {mountpoint!r} is not an absolute path", "give the drive's mount point")
    real = os.path.realpath(mountpoint)
    found: Optional[MountInfo] = None
    for m in read_mountinfo():
        if m.mount_point == real:
            found = m  # the last one is on top
    if found is None:
        raise NotFound(f"{mountpoint} is not a mount point", "mount the drive first (mount_drive)")
    return found


def _block_device(m: MountInfo) -> str:
    """A block-device node for the mount's filesystem (quotactl addresses a device)."""
    candidates = [f"/dev/block/{m.major}:{m.minor}", m.source]
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (m.major, m.minor):
            return path
    raise NotFound(
        f"no device node for {m.mount_point} ({m.source}, {m.major}:{m.minor})",
        "make /dev visible (mount devtmpfs) so quotactl can address the drive",
    )


def _quotactl(cmd: int, device: str, qid: int, buf: Any, mountpoint: str) -> None:
    rc = _lib().quotactl(_qcmd(cmd, PRJQUOTA), os.fsencode(device), qid, buf)
    if rc == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        raise Unsupported(
            f"{mountpoint}: this kernel has no XFS quota support (quotactl: {os.strerror(err)})", UNSUPPORTED_HINT
        )
    if err == errno.ESRCH:
        raise Unsupported(
            f"{mountpoint}: project quota is not enabled on this mount (mounted without prjquota)", UNSUPPORTED_HINT
        )
    if err == errno.ENOENT:
        raise NotFound(f"{mountpoint}: no quota record for this project", "set limits first")
    if err == errno.EPERM:
        raise FailedPrecondition(f"{mountpoint}: quotactl not permitted", "run as root (CAP_SYS_ADMIN)")
    if err == errno.EINVAL:
        raise InvalidArgument(f"{mountpoint}: quotactl rejected the request ({os.strerror(err)})", UNSUPPORTED_HINT)
    raise OSError(err, os.strerror(err), mountpoint)


def quota_supported(mountpoint: str) -> bool:
    """True when project quota is accounted and enforced on the drive mounted at ``mountpoint``."""
    m = _mount_for(mountpoint)
    if m.fs_type != "xfs":
        return False
    buf = ctypes.create_string_buffer(256)  # struct fs_quota_stat is smaller; only qs_flags (u16 at 2) is read
    try:
        _quotactl(Q_XGETQSTAT, _block_device(m), 0, buf, mountpoint)
    except (Unsupported, InvalidArgument, NotFound):
        return False
    (flags,) = struct.unpack_from("=H", buf.raw, 2)
    return bool(flags & FS_QUOTA_PDQ_ACCT) and bool(flags & FS_QUOTA_PDQ_ENFD)


def require_quota(mountpoint: str) -> MountInfo:
    """The mount of ``mountpoint`` when project quota is enforced there; Unsupported otherwise."""
    m = _mount_for(mountpoint)
    if m.fs_type != "xfs":
        raise Unsupported(f"{mountpoint} is {m.fs_type}, not XFS: no project quota", "volumes live on XFS drives")
    if not quota_supported(mountpoint):
        opts = m.super_options
        if "prjquota" in opts.split(",") or "pquota" in opts.split(","):
            raise Unsupported(f"{mountpoint}: project quota is accounted but not enforced", UNSUPPORTED_HINT)
        raise Unsupported(
            f"{mountpoint}: project quota is not available (kernel without XFS quota support, "
            f"or the drive is mounted without prjquota: options {opts or '-'})",
            UNSUPPORTED_HINT,
        )
    return m


def _blocks(nbytes: int) -> int:
    """Bytes to 512-byte basic blocks, rounded up (a limit never ends below what was asked)."""
    return (nbytes + BASIC_BLOCK - 1) // BASIC_BLOCK


def set_limits(mountpoint: str, project_id: int, bytes_hard: int, inodes_hard: int = 0) -> None:
    """Set the hard (and equal soft) block and inode limits of a project; 0 removes a limit."""
    _check_project_id(project_id)
    _check_limit(bytes_hard, "bytes_hard")
    _check_limit(inodes_hard, "inodes_hard")
    m = require_quota(mountpoint)
    blocks = _blocks(bytes_hard)
    # version, flags, fieldmask, id, blk hard/soft, ino hard/soft; every other field (usage, timers,
    # warnings, realtime, padding) is zero and ignored by the kernel for Q_XSETQLIM.
    head = (FS_DQUOT_VERSION, FS_PROJ_QUOTA, FS_DQ_BSOFT | FS_DQ_BHARD | FS_DQ_ISOFT | FS_DQ_IHARD, project_id)
    dq = _DQ.pack(*head, blocks, blocks, inodes_hard, inodes_hard, *([0] * 16), b"\0" * 8)
    buf = ctypes.create_string_buffer(dq, _DQ.size)
    _quotactl(Q_XSETQLIM, _block_device(m), project_id, buf, mountpoint)


def clear_limits(mountpoint: str, project_id: int) -> None:
    """Remove every limit of a project (usage accounting continues)."""
    set_limits(mountpoint, project_id, 0, 0)


def get_quota(mountpoint: str, project_id: int) -> ProjectQuota:
    """Limits and usage of a project. A project without a quota record reads as all zeros."""
    _check_project_id(project_id)
    m = require_quota(mountpoint)
    buf = ctypes.create_string_buffer(_DQ.size)
    try:
        _quotactl(Q_XGETQUOTA, _block_device(m), project_id, buf, mountpoint)
    except NotFound:
        return ProjectQuota(0, 0, 0, 0, project_id=project_id)
    f = _DQ.unpack(buf.raw)
    blk_hard, blk_soft, ino_hard, ino_soft, bcount, icount = f[4:10]
    return ProjectQuota(
        project_id=project_id,
        bytes_limit=blk_hard * BASIC_BLOCK,
        bytes_used=bcount * BASIC_BLOCK,
        inodes_limit=ino_hard,
        inodes_used=icount,
        bytes_soft_limit=blk_soft * BASIC_BLOCK,
        inodes_soft_limit=ino_soft,
    )
