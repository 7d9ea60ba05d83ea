"""The node's drive registry: which drives formatted by us are here, mounted where.

``sync()`` probes the host, keeps the XFS drives that carry our label and
metadata file (drive id = filesystem UUID), mounts each at
``state_dir/mnt/<drive_id>`` (noatime, prjquota when the kernel has it) and
records it in the store: Ready with its current kernel name and capacity; Lost
when a drive recorded for this node is absent; Error when it is present but
cannot be used (I/O error, mount failure, the same drive id on several devices).
It then removes the directories of volumes whose record no longer exists.

The CSI node server reads drive mounts from memory (``drive_mount``): no probe
on the hot path. ``start()`` re-syncs in a thread; a cheap fingerprint of
``/sys/class/block`` skips the full probe when no device came, went or changed size.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from ..core.errors import DirectPVError
from ..core.models import DRIVE_ERROR, DRIVE_LOST, DRIVE_READY, DRIVE_REMOVED, Device, Drive, Volume
from ..csi.inflight import InFlight
from ..device import mount as _mount
from ..store.base import Store
from . import volumes as _volumes
from .config import NodeConfig

log = logging.getLogger("directpv_csi.node")

# probe(errors) -> devices; ``errors`` receives {kernel name: why} for unreadable devices.
ProbeFn = Callable[[Dict[str, str]], Sequence[Device]]


def default_probe(errors: Dict[str, str]) -> Sequence[Device]:
    from ..device.probe import probe

    return probe(errors=errors)


def _now_text(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class MountedDrive:
    """A Ready drive of this node as the node server needs it on the hot path."""

    drive_id: str
    name: str
    mount: Path
    quota: bool  # mounted with prjquota
    st_dev: int  # device number of the mounted filesystem (for "is this path ours")


class DriveRegistry:
    def __init__(
        self,
        config: NodeConfig,
        store: Store,
        *,
        probe: Optional[ProbeFn] = None,
        inflight: Optional[InFlight] = None,
        sysfs_root: str = "/sys",
    ) -> None:
        self.config = config
        self.store = store
        self.inflight = inflight if inflight is not None else InFlight("volume")
        self._probe: ProbeFn = probe or default_probe
        self._sysfs_root = sysfs_root
        self._sync_lock = threading.Lock()
        self._lock = threading.Lock()
        self._mounted: Dict[str, MountedDrive] = {}
        self._records: Dict[str, Drive] = {}
        self._fingerprint: Optional[tuple[str, ...]] = None
        self._needs_full_sync = True
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # request_sync(): the loop runs a full sync now
        # Called with every full probe's devices (the kube node's DirectPVNode report); its errors
        # are its own: logged, never a failed sync.
        self.on_probe: Optional[Callable[[Sequence[Device]], object]] = None
        self.synced_once = False
        self.last_error = ""

    # --- read side (hot path) ------------------------------------------------------

    def drive_mount(self, drive_id: str) -> Optional[Path]:
        """Mount point of a Ready drive of this node, else None."""
        d = self._mounted.get(drive_id)
        return d.mount if d is not None else None

    def mounted(self, drive_id: str) -> Optional[MountedDrive]:
        return self._mounted.get(drive_id)

    def mounted_drives(self) -> list[MountedDrive]:
        with self._lock:
            return list(self._mounted.values())

    def drive_record(self, drive_id: str) -> Optional[Drive]:
        """The drive as this registry last recorded it (status, message), else the store's."""
        rec = self._records.get(drive_id)
        return rec if rec is not None else self.store.get_drive(drive_id)

    # --- sync --------------------------------------------------------------------

    def sync(self) -> list[Drive]:
        """Probe, mount, record; then collect released volume directories. Returns this
        node's drives as recorded."""
        with self._sync_lock:
            fingerprint = self._block_fingerprint()
            result = self._sync_drives()
            self._fingerprint = fingerprint
            self.gc()
            self.synced_once = True
            return result

    def _block_fingerprint(self) -> tuple[str, ...]:
        """Names, device numbers and sizes of every block device (cheap: sysfs only)."""
        root = os.path.join(self._sysfs_root, "class", "block")
        out = []
        try:
            names = sorted(os.listdir(root))
        except OSError:
            return ()
        for name in names:
            parts = [name]
            for attr in ("dev", "size", "ro"):
                try:
                    with open(os.path.join(root, name, attr), encoding="ascii") as f:
                        parts.append(f.read().strip())
                except OSError:
                    parts.append("?")
            out.append(":".join(parts))
        return tuple(out)

    def _ours(self, devices: Sequence[Device]) -> list[Device]:
        from ..device.format import find_our_drives

        found = find_our_drives(devices)
        if not self.config.allow_loop:
            found = [d for d in found if d.transport != "loop" and not d.name.startswith("loop")]
        found = [d for d in found if d.fs_uuid]
        if self.config.only_drives:
            wanted = set(self.config.only_drives)
            found = [d for d in found if d.fs_uuid.lower() in wanted]
        return found

    def _sync_drives(self) -> list[Drive]:
        now = time.time()
        errors: Dict[str, str] = {}
        devices = self._probe(errors)
        if self.on_probe is not None:
            try:
                self.on_probe(devices)
            except Exception:
                log.exception("device report hook failed (the sync goes on)")
        by_id: Dict[str, list[Device]] = {}
        for dev in self._ours(devices):
            by_id.setdefault(dev.fs_uuid.lower(), []).append(dev)
        recorded = {d.drive_id: d for d in self.store.list_drives(node=self.config.node_id)}
        mounted: Dict[str, MountedDrive] = {}
        out: Dict[str, Drive] = {}

        for drive_id, devs in sorted(by_id.items()):
            old = recorded.get(drive_id)
            if old is None:
                other = self.store.get_drive(drive_id)
                if other is not None and other.node != self.config.node_id:
                    log.warning(
                        "drive %s on %s is recorded for node %s, not %s: left alone (move its record first)",
                        drive_id, ",".join(d.name for d in devs), other.node, self.config.node_id,
                    )
                    continue
            if old is not None and old.status == DRIVE_REMOVED:
                out[drive_id] = old
                continue
            if len(devs) > 1:
                names = ", ".join(sorted(d.name for d in devs))
                out[drive_id] = self._record(old, drive_id, Drive(
                    drive_id=drive_id, node=self.config.node_id, name=devs[0].name,
                    total=old.total if old else 0, status=DRIVE_ERROR,
                    message=f"multiple matches: devices {names} all carry drive id {drive_id}; none is mounted",
                    topology=dict(self.config.topology),
                ))
                log.error("%s", out[drive_id].message)
                continue
            drive, md = self._attach(devs[0], drive_id, old)
            out[drive_id] = self._record(old, drive_id, drive)
            if md is not None:
                mounted[drive_id] = md

        for drive_id, old in recorded.items():
            if drive_id in out or old.status == DRIVE_REMOVED:
                if drive_id not in out:
                    out[drive_id] = old
                continue
            unreadable = old.name and old.name in errors
            if unreadable:
                why = errors[old.name]
                lost = replace(old, status=DRIVE_ERROR,
                               message=f"I/O error: cannot read {old.name}: {why}; check the device (dmesg)")
            elif old.status == DRIVE_LOST:
                out[drive_id] = old
                continue
            else:
                last = f"; last seen as {old.name}" if old.name else ""
                since = _now_text(now)
                lost = replace(old, status=DRIVE_LOST, name="",
                               message=f"device not found since {since}{last}; reattach it or remove the drive")
                log.warning("drive %s lost (%s)", drive_id, lost.message)
            self._release_stale_mount(drive_id)
            out[drive_id] = self._record(old, drive_id, lost)

        with self._lock:
            self._mounted = mounted
            self._records = dict(out)
        return sorted(out.values(), key=lambda d: d.drive_id)

    def _attach(self, dev: Device, drive_id: str, old: Optional[Drive]) -> tuple[Drive, Optional[MountedDrive]]:
        from ..device.format import read_metadata
        from ..device.superblock import read_xfs_superblock

        target = self.config.drive_mount_dir(drive_id)
        base = Drive(
            drive_id=drive_id, node=self.config.node_id, name=dev.name, total=old.total if old else 0,
            status=DRIVE_READY, make=dev.make, mountpoint=str(target), topology=dict(self.config.topology),
        )
        try:
            sb = read_xfs_superblock(dev.dev_path)
            if sb.uuid.lower() != drive_id:
                raise DirectPVError(f"superblock of {dev.name} says uuid {sb.uuid}, the probe said {drive_id}",
                                    "the device changed while probing; the next sync retries")
            res = _mount.mount_drive(dev, str(target), quota=True)
            meta = read_metadata(str(target))
            if meta is None:
                raise DirectPVError(f"{dev.name} carries our label but no metadata file (format incomplete?)",
                                    "format the drive again with force to finish it")
            meta_id = str(meta.get("drive_id", drive_id)).lower()
            if meta_id != drive_id:
                raise DirectPVError(f"metadata of {dev.name} names drive {meta_id}, its filesystem is {drive_id}",
                                    "the drive was cloned; format one of the copies again")
            st = os.stat(target)
            os.statvfs(target)  # an I/O error shows here first
        except (DirectPVError, OSError) as exc:
            kind = "I/O error" if isinstance(exc, OSError) else "cannot use drive"
            message = f"{kind} on {dev.name}: {exc}"
            log.error("drive %s: %s", drive_id, message)
            return replace(base, status=DRIVE_ERROR, message=message), None
        if not res.quota_enabled:
            self._warn_no_quota(res.message or "mounted without prjquota")
        md = MountedDrive(drive_id=drive_id, name=dev.name, mount=target, quota=res.quota_enabled, st_dev=st.st_dev)
        return replace(base, total=sb.capacity), md

    _quota_warned = False

    def _warn_no_quota(self, message: str) -> None:
        if not DriveRegistry._quota_warned:
            DriveRegistry._quota_warned = True
            log.warning("%s", message)

    def _record(self, old: Optional[Drive], drive_id: str, new: Drive) -> Drive:
        """put_drive when a node-owned field changed (no write on a quiet sync)."""
        if old is not None and (
            old.name, old.total, old.status, old.make, old.mountpoint, old.message, old.topology
        ) == (new.name, new.total, new.status, new.make, new.mountpoint, new.message, new.topology):
            return old
        try:
            return self.store.put_drive(new)
        except DirectPVError as exc:
            log.error("cannot record drive %s: %s", drive_id, exc)
            return new

    def _release_stale_mount(self, drive_id: str) -> None:
        """Lazily unmount our mount of a drive whose device is gone, so it can come back."""
        target = str(self.config.drive_mount_dir(drive_id))
        try:
            if os.path.isdir(target) and _mount.is_mountpoint(target):
                _mount.unmount(target, lazy=True)
        except (DirectPVError, OSError) as exc:
            log.warning("cannot unmount %s of lost drive %s: %s", target, drive_id, exc)

    # --- garbage collection -------------------------------------------------------

    def release_volume(self, volume: Volume, caller_holds: bool = False) -> bool:
        """Remove a deleted volume's directory now (the controller's DeleteVolume hook in
        standalone mode). False when its drive is not mounted here or a node call holds
        the volume; the periodic ``gc`` then removes it later. ``caller_holds``: the
        caller already holds the volume in this registry's in-flight table (DeleteVolume
        with the shared table): ``ControllerServicer(store, on_delete=lambda v:
        registry.release_volume(v, caller_holds=True))``."""
        md = self._mounted.get(volume.drive_id)
        if md is None or volume.node != self.config.node_id:
            return False
        if not caller_holds and not self.inflight.try_acquire(volume.name):
            return False
        try:
            current = self.store.read_volume(volume.name)  # data is removed only for a confirmed miss
            if current is not None and current.drive_id == md.drive_id:
                return False  # recreated meanwhile: it is live again
            if not _volumes.volume_path(md.mount, volume.name).is_dir():
                return False
            pids = {v.project_id for v in self.store.list_volumes(drive_id=md.drive_id)}
            _volumes.release_volume_dir(md.mount, volume.name, md.quota, pids)
            log.info("released volume directory %s on drive %s", volume.name, md.drive_id)
            return True
        except (DirectPVError, OSError) as exc:
            log.warning("cannot release volume directory %s on drive %s (gc retries): %s",
                        volume.name, md.drive_id, exc)
            return False
        finally:
            if not caller_holds:
                self.inflight.release(volume.name)

    def gc(self) -> list[str]:
        """Remove the directories of volumes released in the store (DeleteVolume). Returns
        ``drive_id/name`` of each directory removed."""
        removed = []
        for md in self.mounted_drives():
            try:
                names = _volumes.list_volume_dirs(md.mount)
                _volumes.purge_trash(md.mount)
            except OSError as exc:
                log.warning("cannot list volumes on drive %s: %s", md.drive_id, exc)
                continue
            if not names:
                continue
            live = self.store.list_volumes(drive_id=md.drive_id)
            live_names = {v.name for v in live}
            for name in names:
                if name in live_names:
                    continue
                if not self.inflight.try_acquire(name):
                    continue  # a node call is working on it; next round
                try:
                    vol = self.store.read_volume(name)  # data is removed only for a confirmed miss
                    if vol is not None and vol.drive_id == md.drive_id:
                        continue
                    pids = {v.project_id for v in self.store.list_volumes(drive_id=md.drive_id)}
                    _volumes.release_volume_dir(md.mount, name, md.quota, pids)
                    removed.append(f"{md.drive_id}/{name}")
                    log.info("released volume directory %s on drive %s", name, md.drive_id)
                except (DirectPVError, OSError) as exc:
                    log.warning("cannot release volume directory %s on drive %s: %s", name, md.drive_id, exc)
                finally:
                    self.inflight.release(name)
        return removed

    # --- background loop ----------------------------------------------------------

    def start(self, interval_s: float) -> None:
        """Sync now (in the caller) and then every ``interval_s`` seconds in a thread;
        the full probe runs only when the block devices changed or the last sync failed."""
        if self._thread is not None:
            return
        self._safe_sync(full=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="drive-registry", daemon=True)
        self._thread.start()

    FULL_SYNC_EVERY = 6  # rounds: also catch what the fingerprint cannot see (a drive reformatted in place)

    def request_sync(self) -> None:
        """Run a full sync (probe included) in the background loop now, not at the next tick."""
        self._needs_full_sync = True
        self._wake.set()

    def _loop(self, interval_s: float) -> None:
        rounds = 0
        while True:
            self._wake.wait(interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            rounds += 1
            self._safe_sync(full=rounds % self.FULL_SYNC_EVERY == 0)

    def _safe_sync(self, full: bool) -> None:
        try:
            if full or self._needs_full_sync or self._block_fingerprint() != self._fingerprint:
                drives = self.sync()
                self._needs_full_sync = any(d.status == DRIVE_ERROR for d in drives)
            else:
                with self._sync_lock:
                    self.gc()
            self.last_error = ""
        except Exception as exc:  # the loop must survive anything; the next round retries
            self.last_error = str(exc)
            self._needs_full_sync = True
            log.exception("drive sync failed")

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout=30)
