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

import errno
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Optional, Sequence

import grpc

from ..core.errors import (
    AlreadyExists,
    DirectPVError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unsupported,
)
from ..core.models import DRIVE_READY, VOLUME_PENDING, VOLUME_READY, Volume
from ..core.validation import PREFIX, capability_problem, check_required
from ..device import mount as _mount
from ..node import volumes as _volumes
from ..node.config import NodeConfig
from ..node.registry import DriveRegistry, MountedDrive
from ..store.base import Store
from .errors import rpc
from .inflight import InFlight
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
        mode = csi_pb2.VolumeCapability.AccessMode.Mode.Name(cap.access_mode.mode) if cap.HasField(
            "access_mode") else ""
        problem = capability_problem((kind, fs_type, mode))
        if problem:
            raise InvalidArgument(f"{what}: {problem[0]}", problem[1])
        flags = tuple(cap.mount.mount_flags)
        bits = 0
        for flag in flags:
            if flag not in _MOUNT_FLAGS:
                raise InvalidArgument(
                    f"{what}: mount flag {flag!r} is not supported for a bind-mounted volume directory",
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

    @staticmethod
    def _unmount(path: str) -> None:
        """Unmount everything stacked at ``path``; lazily when busy or the drive is gone."""
        for _ in range(8):
            try:
                if not _mount.unmount(path):
                    return
            except DirectPVError:
                _mount.unmount(path, lazy=True)

    def _path_is_ours(self, path: str) -> bool:
        """True when ``path`` is a mount point whose filesystem is one of our mounted drives."""
        try:
            if not _mount.is_mountpoint(path):
                return False
            dev = os.stat(path).st_dev
        except (OSError, DirectPVError):
            return False
        return any(md.st_dev == dev for md in self.registry.mounted_drives())

    # ------------------------------------------------------------------ stage

    @rpc
    def NodeStageVolume(self, request: csi_pb2.NodeStageVolumeRequest,
                        context: grpc.ServicerContext) -> csi_pb2.NodeStageVolumeResponse:
        vid = check_required(request.volume_id, "volume_id")
        staging = self.config.check_path(request.staging_target_path, "staging_target_path")
        cap = _capability(request, f"volume {vid}")
        with self.inflight.hold(vid):
            vol = self._local(self._volume(vid))
            md = self._drive(vol)
            vol_dir = _volumes.volume_path(md.mount, vol.name)
            staged_with = vol.labels.get(LABEL_STAGED_WITH, "")
            if vol.staging_path and vol.staging_path != staging and self._shows(vol.staging_path, md, vol_dir):
                raise FailedPrecondition(
                    f"volume {vid} is already staged at {vol.staging_path}, not {staging}",
                    "unstage it there first",
                )
            if self._shows(staging, md, vol_dir):
                if staged_with and staged_with != cap.digest:
                    raise AlreadyExists(
                        f"volume {vid} is already staged at {staging} with another volume capability",
                        "unstage it first, or stage it with the capability it was staged with",
                    )
                if vol.staging_path != staging or vol.status != VOLUME_READY or staged_with != cap.digest:
                    self._update(vid, status=VOLUME_READY, staging_path=staging,
                                 labels={**vol.labels, LABEL_STAGED_WITH: cap.digest})
                return csi_pb2.NodeStageVolumeResponse()
            if not os.path.isdir(staging):
                raise FailedPrecondition(
                    f"staging_target_path {staging} does not exist or is not a directory",
                    "the container orchestrator creates the staging directory before NodeStageVolume",
                )
            if not md.quota:
                self._no_quota(md)
            _volumes.ensure_volume_dir(md.mount, vol, with_quota=md.quota)
            _mount.bind(str(vol_dir), staging)
            try:
                self._update(vid, status=VOLUME_READY, staging_path=staging,
                             labels={**vol.labels, LABEL_STAGED_WITH: cap.digest})
            except BaseException:
                _mount.unmount(staging)  # not recorded: do not leave it mounted
                raise
        return csi_pb2.NodeStageVolumeResponse()

    @rpc
    def NodeUnstageVolume(self, request: csi_pb2.NodeUnstageVolumeRequest,
                          context: grpc.ServicerContext) -> csi_pb2.NodeUnstageVolumeResponse:
        vid = check_required(request.volume_id, "volume_id")
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
                if self._shows(staging, md, vol_dir):
                    self._unmount(staging)
            elif vol is not None:
                if vol.staging_path == staging:
                    self._unmount(staging)  # drive not mounted here (lost): release the stale bind anyway
            elif self._path_is_ours(staging):
                self._unmount(staging)  # record gone: release a bind of one of our drives
            if vol is not None and vol.staging_path == staging:
                labels = {k: v for k, v in vol.labels.items() if k != LABEL_STAGED_WITH}
                self._update(vid, status=VOLUME_PENDING, staging_path="", labels=labels)
        return csi_pb2.NodeUnstageVolumeResponse()

    # ------------------------------------------------------------------ publish

    @rpc
    def NodePublishVolume(self, request: csi_pb2.NodePublishVolumeRequest,
                          context: grpc.ServicerContext) -> csi_pb2.NodePublishVolumeResponse:
        vid = check_required(request.volume_id, "volume_id")
        target = self.config.check_path(request.target_path, "target_path")
        cap = _capability(request, f"volume {vid}")
        if not request.staging_target_path:
            raise FailedPrecondition(f"volume {vid}: staging_target_path is not set",
                                     "this driver has STAGE_UNSTAGE_VOLUME: stage the volume first")
        staging = self.config.check_path(request.staging_target_path, "staging_target_path")
        read_only = request.readonly or cap.read_only
        with self.inflight.hold(vid):
            vol = self._local(self._volume(vid))
            md = self._drive(vol)
            vol_dir = _volumes.volume_path(md.mount, vol.name)
            if vol.staging_path != staging or not self._shows(staging, md, vol_dir):
                raise FailedPrecondition(f"volume {vid} is not staged at {staging}",
                                         "call NodeStageVolume with this staging_target_path first")
            if self._shows(target, md, vol_dir):
                if self._read_only(target) != read_only:
                    mode = "read-only" if not read_only else "read-write"
                    raise AlreadyExists(f"volume {vid} is already published {mode} at {target}",
                                        "unpublish it first, or publish it with the same readonly flag")
                self._record_target(vol, target, read_only)
                return csi_pb2.NodePublishVolumeResponse()
            if cap.mode == "SINGLE_NODE_SINGLE_WRITER":
                others = [t for t in vol.target_paths if t != target and self._shows(t, md, vol_dir)]
                if others:
                    raise FailedPrecondition(
                        f"volume {vid} (SINGLE_NODE_SINGLE_WRITER) is already published at {', '.join(others)}",
                        "a ReadWriteOncePod volume is published at one target path at a time",
                    )
            try:
                os.mkdir(target, 0o750)
            except FileExistsError:
                if not os.path.isdir(target):
                    raise FailedPrecondition(f"target_path {target} exists and is not a directory",
                                             "remove it; the driver creates the target directory") from None
            except FileNotFoundError:
                raise FailedPrecondition(
                    f"the parent directory of target_path {target} does not exist",
                    "the container orchestrator creates the parent of the target path",
                ) from None
            _mount.bind(staging, target, read_only=read_only)
            try:
                if cap.extra_bits:
                    flags = _mount.MS_BIND | _mount.MS_REMOUNT | cap.extra_bits | (
                        _mount.MS_RDONLY if read_only else 0)
                    _mount.mount("", target, None, flags=flags)
                self._record_target(vol, target, read_only)
            except BaseException:
                _mount.unmount(target)
                raise
        return csi_pb2.NodePublishVolumeResponse()

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
        vid = check_required(request.volume_id, "volume_id")
        target = self.config.check_path(request.target_path, "target_path")
        with self.inflight.hold(vid):
            vol = self.store.get_volume(vid)
            md = self.registry.mounted(vol.drive_id) if vol is not None else None
            if vol is not None and md is not None:
                ours = self._shows(target, md, _volumes.volume_path(md.mount, vol.name))
            elif vol is not None:
                ours = target in vol.target_paths  # drive lost: the path may not even stat
            else:
                ours = self._path_is_ours(target)  # record gone: a bind of one of our drives
            if ours:
                self._unmount(target)
            self._remove_target(target)
            if vol is not None and (target in vol.target_paths or target in vol.read_only_targets):
                self._update(vid, target_paths=tuple(t for t in vol.target_paths if t != target),
                             read_only_targets=tuple(t for t in vol.read_only_targets if t != target))
        return csi_pb2.NodeUnpublishVolumeResponse()

    @staticmethod
    def _remove_target(target: str) -> None:
        """The spec: the SP deletes the directory it created at the target path."""
        try:
            if _mount.is_mountpoint(target):
                log.warning("target path %s is still a mount point of something else: left alone", target)
                return
            os.rmdir(target)
        except FileNotFoundError:
            pass
        except NotFound:
            pass
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                log.warning("target path %s is not empty after unmount: left alone", target)
            elif exc.errno == errno.ENOTDIR:
                os.unlink(target)
            else:
                raise

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
        vid = check_required(request.volume_id, "volume_id")
        check_required(request.volume_path, "volume_path")
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
        vid = check_required(request.volume_id, "volume_id")
        check_required(request.volume_path, "volume_path")
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

