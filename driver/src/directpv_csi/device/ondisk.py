"""What a device's filesystem holds, read without ever writing to it.

Two questions, asked of a device that is not ours by its superblock alone:

* whose drive is it (``identify``): an XFS labelled ``DIRECTPV`` is MinIO DirectPV's or was
  made by an earlier version of ours; the files at its root say which (core/identity.py);
* what would a format destroy (``inspect``): files, directories and bytes, counted.

The files are read through a mount that already shows the filesystem's root (in this mount
namespace, or PID 1's through ``/proc/1/root``), else through a private read-only mount made
here: a temporary directory bind-mounted onto itself and made private (nothing propagates to
other namespaces), the filesystem mounted on it ``ro`` with log replay off (XFS
``norecovery``, ext3/4 ``noload``, btrfs ``rescue=nologreplay``) and ``nodev,nosuid,noexec``,
unmounted and removed afterwards. A read-only mount with log replay off writes nothing: the
kernel opens the device read-only. Filesystems without such a mount (LVM, LUKS, swap, ...)
are reported as not inspectable, never mounted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import stat
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..core.errors import DirectPVError, Unsupported
from ..core.identity import KIND_UNVERIFIED, LEGACY_LABEL, classify_drive
from ..core.models import Contents, Device
from . import mount as _mount

META_DIR = ".directpv"
META_FILE = "meta.json"  # ours
DIRECTPV_META_INFO = "meta.info"  # MinIO DirectPV's
VOLUME_META_DIR = "volumes"  # ours: .directpv/volumes/<volume>.json, one per volume
FSUUID_PREFIX = ".FSUUID."  # MinIO DirectPV: a symlink to "." named after the filesystem UUID

WALK_LIMIT = 100_000  # entries counted before the counts become "at least"
META_MAX_BYTES = 1 << 20

# Read-only mount options that replay no journal, per filesystem; tried in order.
_RO_MOUNTS: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "xfs": (("ro", "norecovery"),),
    "ext4": (("ro", "noload"),),
    "ext3": (("ro", "noload"),),
    "ext2": (("ro",),),
    "btrfs": (("ro", "rescue=nologreplay"), ("ro", "nologreplay")),
    "vfat": (("ro",),),
    "exfat": (("ro",),),
}
_SAFE = ("nodev", "nosuid", "noexec", "noatime")


def _visible_mounts(dev: Device, proc_root: str) -> List[str]:
    """Paths in this process's view that show ``dev``'s filesystem root (existing mounts)."""
    out: List[str] = []
    want = (dev.major, dev.minor)
    for pid, prefix in (("self", ""), ("1", f"{proc_root}/1/root")):
        try:
            table = _mount.mounts(proc_root, pid)
        except OSError:
            continue
        for m in table:
            if (m.major, m.minor) == want and m.root == "/":
                out.append(prefix + m.mount_point if prefix else m.mount_point)
    return out


@contextlib.contextmanager
def readonly_root(dev: Device, proc_root: str = "/proc", *, replay_log: bool = False) -> Iterator[str]:
    """The root directory of ``dev``'s filesystem, for reading only (see the module docstring).

    ``replay_log=True`` (only for drives already known to be ours) lets the kernel replay the
    journal on the read-only mount, so entries only the log holds are seen too."""
    want = os.makedev(dev.major, dev.minor)
    for path in _visible_mounts(dev, proc_root):
        try:
            if os.stat(path).st_dev == want:
                yield path
                return
        except OSError:
            continue
    options = _RO_MOUNTS.get(dev.fs_type)
    if options is not None and replay_log:
        options = (("ro",),)
    if options is None:
        raise Unsupported(
            f"{dev.fs_type or 'unknown'} on {dev.dev_path} cannot be mounted read-only without writing",
            "inspect it by hand",
        )
    if dev.mountpoints:
        raise Unsupported(
            f"{dev.dev_path} is mounted where this process cannot see it ({', '.join(dev.mountpoints)})",
            "run where its mounts are visible",
        )
    tmp = tempfile.mkdtemp(prefix="directpv-inspect-")
    try:
        _mount.mount(tmp, tmp, None, flags=_mount.MS_BIND)
        try:
            _mount.mount("none", tmp, None, flags=_mount.MS_PRIVATE)
            last: Optional[DirectPVError] = None
            for opts in options:
                try:
                    _mount.mount(dev.dev_path, tmp, dev.fs_type, options=opts + _SAFE)
                    last = None
                    break
                except _mount.MountError as exc:
                    last = exc
                    if exc.errno != errno.EINVAL:
                        break
            if last is not None:
                raise last
            try:
                if not os.statvfs(tmp).f_flag & os.ST_RDONLY:  # never expected; never write
                    raise Unsupported(f"{dev.dev_path} did not mount read-only", "inspect it by hand")
                yield tmp
            finally:
                _mount.unmount(tmp)
        finally:
            _mount.unmount(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(tmp)


def read_meta(root: str) -> Tuple[Optional[Dict[str, Any]], str]:
    """``(meta.json as a dict or None, why it is unusable or "")`` at a drive root."""
    path = os.path.join(root, META_DIR, META_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"{path}: {exc.strerror}"
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(META_MAX_BYTES + 1)
    except OSError as exc:
        return None, f"{path}: {exc.strerror}"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, f"{path} is not JSON"
    if not isinstance(data, dict):
        return None, f"{path} is not a JSON object"
    return data, ""


def directpv_marks(root: str) -> bool:
    """MinIO DirectPV's marks at a drive root: ``.directpv/meta.info`` or a ``.FSUUID.*`` symlink."""
    if os.path.lexists(os.path.join(root, META_DIR, DIRECTPV_META_INFO)):
        return True
    try:
        names = os.listdir(root)
    except OSError:
        return False
    return any(n.startswith(FSUUID_PREFIX) and os.path.islink(os.path.join(root, n)) for n in names)


def root_counts(root: str) -> Tuple[int, int]:
    """(volume directories at the root, files in ``.directpv/volumes``)."""
    vols = 0
    for e in os.scandir(root):
        if not e.name.startswith(".") and e.is_dir(follow_symlinks=False) and e.name != "lost+found":
            vols += 1
    meta = 0
    with contextlib.suppress(OSError):
        meta = sum(1 for _entry in os.scandir(os.path.join(root, META_DIR, VOLUME_META_DIR)))
    return vols, meta


def used_bytes(root: str) -> int:
    sv = os.statvfs(root)
    return max(0, (sv.f_blocks - sv.f_bfree) * sv.f_frsize)


def count(root: str, limit: int = WALK_LIMIT) -> Contents:
    """Walk the tree under ``root`` (symlinks not followed, other filesystems not entered) and count."""
    top = os.lstat(root).st_dev
    files = dirs = data = seen = 0
    truncated = False
    stack = [root]
    while stack and not truncated:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                seen += 1
                if seen > limit:
                    truncated = True
                    break
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    files += 1
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if d == root and e.name == "lost+found" and not any(True for _entry in os.scandir(e.path)):
                        continue  # made by mkfs.ext*: not data
                    dirs += 1
                    if st.st_dev == top:
                        stack.append(e.path)
                else:
                    files += 1
                    data += st.st_blocks * 512
    vols, meta = root_counts(root)
    return Contents(
        files=files,
        directories=dirs,
        data_bytes=data,
        used_bytes=used_bytes(root),
        volume_dirs=vols,
        volume_metadata=meta,
        truncated=truncated,
        walked=True,
    )


def _classify_at(dev: Device, root: str, walk: bool) -> Device:
    meta, _why = read_meta(root)
    kind = classify_drive(dev.fs_type, dev.fs_label, meta=meta, directpv_marks=directpv_marks(root))
    if walk:
        contents = count(root)
    else:
        vols, vmeta = root_counts(root)
        contents = Contents(used_bytes=used_bytes(root), volume_dirs=vols, volume_metadata=vmeta)
    return dataclasses.replace(dev, drive_kind=kind, contents=contents, inspect_error="")


def needs_identity(dev: Device) -> bool:
    """An XFS labelled DIRECTPV: DirectPV's or an earlier version of ours; its files tell."""
    return dev.fs_type == "xfs" and dev.fs_label == LEGACY_LABEL


def inspect(dev: Device, *, walk: bool = True, proc_root: str = "/proc") -> Device:
    """``dev`` with ``drive_kind`` (for DIRECTPV-labelled XFS) and ``contents`` filled in, read-only.

    ``walk=False`` only lists the root (volume directories, statfs): cheap enough for every probe.
    A filesystem that cannot be read gets ``inspect_error`` (and KIND_UNVERIFIED when its label
    is DIRECTPV): never an exception.
    """
    if not dev.fs_type or dev.size == 0:
        return dev
    try:
        with readonly_root(dev, proc_root) as root:
            out = _classify_at(dev, root, walk)
    except (DirectPVError, OSError) as exc:
        why = exc.message if isinstance(exc, DirectPVError) else f"{exc.strerror or exc}"
        kind = KIND_UNVERIFIED if needs_identity(dev) else dev.drive_kind
        return dataclasses.replace(dev, drive_kind=kind, inspect_error=why)
    return out


# Answers of identify() for unmounted drives, keyed by the device and a hash of its first sector (the
# XFS superblock, rewritten with new counters and log sequence number whenever the filesystem was
# mounted read-write and changed): a node probing every few seconds mounts an unchanged drive once,
# not at every sync (a MinIO DirectPV node plugin on the same host may want to mount it meanwhile).
_IDENTIFIED: Dict[Tuple[str, str, bytes], Tuple[str, Contents]] = {}
_IDENTIFIED_MAX = 256


def _first_sector_digest(dev: Device) -> bytes:
    try:
        fd = os.open(dev.dev_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return hashlib.sha256(os.pread(fd, 512, 0)).digest()
    except OSError:
        return b""
    finally:
        os.close(fd)


def identify(devices: Sequence[Device], proc_root: str = "/proc") -> List[Device]:
    """Every device, the DIRECTPV-labelled XFS ones with their ``drive_kind`` read from their files."""
    out: List[Device] = []
    for d in devices:
        if not needs_identity(d):
            out.append(d)
            continue
        if d.mountpoints:  # read where it is mounted: no mount is made, nothing to spare
            out.append(inspect(d, walk=False, proc_root=proc_root))
            continue
        digest = _first_sector_digest(d)
        key = (d.dev_path, d.majmin, digest)
        hit = _IDENTIFIED.get(key) if digest else None
        if hit is not None:
            out.append(dataclasses.replace(d, drive_kind=hit[0], contents=hit[1], inspect_error=""))
            continue
        got = inspect(d, walk=False, proc_root=proc_root)
        if digest and got.drive_kind and not got.inspect_error and got.contents is not None:
            if len(_IDENTIFIED) >= _IDENTIFIED_MAX:
                _IDENTIFIED.clear()
            _IDENTIFIED[key] = (got.drive_kind, got.contents)
        out.append(got)
    return out
