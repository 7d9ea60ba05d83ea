"""Judge: is each probed device usable as a drive, and if not, every reason why.

The judge sees the whole device list, so it can follow partitions and device-mapper
/ md slave chains down to the disk that holds ``/``, ``/boot``, ``/boot/efi`` or the
active swap (the root disk), and from holders up to what holds a device. Reason codes
are stable (core/models.py); texts are for people. Pure: no OS imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Set

from .models import (
    REASON_CDROM,
    REASON_HAS_FILESYSTEM,
    REASON_HAS_PARTITION_TABLE,
    REASON_HELD,
    REASON_HIDDEN,
    REASON_LOOP,
    REASON_MOUNTED,
    REASON_NOT_DISK,
    REASON_OURS,
    REASON_PARTITIONED,
    REASON_READ_ONLY,
    REASON_REMOVABLE,
    REASON_ROOT_DISK,
    REASON_SWAP,
    REASON_TOO_SMALL,
    Device,
    Reason,
    Verdict,
)
from .units import format_size

DEFAULT_MIN_SIZE = 512 * 1024 * 1024
OUR_LABEL = "DIRECTPV"

# Mount points whose disk is the system's own (root/boot) disk.
SYSTEM_MOUNTPOINTS = ("/", "/boot", "/boot/efi", "/efi", "/usr")

# Kernel name prefixes of block devices that are not disks we manage.
_NOT_DISK_PREFIXES = ("dm-", "md", "zram", "ram", "nbd", "rbd", "drbd", "bcache", "zd")

# Every reason code with a short human text (the judge adds detail where it has some).
REASON_TEXTS: Dict[str, str] = {
    REASON_TOO_SMALL: "too small",
    REASON_HIDDEN: "hidden by the kernel",
    REASON_READ_ONLY: "read-only",
    REASON_PARTITIONED: "partitioned (its partitions may be usable)",
    REASON_HELD: "held by another device",
    REASON_MOUNTED: "mounted",
    REASON_SWAP: "active swap",
    REASON_CDROM: "CD-ROM",
    REASON_ROOT_DISK: "holds the root/boot filesystem or active swap",
    REASON_OURS: "already a DirectPV drive",
    REASON_LOOP: "loop device (allowed only with allow_loop)",
    REASON_REMOVABLE: "removable (allowed only with allow_removable)",
    REASON_HAS_FILESYSTEM: "has a filesystem",
    REASON_HAS_PARTITION_TABLE: "has a partition table",
    REASON_NOT_DISK: "not a disk",
}


@dataclass(frozen=True)
class JudgePolicy:
    """What the operator allows: the smallest usable size, loop and removable devices."""

    min_size: int = DEFAULT_MIN_SIZE
    allow_loop: bool = False
    allow_removable: bool = True
    our_label: str = OUR_LABEL


def is_ours(device: Device, label: str = OUR_LABEL) -> bool:
    """XFS carrying our label: formatted by us (format can adopt it instead of formatting again)."""
    return device.fs_type == "xfs" and device.fs_label == label


def _is_not_disk(device: Device) -> bool:
    if device.transport in ("dm", "md") or device.dm_name or device.md_level:
        return True
    return device.name.startswith(_NOT_DISK_PREFIXES)


def root_disk_names(devices: Sequence[Device]) -> Set[str]:
    """Names of every device under the system mounts or active swap.

    Starts from the devices mounted at / /boot /boot/efi (/efi, /usr) or used as
    swap, then follows slaves (dm/md/LVM/LUKS down to their members) and partitions
    up to their disks.
    """
    by_name = {d.name: d for d in devices}
    start = [d.name for d in devices if d.swap or any(m in SYSTEM_MOUNTPOINTS for m in d.mountpoints)]
    seen: Set[str] = set()
    todo: List[str] = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        dev = by_name.get(name)
        if dev is None:
            continue
        todo.extend(dev.slaves)
        if dev.is_partition and dev.parent:
            todo.append(dev.parent)
    return seen


def _held_text(dev: Device, by_name: Dict[str, Device]) -> str:
    parts = []
    for h in sorted(dev.holders):
        holder = by_name.get(h)
        if holder is not None and holder.dm_name:
            parts.append(f"{h} ({holder.dm_name})")
        elif holder is not None and holder.md_level:
            parts.append(f"{h} ({holder.md_level})")
        else:
            parts.append(h)
    return "held by " + ", ".join(parts)


def judge_one(dev: Device, policy: JudgePolicy, by_name: Dict[str, Device], root_disks: Set[str]) -> Verdict:
    """Every reason ``dev`` is not usable without force (none: available)."""
    reasons: List[Reason] = []

    def add(code: str, text: str = "", forceable: bool = False) -> None:
        reasons.append(Reason(code, text or REASON_TEXTS[code], forceable))

    if dev.cdrom or dev.name.startswith("sr"):
        add(REASON_CDROM)
    elif _is_not_disk(dev):
        kind = "device-mapper device" if dev.dm_name or dev.name.startswith("dm-") else ""
        if not kind and (dev.md_level or dev.name.startswith("md")):
            kind = "md RAID device" + (f" ({dev.md_level})" if dev.md_level else "")
        add(REASON_NOT_DISK, f"not a disk: {kind or dev.name.rstrip('0123456789') + ' device'}")
    if dev.size < policy.min_size:
        add(REASON_TOO_SMALL, f"too small: {format_size(dev.size)} < {format_size(policy.min_size)}")
    if dev.hidden:
        add(REASON_HIDDEN)
    if dev.read_only:
        add(REASON_READ_ONLY)
    if dev.partitions:
        add(REASON_PARTITIONED, f"partitioned: {', '.join(sorted(dev.partitions))} (partitions may be usable)")
    if dev.holders:
        add(REASON_HELD, _held_text(dev, by_name))
    if dev.mountpoints:
        add(REASON_MOUNTED, "mounted at " + ", ".join(sorted(dev.mountpoints)))
    if dev.swap:
        add(REASON_SWAP)
    if dev.name in root_disks:
        add(REASON_ROOT_DISK)
    if (dev.transport == "loop" or dev.name.startswith("loop")) and not policy.allow_loop:
        add(REASON_LOOP)
    if dev.removable and not policy.allow_removable:
        add(REASON_REMOVABLE)
    if is_ours(dev, policy.our_label):
        add(REASON_OURS, f"already a DirectPV drive (xfs {dev.fs_uuid}, label {dev.fs_label})")
    elif dev.fs_type:
        detail = dev.fs_type + (f" {dev.fs_uuid}" if dev.fs_uuid else "")
        add(REASON_HAS_FILESYSTEM, f"has a filesystem: {detail}", forceable=True)
    if dev.partition_table:
        add(REASON_HAS_PARTITION_TABLE, f"has a partition table: {dev.partition_table}", forceable=True)
    return Verdict(dev.name, tuple(reasons))


def judge(devices: Sequence[Device], policy: JudgePolicy = JudgePolicy()) -> Dict[str, Verdict]:
    """A Verdict for every device, keyed by kernel name; each lists every reason present, in a stable order."""
    by_name = {d.name: d for d in devices}
    roots = root_disk_names(devices)
    return {d.name: judge_one(d, policy, by_name, roots) for d in devices}
