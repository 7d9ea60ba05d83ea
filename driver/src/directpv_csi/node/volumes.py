"""The life of a volume directory on a drive: create (with its project quota),
grow, measure, release.

A volume is the directory ``<drive mount>/<volume name>``. With XFS project
quota the directory carries the volume's project ID (inherited by everything
created under it) and a hard block limit of the volume's size. Entries whose
name starts with ``.`` are ours (``.directpv`` metadata, ``.deleted`` trash) and
never volumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

from ..core.errors import FailedPrecondition, InvalidArgument, Unsupported
from ..core.models import Volume
from ..device import quota

log = logging.getLogger("directpv_csi.node")

DELETED_DIR = ".deleted"
MAX_NAME_BYTES = 255


def check_volume_name(name: str) -> None:
    """A volume name is one path component that is not hidden: InvalidArgument otherwise."""
    if not name:
        raise InvalidArgument("volume id is missing", "give the volume id returned by CreateVolume")
    if "/" in name or "\0" in name or name.startswith(".") or len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidArgument(
            f"volume id {name!r} cannot name a directory on a drive",
            "volume ids are one path component, not starting with '.', at most 255 bytes",
        )


def volume_path(drive_mount: Path, name: str) -> Path:
    check_volume_name(name)
    return drive_mount / name


def ensure_volume_dir(drive_mount: Path, volume: Volume, with_quota: bool) -> Path:
    """Create the volume's directory (idempotent) and, when ``with_quota``, tag it with
    the volume's project ID and set the project's hard limit to ``volume.size``. Without
    quota nothing is tagged: the first stage after the drive gains prjquota does it."""
    path = volume_path(drive_mount, volume.name)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not path.is_dir() or path.is_symlink():
            raise FailedPrecondition(
                f"{path} exists on drive {volume.drive_id} and is not a directory",
                f"move it away; the volume directory of {volume.name} must be a plain directory",
            ) from None
    if with_quota:
        set_volume_quota(drive_mount, path, volume.project_id, volume.size)
    return path


def set_volume_quota(drive_mount: Path, path: Path, project_id: int, size: int) -> None:
    if project_id <= 0:
        raise FailedPrecondition(
            f"volume directory {path} has no project id in its record",
            "the store assigns project ids when the volume is reserved; recreate the volume",
        )
    quota.set_project(str(path), project_id)  # idempotent
    quota.set_limits(str(drive_mount), project_id, size)


def list_volume_dirs(drive_mount: Path) -> list[str]:
    """Names of the volume directories on a mounted drive (hidden entries excluded)."""
    names = []
    with os.scandir(drive_mount) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                names.append(entry.name)
    return sorted(names)


@dataclass(frozen=True)
class Released:
    name: str
    project_id: int  # 0: untagged or quota not supported
    limits_cleared: bool


def release_volume_dir(drive_mount: Path, name: str, with_quota: bool, live_project_ids: set[int]) -> Released:
    """Remove a released volume's directory: rename it into ``.deleted/`` first (so a
    crash never leaves a half-removed volume under its name), clear its project's
    limits unless a live volume on the drive uses that project ID, then remove it."""
    path = volume_path(drive_mount, name)
    trash = drive_mount / DELETED_DIR
    project_id = 0
    if with_quota:
        try:
            project_id = quota.get_project(str(path))
        except (OSError, Unsupported) as exc:
            log.warning("cannot read the project id of %s: %s", path, exc)
    os.makedirs(trash, mode=0o700, exist_ok=True)
    dest = trash / f"{name}.{time.time_ns()}"
    os.rename(path, dest)
    cleared = False
    if with_quota and project_id > 0 and project_id not in live_project_ids:
        try:
            quota.clear_limits(str(drive_mount), project_id)
            cleared = True
        except (OSError, Unsupported) as exc:
            log.warning("cannot clear the quota of project %d on %s: %s", project_id, drive_mount, exc)
    shutil.rmtree(dest, ignore_errors=False, onerror=None)
    return Released(name=name, project_id=project_id, limits_cleared=cleared)


def purge_trash(drive_mount: Path) -> int:
    """Remove what a crash left in ``.deleted/``; returns how many entries went."""
    trash = drive_mount / DELETED_DIR
    try:
        entries = list(os.scandir(trash))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    return len(entries)


@dataclass(frozen=True)
class Usage:
    bytes_total: int
    bytes_available: int
    bytes_used: int
    inodes_total: int
    inodes_free: int
    inodes_used: int


def usage(path: Path, size: int = 0, quota: bool = True) -> Usage:
    """Usage of a volume path.

    With prjquota and PROJINHERIT, statfs on the path reports the project's limit and
    usage (one syscall). Without quota (a kernel lacking XFS quota) statfs would report
    the whole drive, so the volume's own figures are counted instead: bytes and inodes
    under its directory (a walk that stays on the drive's filesystem) against its
    reserved ``size``; available is also capped by what the drive has left.
    """
    st = os.statvfs(path)
    frsize = st.f_frsize or st.f_bsize
    if quota or size <= 0:
        return Usage(
            bytes_total=st.f_blocks * frsize,
            bytes_available=st.f_bavail * frsize,
            bytes_used=(st.f_blocks - st.f_bfree) * frsize,
            inodes_total=st.f_files,
            inodes_free=st.f_ffree,
            inodes_used=max(0, st.f_files - st.f_ffree),
        )
    used, inodes = _tree_usage(str(path))
    return Usage(
        bytes_total=size,
        bytes_available=max(0, min(size - used, st.f_bavail * frsize)),
        bytes_used=used,
        inodes_total=inodes + st.f_ffree,
        inodes_free=st.f_ffree,
        inodes_used=inodes,
    )


def _tree_usage(top: str) -> Tuple[int, int]:
    """(allocated bytes, inodes) under ``top``, not crossing into other filesystems."""
    root_dev = os.lstat(top).st_dev
    used, inodes = 0, 1
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue  # vanished or unreadable meanwhile: count what can be seen
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != root_dev:
                continue
            used += st.st_blocks * 512
            inodes += 1
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
    return used, inodes
