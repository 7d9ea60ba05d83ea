"""Orphans: volume directories on a drive the store knows, with neither a record nor a tombstone.

The one home of what an orphan is (the node's registry reports them with :func:`find`) and of
the operator's explicit removal (:func:`clean`: ``directpv-csi client orphans``). Removing is
never done here: ``clean`` records a tombstone for each chosen orphan in the store, and the
node that holds the drive then moves it to the trash like any deleted volume. ``check_mode``
lists what would go and records nothing.

:func:`restore` is the other way out for an orphan that has its metadata file (its record was
lost while its drive stayed known, e.g. a node that crashed half-way through restoring a lost
store, or a volume object deleted by hand): it records the volume again from that file, exactly
as registering an unknown drive does, never over-writing a record.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from ..core.errors import DirectPVError, FailedPrecondition, InvalidArgument
from ..core.models import Tombstone
from ..store.base import Store
from . import volumes as _volumes


@dataclass(frozen=True)
class Orphan:
    drive_id: str
    node: str
    name: str
    path: str
    has_directory: bool
    has_metadata: bool  # .directpv/volumes/<name>.json exists (its record could be restored)
    uid: str = ""  # from the metadata file
    project_id: int = 0
    files: int = 0  # counted read-only (clean's preview)
    bytes_used: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def find(store: Store, drive_id: str, mount: Path, node: str = "", measure: bool = False,
         trusted: Iterable[str] = ()) -> List[Orphan]:
    """The orphans on one mounted drive: volume directories (or metadata files) whose name has no
    record on this drive and no tombstone (the miss confirmed with the store of record), or whose
    metadata names another incarnation (uid) than the volume recorded under that name.
    ``measure``: count their files and bytes (a walk; the registry's periodic check skips it);
    ``trusted``: live names whose metadata file is known to carry the live uid (not read again)."""
    names = set(_volumes.list_volume_dirs(mount))
    metas = set(_volumes.list_volume_metas(mount))
    live = {v.name: v.uid for v in store.list_volumes(drive_id=drive_id)}
    tombstoned: Dict[str, set[str]] = {}
    for t in store.list_tombstones(drive_id):
        tombstoned.setdefault(t.name, set()).add(t.uid)
    out: List[Orphan] = []
    skip = set(trusted) & set(live)
    for name in sorted((names | metas) - skip):
        uid, pid = "", 0
        if name in metas:
            try:
                meta = _volumes.read_volume_meta(mount, name) or {}
                uid, pid = str(meta.get("uid", "")), int(meta.get("project_id") or 0)
            except (DirectPVError, TypeError, ValueError):
                pass
        marks = tombstoned.get(name, set())
        if marks and (uid in marks or "" in marks or not uid):
            continue  # a tombstone covers it: its node consumes it
        if name in live and (not uid or not live[name] or uid == live[name]):
            continue  # the live volume's directory
        if name not in live:
            rec = store.read_volume(name)  # a cache may lag another writer: confirm the miss
            if rec is not None and rec.drive_id == drive_id:
                continue
        # no record, or a directory left by an earlier incarnation of a live name (another uid)
        files, used = _measure(str(mount / name)) if measure and name in names else (0, 0)
        out.append(Orphan(drive_id=drive_id, node=node, name=name, path=str(mount / name),
                          has_directory=name in names, has_metadata=name in metas, uid=uid, project_id=pid,
                          files=files, bytes_used=used))
    return out


def _measure(top: str) -> tuple[int, int]:
    """(regular files, allocated bytes) under ``top``, read-only, not crossing filesystems."""
    root_dev = os.lstat(top).st_dev
    files, used = 0, 0
    for root, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(root, d)).st_dev == root_dev]
        for n in names:
            try:
                st = os.lstat(os.path.join(root, n))
            except OSError:
                continue
            files += 1
            used += st.st_blocks * 512
    return files, used


def node_mounts(store: Store, state_dir: Path, node_id: Optional[str]) -> List[tuple[str, str, Path]]:
    """(drive id, node, mount) of the drives (of ``node_id``; None: any) that are mounted where a
    registry with this state dir mounts them (``state_dir/mnt/<id>``)."""
    out = []
    for d in sorted(store.list_drives(node=node_id), key=lambda d: d.drive_id):
        mp = Path(state_dir) / "mnt" / d.drive_id
        if os.path.ismount(mp):
            out.append((d.drive_id, d.node, mp))
    return out


def list_orphans(store: Store, state_dir: Path, node_id: Optional[str], measure: bool = True) -> List[Orphan]:
    found: List[Orphan] = []
    for drive_id, node, mp in node_mounts(store, state_dir, node_id):
        found += find(store, drive_id, mp, node=node, measure=measure)
    return found


def clean(store: Store, state_dir: Path, node_id: Optional[str], names: Sequence[str] = (), everything: bool = False,
          drive_id: Optional[str] = None, check_mode: bool = False) -> List[Orphan]:
    """Record tombstones for the chosen orphans of this node (``names``, or ``everything``;
    ``drive_id`` narrows to one drive). Returns the orphans chosen (in check mode: that would be
    chosen; nothing is recorded). A name that is a live volume -> FailedPrecondition; a name that
    is not there (already removed) or already tombstoned is no change (idempotent)."""
    if not names and not everything:
        raise InvalidArgument("no orphan named", "name the orphans to remove, or choose all of them")
    for n in names:
        _volumes.check_volume_name(n)
    found = [o for o in list_orphans(store, state_dir, node_id) if drive_id is None or o.drive_id == drive_id]
    if everything:
        chosen = found
    else:
        wanted = set(names)
        chosen = [o for o in found if o.name in wanted]
        for n in sorted(wanted - {o.name for o in chosen}):
            rec = store.read_volume(n)
            if rec is not None:
                raise FailedPrecondition(f"{n} is not an orphan: it is a volume recorded on drive {rec.drive_id}",
                                         "delete it with DeleteVolume (delete its PVC); nothing was recorded")
    if check_mode:
        return chosen
    for o in chosen:
        store.add_tombstone(Tombstone(drive_id=o.drive_id, node=o.node, name=o.name, uid=o.uid,
                                      project_id=o.project_id))
    return chosen


def restore(store: Store, state_dir: Path, node_id: Optional[str], names: Sequence[str] = (),
            everything: bool = False, check_mode: bool = False) -> List[Orphan]:
    """Record again, from their metadata files, the chosen orphans (``names`` or ``everything``)
    that have one. Returns the orphans restored (would be, in check mode). An orphan without a
    metadata file cannot be restored (FailedPrecondition, nothing recorded); restore_volume's
    refusals (a name recorded elsewhere, a project id taken) are raised as they come."""
    if not names and not everything:
        raise InvalidArgument("no orphan named", "name the orphans to restore, or choose all of them")
    found = list_orphans(store, state_dir, node_id, measure=False)
    chosen = found if everything else [o for o in found if o.name in set(names)]
    chosen = [o for o in chosen if o.has_metadata or not everything]
    for o in chosen:
        if not o.has_metadata:
            raise FailedPrecondition(f"orphan {o.name} on drive {o.drive_id} has no metadata file to restore from",
                                     "it was made before volume metadata existed; copy its data into a new volume")
    if check_mode:
        return chosen
    mounts = {d: mp for d, _node, mp in node_mounts(store, state_dir, node_id)}
    for o in chosen:
        meta = _volumes.read_volume_meta(mounts[o.drive_id], o.name) or {}
        store.restore_volume(_volumes.volume_of_meta(meta, o.drive_id, o.node))
    return chosen
