"""Block devices as the kernel shows them in sysfs, read directly (no udevd, no processes).

Everything takes a ``sysfs_root`` so tests run over captured trees in
tests/fixtures/sysfs/. Layout used (sysfs-block(5)):

- ``<root>/class/block/<name>`` -> ``../../devices/.../block/<disk>[/<partition>]``
- ``dev`` "maj:min", ``size`` in 512-byte sectors, ``ro``, ``removable``, ``hidden``
- ``queue/{logical,physical}_block_size``, ``queue/rotational`` (disks only; a
  partition uses its disk's)
- ``partition`` (partition number; present only on partitions), ``holders/``, ``slaves/``
- ``dm/{name,uuid}``, ``md/level``, ``loop/backing_file``
- identity: ``serial`` / ``wwid`` (virtio, nvme), ``device/{vendor,model,serial,wwid,type}``
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Tuple

_O_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def read_attr(path: str) -> str:
    """Stripped text of a sysfs attribute; "" when missing or unreadable."""
    try:
        fd = os.open(path, _O_FLAGS)
    except OSError:
        return ""
    try:
        data = os.read(fd, 65536)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").strip().strip("\x00").strip()


def read_int(path: str, default: int = 0) -> int:
    text = read_attr(path)
    try:
        return int(text)
    except ValueError:
        return default


def list_dir(path: str) -> Tuple[str, ...]:
    """Sorted entry names of a directory; () when missing."""
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


@dataclass
class SysBlock:
    """Raw sysfs facts of one block device (no judgement, no blkid)."""

    name: str
    sys_path: str  # resolved path of its directory
    major: int = 0
    minor: int = 0
    sectors: int = 0
    is_partition: bool = False
    parent: str = ""
    partition_number: int = 0
    partitions: Tuple[str, ...] = ()
    read_only: bool = False
    removable: bool = False
    hidden: bool = False
    rotational: bool = False
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    holders: Tuple[str, ...] = ()
    slaves: Tuple[str, ...] = ()
    vendor: str = ""
    model: str = ""
    serial: str = ""
    wwn: str = ""
    scsi_type: str = ""  # device/type: "5" is a CD/DVD (ROM)
    dm_name: str = ""
    dm_uuid: str = ""
    md_level: str = ""
    loop_backing_file: str = ""
    transport: str = ""
    uevent: Dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.sectors * 512

    @property
    def majmin(self) -> str:
        return f"{self.major}:{self.minor}"


def parse_uevent(text: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def normalize_wwn(raw: str) -> str:
    """Canonical WWN text: "naa.5000c500a1b2c3d4" / "0x5000c500a1b2c3d4" -> "0x5000c500a1b2c3d4"; others kept."""
    w = raw.strip()
    if not w:
        return ""
    low = w.lower()
    if low.startswith("naa."):
        return "0x" + low[4:]
    if low.startswith("0x"):
        return low
    return w


def transport_of(name: str, sys_path: str, uevent_driver: str = "") -> str:
    """Transport of a disk from its name and the resolved sysfs path of its device."""
    if name.startswith("loop"):
        return "loop"
    if name.startswith("dm-"):
        return "dm"
    if name.startswith("md"):
        return "md"
    if name.startswith("nvme"):
        return "nvme"
    if name.startswith("mmcblk"):
        return "mmc"
    if name.startswith("zram"):
        return "zram"
    if name.startswith("ram"):
        return "ram"
    if name.startswith("nbd"):
        return "nbd"
    if name.startswith("xvd"):
        return "xen"
    p = sys_path
    if "/usb" in p:
        return "usb"
    if "/nvme" in p:
        return "nvme"
    if "/ata" in p:
        return "sata"
    if "/end_device-" in p or "/port-" in p or "/expander-" in p:
        return "sas"
    if "/virtio" in p and "/host" not in p:
        return "virtio"
    if "/host" in p and "/target" in p:
        return "scsi"
    if "/mmc" in p:
        return "mmc"
    if uevent_driver:
        return uevent_driver
    return ""


def _resolve(link: str) -> str:
    """Target of a sysfs symlink as an absolute path (one readlink, no per-component lstat)."""
    try:
        target = os.readlink(link)
    except OSError:
        return link  # not a link (a plain directory) or missing
    return os.path.normpath(target if target.startswith("/") else os.path.dirname(link) + "/" + target)


def _identity(base: str, entries: FrozenSet[str]) -> Tuple[str, str, str, str, str, str]:
    """(vendor, model, serial, wwn, scsi type, resolved device path) of a disk; reads only files that exist."""
    serial = read_attr(base + "/serial") if "serial" in entries else ""
    wwn = read_attr(base + "/wwid") if "wwid" in entries else ""
    vendor = model = scsi_type = ""
    dev_dir = base
    if "device" in entries:
        dev_dir = _resolve(base + "/device")
        present = frozenset(list_dir(dev_dir))
        vendor = read_attr(dev_dir + "/vendor") if "vendor" in present else ""
        model = read_attr(dev_dir + "/model") if "model" in present else ""
        if not serial and "serial" in present:
            serial = read_attr(dev_dir + "/serial")
        if not wwn and "wwid" in present:
            wwn = read_attr(dev_dir + "/wwid")
        scsi_type = read_attr(dev_dir + "/type") if "type" in present else ""
    if vendor.startswith("0x"):  # virtio's device/vendor is a PCI vendor number, not a make
        vendor = ""
    return vendor, model, serial, normalize_wwn(wwn), scsi_type, dev_dir


def read_block(sysfs_root: str, name: str) -> Optional[SysBlock]:
    """Facts of ``<sysfs_root>/class/block/<name>``; None when it is not there.

    Lists the device's directory once and opens only the attributes present:
    sysfs opens dominate the probe's time on hosts with many devices.
    """
    base = _resolve(f"{sysfs_root}/class/block/{name}")
    entries = frozenset(list_dir(base))
    if "dev" not in entries:
        return None
    dev = read_attr(base + "/dev")
    major_s, _, minor_s = dev.partition(":")
    b = SysBlock(name=name, sys_path=base)
    try:
        b.major, b.minor = int(major_s), int(minor_s)
    except ValueError:
        return None
    b.sectors = read_int(base + "/size")
    if b.sectors == 0 and "loop" not in entries and name.startswith("loop"):
        b.transport = "loop"  # a free loop device (no backing file): nothing else to read
        return b
    b.read_only = read_attr(base + "/ro") == "1"
    b.holders = list_dir(base + "/holders")
    b.slaves = list_dir(base + "/slaves")
    if "partition" in entries:
        b.is_partition = True
        b.partition_number = read_int(base + "/partition")
        disk_dir = os.path.dirname(base)
        b.parent = os.path.basename(disk_dir)
    else:
        disk_dir = base
        b.partitions = tuple(
            sorted(
                (e for e in entries if e.startswith(name) and os.path.exists(f"{base}/{e}/partition")),
                key=_natural_key,
            )
        )
        b.hidden = "hidden" in entries and read_attr(base + "/hidden") == "1"
    b.removable = read_attr(disk_dir + "/removable") == "1"
    queue = disk_dir + "/queue"
    b.rotational = read_attr(queue + "/rotational") == "1"
    b.logical_sector_size = read_int(queue + "/logical_block_size", 512) or 512
    b.physical_sector_size = read_int(queue + "/physical_block_size", 512) or 512
    if not b.is_partition:
        b.vendor, b.model, b.serial, b.wwn, b.scsi_type, dev_dir = _identity(base, entries)
        if "dm" in entries:
            b.dm_name = read_attr(base + "/dm/name")
            b.dm_uuid = read_attr(base + "/dm/uuid")
        if "md" in entries:
            b.md_level = read_attr(base + "/md/level")
        if "loop" in entries:
            b.loop_backing_file = read_attr(base + "/loop/backing_file")
        b.transport = transport_of(name, dev_dir)
    return b


def _natural_key(name: str) -> Tuple[object, ...]:
    """sda2 < sda10: digits compare as numbers."""
    out: List[object] = []
    num = ""
    text = ""
    for ch in name:
        if ch.isdigit():
            if text:
                out.append(text)
                text = ""
            num += ch
        else:
            if num:
                out.append(int(num))
                num = ""
            text += ch
    if text:
        out.append(text)
    if num:
        out.append(int(num))
    return tuple((0, x) if isinstance(x, int) else (1, x) for x in out)


def list_blocks(sysfs_root: str = "/sys") -> List[str]:
    """Names of every block device (disks and partitions) in ``<sysfs_root>/class/block``."""
    return sorted(list_dir(os.path.join(sysfs_root, "class", "block")), key=_natural_key)


def read_all(sysfs_root: str = "/sys") -> List[SysBlock]:
    """Every block device of the host, disks then their partitions, in natural name order."""
    out: List[SysBlock] = []
    for name in list_blocks(sysfs_root):
        b = read_block(sysfs_root, name)
        if b is not None:
            out.append(b)
    # A partition inherits identity and transport from its disk.
    by_name = {b.name: b for b in out}
    for b in out:
        if b.is_partition and b.parent in by_name:
            disk = by_name[b.parent]
            b.transport = disk.transport
            b.vendor, b.model = disk.vendor, disk.model
    return out
