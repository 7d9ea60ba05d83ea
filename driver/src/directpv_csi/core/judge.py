"""Judge: is each probed device usable as a drive, and if not, every reason why.

The judge sees the whole device list, so it can follow partitions and device-mapper
/ md slave chains down to the disk that holds ``/``, ``/boot``, ``/boot/efi`` or the
active swap (the root disk), and from holders up to what holds a device. Reason codes
are stable (core/models.py); texts are for people. Pure: no OS imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Set, Tuple

from .identity import (
    KIND_DIRECTPV,
    KIND_OURS_V1,
    KIND_UNCLAIMED,
    KIND_UNVERIFIED,
    LEGACY_LABEL,
    OUR_KINDS,
    OUR_LABEL,
)
from .models import (
    REASON_CDROM,
    REASON_DIRECTPV,
    REASON_HAS_DATA,
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
    REASON_UNREADABLE,
    REASON_UNVERIFIED,
    Device,
    Reason,
    Verdict,
)
from .units import format_size

DEFAULT_MIN_SIZE = 512 * 1024 * 1024
__all__ = ["DEFAULT_MIN_SIZE", "FORMAT_ALLOWED", "FORMAT_NEEDS_FORCE", "FORMAT_NEEDS_REVIEW", "FORMAT_NEVER",
           "LEGACY_LABEL", "OUR_LABEL", "JudgePolicy", "format_permission", "is_ours", "judge", "judge_one"]

# Where the migration from MinIO DirectPV is described (messages about DirectPV drives point there).
MIGRATION_DOC = "see 'DirectPV drives' in docs/FEATURES.md"

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
    REASON_DIRECTPV: "a MinIO DirectPV drive",
    REASON_UNVERIFIED: "labelled DIRECTPV but its files could not be read: it may be a MinIO DirectPV drive",
    REASON_HAS_DATA: "its filesystem holds files",
    REASON_UNREADABLE: "cannot be read, so what it holds is unknown",
}


@dataclass(frozen=True)
class JudgePolicy:
    """What the operator allows: the smallest usable size, loop and removable devices."""

    min_size: int = DEFAULT_MIN_SIZE
    allow_loop: bool = False
    allow_removable: bool = True
    our_label: str = OUR_LABEL


def is_ours(device: Device, label: str = OUR_LABEL) -> bool:
    """Formatted by us (format adopts it instead of formatting again): XFS with our label, or a
    drive device/ondisk.py recognised as ours (an earlier version's ``DIRECTPV`` label plus our
    ``.directpv/meta.json``, or a drive the DirectPV migration imported). A ``DIRECTPV``-labelled
    drive whose files were not read is never taken for ours."""
    if device.fs_type != "xfs":
        return False
    if device.drive_kind:
        return device.drive_kind in OUR_KINDS
    return device.fs_label == label and label != LEGACY_LABEL


def _size(n: int) -> str:
    return format_size(n)


def _directpv_text(dev: Device) -> str:
    c = dev.contents
    held = (
        f"{c.volume_dirs} volume director{'y' if c.volume_dirs == 1 else 'ies'}, {_size(c.used_bytes)} in use"
        if c is not None
        else "contents unknown"
    )
    return (
        f"a MinIO DirectPV drive (xfs {dev.fs_uuid or '?'}, label {dev.fs_label}): {held}; never adopted, and not "
        f"formatted while it holds volumes; a migration path from DirectPV exists as a later step: {MIGRATION_DOC}"
    )


def _data_text(dev: Device) -> str:
    c = dev.contents
    if c is None or not c.walked:
        return "its filesystem could not be inspected" + (f" ({dev.inspect_error})" if dev.inspect_error else "")
    more = "at least " if c.truncated else ""
    return (
        f"holds data: {more}{c.files} file(s), {more}{c.directories} director{'y' if c.directories == 1 else 'ies'}, "
        f"{_size(c.data_bytes)} in files, {_size(c.used_bytes)} in use"
    )


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
    if dev.read_error:
        add(
            REASON_UNREADABLE,
            f"cannot be read ({dev.read_error}), so what it holds is unknown"
            + ("; run as root (become: true)" if "ermission" in dev.read_error else ""),
        )
    legacy_label = dev.fs_type == "xfs" and dev.fs_label == LEGACY_LABEL
    if is_ours(dev, policy.our_label):
        older = " by an earlier version" if dev.drive_kind == KIND_OURS_V1 else ""
        add(REASON_OURS, f"already a DirectPV drive{older} (xfs {dev.fs_uuid}, label {dev.fs_label})")
    elif dev.drive_kind == KIND_DIRECTPV:
        c = dev.contents
        # Holding volumes (or not known not to) it is never formatted; an empty one is any other filesystem.
        add(REASON_DIRECTPV, _directpv_text(dev), forceable=c is not None and c.volume_dirs == 0)
    elif legacy_label and dev.drive_kind in ("", KIND_UNVERIFIED):
        why = f" ({dev.inspect_error})" if dev.inspect_error else " (not inspected)"
        add(REASON_UNVERIFIED, REASON_TEXTS[REASON_UNVERIFIED] + why)
    elif dev.fs_type:
        detail = dev.fs_type + (f" {dev.fs_uuid}" if dev.fs_uuid else "")
        if dev.fs_label:
            detail += f" label {dev.fs_label}"
        if legacy_label and dev.drive_kind == KIND_UNCLAIMED:
            detail += " (neither our metadata nor DirectPV's)"
        add(REASON_HAS_FILESYSTEM, f"has a filesystem: {detail}", forceable=True)
    if dev.fs_type and not is_ours(dev, policy.our_label):
        # Only when the contents were looked at (format plans, filter selection): what is there,
        # or that it could not be read - then it counts as data.
        c = dev.contents
        if c is not None and c.walked:
            if not c.empty:
                add(REASON_HAS_DATA, _data_text(dev), forceable=True)
        elif dev.inspect_error and dev.drive_kind != KIND_UNVERIFIED:
            add(REASON_HAS_DATA, _data_text(dev), forceable=True)
    if dev.partition_table:
        add(REASON_HAS_PARTITION_TABLE, f"has a partition table: {dev.partition_table}", forceable=True)
    return Verdict(dev.name, tuple(reasons))


def judge(devices: Sequence[Device], policy: JudgePolicy = JudgePolicy()) -> Dict[str, Verdict]:
    """A Verdict for every device, keyed by kernel name; each lists every reason present, in a stable order."""
    by_name = {d.name: d for d in devices}
    roots = root_disk_names(devices)
    return {d.name: judge_one(d, policy, by_name, roots) for d in devices}


# --- the format safety policy: one home (device/format.py plan_format, core/selection.py) ---------

FORMAT_ALLOWED = ""  # may format (over the forceable reasons returned, if any)
FORMAT_NEVER = "never"  # a reason force never overrides (mounted, held, root disk, a DirectPV drive with volumes...)
FORMAT_NEEDS_FORCE = "needs-force"  # only forceable reasons (a filesystem, data, a partition table): force required
FORMAT_NEEDS_REVIEW = "needs-review"  # force given, but safe mode forces only a device state that was reviewed


def format_permission(reasons: Sequence[Reason], *, force: bool, reviewed: bool = True,
                      safe_mode: bool = False) -> Tuple[str, Tuple[Reason, ...]]:
    """May a device with the judge's ``reasons`` be formatted? ``(FORMAT_*, the reasons that decide)``.

    Reasons that are not forceable refuse whatever ``force`` says (``FORMAT_NEVER``, those reasons);
    forceable ones (what a format would destroy) need ``force`` (``FORMAT_NEEDS_FORCE``), and in
    ``safe_mode`` also a ``reviewed`` device (named, or its state token given:
    ``FORMAT_NEEDS_REVIEW``). Allowed: ``(FORMAT_ALLOWED, the forceable reasons force overrides)``."""
    hard = tuple(r for r in reasons if not r.forceable)
    if hard:
        return FORMAT_NEVER, hard
    soft = tuple(r for r in reasons if r.forceable)
    if soft and not force:
        return FORMAT_NEEDS_FORCE, soft
    if soft and safe_mode and not reviewed:
        return FORMAT_NEEDS_REVIEW, soft
    return FORMAT_ALLOWED, soft
