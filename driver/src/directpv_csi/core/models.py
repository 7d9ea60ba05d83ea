"""Data shared by every layer. Pure: no OS, network or Kubernetes imports.

``Device`` is what the probe sees of one block device; ``Reason``/``Verdict`` are
what the judge says of it; ``Drive`` and ``Volume`` are what the store records.
Python >= 3.9 syntax only: this module also ships inside the Ansible collection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

# --- probing -------------------------------------------------------------


@dataclass(frozen=True)
class Contents:
    """What a device's filesystem holds, read without writing to it (device/ondisk.py)."""

    files: int = 0  # regular files, symlinks and other non-directories (walked, up to a limit)
    directories: int = 0  # directories below the root (an empty lost+found not counted)
    data_bytes: int = 0  # allocated bytes of the files walked
    used_bytes: int = 0  # what statfs reports as used on the filesystem
    volume_dirs: int = 0  # directories at the root not starting with "." (DirectPV's and our volumes)
    volume_metadata: int = 0  # files in .directpv/volumes/ (our per-volume metadata)
    truncated: bool = False  # the walk stopped at its limit: counts are "at least"
    walked: bool = False  # files/directories/data_bytes were counted (else only the root was listed)

    @property
    def empty(self) -> bool:
        return self.walked and not self.truncated and self.files == 0 and self.directories == 0


@dataclass(frozen=True)
class Device:
    """One block device as probed on a host (disk, partition, loop, dm, md...)."""

    name: str  # kernel name: "sda", "nvme0n1p1", "loop3", "dm-0"
    major: int
    minor: int
    size: int  # bytes
    path: str = ""  # /dev/<name>
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    rotational: bool = False
    removable: bool = False
    read_only: bool = False
    hidden: bool = False
    vendor: str = ""
    model: str = ""
    serial: str = ""
    wwn: str = ""
    transport: str = ""  # nvme, sata, sas, scsi, usb, virtio, loop, dm, md, ...
    is_partition: bool = False
    parent: str = ""  # disk name of a partition
    partition_number: int = 0
    partitions: Tuple[str, ...] = ()  # names of this disk's partitions
    partition_table: str = ""  # "gpt", "dos", ... (blkid PTTYPE)
    holders: Tuple[str, ...] = ()  # names in /sys/block/X/holders (dm, md, ...)
    slaves: Tuple[str, ...] = ()  # names in /sys/block/X/slaves
    dm_name: str = ""
    dm_uuid: str = ""
    md_level: str = ""
    mountpoints: Tuple[str, ...] = ()  # this mount namespace and PID 1's, deduplicated
    swap: bool = False
    cdrom: bool = False
    fs_type: str = ""  # blkid TYPE
    fs_uuid: str = ""  # blkid UUID
    fs_label: str = ""  # blkid LABEL
    loop_backing_file: str = ""
    by_id: Tuple[str, ...] = ()  # /dev/disk/by-id/* links resolving to this device
    udev: Dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    # Who made the filesystem (core/identity.py KIND_*; "" = not a DirectPV-family drive or not
    # inspected) and what it holds; filled read-only by device/ondisk.py.
    drive_kind: str = ""
    contents: Optional[Contents] = None
    inspect_error: str = ""  # why the filesystem could not be inspected
    read_error: str = ""  # why the probe could not read the device's first bytes (e.g. no permission)

    @property
    def dev_path(self) -> str:
        return self.path or "/dev/" + self.name

    @property
    def majmin(self) -> str:
        return f"{self.major}:{self.minor}"

    @property
    def make(self) -> str:
        """Human "make" column: dm name, vendor and model, partition number."""
        parts = [p for p in (self.dm_name, self.vendor, self.model) if p]
        if self.is_partition and self.partition_number:
            parts.append(f"(Part {self.partition_number})")
        return " ".join(parts)


@dataclass(frozen=True)
class Reason:
    """Why a device is not (or not without force) usable. ``code`` is stable."""

    code: str
    text: str
    forceable: bool = False  # True: usable with force (existing filesystem/partition table)


# Stable reason codes (see core/judge.py for the texts).
REASON_TOO_SMALL = "too-small"
REASON_HIDDEN = "hidden"
REASON_READ_ONLY = "read-only"
REASON_PARTITIONED = "partitioned"
REASON_HELD = "held"
REASON_MOUNTED = "mounted"
REASON_SWAP = "swap"
REASON_CDROM = "cdrom"
REASON_ROOT_DISK = "root-disk"
REASON_OURS = "ours"
REASON_LOOP = "loop"
REASON_REMOVABLE = "removable"
REASON_HAS_FILESYSTEM = "has-filesystem"
REASON_HAS_PARTITION_TABLE = "has-partition-table"
REASON_NOT_DISK = "not-a-disk"  # e.g. a device-mapper or md device we do not manage
REASON_DIRECTPV = "directpv-drive"  # a MinIO DirectPV drive: never adopted, never formatted while it holds volumes
REASON_UNVERIFIED = "unverified"  # labelled like a DirectPV-family drive, but its files could not be read
REASON_HAS_DATA = "has-data"  # its filesystem holds files: formatting needs force and the device named
REASON_UNREADABLE = "unreadable"  # the probe could not read it: what it holds is unknown


@dataclass(frozen=True)
class Verdict:
    """The judge's answer for one device."""

    device: str  # kernel name
    reasons: Tuple[Reason, ...] = ()

    @property
    def available(self) -> bool:
        """Usable without force."""
        return not self.reasons

    @property
    def available_with_force(self) -> bool:
        return all(r.forceable for r in self.reasons)

    @property
    def description(self) -> str:
        return "; ".join(r.text for r in self.reasons)


# --- store records -----------------------------------------------------------

DRIVE_READY = "Ready"
DRIVE_LOST = "Lost"  # formatted by us, but its device is not present
DRIVE_ERROR = "Error"  # present but failing (I/O error, mount error, multiple matches)
DRIVE_REMOVED = "Removed"  # released by the operator; no new volumes, kept until deleted
DRIVE_STATUSES = (DRIVE_READY, DRIVE_LOST, DRIVE_ERROR, DRIVE_REMOVED)

VOLUME_PENDING = "Pending"  # reserved by the controller, not yet staged
VOLUME_READY = "Ready"  # staged on its node
VOLUME_STATUSES = (VOLUME_PENDING, VOLUME_READY)


@dataclass(frozen=True)
class Drive:
    """A drive formatted by us, as recorded in the store."""

    drive_id: str  # the filesystem UUID we assigned at format time: survives renaming
    node: str
    name: str  # current kernel name on the node ("" while lost)
    total: int  # bytes usable (from the XFS superblock)
    allocated: int = 0  # bytes reserved by volumes
    volume_count: int = 0
    status: str = DRIVE_READY
    schedulable: bool = True  # False: cordoned
    access_tier: str = "Default"  # Default | Hot | Warm | Cold
    make: str = ""
    mountpoint: str = ""
    message: str = ""  # why Lost/Error
    labels: Dict[str, str] = field(default_factory=dict)
    topology: Dict[str, str] = field(default_factory=dict)
    generation: int = 0  # store-maintained version for optimistic concurrency

    @property
    def free(self) -> int:
        return max(0, self.total - self.allocated)


@dataclass(frozen=True)
class Volume:
    """A volume: a reserved amount of one drive, later a project-quota directory on it."""

    name: str  # CSI volume id (== CreateVolume name)
    drive_id: str
    node: str
    size: int  # bytes reserved == quota limit
    project_id: int  # XFS project ID on its drive, unique per drive
    status: str = VOLUME_PENDING
    parameters: Dict[str, str] = field(default_factory=dict)
    staging_path: str = ""
    target_paths: Tuple[str, ...] = ()
    read_only_targets: Tuple[str, ...] = ()
    labels: Dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    generation: int = 0
    uid: str = ""  # unique per incarnation, assigned by the store at reserve (the on-drive metadata carries it)


@dataclass(frozen=True)
class Tombstone:
    """A volume deleted in the store whose directory its node has not yet moved to the trash.

    Only a tombstone lets a node remove a volume directory; its project id stays taken on the drive
    until the node clears it (so a new volume never inherits the old one's quota or files)."""

    drive_id: str
    node: str
    name: str
    uid: str
    project_id: int
    size: int = 0
    deleted_at: float = 0.0
