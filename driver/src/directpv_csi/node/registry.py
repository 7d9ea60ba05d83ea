"""The node's drive registry: which drives formatted by us are here, mounted where.

``sync()`` probes the host, keeps the XFS drives that carry our label and
metadata file (drive id = filesystem UUID), mounts each at
``state_dir/mnt/<drive_id>`` (noatime, prjquota when the kernel has it) and
records it in the store: Ready with its current kernel name and capacity; Lost
when a drive recorded for this node is absent; Error when it is present but
cannot be used (I/O error, mount failure, the same drive id on several devices).

The store decides every deletion: after each sync the node moves to the drive's
trash (``.deleted/``) only the directories of volumes the store holds a tombstone
for (DeleteVolume), clears the tombstone, and empties the trash. A volume
directory with neither a record nor a tombstone is an **orphan**: kept, reported
(``orphans()``, the log, the store's Event, metrics), removed only when an operator
records a tombstone for it (``directpv-csi client orphans --clean``).

A drive the store does not know at all (state dir deleted, CRDs re-created, a drive
brought from elsewhere) gets its volumes' records restored from their on-drive
metadata files (node/volumes.py) when it is registered; an existing record is never
over-written (conflicts are logged and the directory kept).

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

from ..concurrency.inflight import InFlight
from ..core.errors import DirectPVError
from ..core.models import DRIVE_ERROR, DRIVE_LOST, DRIVE_READY, DRIVE_REMOVED, Device, Drive, Tombstone, Volume
from ..device import mount as _mount
from ..store.base import Store
from . import orphans as _orphans
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
        on_probe: Optional[Callable[[Sequence[Device]], object]] = None,
        on_orphans: Optional[Callable[[Dict[str, tuple[str, ...]]], object]] = None,
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
        self.on_probe = on_probe
        # Called with ``orphans()`` whenever the orphans found change (the kube node's DirectPVNode report).
        self.on_orphans = on_orphans
        self.synced_once = False
        self.last_error = ""
        self._orphans: Dict[str, tuple[str, ...]] = {}  # drive id -> orphan names (last gc)
        self._meta_checked: Dict[str, Dict[str, int]] = {}  # drive id -> {volume: generation whose file is right}
        self.restored: list[str] = []  # drive_id/name of every volume this process restored
        self.restore_conflicts: list[str] = []

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

        unknown: list[str] = []
        for drive_id, devs in sorted(by_id.items()):
            old = recorded.get(drive_id)
            if old is None:
                other = self.store.get_drive(drive_id)
                if other is None:
                    unknown.append(drive_id)
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
        for drive_id in unknown:
            md = mounted.get(drive_id)
            if md is not None and self.store.get_drive(drive_id) is not None:
                self._restore(md)
        return sorted(out.values(), key=lambda d: d.drive_id)

    def _restore(self, md: MountedDrive) -> None:
        """Record the volumes a newly registered drive holds, from their metadata files. Never
        over-writes a record; a conflict is logged and the directory kept (an orphan)."""
        for name in _volumes.list_volume_metas(md.mount):
            try:
                meta = _volumes.read_volume_meta(md.mount, name)
                if meta is None:
                    continue
                vol = _volumes.volume_of_meta(meta, md.drive_id, self.config.node_id)
                if vol.name != name:
                    raise DirectPVError(f"metadata file {name}.json names volume {vol.name}",
                                        "look at the file; the directory is kept")
                self.store.restore_volume(vol)
                self.restored.append(f"{md.drive_id}/{name}")
                log.warning("restored volume %s (%d bytes, project id %d) on drive %s from its on-drive metadata",
                            name, vol.size, vol.project_id, md.drive_id)
            except DirectPVError as exc:
                self.restore_conflicts.append(f"{md.drive_id}/{name}: {exc}")
                log.error("volume %s on drive %s not restored (its data is kept): %s", name, md.drive_id, exc)

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
                raise DirectPVError(f"{dev.name} carries our label but no .directpv/meta.json (an interrupted "
                                    "format, or a drive made by another tool)",
                                    "nothing on it is touched; run the drive module on it without force: it "
                                    "finishes an interrupted format of ours and refuses anyone else's drive")
            meta_id = str(meta.get("drive_id", drive_id)).lower()
            if meta_id != drive_id:
                raise DirectPVError(f"metadata of {dev.name} names drive {meta_id}, its filesystem is {drive_id}",
                                    "the drive was cloned: attach only one copy to this node (nothing on "
                                    "either copy is touched)")
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

    # --- deletion (tombstones only) and orphans ------------------------------------

    def release_volume(self, volume: Volume, caller_holds: bool = False) -> bool:
        """Move a deleted volume's directory to the trash now (the controller's DeleteVolume hook
        in standalone mode), consuming the tombstone DeleteVolume left. False when its drive is
        not mounted here, a node call holds the volume or there is no tombstone; the periodic
        ``gc`` then does it later. ``caller_holds``: the caller already holds the volume in this
        registry's in-flight table (DeleteVolume with the shared table): ``ControllerServicer(store,
        on_delete=lambda v: registry.release_volume(v, caller_holds=True))``."""
        md = self._mounted.get(volume.drive_id)
        if md is None or volume.node != self.config.node_id:
            return False
        tomb = next((t for t in self.store.list_tombstones(md.drive_id)
                     if t.name == volume.name and t.uid == volume.uid), None)
        if tomb is None:
            return False
        if not caller_holds and not self.inflight.try_acquire(volume.name):
            return False
        try:
            moved = self._consume(md, tomb)
            _volumes.purge_trash(md.mount)
            return moved
        except (DirectPVError, OSError) as exc:
            log.warning("cannot move volume directory %s on drive %s to the trash (gc retries): %s",
                        volume.name, md.drive_id, exc)
            return False
        finally:
            if not caller_holds:
                self.inflight.release(volume.name)

    def _consume(self, md: MountedDrive, tomb: Tombstone) -> bool:
        """Act on one tombstone: move the directory of the tombstoned incarnation (and its metadata
        file) to the trash, then clear the tombstone. A directory that belongs to another
        incarnation (another uid in its metadata), or to the volume recorded live under that name
        now, is left alone. True when something was moved to the trash."""
        path = _volumes.volume_path(md.mount, tomb.name)
        meta = _volumes.read_volume_meta(md.mount, tomb.name)
        dir_uid = str(meta.get("uid", "")) if meta is not None else ""
        live = self.store.read_volume(tomb.name)  # a confirmed read: never trash a live volume's data
        ours = True
        if live is not None and live.drive_id == md.drive_id and (not dir_uid or dir_uid == live.uid):
            ours = False  # the name lives again on this drive and the directory is (or may be) the live one's
        elif dir_uid and tomb.uid and dir_uid != tomb.uid:
            ours = False  # another incarnation's directory: not this tombstone's to remove
        moved = False
        if ours and (path.is_dir() or meta is not None):
            pids = {v.project_id for v in self.store.list_volumes(drive_id=md.drive_id)}
            rel = _volumes.move_to_trash(md.mount, tomb.name, tomb.uid, md.quota, pids)
            moved = bool(rel.moved)
            if moved:
                log.info("moved volume directory %s (uid %s) on drive %s to the trash (deleted in the store)",
                         tomb.name, tomb.uid or "-", md.drive_id)
        self.store.clear_tombstone(md.drive_id, tomb.name, tomb.uid)
        return moved

    def gc(self) -> list[str]:
        """Consume this node's tombstones (move each deleted volume's directory to its drive's
        trash, clear the tombstone), empty the trash, write missing metadata files of live
        volumes, and report orphans. Never removes anything the store did not mark. Returns
        ``drive_id/name`` of each directory moved to the trash."""
        removed = []
        for md in self.mounted_drives():
            try:
                _volumes.purge_trash(md.mount)
                tombs = self.store.list_tombstones(md.drive_id)
            except (DirectPVError, OSError) as exc:
                log.warning("cannot empty the trash of drive %s: %s", md.drive_id, exc)
                continue
            consumed = False
            for tomb in tombs:
                if not self.inflight.try_acquire(tomb.name):
                    continue  # a node call is working on that name; next round
                try:
                    if self._consume(md, tomb):
                        removed.append(f"{md.drive_id}/{tomb.name}")
                    consumed = True
                except (DirectPVError, OSError) as exc:
                    log.warning("cannot move volume directory %s on drive %s to the trash: %s",
                                tomb.name, md.drive_id, exc)
                finally:
                    self.inflight.release(tomb.name)
            try:
                if consumed:
                    _volumes.purge_trash(md.mount)
                self._upkeep(md)
            except (DirectPVError, OSError) as exc:
                log.warning("cannot check the volumes of drive %s: %s", md.drive_id, exc)
        return removed

    def _upkeep(self, md: MountedDrive) -> None:
        """Metadata files for live volumes whose directory exists (volumes made before the files
        existed, sizes grown since); orphans found and reported when the set changes."""
        names = set(_volumes.list_volume_dirs(md.mount))
        live = {v.name: v for v in self.store.list_volumes(drive_id=md.drive_id)}
        checked = self._meta_checked.setdefault(md.drive_id, {})
        for name in sorted(names & set(live)):
            vol = live[name]
            if not vol.uid or checked.get(name) == vol.generation or not self.inflight.try_acquire(name):
                continue  # verified at this generation already (no file read per volume per round)
            try:
                meta = _volumes.read_volume_meta(md.mount, name)
                if meta is not None and str(meta.get("uid", "")) != vol.uid:
                    continue  # an earlier incarnation's directory: never re-labelled (an orphan, reported)
                if meta is None or _volumes.volume_meta(vol, meta) != meta:
                    _volumes.write_volume_meta(md.mount, vol, meta)
                checked[name] = vol.generation
            except (DirectPVError, OSError) as exc:
                log.warning("cannot write the metadata of volume %s on drive %s: %s", name, md.drive_id, exc)
            finally:
                self.inflight.release(name)
        for name in set(checked) - set(live):
            del checked[name]
        trusted = {n for n, g in checked.items() if n in live and live[n].generation == g}
        found = tuple(o.name for o in _orphans.find(self.store, md.drive_id, md.mount, node=self.config.node_id,
                                                    trusted=trusted))
        if self._orphans.get(md.drive_id, ()) != found:
            self._orphans[md.drive_id] = found
            if found:
                log.warning("drive %s holds %d orphan volume director%s (no record, no tombstone; kept): %s",
                            md.drive_id, len(found), "y" if len(found) == 1 else "ies", ", ".join(found))
                try:
                    self.store.report_orphans(md.drive_id, found)
                except DirectPVError as exc:
                    log.warning("cannot report the orphans of drive %s: %s", md.drive_id, exc)
            if self.on_orphans is not None:
                try:
                    self.on_orphans(self.orphans())
                except Exception:
                    log.exception("orphan report hook failed (the sync goes on)")

    def orphans(self) -> Dict[str, tuple[str, ...]]:
        """Orphan volume directories per mounted drive, as the last gc found them."""
        mounted = {md.drive_id for md in self.mounted_drives()}
        return {d: names for d, names in self._orphans.items() if names and d in mounted}

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
