"""Paths resolved beneath a root without following symlinks, held as file descriptors.

A path checked by walking it and then used by its string can be changed in between: a
parent directory replaced by a symlink sends the later ``mkdir`` or ``mount`` anywhere
on the host. Here a path is resolved *once* into an ``O_PATH`` file descriptor, beneath
a configured root and refusing every symlink on the way, and everything that follows
(``mkdirat``, ``fstat``, mount through ``/proc/self/fd/N``, ``unlinkat``) acts on what
was checked.

Resolution uses ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
RESOLVE_NO_MAGICLINKS`` (Linux >= 5.6). Where the kernel or a seccomp filter refuses
openat2 (ENOSYS, EPERM), an ``O_PATH | O_NOFOLLOW`` walk one component at a time does
the same: each step is relative to the descriptor of the step before.

Stdlib only (shared with the Ansible collection), Python >= 3.9.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from typing import Any, Optional, Sequence

from ..core.errors import FailedPrecondition, InvalidArgument, NotFound, clip

O_PATH = getattr(os, "O_PATH", 0o10000000)
_OPEN_FLAGS = O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture (added in the unified syscall table)

_AT_REMOVEDIR = 0x200

_libc: Any = None
_openat2_works: Optional[bool] = None  # None: not tried yet


def _lib() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.syscall.restype = ctypes.c_long
        lib.mkdirat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        lib.mkdirat.restype = ctypes.c_int
        lib.unlinkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.unlinkat.restype = ctypes.c_int
        _libc = lib
    return _libc


def fd_path(fd: int) -> str:
    """The magic link naming what ``fd`` holds (mount(2) and umount2(2) accept it)."""
    return f"/proc/self/fd/{fd}"


def where(fd: int) -> str:
    """Where the object ``fd`` holds is now (the kernel's path of it)."""
    return os.readlink(fd_path(fd))


def split_beneath(root: str, path: str, what: str) -> list[str]:
    """The components of normalised absolute ``path`` strictly beneath ``root``: InvalidArgument
    for anything else (relative, ``..``, NUL, the root itself, outside it)."""
    if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
        raise InvalidArgument(f"{what} {clip(path)!r} is not a plain absolute path", f"give a plain absolute {what}")
    norm = os.path.normpath(path)
    prefix = root.rstrip("/") + "/"
    if not norm.startswith(prefix) or norm == prefix.rstrip("/"):
        raise InvalidArgument(f"{what} {clip(path)!r} is not under {root}", f"give a {what} under {root}")
    return [p for p in norm[len(prefix):].split("/") if p]


def _error(err: int, what: str, path: str) -> Exception:
    shown = clip(path)
    if err == errno.ENOENT:
        return NotFound(f"{what} {shown}: a directory on the way does not exist", "create it first")
    if err in (errno.ELOOP, errno.EXDEV):
        return InvalidArgument(f"{what} {shown} passes through a symlink (or leaves its root)",
                               "give a path of plain directories: symlinks are never followed there")
    if err == errno.ENAMETOOLONG:
        return InvalidArgument(f"{what} {shown} is too long", "give a shorter path")
    if err == errno.ENOTDIR:
        return FailedPrecondition(f"{what} {shown}: a component on the way is not a directory",
                                  "every parent of the path must be a directory")
    return FailedPrecondition(f"cannot open {what} {shown}: {os.strerror(err)}", "check the path and its permissions")


def _openat2(dir_fd: int, rel: str) -> int:
    """openat2(dir_fd, rel, O_PATH, BENEATH|NO_SYMLINKS|NO_MAGICLINKS) of a directory; -errno on
    failure (no O_DIRECTORY: a trailing symlink must say ELOOP, not ENOTDIR)."""
    how = struct.pack("=QQQ", _OPEN_FLAGS, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    buf = ctypes.create_string_buffer(how, len(how))
    fd = int(_lib().syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(os.fsencode(rel)),
                            buf, ctypes.c_size_t(len(how))))
    if fd < 0:
        return -ctypes.get_errno()
    mode = os.fstat(fd).st_mode
    if not stat.S_ISDIR(mode):
        os.close(fd)  # O_NOFOLLOW opened a trailing symlink as itself: refused like any other
        return -(errno.ELOOP if stat.S_ISLNK(mode) else errno.ENOTDIR)
    return fd


def _walk(dir_fd: int, parts: Sequence[str]) -> int:
    """The O_PATH|O_NOFOLLOW walk: one component at a time, each relative to the last."""
    cur = os.dup(dir_fd)
    try:
        for part in parts:
            nxt = os.open(part, _OPEN_FLAGS, dir_fd=cur)
            os.close(cur)
            cur = nxt
            mode = os.fstat(cur).st_mode
            if stat.S_ISLNK(mode):
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            if not stat.S_ISDIR(mode):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        return cur
    except BaseException:
        os.close(cur)
        raise


def open_dir(root: str, parts: Sequence[str], what: str) -> int:
    """An O_PATH descriptor of the directory ``root/parts...``, reached without following any
    symlink beneath ``root`` (``root`` itself is configuration and may be one). The caller closes it.
    Missing -> NotFound; a symlink on the way -> InvalidArgument; a non-directory -> FailedPrecondition."""
    global _openat2_works
    full = os.path.join(root, *parts)
    try:
        root_fd = os.open(root, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _error(exc.errno or errno.EIO, "root", root) from None
    try:
        if not parts:
            return os.dup(root_fd)
        if _openat2_works is not False:
            fd = _openat2(root_fd, "/".join(parts))
            if fd >= 0:
                _openat2_works = True
                return fd
            if -fd not in (errno.ENOSYS, errno.EPERM) or _openat2_works:
                raise _error(-fd, what, full)
            _openat2_works = False  # no openat2 here (old kernel, seccomp): walk
        try:
            return _walk(root_fd, parts)
        except OSError as exc:
            raise _error(exc.errno or errno.EIO, what, full) from None
    finally:
        os.close(root_fd)


def open_child(dir_fd: int, name: str) -> Optional[int]:
    """An O_PATH|O_NOFOLLOW descriptor of entry ``name`` of ``dir_fd`` (a symlink is opened as
    itself, never followed); None when it does not exist."""
    try:
        return os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _error(exc.errno or errno.EIO, "entry", name) from None


def mkdir_child(dir_fd: int, name: str, mode: int = 0o750) -> bool:
    """``mkdirat(dir_fd, name)``: True when made, False when something already has the name."""
    if _lib().mkdirat(dir_fd, os.fsencode(name), mode) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        return False
    raise _error(err, "directory", name)


def rmdir_child(dir_fd: int, name: str) -> bool:
    """``unlinkat(dir_fd, name, AT_REMOVEDIR)``: removes an *empty* directory only (never a file,
    never a non-empty one). True when removed; False when missing, not empty, a mount point or not
    a directory."""
    if _lib().unlinkat(dir_fd, os.fsencode(name), _AT_REMOVEDIR) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY, errno.ENOTDIR):
        return False
    raise _error(err, "directory", name)
