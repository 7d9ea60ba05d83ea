"""The store port: what the controller and node servers need to record.

Two adapters implement it and pass one contract suite (driver/tests/store/):
``embedded`` (SQLite, standalone mode) and ``kube`` (CRDs in directpv.dev).

Concurrency model: optimistic. Every record carries ``generation``; a write
that names a stale generation raises ``Conflict`` and the caller re-reads and
retries (bounded). ``reserve_volume`` is the one atomic step that must never
over-commit a drive: it checks, inside the adapter's transaction, that the
drive is Ready, schedulable and has ``free >= size``.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Protocol, Sequence

from ..core.errors import AlreadyExists, InvalidArgument
from ..core.models import DRIVE_STATUSES, VOLUME_STATUSES, Drive, Tombstone, Volume
from ..core.validation import check_volume_name_length

# What update_drive / update_volume may change (everything else is owned by the node or the reservation).
DRIVE_OPERATOR_FIELDS = ("status", "schedulable", "access_tier", "labels", "message")
VOLUME_MUTABLE_FIELDS = ("status", "staging_path", "target_paths", "read_only_targets", "labels")


class Store(Protocol):
    # --- drives (written by node servers, read by the controller) -------------
    def put_drive(self, drive: Drive) -> Drive:
        """Create, or update the node-owned fields (name, total, status, make,
        mountpoint, message, topology) of, a drive. Keeps allocated/volume_count,
        schedulable, access_tier and labels of an existing record."""
        ...

    def get_drive(self, drive_id: str) -> Optional[Drive]: ...

    def list_drives(self, node: Optional[str] = None) -> Sequence[Drive]:
        """All drives, or one node's; served from an index, never a full scan
        when ``node`` is given."""
        ...

    def nodes(self) -> Sequence[str]:
        """Names of nodes that have at least one drive."""
        ...

    def update_drive(self, drive_id: str, expected_generation: Optional[int] = None, **changes: object) -> Drive:
        """Change operator/status fields (status, schedulable, access_tier,
        labels, message). Raises NotFound, Conflict."""
        ...

    def delete_drive(self, drive_id: str) -> None:
        """Raises FailedPrecondition while volumes live on it."""
        ...

    # --- volumes -----------------------------------------------------------------
    def reserve_volume(self, volume: Volume, expected_drive_generation: Optional[int] = None) -> Volume:
        """Atomically record ``volume`` and add its size to its drive's allocation.

        The adapter assigns ``project_id`` (smallest unused on that drive, > 0) and
        ``generation``. Same name already recorded with the same drive-independent
        request (size, parameters) -> the existing volume (idempotent); with other
        properties -> AlreadyExists. Drive not Ready/schedulable, not enough free,
        or generation changed -> Conflict (the caller picks again)."""
        ...

    def get_volume(self, name: str) -> Optional[Volume]: ...

    def read_volume(self, name: str) -> Optional[Volume]:
        """Like get_volume, but a miss is confirmed with the store of record before it is believed
        (an adapter with a cache may lag behind another replica's write). Use it where a wrong
        "not found" would lose something: DeleteVolume answering OK for a live volume, the node's
        garbage collector removing a live volume's data."""
        ...

    def list_volumes(self, drive_id: Optional[str] = None, node: Optional[str] = None,
                     start_after: str = "", limit: int = 0) -> Sequence[Volume]:
        """Ordered by name; ``start_after``/``limit`` paginate (ListVolumes)."""
        ...

    def update_volume(self, name: str, expected_generation: Optional[int] = None, **changes: object) -> Volume:
        """Change status, staging_path, target_paths, read_only_targets, labels.
        Raises NotFound, Conflict."""
        ...

    def expand_volume(self, name: str, new_size: int) -> Volume:
        """Atomically grow the reservation to ``new_size`` (never reserves twice:
        a retry with the same size is a no-op). Raises NotFound, OutOfRange when
        the drive has not enough free space."""
        ...

    def delete_volume(self, name: str) -> Optional[Volume]:
        """Remove the record, release its capacity and leave a tombstone (drive, name, uid, project
        id) for its node: the only thing that lets a node remove the volume's directory. The
        project id stays taken on the drive until the tombstone is cleared. Missing -> None
        (idempotent)."""
        ...

    # --- tombstones (the store decides every deletion) -----------------------------
    def list_tombstones(self, drive_id: Optional[str] = None) -> Sequence[Tombstone]:
        """Tombstones of one drive (or all), ordered by name."""
        ...

    def add_tombstone(self, tombstone: Tombstone) -> Tombstone:
        """Record a tombstone for a directory no record describes (the operator's explicit removal
        of an orphan). Refused (FailedPrecondition) while a volume of that name is recorded on
        the drive, unless the tombstone names another uid (a directory left by an earlier
        incarnation of the name); NotFound for an unknown drive. Idempotent."""
        ...

    def clear_tombstone(self, drive_id: str, name: str, uid: str) -> bool:
        """The node moved the directory to the trash (or found none): forget the tombstone and
        free its project id. False when there was none."""
        ...

    def restore_volume(self, volume: Volume) -> Volume:
        """Record a volume read from its drive's on-drive metadata (a store that lost its
        records), with its own project id, uid, size and creation time, and add its size to the
        drive's allocation (never refused for lack of room: the data is there). Never
        over-writes: a recorded name -> AlreadyExists (same uid on the same drive -> the record,
        idempotent); its project id taken on the drive -> Conflict; unknown drive -> NotFound."""
        ...

    def report_orphans(self, drive_id: str, names: Sequence[str]) -> None:
        """A node found volume directories on ``drive_id`` that no record or tombstone describes
        (called when the set changes; kept on the drive, never removed). The kube store records
        an Event; the embedded store has nobody to tell but the log."""
        ...

    def close(self) -> None: ...


def total_allocated(volumes: Iterable[Volume]) -> int:
    return sum(v.size for v in volumes)


# --- argument checks every adapter makes the same way (one home) ---------------------


def check_new_drive(drive: Drive) -> None:
    if not drive.drive_id or not drive.node:
        raise InvalidArgument("a drive needs a drive_id and a node", "pass both when registering a drive")
    if drive.status not in DRIVE_STATUSES:
        raise InvalidArgument(f"drive {drive.drive_id}: unknown status {drive.status!r}",
                              f"use one of {', '.join(DRIVE_STATUSES)}")


def check_drive_changes(drive_id: str, changes: Dict[str, object]) -> None:
    bad = sorted(set(changes) - set(DRIVE_OPERATOR_FIELDS))
    if bad:
        raise InvalidArgument(f"drive fields {', '.join(bad)} cannot be updated",
                              f"update only {', '.join(DRIVE_OPERATOR_FIELDS)}")
    if "status" in changes and changes["status"] not in DRIVE_STATUSES:
        raise InvalidArgument(f"drive {drive_id}: unknown status {changes['status']!r}",
                              f"use one of {', '.join(DRIVE_STATUSES)}")


def check_new_volume(volume: Volume) -> None:
    if not volume.name:
        raise InvalidArgument("a volume needs a name", "pass the CSI volume name")
    check_volume_name_length(volume.name)  # the one volume-name rule's limit (core/validation.py)
    if volume.size <= 0:
        raise InvalidArgument(f"volume {volume.name}: size {volume.size} must be positive",
                              "reserve at least one byte")


def check_restored_volume(volume: Volume) -> None:
    check_new_volume(volume)
    if volume.project_id <= 0 or not volume.uid or not volume.drive_id:
        raise InvalidArgument(f"volume {volume.name}: a restored volume needs its drive, project id and uid",
                              "restore from the volume's on-drive metadata file")


def restored_already(existing: Optional[Volume], volume: Volume) -> Optional[Volume]:
    """restore_volume's rule for a name the store already records: the same incarnation on the same
    drive is that record (idempotent); anything else is a conflict, reported and never resolved."""
    if existing is None:
        return None
    if existing.drive_id == volume.drive_id and existing.uid == volume.uid:
        return existing
    raise AlreadyExists(f"volume {volume.name} is recorded on drive {existing.drive_id} (uid "
                        f"{existing.uid}); drive {volume.drive_id} holds another one (uid {volume.uid})",
                        "both are kept; rename or remove one of them by hand")


def check_volume_changes(name: str, changes: Dict[str, object]) -> None:
    bad = sorted(set(changes) - set(VOLUME_MUTABLE_FIELDS))
    if bad:
        raise InvalidArgument(f"volume fields {', '.join(bad)} cannot be updated",
                              f"update only {', '.join(VOLUME_MUTABLE_FIELDS)}")
    if "status" in changes and changes["status"] not in VOLUME_STATUSES:
        raise InvalidArgument(f"volume {name}: unknown status {changes['status']!r}",
                              f"use one of {', '.join(VOLUME_STATUSES)}")
