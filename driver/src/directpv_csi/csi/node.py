"""CSI Node service: a volume is a directory on one of this node's drives, bind-mounted
to the staging path and from there to each target path.

validate -> hold the volume (in-flight table: a concurrent call gets ABORTED) -> read
the volume record -> act by syscalls -> record. No probe and no subprocess on the hot
path: the drive registry holds the drive mounts in memory.

"Is this path showing volume V" is answered by one ``stat``: a bind mount of the
volume directory has the directory's device and inode number. Repeated calls
compare that (and the recorded capability) and return the same answer.

Codes beyond the validation ones (CSI spec, NodeStageVolume/NodePublishVolume
error tables): volume id unknown -> NOT_FOUND; volume recorded for another node ->
FAILED_PRECONDITION (the volume exists, so NOT_FOUND would be false; the spec's
code for "the CO has exceeded the volume's capabilities" - a single-node volume
asked for elsewhere - is FAILED_PRECONDITION); staged or published again with an
incompatible capability -> ALREADY_EXISTS; publish without a staged volume at the
given staging path -> FAILED_PRECONDITION. NodeUnpublish/NodeUnstage succeed when
the path or the volume is already gone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Optional, Sequence

import grpc

from ..concurrency.inflight import InFlight
from ..core.errors import (
    AlreadyExists,
    DirectPVError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unsupported,
    clip,
)
from ..core.models import DRIVE_READY, VOLUME_PENDING, VOLUME_READY, Volume
from ..core.validation import PREFIX, capability_problem, check_path_string, check_volume_id
from ..device import mount as _mount
from ..device import paths as _paths
from ..node import made as _made
from ..node import volumes as _volumes
from ..node.config import NodeConfig
from ..node.registry import DriveRegistry, MountedDrive
from ..store.base import Store
from .controller import mode_name
from .errors import rpc
from .proto import csi_pb2, csi_pb2_grpc

log = logging.getLogger("directpv_csi.node")

LABEL_STAGED_WITH = PREFIX + "staged-with"  # digest of the capability a volume was staged with

_RPC = csi_pb2.NodeServiceCapability.RPC
CAPABILITIES = (
    _RPC.STAGE_UNSTAGE_VOLUME,
    _RPC.EXPAND_VOLUME,
    _RPC.GET_VOLUME_STATS,
    _RPC.VOLUME_CONDITION,
    _RPC.SINGLE_NODE_MULTI_WRITER,
)

# mount flags a bind-mounted directory can honour, as MS_* bits (0: accepted, no effect)
_MOUNT_FLAGS = {
    "defaults": 0,
    "rw": 0,
    "ro": _mount.MS_RDONLY,
    "nosuid": _mount.MS_NOSUID,
    "nodev": _mount.MS_NODEV,
    "noexec": _mount.MS_NOEXEC,
    "noatime": _mount.MS_NOATIME,
    "nodiratime": _mount.MS_NODIRATIME,
    "relatime": _mount.MS_RELATIME,
    "strictatime": _mount.MS_STRICTATIME,
}


class _Cap:
    """A request's volume capability, validated: mount access, xfs, single-node mode."""

    def __init__(self, cap: csi_pb2.VolumeCapability, what: str) -> None:
        kind = cap.WhichOneof("access_type") or ""
        fs_type = cap.mount.fs_type if kind == "mount" else ""
        mode = mode_name(cap)
        problem = capability_problem((kind, fs_type, mode))
        if problem:
            raise InvalidArgument(f"{what}: {problem[0]}", problem[1])
        flags = tuple(cap.mount.mount_flags)
        bits = 0
        for flag in flags:
            if flag not in _MOUNT_FLAGS:
                raise InvalidArgument(
                    f"{what}: mount flag {clip(flag)!r} is not supported for a bind-mounted volume directory",
                    f"use only {', '.join(sorted(_MOUNT_FLAGS))}",
                )
            bits |= _MOUNT_FLAGS[flag]
        self.mode = mode
        self.flags = flags
        self.read_only = mode == "SINGLE_NODE_READER_ONLY" or bool(bits & _mount.MS_RDONLY)
        self.extra_bits = bits & ~_mount.MS_RDONLY
        canon = "|".join([kind, fs_type.lower() or "xfs", mode, ",".join(sorted(set(flags)))])
        self.digest = hashlib.sha256(canon.encode()).hexdigest()[:16]


_CAP_CACHE: dict[bytes, _Cap] = {}  # a node sees a handful of distinct capabilities


def _capability(request: object, what: str) -> _Cap:
    if not request.HasField("volume_capability"):  # type: ignore[attr-defined]
        raise InvalidArgument(f"{what}: volume capability is missing", "pass the volume capability")
    cap = request.volume_capability  # type: ignore[attr-defined]
    key = cap.SerializeToString(deterministic=True)
    found = _CAP_CACHE.get(key)
    if found is None:
        found = _Cap(cap, what)  # raises for an unsupported one: never cached
        if len(_CAP_CACHE) < 256:
            _CAP_CACHE[key] = found
    return found


def _shows_fd(fd: int, md: MountedDrive, vol_dir: Path) -> bool:
    """True when what ``fd`` holds is the volume directory (a bind of it: same device and inode)."""
    try:
        st = os.fstat(fd)
        d = os.stat(vol_dir)
    except OSError:
        return False
    return st.st_dev == d.st_dev == md.st_dev and st.st_ino == d.st_ino


def _open_volume_dir(vol_dir: Path) -> int:
    return os.open(vol_dir, _paths.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


class _Resolved:
    """A request path resolved by device/paths.py: the held parent directory (reached without
    symlinks beneath the kubelet dir), the entry name, and where the entry must be (``real``).
    Every descriptor of the entry it hands out is closed by :meth:`forget` (a held descriptor
    would keep a mount busy) and on exit."""

    def __init__(self, path: str, parent: int, name: str, real: str) -> None:
        self.path = path
        self.parent = parent
        self.name = name
        self.real = real
        self._fds: list[int] = []

    def __enter__(self) -> _Resolved:
        return self

    def __exit__(self, *exc: object) -> None:
        self.forget()
        os.close(self.parent)

    def child(self) -> Optional[int]:
        fd = _paths.open_child(self.parent, self.name)
        if fd is not None:
            self._fds.append(fd)
        return fd

    def forget(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    def check_place(self, fd: int) -> None:
        """FailedPrecondition unless the directory ``fd`` holds is still at the requested path
        (not renamed elsewhere since it was resolved)."""
        now = _paths.where(fd)
        if now != self.real:
            raise FailedPrecondition(f"{clip(self.path)} moved while the call used it (now {clip(now)})",
                                     "retry the call with a path of plain directories")

    def verify_mounted(self, md: MountedDrive, vol_dir: Path) -> int:
        """A descriptor of the new mount at the entry; FailedPrecondition unless it shows the volume."""
        fd = self.child()
        if fd is None or not _shows_fd(fd, md, vol_dir) or not _mount.is_mount_root_fd(fd):
            raise FailedPrecondition(f"{clip(self.path)} changed while the volume was mounted there",
                                     "retry the call")
        return fd

    def unmount(self) -> None:
        """Unmount everything stacked at the entry; lazily when busy or the drive is gone."""
        self.forget()
        for _ in range(8):
            try:
                if not _mount.unmount_child(self.parent, self.name):
                    return
            except DirectPVError:
                _mount.unmount_child(self.parent, self.name, lazy=True)


class NodeServicer(csi_pb2_grpc.NodeServicer):  # type: ignore[misc]
    def __init__(self, config: NodeConfig, store: Store, registry: DriveRegistry,
                 *, inflight: Optional[InFlight] = None) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        # Shared with the registry: its garbage collector skips a volume a call holds.
        self.inflight = inflight if inflight is not None else registry.inflight
        self._quota_warned = False
        self._warn_lock = threading.Lock()
        self.made = _made.MadeRecords(config.state_dir)  # the target directories this node created

    # ------------------------------------------------------------------ helpers

    def _volume(self, volume_id: str) -> Volume:
        vol = self.store.read_volume(volume_id)  # the controller may have created it a moment ago
        if vol is None:
            raise NotFound(f"volume {volume_id} not found", "check the volume id (CreateVolume returns it)")
        return vol

    def _local(self, vol: Volume) -> Volume:
        if vol.node != self.config.node_id:
            raise FailedPrecondition(
                f"volume {vol.name} lives on node {vol.node}, not on {self.config.node_id}",
                f"schedule the workload on node {vol.node} (the volume's accessible topology)",
            )
        return vol

    def _drive(self, vol: Volume) -> MountedDrive:
        md = self.registry.mounted(vol.drive_id)
        if md is None:
            rec = self.registry.drive_record(vol.drive_id)
            state = f"{rec.status}: {rec.message}" if rec is not None and rec.message else (
                rec.status if rec is not None else "unknown to this node")
            raise FailedPrecondition(
                f"drive {vol.drive_id} of volume {vol.name} is not ready on node {self.config.node_id} ({state})",
                "reattach or repair the drive; the node re-syncs its drives periodically",
            )
        return md

    def _no_quota(self, md: MountedDrive) -> None:
        if self.config.require_quota:
            raise Unsupported(
                f"drive {md.drive_id} is mounted without project quota, so volume sizes cannot be enforced",
                "use a kernel with XFS quota (CONFIG_XFS_QUOTA), or run the node without --require-quota",
            )
        with self._warn_lock:
            if not self._quota_warned:
                self._quota_warned = True
                log.warning("drive %s has no project quota (kernel without XFS quota): volume sizes are "
                            "reservations only, not enforced limits", md.drive_id)

    @staticmethod
    def _shows(path: str, md: MountedDrive, vol_dir: Path) -> bool:
        """True when ``path`` currently shows the volume directory (it is bound there)."""
        try:
            st = os.stat(path)
            d = os.stat(vol_dir)
        except OSError:
            return False
        return st.st_dev == d.st_dev == md.st_dev and st.st_ino == d.st_ino

    @staticmethod
    def _read_only(path: str) -> bool:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)

    def _update(self, name: str, **changes: object) -> None:
        self.store.update_volume(name, None, **changes)

    def _ours_dev(self, dev: int) -> bool:
        """True when ``dev`` is the filesystem of one of our mounted drives."""
        return any(md.st_dev == dev for md in self.registry.mounted_drives())

    def _open(self, path: str, what: str) -> _Resolved:
        """``path`` (checked by config.check_path) resolved beneath its kubelet dir, symlinks refused."""
        root = self.config.root_of(path)
        parts = _paths.split_beneath(root, path, what)
        parent = _paths.open_dir(root, parts[:-1], what)
        return _Resolved(path, parent, parts[-1], os.path.join(os.path.realpath(root), *parts))

    def _inside_volume(self, where: _Resolved, what: str) -> None:
        """InvalidArgument when the parent of ``where`` lies on one of our drives: the path is inside
        a volume (a staging or target mount, or a drive mount)."""
        if self._ours_dev(os.fstat(where.parent).st_dev):
            raise InvalidArgument(f"{what} {clip(where.path)} is inside a volume",
                                  f"give a {what} outside every staging and target path")

    # ------------------------------------------------------------------ stage

    @rpc
    def NodeStageVolume(self, request: csi_pb2.NodeStageVolumeRequest,
                        context: grpc.ServicerContext) -> csi_pb2.NodeStageVolumeResponse:
        vid = check_volume_id(request.volume_id)
        staging = self.config.check_path(request.staging_target_path, "staging_target_path")
        cap = _capability(request, f"volume {vid}")
        with self.inflight.hold(vid):
            vol = self._local(self._volume(vid))
            for t in vol.target_paths:
                if staging == t or staging.startswith(t + "/"):
                    raise InvalidArgument(f"staging_target_path {clip(staging)} is inside target path {clip(t)}",
                                          "give a staging path outside every target path")
            md = self._drive(vol)
            vol_dir = _volumes.volume_path(md.mount, vol.name)
            staged_with = vol.labels.get(LABEL_STAGED_WITH, "")
            try:
                where = self._open(staging, "staging_target_path")
            except NotFound:
                raise FailedPrecondition(
                    f"the parent directory of staging_target_path {clip(staging)} does not exist",
                    "the container orchestrator creates the staging directory before NodeStageVolume",
                ) from None
            with where:
                self._inside_volume(where, "staging_target_path")
                if vol.staging_path and vol.staging_path != staging and self._shows(vol.staging_path, md, vol_dir):
                    raise FailedPrecondition(
                        f"volume {vid} is already staged at {vol.staging_path}, not {clip(staging)}",
                        "unstage it there first",
                    )
                fd = where.child()
                if fd is None or not stat.S_ISDIR(os.fstat(fd).st_mode):
                    raise FailedPrecondition(
                        f"staging_target_path {clip(staging)} does not exist or is not a directory",
                        "the container orchestrator creates the staging directory before NodeStageVolume",
                    )
                if _shows_fd(fd, md, vol_dir):
                    if staged_with and staged_with != cap.digest:
                        raise AlreadyExists(
                            f"volume {vid} is already staged at {staging} with another volume capability",
                            "unstage it first, or stage it with the capability it was staged with",
                        )
                    if vol.staging_path != staging or vol.status != VOLUME_READY or staged_with != cap.digest:
                        self._update(vid, status=VOLUME_READY, staging_path=staging,
                                     labels={**vol.labels, LABEL_STAGED_WITH: cap.digest})
                    return csi_pb2.NodeStageVolumeResponse()
                if _mount.is_mount_root_fd(fd):
                    raise FailedPrecondition(f"staging_target_path {clip(staging)} has something else mounted",
                                             "unmount it first, or stage to another path")
                where.check_place(fd)
                if not md.quota:
                    self._no_quota(md)
                _volumes.ensure_volume_dir(md.mount, vol, with_quota=md.quota)
                src = _open_volume_dir(vol_dir)
                try:
                    _mount.bind_fd(src, fd)
                finally:
                    os.close(src)
                where.forget()
                try:
                    where.verify_mounted(md, vol_dir)
                    self._update(vid, status=VOLUME_READY, staging_path=staging,
                                 labels={**vol.labels, LABEL_STAGED_WITH: cap.digest})
                except BaseException:
                    where.unmount()  # not recorded: do not leave it mounted
                    raise
        return csi_pb2.NodeStageVolumeResponse()

    @rpc
    def NodeUnstageVolume(self, request: csi_pb2.NodeUnstageVolumeRequest,
                          context: grpc.ServicerContext) -> csi_pb2.NodeUnstageVolumeResponse:
        vid = check_volume_id(request.volume_id)
        staging = self.config.check_path(request.staging_target_path, "staging_target_path")
        with self.inflight.hold(vid):
            vol = self.store.get_volume(vid)
            md = self.registry.mounted(vol.drive_id) if vol is not None else None
            if vol is not None and md is not None:
                vol_dir = _volumes.volume_path(md.mount, vol.name)
                busy = [t for t in vol.target_paths if self._shows(t, md, vol_dir)]
                if busy:
                    raise FailedPrecondition(f"volume {vid} is still published at {', '.join(busy)}",
                                             "unpublish it first (NodeUnpublishVolume)")
            self._teardown(vid, vol, md, staging, "staging_target_path")
            # The staging directory belongs to the container orchestrator: never removed here.
            if vol is not None and vol.staging_path == staging:
                labels = {k: v for k, v in vol.labels.items() if k != LABEL_STAGED_WITH}
                self._update(vid, status=VOLUME_PENDING, staging_path="", labels=labels)
        return csi_pb2.NodeUnstageVolumeResponse()

    def _teardown(self, vid: str, vol: Optional[Volume], md: Optional[MountedDrive], path: str, what: str,
                  remove_made: bool = False) -> None:
        """Unmount ``path`` when it shows volume ``vol`` (or, record gone, one of our drives; or,
        drive lost, it is a recorded path of ``vol``); then, with ``remove_made``, rmdir it when
        this node made it for this volume. Anything else there is left alone."""
        try:
            where = self._open(path, what)
        except NotFound:
            if remove_made:
                self.made.remove(path)
            return  # nothing there
        with where:
            fd = where.child()
            if fd is None:
                if remove_made:
                    self.made.remove(path)
                return
            if vol is not None and md is not None:
                ours = _shows_fd(fd, md, _volumes.volume_path(md.mount, vol.name))
            elif vol is not None:  # drive lost: the mount may not even stat
                recorded = path == vol.staging_path or path in vol.target_paths
                ours = recorded and _mount.is_mount_root_fd(fd)
            else:  # record gone: a bind of this volume's directory, or a target made for this volume
                ours = _mount.is_mount_root_fd(fd) and self._ours_dev(os.fstat(fd).st_dev) and (
                    self._shows_name(fd, vid) or (remove_made and self._made_for(path, vid)))
            where.forget()
            if ours:
                where.unmount()
            if remove_made:
                self._remove_made(where, vid)

    def _shows_name(self, fd: int, vid: str) -> bool:
        """True when ``fd`` shows the directory ``<drive>/<vid>`` of one of our mounted drives."""
        return any(_shows_fd(fd, md, _volumes.volume_path(md.mount, vid)) for md in self.registry.mounted_drives())

    def _made_for(self, path: str, vid: str) -> bool:
        rec = self.made.get(path)
        return rec is not None and rec.volume_id == vid

    def _remove_made(self, where: _Resolved, volume_id: str) -> None:
        rec = self.made.get(where.path)
        if rec is None:
            return  # not made by this node: left alone (a kubelet file, someone else's directory)
        if rec.volume_id != volume_id:
            log.warning("%s was made for volume %s, not %s: left alone", clip(where.path), rec.volume_id,
                        clip(volume_id))
            return
        fd = where.child()
        if fd is None:
            self.made.remove(where.path)
            return
        st = os.fstat(fd)
        mounted = _mount.is_mount_root_fd(fd)
        born = _mount.birth_ns(fd)
        where.forget()
        if (st.st_dev, st.st_ino, born) != (rec.dev, rec.ino, rec.born) or not stat.S_ISDIR(st.st_mode):
            log.warning("%s is no longer the directory this node made: left alone", clip(where.path))
            self.made.remove(where.path)
            return
        if mounted:
            log.warning("target path %s is still a mount point of something else: left alone", clip(where.path))
            return
        if _paths.rmdir_child(where.parent, where.name) or where.child() is None:
            self.made.remove(where.path)
        else:
            log.warning("target path %s is not empty after unmount: left alone", clip(where.path))
            where.forget()

    # ------------------------------------------------------------------ publish

    @rpc
    def NodePublishVolume(self, request: csi_pb2.NodePublishVolumeRequest,
                          context: grpc.ServicerContext) -> csi_pb2.NodePublishVolumeResponse:
        vid = check_volume_id(request.volume_id)
        target = self.config.check_path(request.target_path, "target_path")
        cap = _capability(request, f"volume {vid}")
        if not request.staging_target_path:
            raise FailedPrecondition(f"volume {vid}: staging_target_path is not set",
                                     "this driver has STAGE_UNSTAGE_VOLUME: stage the volume first")
        staging = self.config.check_path(request.staging_target_path, "staging_target_path")
        if target == staging or target.startswith(staging + "/"):
            raise InvalidArgument(f"target_path {clip(target)} is the staging path or inside it",
                                  "give a target path outside the staging path")
        if staging.startswith(target + "/"):
            raise InvalidArgument(f"staging_target_path {clip(staging)} is inside target_path {clip(target)}",
                                  "give a target path outside the staging path")
        read_only = request.readonly or cap.read_only
        with self.inflight.hold(vid):
            vol = self._local(self._volume(vid))
            md = self._drive(vol)
            vol_dir = _volumes.volume_path(md.mount, vol.name)
            if vol.staging_path != staging:
                raise FailedPrecondition(f"volume {vid} is not staged at {clip(staging)}",
                                         "call NodeStageVolume with this staging_target_path first")
            try:
                src = self._open(staging, "staging_target_path")
            except NotFound:
                raise FailedPrecondition(f"volume {vid} is not staged at {clip(staging)}",
                                         "call NodeStageVolume with this staging_target_path first") from None
            with src:
                sfd = src.child()
                if sfd is None or not _shows_fd(sfd, md, vol_dir):
                    raise FailedPrecondition(f"volume {vid} is not staged at {clip(staging)}",
                                             "call NodeStageVolume with this staging_target_path first")
                try:
                    where = self._open(target, "target_path")
                except NotFound:
                    raise FailedPrecondition(
                        f"the parent directory of target_path {clip(target)} does not exist",
                        "the container orchestrator creates the parent of the target path",
                    ) from None
                with where:
                    self._inside_volume(where, "target_path")
                    self._publish_at(vol, md, vol_dir, cap, read_only, sfd, where)
        return csi_pb2.NodePublishVolumeResponse()

    def _publish_at(self, vol: Volume, md: MountedDrive, vol_dir: Path, cap: _Cap, read_only: bool, sfd: int,
                    where: _Resolved) -> None:
        vid, target = vol.name, where.path
        fd = where.child()
        if fd is not None:
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                raise InvalidArgument(f"target_path {clip(target)} is a symlink",
                                      "give a target path that does not exist or is a plain directory")
            if _shows_fd(fd, md, vol_dir):
                if bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY) != read_only:
                    mode = "read-only" if not read_only else "read-write"
                    raise AlreadyExists(f"volume {vid} is already published {mode} at {target}",
                                        "unpublish it first, or publish it with the same readonly flag")
                self._record_target(vol, target, read_only)
                return
            if not stat.S_ISDIR(st.st_mode):
                raise FailedPrecondition(f"target_path {clip(target)} exists and is not a directory",
                                         "remove it; the driver creates the target directory")
            if _mount.is_mount_root_fd(fd):
                raise FailedPrecondition(f"target_path {clip(target)} already has something else mounted",
                                         "unmount it first, or publish to another target path")
        if cap.mode == "SINGLE_NODE_SINGLE_WRITER":
            others = [t for t in vol.target_paths if t != target and self._shows(t, md, vol_dir)]
            if others:
                raise FailedPrecondition(
                    f"volume {vid} (SINGLE_NODE_SINGLE_WRITER) is already published at {', '.join(others)}",
                    "a ReadWriteOncePod volume is published at one target path at a time",
                )
        made = False
        if fd is None:
            # made and recorded before anything is mounted on it: teardown removes exactly this one
            made = _paths.mkdir_child(where.parent, where.name, 0o750)
            fd = where.child()
            if fd is None or not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise FailedPrecondition(f"target_path {clip(target)} changed while it was being created",
                                         "retry the call")
            if made:
                st = os.fstat(fd)
                self.made.add(_made.Made(path=target, volume_id=vid, kind="dir", dev=st.st_dev, ino=st.st_ino,
                                         born=_mount.birth_ns(fd)))
        try:
            where.check_place(fd)
            _mount.bind_fd(sfd, fd)
            where.forget()
            try:
                mfd = where.verify_mounted(md, vol_dir)
                flags = cap.extra_bits | (_mount.MS_RDONLY if read_only else 0)
                if flags:
                    _mount.remount_bind_fd(mfd, flags)
                where.forget()
                self._record_target(vol, target, read_only)
            except BaseException:
                where.forget()
                where.unmount()
                raise
        except BaseException:
            if made:
                self._remove_made(where, vid)
            raise

    def _record_target(self, vol: Volume, target: str, read_only: bool) -> None:
        targets = tuple(sorted({*vol.target_paths, target}))
        ro = {*vol.read_only_targets} - {target}
        if read_only:
            ro.add(target)
        ro_t = tuple(sorted(ro))
        if targets != vol.target_paths or ro_t != vol.read_only_targets:
            self._update(vol.name, target_paths=targets, read_only_targets=ro_t)

    @rpc
    def NodeUnpublishVolume(self, request: csi_pb2.NodeUnpublishVolumeRequest,
                            context: grpc.ServicerContext) -> csi_pb2.NodeUnpublishVolumeResponse:
        vid = check_volume_id(request.volume_id)
        target = self.config.check_path(request.target_path, "target_path")
        with self.inflight.hold(vid):
            vol = self.store.get_volume(vid)
            md = self.registry.mounted(vol.drive_id) if vol is not None else None
            self._teardown(vid, vol, md, target, "target_path", remove_made=True)
            if vol is not None and (target in vol.target_paths or target in vol.read_only_targets):
                self._update(vid, target_paths=tuple(t for t in vol.target_paths if t != target),
                             read_only_targets=tuple(t for t in vol.read_only_targets if t != target))
        return csi_pb2.NodeUnpublishVolumeResponse()

    # ------------------------------------------------------------------ expand / stats

    def _recorded_path(self, vol: Volume, path: str, what: str) -> str:
        norm = os.path.normpath(path) if os.path.isabs(path) else path
        if norm != vol.staging_path and norm not in vol.target_paths:
            raise NotFound(f"volume {vol.name} is not staged or published at {what} {path!r}",
                           "pass a staging or target path the volume was staged or published at")
        return norm

    @rpc
    def NodeExpandVolume(self, request: csi_pb2.NodeExpandVolumeRequest,
                         context: grpc.ServicerContext) -> csi_pb2.NodeExpandVolumeResponse:
        vid = check_volume_id(request.volume_id)
        check_path_string(request.volume_path, "volume_path")
        if request.HasField("volume_capability"):
            _Cap(request.volume_capability, f"volume {vid}")
        required = request.capacity_range.required_bytes if request.HasField("capacity_range") else 0
        limit = request.capacity_range.limit_bytes if request.HasField("capacity_range") else 0
        if required < 0 or limit < 0 or (limit and required > limit):
            raise InvalidArgument(f"volume {vid}: capacity range {required}..{limit} is invalid",
                                  "pass 0 <= required_bytes <= limit_bytes")
        with self.inflight.hold(vid):
            vol = self._volume(vid)
            self._recorded_path(vol, request.volume_path, "volume_path")
            vol = self._local(vol)
            if required > vol.size:
                raise OutOfRange(
                    f"volume {vid} has {vol.size} bytes reserved, less than the {required} requested",
                    "expand it through the controller first (ControllerExpandVolume reserves the space)",
                )
            if limit and vol.size > limit:
                raise OutOfRange(f"volume {vid} already has {vol.size} bytes, above limit_bytes {limit}",
                                 "volumes cannot shrink")
            md = self._drive(vol)
            if md.quota:
                vol_dir = _volumes.volume_path(md.mount, vol.name)
                _volumes.set_volume_quota(md.mount, vol_dir, vol.project_id, vol.size)
            else:
                self._no_quota(md)
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=vol.size)

    @rpc
    def NodeGetVolumeStats(self, request: csi_pb2.NodeGetVolumeStatsRequest,
                           context: grpc.ServicerContext) -> csi_pb2.NodeGetVolumeStatsResponse:
        vid = check_volume_id(request.volume_id)
        check_path_string(request.volume_path, "volume_path")
        vol = self._volume(vid)
        if vol.node != self.config.node_id:
            raise NotFound(f"volume {vid} is not on node {self.config.node_id} (it lives on {vol.node})",
                           f"ask the node server of {vol.node}")
        path = self._recorded_path(vol, request.volume_path, "volume_path")
        problems = []
        rec = self.registry.drive_record(vol.drive_id)
        md = self.registry.mounted(vol.drive_id)
        if rec is None or rec.status != DRIVE_READY or md is None:
            status = rec.status if rec is not None else "unknown"
            why = f": {rec.message}" if rec is not None and rec.message else ""
            problems.append(f"drive {vol.drive_id} is {status}{why}")
        usage: Sequence[csi_pb2.VolumeUsage] = ()
        if md is not None and self._shows(path, md, _volumes.volume_path(md.mount, vol.name)):
            try:
                u = _volumes.usage(Path(path), size=vol.size, quota=md.quota)
                usage = (
                    csi_pb2.VolumeUsage(unit=csi_pb2.VolumeUsage.BYTES, total=u.bytes_total,
                                        available=u.bytes_available, used=u.bytes_used),
                    csi_pb2.VolumeUsage(unit=csi_pb2.VolumeUsage.INODES, total=u.inodes_total,
                                        available=u.inodes_free, used=u.inodes_used),
                )
            except OSError as exc:
                problems.append(f"cannot read usage of {path}: {exc.strerror or exc}")
        elif not os.path.exists(path):
            problems.append(f"{path} does not exist")
        else:
            problems.append(f"{path} is not mounted (the volume is not bound there)")
        condition = csi_pb2.VolumeCondition(abnormal=bool(problems),
                                            message="; ".join(problems) if problems else "healthy")
        return csi_pb2.NodeGetVolumeStatsResponse(usage=list(usage), volume_condition=condition)

    # ------------------------------------------------------------------ info

    @rpc
    def NodeGetCapabilities(self, request: csi_pb2.NodeGetCapabilitiesRequest,
                            context: grpc.ServicerContext) -> csi_pb2.NodeGetCapabilitiesResponse:
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[
            csi_pb2.NodeServiceCapability(rpc=csi_pb2.NodeServiceCapability.RPC(type=t)) for t in CAPABILITIES
        ])

    @rpc
    def NodeGetInfo(self, request: csi_pb2.NodeGetInfoRequest,
                    context: grpc.ServicerContext) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(
            node_id=self.config.node_id,
            max_volumes_per_node=self.config.max_volumes_per_node,
            accessible_topology=csi_pb2.Topology(segments=dict(self.config.topology)),
        )

