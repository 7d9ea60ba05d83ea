"""The life of a volume directory on a drive: create (with its project quota),
grow, measure, move to the trash.

A volume is the directory ``<drive mount>/<volume name>``. With XFS project
quota the directory carries the volume's project ID (inherited by everything
created under it) and a hard block limit of the volume's size. Entries whose
name starts with ``.`` are ours (``.directpv`` metadata, ``.deleted`` trash) and
never volumes.

Each volume also has its own metadata file, outside the directory the pod sees:
``<drive mount>/.directpv/volumes/<volume name>.json`` (name, uid, drive, size,
project id, parameters, claim labels, created), written durably before the
directory is first made. A store that lost its records restores them from these
files (node/registry.py); the uid tells one incarnation of a name from another.

Nothing here decides a deletion: ``move_to_trash`` runs only for a tombstone the
store recorded (node/registry.py), and ``purge_trash`` empties only ``.deleted/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..core.errors import FailedPrecondition, InvalidArgument, Unsupported
from ..core.models import Volume
from ..core.validation import check_volume_name as _check_name
from ..device import quota
from ..device.format import fsync_dir, write_json_durably

log = logging.getLogger("directpv_csi.node")

DELETED_DIR = ".deleted"
META_DIR = ".directpv"
VOLUME_META_DIR = ".directpv/volumes"  # agreed with the drive module: its wipe refuses a drive with files here
VOLUME_META_FORMAT = 1


def check_volume_name(name: str) -> None:
    """A volume name is one path component that is not hidden: InvalidArgument otherwise. The one
    volume-name rule (core/validation.py: at most 128 bytes of letters, digits, '.', '_', '-', not
    starting with '.'), the one CreateVolume applied to every name it handed out."""
    _check_name(name, "volume id")


def volume_path(drive_mount: Path, name: str) -> Path:
    check_volume_name(name)
    return drive_mount / name


class StaleVolumeDir(FailedPrecondition):
    """The directory of a volume's name holds another incarnation (another uid)."""


def ensure_volume_dir(drive_mount: Path, volume: Volume, with_quota: bool) -> Path:
    """Create the volume's directory (idempotent) and, when ``with_quota``, tag it with
    the volume's project ID and set the project's hard limit to ``volume.size``. Without
    quota nothing is tagged: the first stage after the drive gains prjquota does it.

    The volume's metadata file is written (durably) before the directory is made. A
    directory or metadata file of the same name that belongs to another incarnation (another
    uid) is never handed to this volume: StaleVolumeDir (the node moves it to the trash once
    the store's tombstone for it is consumed; without a tombstone it is an orphan, kept)."""
    path = volume_path(drive_mount, volume.name)
    meta = read_volume_meta(drive_mount, volume.name)
    old_uid = str(meta.get("uid", "")) if meta is not None else ""
    if volume.uid and old_uid and old_uid != volume.uid:
        raise StaleVolumeDir(
            f"drive {volume.drive_id} still holds an earlier volume named {volume.name} (uid {old_uid}; "
            f"this one is uid {volume.uid}): its data is never handed to a new volume",
            "if the earlier volume was deleted, its node moves it to the trash at its next sync and a retry "
            "succeeds; otherwise it is an orphan, kept: list it with `directpv-csi client orphans`",
        )
    if meta is None or volume_meta(volume, meta) != meta:
        write_volume_meta(drive_mount, volume, meta)
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


def volume_meta_path(drive_mount: Path, name: str) -> Path:
    check_volume_name(name)
    return drive_mount / VOLUME_META_DIR / f"{name}.json"


def volume_meta(volume: Volume, old: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What the metadata file of ``volume`` holds (``old``'s ``written_at`` kept, so an unchanged
    volume compares equal)."""
    return {
        "format": VOLUME_META_FORMAT, "name": volume.name, "uid": volume.uid, "drive_id": volume.drive_id,
        "node": volume.node, "size": volume.size, "project_id": volume.project_id,
        "parameters": dict(volume.parameters),
        "labels": {k: v for k, v in volume.labels.items() if not k.startswith("directpv.dev/staged-")},
        "created_at": volume.created_at,
        "written_at": (old or {}).get("written_at") or time.time(),
    }


def write_volume_meta(drive_mount: Path, volume: Volume, old: Optional[Dict[str, Any]] = None) -> Path:
    """Write the volume's metadata file durably: temp file, fsync, rename, fsync the directory."""
    path = volume_meta_path(drive_mount, volume.name)
    body = volume_meta(volume, old)
    if old is not None:
        body["written_at"] = time.time()
    d = path.parent
    if not d.is_dir():
        os.makedirs(d, mode=0o755, exist_ok=True)
        fsync_dir(d.parent)
        fsync_dir(drive_mount)
    write_json_durably(str(path), body, str(d / f".{volume.name}.json.tmp"), indent=1)
    return path


def read_volume_meta(drive_mount: Path, name: str) -> Optional[Dict[str, Any]]:
    """The volume's metadata, None when it has none (made before metadata files existed).
    Unreadable or not a JSON object -> FailedPrecondition (never guessed)."""
    path = volume_meta_path(drive_mount, name)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot read volume metadata {path}: {exc}",
                                 "look at the file; the volume's directory is kept") from exc
    if not isinstance(data, dict):
        raise FailedPrecondition(f"volume metadata {path} is not a JSON object",
                                 "look at the file; the volume's directory is kept")
    return data


def list_volume_metas(drive_mount: Path) -> list[str]:
    """Names that have a metadata file on a mounted drive."""
    try:
        entries = os.listdir(drive_mount / VOLUME_META_DIR)
    except FileNotFoundError:
        return []
    return sorted(e[: -len(".json")] for e in entries if e.endswith(".json") and not e.startswith("."))


def volume_of_meta(meta: Dict[str, Any], drive_id: str, node: str) -> Volume:
    """The record a metadata file describes (for restoring a lost store). InvalidArgument when it
    lacks what a record needs."""
    try:
        name = str(meta["name"])
        check_volume_name(name)
        return Volume(
            name=name, drive_id=drive_id, node=node, size=int(meta["size"]), project_id=int(meta["project_id"]),
            uid=str(meta["uid"]), parameters={str(k): str(v) for k, v in dict(meta.get("parameters") or {}).items()},
            labels={str(k): str(v) for k, v in dict(meta.get("labels") or {}).items()},
            created_at=float(meta.get("created_at") or 0.0),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"volume metadata of {meta.get('name')!r} lacks or garbles {exc}",
                              "look at the file; the volume's directory is kept") from exc


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
    moved: Tuple[str, ...] = ()  # trash entries made (the directory, the metadata file)


def move_to_trash(drive_mount: Path, name: str, uid: str, with_quota: bool, live_project_ids: set[int]) -> Released:
    """Move a deleted volume's directory and metadata file into ``.deleted/`` under names carrying
    its identity (``<name>.<uid>.<ns>``), fsync, and clear its project's limits unless a live
    volume on the drive uses that project ID. Called only for a tombstone the store recorded
    (node/registry.py); ``purge_trash`` removes the entries."""
    path = volume_path(drive_mount, name)
    meta = volume_meta_path(drive_mount, name)
    trash = drive_mount / DELETED_DIR
    project_id = 0
    if with_quota and path.is_dir():
        try:
            project_id = quota.get_project(str(path))
        except (OSError, Unsupported) as exc:
            log.warning("cannot read the project id of %s: %s", path, exc)
    if not trash.is_dir():
        os.makedirs(trash, mode=0o700, exist_ok=True)
        fsync_dir(drive_mount)
    stamp = f"{name}.{uid or 'no-uid'}.{time.time_ns()}"
    moved = []
    if path.is_dir() and not path.is_symlink():
        os.rename(path, trash / stamp)
        moved.append(stamp)
    if meta.exists():
        os.rename(meta, trash / f"{stamp}.json")
        moved.append(f"{stamp}.json")
        fsync_dir(meta.parent)
    if moved:
        fsync_dir(trash)
        fsync_dir(drive_mount)
    cleared = False
    if with_quota and project_id > 0 and project_id not in live_project_ids:
        try:
            quota.clear_limits(str(drive_mount), project_id)
            cleared = True
        except (OSError, Unsupported) as exc:
            log.warning("cannot clear the quota of project %d on %s: %s", project_id, drive_mount, exc)
    return Released(name=name, project_id=project_id, limits_cleared=cleared, moved=tuple(moved))


def purge_trash(drive_mount: Path) -> int:
    """Empty ``.deleted/`` (only what ``move_to_trash`` put there); returns how many entries went."""
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
