"""Mounts by syscalls: drive mounts, bind mounts, read-only binds, unmounts.

``mount(2)``/``umount2(2)``/``statx(2)`` through ctypes (``use_errno``): no
``mount(8)`` process on the hot path (a bind + unmount pair costs tens of
microseconds instead of milliseconds). The mount table is read with
``device/mountinfo.parse_mountinfo`` (one parser for the whole project).

Idempotency: ``bind`` and ``mount_drive`` do nothing when the same thing is
already mounted at the target and raise ``FailedPrecondition`` when something
else is; ``unmount`` of a path that is not a mount point is a no-op.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

from ..core.errors import FailedPrecondition, InvalidArgument, NotFound
from ..core.models import Device
from .mountinfo import MountInfo, parse_mountinfo
from .paths import fd_path

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# statvfs f_flag bits that a read-only remount of a bind must keep (mount(8) does the same)
_ST_KEEP = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)

_OPTION_FLAGS = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True),
    "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True),
    "noatime": (MS_NOATIME, True),
    "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True),
    "relatime": (MS_RELATIME, True),
    "strictatime": (MS_STRICTATIME, True),
    "bind": (MS_BIND, True),
    "rbind": (MS_BIND | MS_REC, True),
    "remount": (MS_REMOUNT, True),
}

# statx(2)
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_NO_AUTOMOUNT = 0x800
_STATX_BASIC_STATS = 0x7FF
_STATX_MNT_ID = 0x1000
_STATX_ATTR_MOUNT_ROOT = 0x2000

XFS_MAX_RETRIES_KNOBS = ("EIO", "ENOSPC", "default")

_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.umount2.restype = ctypes.c_int
        if hasattr(lib, "statx"):
            lib.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
            lib.statx.restype = ctypes.c_int
        _libc = lib
    return _libc


def _path(p: str, what: str) -> bytes:
    if not isinstance(p, str) or not p:
        raise InvalidArgument(f"{what} path is empty", f"give an absolute {what} path")
    if "\0" in p:
        raise InvalidArgument(f"{what} path {p!r} contains a NUL byte", f"give a valid {what} path")
    if not os.path.isabs(p):
        raise InvalidArgument(f"{what} path {p!r} is not absolute", f"give an absolute {what} path")
    return os.fsencode(p)


class MountError(FailedPrecondition):
    """mount(2)/umount2(2) failed; ``errno`` holds the kernel's answer."""

    def __init__(self, message: str, hint: str = "", errno_: int = 0) -> None:
        super().__init__(message, hint)
        self.errno = errno_


def _fail(op: str, err: int, source: str, target: str) -> Exception:
    text = f"{op} {source + ' on ' if source else ''}{target} failed: {os.strerror(err)} (errno {err})"
    if err == errno.ENOENT:
        return NotFound(text, "create the mount point and check that the source exists")
    if err in (errno.EPERM, errno.EACCES):
        return MountError(text, "mounting needs root (CAP_SYS_ADMIN) in the host mount namespace", err)
    if err == errno.EBUSY:
        return MountError(text, "the target or source is busy: unmount what is there or stop its users", err)
    if err == errno.ENOTBLK:
        return MountError(text, "the source must be a block device", err)
    if err == errno.EINVAL:
        return MountError(text, "check the filesystem type and options (dmesg says which one the kernel refused)", err)
    return MountError(text, "see dmesg for the kernel's reason", err)


def parse_options(options: Sequence[str]) -> Tuple[int, str]:
    """Split mount(8)-style options into (MS_* flags, filesystem data string)."""
    flags = 0
    data: List[str] = []
    for opt in options:
        if opt in ("", "defaults"):
            continue
        if opt in _OPTION_FLAGS:
            bit, on = _OPTION_FLAGS[opt]
            flags = flags | bit if on else flags & ~bit
        else:
            data.append(opt)
    return flags, ",".join(data)


def mount(
    source: str,
    target: str,
    fstype: Optional[str],
    options: Sequence[str] = (),
    flags: int = 0,
    data: str = "",
) -> None:
    """mount(2). ``options`` are mount(8)-style words (``noatime``, ``ro``, ``prjquota``):
    known ones become MS_* flags, the others join ``data``."""
    t = _path(target, "target")
    opt_flags, opt_data = parse_options(options)
    all_data = ",".join(x for x in (opt_data, data) if x)
    src = _path(source, "source") if source.startswith("/") else os.fsencode(source or "none")
    if b"\0" in src:
        raise InvalidArgument(f"source {source!r} contains a NUL byte", "give a valid source")
    rc = _lib().mount(
        src, t, fstype.encode() if fstype else None, ctypes.c_ulong(flags | opt_flags), all_data.encode() or None
    )
    if rc != 0:
        raise _fail("mount", ctypes.get_errno(), source, target)


def unmount(target: str, force: bool = False, lazy: bool = False) -> bool:
    """umount2(2). Returns True when something was unmounted; a target that is not a
    mount point (or does not exist) is a no-op returning False."""
    t = _path(target, "target")
    flags = UMOUNT_NOFOLLOW | (MNT_FORCE if force else 0) | (MNT_DETACH if lazy else 0)
    if _lib().umount2(t, flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return False
    raise _fail("unmount", err, "", target)


@dataclass(frozen=True)
class _Statx:
    mnt_id: int  # 0 when the kernel does not report it
    mount_root: Optional[bool]  # None when the kernel does not report it
    dev: Tuple[int, int]


def _statx(path: str, dir_fd: int = _AT_FDCWD) -> Optional[_Statx]:
    lib = _lib()
    if not hasattr(lib, "statx"):
        return None
    buf = ctypes.create_string_buffer(256)
    flags = _AT_SYMLINK_NOFOLLOW | _AT_NO_AUTOMOUNT | (_AT_EMPTY_PATH if not path else 0)
    rc = lib.statx(dir_fd, os.fsencode(path), flags, _STATX_BASIC_STATS | _STATX_MNT_ID, buf)
    if rc != 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            raise NotFound(f"{path} does not exist", "create it first")
        if err == errno.ENOSYS:
            return None
        raise OSError(err, os.strerror(err), path)
    raw = buf.raw
    (mask,) = struct.unpack_from("=I", raw, 0)  # struct statx is in native byte order
    (attrs,) = struct.unpack_from("=Q", raw, 8)
    (attrs_mask,) = struct.unpack_from("=Q", raw, 56)
    dev_major, dev_minor = struct.unpack_from("=II", raw, 136)
    (mnt_id,) = struct.unpack_from("=Q", raw, 144)
    return _Statx(
        mnt_id=mnt_id if mask & _STATX_MNT_ID else 0,
        mount_root=bool(attrs & _STATX_ATTR_MOUNT_ROOT) if attrs_mask & _STATX_ATTR_MOUNT_ROOT else None,
        dev=(dev_major, dev_minor),
    )


def mounts(proc_root: str = "/proc", pid: str = "self") -> List[MountInfo]:
    """The mount table of a process (this one by default), parsed."""
    with open(os.path.join(proc_root, str(pid), "mountinfo"), encoding="utf-8", errors="surrogateescape") as f:
        return list(parse_mountinfo(f.read()))


def is_mountpoint(path: str) -> bool:
    """True when ``path`` is the root of a mount (binds of a directory included)."""
    st = _statx(path)
    if st is not None and st.mount_root is not None:
        return st.mount_root
    real = os.path.realpath(path)
    return any(m.mount_point == real for m in mounts())


_STATX_BTIME = 0x800


def birth_ns(fd: int) -> int:
    """When the inode ``fd`` holds was born (statx btime, ns), or its ctime where the filesystem
    keeps no birth time: with device and inode numbers it tells a directory from a later one that
    reused the inode number."""
    lib = _lib()
    if hasattr(lib, "statx"):
        buf = ctypes.create_string_buffer(256)
        flags = _AT_SYMLINK_NOFOLLOW | _AT_NO_AUTOMOUNT | _AT_EMPTY_PATH
        if lib.statx(fd, b"", flags, _STATX_BASIC_STATS | _STATX_BTIME, buf) == 0:
            (mask,) = struct.unpack_from("=I", buf.raw, 0)
            if mask & _STATX_BTIME:
                sec, nsec = struct.unpack_from("=qI", buf.raw, 80)
                return int(sec) * 1_000_000_000 + int(nsec)
    return os.fstat(fd).st_ctime_ns


def is_mount_root_fd(fd: int) -> bool:
    """True when the object ``fd`` holds (an O_PATH descriptor is enough) is the root of a mount."""
    st = _statx("", fd)
    if st is not None and st.mount_root is not None:
        return st.mount_root
    return is_mountpoint(fd_path(fd))  # old kernel: through the magic link (realpath of it)


def bind_fd(source_fd: int, target_fd: int) -> None:
    """Bind-mount what ``source_fd`` holds on what ``target_fd`` holds (both resolved and checked
    by the caller, e.g. with device/paths.py): the mount lands on exactly the checked directory,
    whatever happens to the path strings meanwhile. Read-only and other flags: :func:`remount_bind_fd`
    on a descriptor opened *after* this call (one of the new mount)."""
    lib = _lib()
    if lib.mount(os.fsencode(fd_path(source_fd)), os.fsencode(fd_path(target_fd)), None, ctypes.c_ulong(MS_BIND),
                 None) != 0:
        raise _fail("bind", ctypes.get_errno(), fd_path(source_fd), fd_path(target_fd))


def remount_bind_fd(mount_fd: int, flags: int) -> None:
    """``MS_BIND|MS_REMOUNT|flags`` on the bind mount whose root ``mount_fd`` holds (read-only
    keeps nosuid/nodev/noexec/atime bits as :func:`bind` does)."""
    extra = 0
    if flags & MS_RDONLY:
        keep = os.statvfs(fd_path(mount_fd)).f_flag
        for st_bit, ms_bit in _ST_KEEP:
            if keep & st_bit:
                extra |= ms_bit
    if _lib().mount(None, os.fsencode(fd_path(mount_fd)), None, ctypes.c_ulong(MS_BIND | MS_REMOUNT | flags | extra),
                    None) != 0:
        raise _fail("remount of bind", ctypes.get_errno(), "", fd_path(mount_fd))


def unmount_child(dir_fd: int, name: str, lazy: bool = False) -> bool:
    """umount2 of the topmost mount on entry ``name`` of the directory ``dir_fd`` holds: the parent
    is the checked one, and the entry itself is never followed as a symlink (UMOUNT_NOFOLLOW).
    The caller must hold no descriptor inside that mount (it would be busy). True when unmounted,
    False when nothing is mounted there."""
    if not name or "/" in name or name in (".", ".."):
        raise InvalidArgument(f"{name!r} is not one path component", "give an entry name")
    path = fd_path(dir_fd) + "/" + name
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)
    if _lib().umount2(os.fsencode(path), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return False
    raise _fail("unmount", err, "", path)


def mount_of(path: str) -> Optional[MountInfo]:
    """The mount that holds ``path`` in this mount namespace (the mount *at* ``path``
    when it is a mount point: compare ``.mount_point`` to tell). None if ``path`` is missing."""
    try:
        st = _statx(path)
    except NotFound:
        return None
    table = mounts()
    if st is not None and st.mnt_id:
        for m in table:
            if m.mount_id == st.mnt_id:
                return m
    real = os.path.realpath(path)
    best: Optional[MountInfo] = None
    for m in table:  # later entries are on top of earlier ones
        mp = m.mount_point
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = m
    return best


def _mount_at(target: str) -> Optional[MountInfo]:
    """The topmost mount whose root is ``target``, or None (fast: one statx when nothing is there)."""
    st = _statx(target)
    if st is not None and st.mount_root is False:
        return None
    m = mount_of(target)
    if m is None or m.mount_point != os.path.realpath(target):
        return None
    return m


def _source_of(path: str) -> Tuple[int, int, str]:
    """(major, minor, root-relative path) that a bind of ``path`` would show in mountinfo."""
    m = mount_of(path)
    if m is None:
        raise NotFound(f"bind source {path} does not exist", "create it first")
    real = os.path.realpath(path)
    rel = real[len(m.mount_point) :] if m.mount_point != "/" else real
    root = (m.root.rstrip("/") + "/" + rel.lstrip("/")).rstrip("/") or "/"
    if not root.startswith("/"):
        root = "/" + root
    return m.major, m.minor, root


def _ro(m: MountInfo) -> bool:
    return "ro" in m.options.split(",")


def bind(source: str, target: str, read_only: bool = False, recursive: bool = False) -> bool:
    """Bind-mount ``source`` on ``target`` (both must exist). ``read_only`` binds and then
    remounts MS_BIND|MS_REMOUNT|MS_RDONLY, so the bind really refuses writes (EROFS) while
    the source stays writable. Returns False (no change) when the same source is already
    bound there with the same mode; raises FailedPrecondition when something else is."""
    src = _path(source, "source")
    tgt = _path(target, "target")
    existing = _mount_at(target)
    if existing is not None:
        want = _source_of(source)
        have = (existing.major, existing.minor, existing.root)
        if have == want and _ro(existing) == read_only:
            return False
        what = "read-only" if _ro(existing) else "read-write"
        raise FailedPrecondition(
            f"{target} already has a {what} mount of {existing.source}:{existing.root} "
            f"({existing.major}:{existing.minor}), not a {'read-only' if read_only else 'read-write'} bind of {source}",
            f"unmount {target} first, or publish to another target path",
        )
    lib = _lib()
    if lib.mount(src, tgt, None, ctypes.c_ulong(MS_BIND | (MS_REC if recursive else 0)), None) != 0:
        raise _fail("bind", ctypes.get_errno(), source, target)
    if read_only:
        try:
            keep = os.statvfs(target).f_flag
            extra = 0
            for st_bit, ms_bit in _ST_KEEP:
                if keep & st_bit:
                    extra |= ms_bit
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY | extra
            if lib.mount(None, tgt, None, ctypes.c_ulong(flags), None) != 0:
                raise _fail("read-only remount of bind", ctypes.get_errno(), source, target)
        except BaseException:
            lib.umount2(tgt, MNT_DETACH | UMOUNT_NOFOLLOW)  # never leave a writable bind behind
            raise
    return True


@dataclass(frozen=True)
class MountResult:
    """What ``mount_drive`` did."""

    target: str
    device: str
    quota_enabled: bool  # prjquota is active on the mount
    changed: bool = True  # False: it was already mounted there (no-op)
    message: str = ""  # e.g. why quota is off
    options: str = ""  # mount options as the kernel reports them


def _device_path(device: Union[str, Device]) -> str:
    return device.dev_path if isinstance(device, Device) else device


def _has_prjquota(m: MountInfo) -> bool:
    opts = set(m.super_options.split(","))
    return "prjquota" in opts or "pquota" in opts


NO_QUOTA_MESSAGE = (
    "mounted without prjquota: this kernel has no XFS quota support (CONFIG_XFS_QUOTA); "
    "volume sizes are not enforced on this drive"
)


def set_xfs_fail_fast(device_name: str, sysfs_root: str = "/sys") -> List[str]:
    """Best effort: XFS metadata error max_retries = 0 for a mounted drive (fail fast on
    EIO/ENOSPC instead of retrying forever, as DirectPV does). Returns the knobs written."""
    written = []
    for kind in XFS_MAX_RETRIES_KNOBS:
        knob = os.path.join(sysfs_root, "fs", "xfs", device_name, "error", "metadata", kind, "max_retries")
        try:
            with open(knob, "w", encoding="ascii") as f:
                f.write("0")
            written.append(knob)
        except OSError:
            continue
    return written


def mount_drive(device: Union[str, Device], target: str, quota: bool = True) -> MountResult:
    """Mount an XFS drive at ``target`` (created if missing) with noatime, plus prjquota when
    ``quota`` and the kernel supports XFS quota (otherwise mounted without it, and the result
    says so). Same device already there: no-op. Something else there: FailedPrecondition."""
    dev = _device_path(device)
    _path(dev, "device")
    _path(target, "target")
    try:
        st = os.stat(dev)
    except FileNotFoundError:
        raise NotFound(f"device {dev} does not exist", "check the device name (it may have been renamed)") from None
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidArgument(f"{dev} is not a block device", "give a block device such as /dev/sdb")
    majmin = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if os.path.isdir(target):
        existing = _mount_at(target)
        if existing is not None:
            if (existing.major, existing.minor) == majmin and existing.root == "/":
                q = _has_prjquota(existing)
                return MountResult(
                    target=target,
                    device=dev,
                    quota_enabled=q,
                    changed=False,
                    message="" if q or not quota else "already mounted without prjquota",
                    options=existing.super_options,
                )
            raise FailedPrecondition(
                f"{target} already has {existing.source} ({existing.fs_type}, {existing.major}:{existing.minor}) "
                f"mounted, not {dev} ({majmin[0]}:{majmin[1]})",
                f"unmount {target} first or choose another mount point",
            )
    elif os.path.exists(target):
        raise InvalidArgument(f"mount point {target} exists and is not a directory", "remove it or choose another")
    else:
        os.makedirs(target, mode=0o755, exist_ok=True)
    message = ""
    tried_quota = False
    if quota:
        try:
            mount(dev, target, "xfs", flags=MS_NOATIME, data="prjquota")
            tried_quota = True
        except MountError as e:
            if e.errno != errno.EINVAL:
                raise
            message = NO_QUOTA_MESSAGE
    if not tried_quota:
        mount(dev, target, "xfs", flags=MS_NOATIME)
    set_xfs_fail_fast(os.path.basename(os.path.realpath(dev)))
    m = _mount_at(target)
    # What the kernel reports decides: a filesystem already mounted elsewhere without
    # prjquota is shared as it is, whatever this mount asked for.
    quota_on = m is not None and _has_prjquota(m)
    if tried_quota and not quota_on:
        message = "mounted without prjquota: the filesystem is already mounted elsewhere without it"
    return MountResult(
        target=target,
        device=dev,
        quota_enabled=quota_on,
        changed=True,
        message=message,
        options=m.super_options if m else "",
    )
