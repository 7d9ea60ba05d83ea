"""Probe: every block device of the host, without udevd.

Sources, all read directly: sysfs (device facts, holders/slaves, identity),
/proc/self/mountinfo and /proc/1/mountinfo (mount points of both namespaces),
/proc/swaps, the device's first bytes (filesystem / partition-table signatures;
one ``blkid -p`` call for what is not recognised in-process), /dev/disk/by-id
links and the udev database (/run/udev/data/b<maj>:<min>) when they exist.

``probe()`` takes its roots as arguments so tests run over captured trees.
"""

from __future__ import annotations

import os
import stat
from typing import Dict, Iterable, List, Optional, Set, Tuple, Union

from ..core.errors import CommandFailed, InvalidArgument, NotFound
from ..core.models import Device
from . import blkid as _blkid
from . import mountinfo as _mountinfo
from . import ondisk as _ondisk
from . import sysfs as _sysfs

UDEV_ROOT = "/run/udev"


# --- helpers (pure where possible) -------------------------------------------


def parse_udev_data(text: str) -> Tuple[Dict[str, str], Tuple[str, ...]]:
    """A udev database entry (/run/udev/data/b<maj>:<min>) -> (E: properties, S: link names)."""
    props: Dict[str, str] = {}
    links: List[str] = []
    for line in text.splitlines():
        tag, sep, value = line.partition(":")
        if not sep:
            continue
        if tag == "E":
            key, eq, val = value.partition("=")
            if eq:
                props[key] = val
        elif tag == "S":
            links.append(value)
    return props, tuple(links)


def read_udev(udev_root: str, majmin: str) -> Tuple[Dict[str, str], Tuple[str, ...]]:
    """udev's properties and links of ``majmin`` (({}, ()) without a udev database)."""
    try:
        with open(os.path.join(udev_root, "data", "b" + majmin), encoding="utf-8", errors="replace") as f:
            return parse_udev_data(f.read())
    except OSError:
        return {}, ()


def by_id_links(dev_root: str) -> Dict[str, List[str]]:
    """``{kernel name: [/dev/disk/by-id/... links]}`` from ``<dev_root>/disk/by-id`` (empty without udev)."""
    d = os.path.join(dev_root, "disk", "by-id")
    out: Dict[str, List[str]] = {}
    for entry in _sysfs.list_dir(d):
        try:
            target = os.readlink(os.path.join(d, entry))
        except OSError:
            continue
        name = os.path.basename(target)
        out.setdefault(name, []).append("/dev/disk/by-id/" + entry)
    return out


def _dev_name_of(path: str, dev_root: str, dm_names: Dict[str, str]) -> str:
    """Kernel name behind a /dev path in mountinfo or /proc/swaps ("" when not a device path)."""
    if not path.startswith("/dev/"):
        return ""
    rel = path[len("/dev/") :]
    if rel.startswith("mapper/"):
        return dm_names.get(rel[len("mapper/") :], "")
    full = os.path.join(dev_root, rel)
    try:
        target = os.path.realpath(full)
    except OSError:
        target = full
    return os.path.basename(target)


def _mount_namespaces(proc_root: str) -> Tuple[str, ...]:
    """PIDs whose mountinfo to read: this process and PID 1, or only this one when they share a namespace."""
    try:
        if os.readlink(f"{proc_root}/self/ns/mnt") == os.readlink(f"{proc_root}/1/ns/mnt"):
            return ("self",)
    except OSError:
        pass  # no permission for PID 1's namespace link, or a captured tree: read both
    return ("self", "1")


# --- probe -----------------------------------------------------------------------


def probe(
    sysfs_root: str = "/sys",
    dev_root: str = "/dev",
    proc_root: str = "/proc",
    run_blkid: bool = True,
    udev_root: str = UDEV_ROOT,
    names: Optional[Iterable[str]] = None,
    errors: Optional[Dict[str, str]] = None,
    identify: bool = True,
) -> List[Device]:
    """Every block device (or only ``names``), disks before their partitions in natural order.

    ``errors``, when given, receives ``{name: why}`` for devices whose first bytes
    could not be read (their filesystem fields stay empty; the probe still succeeds).
    ``identify``: an XFS labelled ``DIRECTPV`` (MinIO DirectPV's, or ours before format
    version 2) gets its ``drive_kind`` from the files at its root, read without writing
    (device/ondisk.py); only those devices are looked into.
    """
    if names is None:
        blocks = _sysfs.read_all(sysfs_root)
    else:
        blocks = []
        for n in names:
            b = _sysfs.read_block(sysfs_root, n)
            if b is not None:
                blocks.append(b)
        parents = {b.parent for b in blocks if b.is_partition}
        disks = {p: _sysfs.read_block(sysfs_root, p) for p in parents}
        for b in blocks:
            disk = disks.get(b.parent)
            if b.is_partition and disk is not None:
                b.transport, b.vendor, b.model = disk.transport, disk.vendor, disk.model

    # A free loop device (nothing attached, size 0) is a slot, not a device: lsblk hides it too.
    blocks = [b for b in blocks if not (b.transport == "loop" and b.sectors == 0 and not b.loop_backing_file)]
    all_blocks_by_majmin = {b.majmin: b.name for b in blocks}
    dm_names = {b.dm_name: b.name for b in blocks if b.dm_name}

    # Mount points: this namespace and PID 1's, by maj:min, else by source path (btrfs...).
    mounts: Dict[str, Set[str]] = {}
    for pid in _mount_namespaces(proc_root):
        for m in _mountinfo.read_mountinfo(proc_root, pid):
            name = all_blocks_by_majmin.get(m.majmin, "")
            if not name:
                name = _dev_name_of(m.source, dev_root, dm_names) if m.source.startswith("/dev/") else ""
            if name:
                mounts.setdefault(name, set()).add(m.mount_point)

    swaps: Set[str] = set()
    for filename in _mountinfo.read_swaps(proc_root):
        name = _dev_name_of(filename, dev_root, dm_names)
        if name:
            swaps.add(name)

    ids = by_id_links(dev_root)
    use_udev = os.path.isdir(os.path.join(udev_root, "data"))

    paths = {b.name: os.path.join(dev_root, b.name) for b in blocks}
    # Not read: empty devices, hidden NVMe paths (no device node) and floppies (opening an absent drive stalls).
    to_read = [
        (paths[b.name], b.size, b.logical_sector_size)
        for b in blocks
        if b.size > 0 and not b.hidden and not b.name.startswith("fd")
    ]
    unreadable: Dict[str, str] = {}
    sigs = _probe_signatures(to_read, run_blkid, unreadable)

    out: List[Device] = []
    for b in blocks:
        path = paths[b.name]
        sig = sigs.get(path, {})
        udev: Dict[str, str] = {}
        links: List[str] = list(ids.get(b.name, ()))
        vendor, model, serial, wwn = b.vendor, b.model, b.serial, b.wwn
        if use_udev:
            udev, s_links = read_udev(udev_root, b.majmin)
            for s in s_links:
                if s.startswith("disk/by-id/") and "/dev/" + s not in links:
                    links.append("/dev/" + s)
            vendor = vendor or udev.get("ID_VENDOR", "")
            model = model or udev.get("ID_MODEL", "")
            if not b.is_partition:
                # A SCSI disk's ID_SERIAL_SHORT is its WWN when it has one; ID_SCSI_SERIAL is the unit serial.
                serial = (
                    serial or udev.get("ID_SCSI_SERIAL") or udev.get("ID_SERIAL_SHORT") or udev.get("ID_SERIAL", "")
                )
                wwn = wwn or _sysfs.normalize_wwn(udev.get("ID_WWN_WITH_EXTENSION", "") or udev.get("ID_WWN", ""))
        cdrom = b.name.startswith("sr") or b.scsi_type == "5" or udev.get("ID_CDROM") == "1"
        out.append(
            Device(
                name=b.name,
                major=b.major,
                minor=b.minor,
                size=b.size,
                path=path,
                logical_sector_size=b.logical_sector_size,
                physical_sector_size=b.physical_sector_size,
                rotational=b.rotational,
                removable=b.removable,
                read_only=b.read_only,
                hidden=b.hidden,
                vendor=vendor,
                model=model,
                serial=serial,
                wwn=wwn,
                transport=b.transport,
                is_partition=b.is_partition,
                parent=b.parent,
                partition_number=b.partition_number,
                partitions=b.partitions,
                partition_table=sig.get("PTTYPE", ""),
                holders=b.holders,
                slaves=b.slaves,
                dm_name=b.dm_name,
                dm_uuid=b.dm_uuid,
                md_level=b.md_level,
                mountpoints=tuple(sorted(mounts.get(b.name, ()))),
                swap=b.name in swaps,
                cdrom=cdrom,
                fs_type=sig.get("TYPE", ""),
                fs_uuid=sig.get("UUID", ""),
                fs_label=sig.get("LABEL", ""),
                loop_backing_file=b.loop_backing_file,
                by_id=tuple(sorted(links)),
                udev=udev,
                read_error=unreadable.get(path, ""),
            )
        )
    if errors is not None:
        errors.update({os.path.basename(p): why for p, why in unreadable.items()})
    if identify:
        out = _ondisk.identify(out, proc_root)
    return out


def _read_one(dev: Tuple[str, int, int]) -> Tuple[str, Union[Optional[_blkid.Props], OSError]]:
    path, size, sector = dev
    try:
        return path, _blkid.probe_device(path, size, sector)
    except OSError as exc:
        return path, exc


def _read_signatures(
    devices: List[Tuple[str, int, int]],
) -> List[Tuple[str, Union[Optional[_blkid.Props], OSError]]]:
    """Serial on purpose: measured on a loaded 2-CPU host, a thread pool was slower (GIL and scheduling)."""
    return [_read_one(d) for d in devices]


def _probe_signatures(
    devices: List[Tuple[str, int, int]], run_blkid: bool, unreadable: Dict[str, str]
) -> Dict[str, _blkid.Props]:
    out: Dict[str, _blkid.Props] = {}
    ask: List[str] = []
    for path, found_or_error in _read_signatures(devices):
        if isinstance(found_or_error, OSError):
            unreadable[path] = found_or_error.strerror or str(found_or_error)
            continue
        found = found_or_error
        if found is None:
            continue
        if found.get("TYPE") in (_blkid.UNKNOWN, _blkid.DELEGATE):
            ask.append(path)
        else:
            out[path] = found
    if ask and run_blkid:
        try:
            out.update(_blkid.run_blkid(ask))
        except CommandFailed as exc:
            for path in ask:
                unreadable[path] = exc.message
    return out


# --- one device by name or path -------------------------------------------------


def resolve_ref(ref: str, sysfs_root: str = "/sys", dev_root: str = "/dev") -> str:
    """Kernel name of ``ref`` ("sdb", "/dev/sdb", "/dev/disk/by-id/..."); no side effect.

    InvalidArgument: empty, a path with "..", a relative path, a regular file, not a
    block device. NotFound: no such device.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidArgument("device reference is empty", 'name a block device, e.g. "sdb" or "/dev/sdb"')
    ref = ref.strip()
    if ".." in ref.split("/"):
        raise InvalidArgument(
            f"device path {ref!r} contains '..'", "give the device's absolute path, e.g. /dev/sdb, without '..'"
        )
    if "/" not in ref:
        if os.path.exists(os.path.join(sysfs_root, "class", "block", ref, "dev")):
            return ref
        raise NotFound(f"block device {ref!r} not found", "list devices with `directpv-csi devices --all`")
    if not ref.startswith("/"):
        raise InvalidArgument(
            f"device path {ref!r} is relative", "give an absolute path such as /dev/sdb or a kernel name such as sdb"
        )
    try:
        st = os.stat(ref)
    except FileNotFoundError:
        raise NotFound(
            f"device {ref!r} not found", "check the path; list devices with `directpv-csi devices --all`"
        ) from None
    except OSError as exc:
        raise InvalidArgument(f"cannot examine {ref!r}: {exc.strerror}", "give a readable block device path") from None
    if stat.S_ISREG(st.st_mode):
        raise InvalidArgument(
            f"{ref!r} is a regular file, not a block device", "attach it with `losetup` and use the loop device"
        )
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidArgument(f"{ref!r} is not a block device", "give a block device such as /dev/sdb")
    majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    target = os.path.join(sysfs_root, "dev", "block", majmin)
    name = os.path.basename(os.path.realpath(target))
    if not os.path.exists(os.path.join(target, "dev")) or not name:
        raise NotFound(f"block device {ref!r} ({majmin}) is not known to the kernel", "check that it is attached")
    return name


def probe_one(
    ref: str,
    sysfs_root: str = "/sys",
    dev_root: str = "/dev",
    proc_root: str = "/proc",
    run_blkid: bool = True,
    udev_root: str = UDEV_ROOT,
    identify: bool = True,
) -> Device:
    """The Device behind ``ref`` (kernel name, /dev path or /dev/disk/by-id link); see resolve_ref for errors."""
    name = resolve_ref(ref, sysfs_root, dev_root)
    found = probe(sysfs_root, dev_root, proc_root, run_blkid, udev_root, names=[name], identify=identify)
    if not found:
        raise NotFound(f"block device {ref!r} disappeared while probing", "check that it is still attached")
    return found[0]
