"""device/probe.py over captured host roots (tests/fixtures/sysfs/<host>/{sys,proc,dev,run}).

server1 has hardware this machine cannot have (NVMe, SATA/SAS, md, device-mapper,
CD-ROM, udev): its tree is hand-built after real sysfs layouts. Device nodes are
absent there, so signature fields stay empty unless a test puts image files in
place of the nodes.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import pytest
from directpv_csi.core import models as m
from directpv_csi.core.errors import InvalidArgument, NotFound
from directpv_csi.core.judge import JudgePolicy, judge
from directpv_csi.core.models import Device
from directpv_csi.device.probe import parse_udev_data, probe, probe_one

from testsupport import needs_tool


def _probe_host(root: Path, **kw: object) -> List[Device]:
    return probe(
        str(root / "sys"),
        str(root / "dev"),
        str(root / "proc"),
        udev_root=str(root / "run" / "udev"),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def server1(fixtures_dir: Path) -> Path:
    return fixtures_dir / "sysfs" / "server1"


@pytest.fixture
def devs(server1: Path) -> Dict[str, Device]:
    # The captured tree has no device nodes: every read fails (ENOENT) and marks the device unreadable.
    # The judge's relations are what these tests check, so that mark is dropped here (test_signatures_...
    # covers reading).
    return {d.name: replace(d, read_error="") for d in _probe_host(server1, run_blkid=False)}


def test_captured_tree_devices_are_unreadable_not_available(server1: Path) -> None:
    got = {d.name: d for d in _probe_host(server1, run_blkid=False)}
    assert got["sdb"].read_error
    assert [r.code for r in judge(list(got.values()))["sdb"].reasons] == [m.REASON_UNREADABLE]


def test_every_device_found(devs: Dict[str, Device]) -> None:
    assert set(devs) == {
        "nvme0n1", "nvme0n1p1", "nvme0n1p2", "nvme0n1p3", "nvme1c1n1", "sda", "sda1", "sda2", "sdb", "sdc",
        "sdd", "sde", "sr0", "mmcblk0", "md0", "dm-0", "dm-1", "loop0", "zram0",
    }  # fmt: skip
    assert "loop1" not in devs, "a free loop slot (nothing attached) is not a device"


def test_mounts_from_both_namespaces_and_swap(devs: Dict[str, Device]) -> None:
    assert devs["nvme0n1p2"].mountpoints == ("/",)
    assert devs["nvme0n1p1"].mountpoints == ("/boot/efi",)
    assert devs["dm-1"].mountpoints == ("/home",), "mounted only in PID 1's namespace"
    assert devs["md0"].mountpoints == ("/srv/data", "/var/backups")
    assert devs["sdc"].mountpoints == ("/media/usb stick",)
    assert devs["dm-0"].swap and devs["zram0"].swap
    assert not devs["sda2"].swap


def test_identity_sources(devs: Dict[str, Device]) -> None:
    sdc = devs["sdc"]
    assert sdc.serial == "4C530001234567", "USB serial comes from the udev database"
    assert sdc.udev["ID_BUS"] == "usb"
    assert "/dev/disk/by-id/usb-SanDisk_Cruzer_Blade_4C530001234567-0:0" in sdc.by_id
    sda = devs["sda"]
    assert sda.wwn == "0x5000c500a1b2c3d4" and sda.udev == {}, "no udev entry: sysfs only"
    assert set(sda.by_id) == {
        "/dev/disk/by-id/ata-ST4000NM0035-1V4107_ZC1A2B3C",
        "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
    }
    assert devs["sda1"].make == "ATA ST4000NM0035-1V4 (Part 1)"
    assert devs["dm-1"].make == "vg0-home"
    assert devs["sr0"].cdrom and not devs["sda"].cdrom
    assert devs["loop0"].loop_backing_file == "/var/lib/images/disk 1.img"


def test_no_udev_database_means_no_udev(server1: Path) -> None:
    d = {x.name: x for x in probe(str(server1 / "sys"), str(server1 / "dev"), str(server1 / "proc"), run_blkid=False,
                                  udev_root="/nonexistent/udev")}  # fmt: skip
    assert d["sdc"].serial == "" and d["sdc"].udev == {}


def test_judged_server1(devs: Dict[str, Device]) -> None:
    v = judge(list(devs.values()))

    def codes(name: str) -> List[str]:
        return [r.code for r in v[name].reasons]

    assert v["sdb"].available and v["nvme0n1p3"].available
    assert codes("nvme0n1") == [m.REASON_PARTITIONED, m.REASON_ROOT_DISK]
    assert codes("nvme0n1p2") == [m.REASON_MOUNTED, m.REASON_ROOT_DISK]
    assert codes("sda") == [m.REASON_PARTITIONED, m.REASON_ROOT_DISK], "swap on LVM on sda2"
    assert codes("sda1") == [m.REASON_HELD]
    assert codes("sda2") == [m.REASON_HELD, m.REASON_ROOT_DISK]
    assert codes("sdd") == [m.REASON_HELD]
    assert codes("sdc") == [m.REASON_MOUNTED]
    assert codes("sde") == [m.REASON_READ_ONLY]
    assert codes("sr0") == [m.REASON_CDROM]
    assert codes("mmcblk0") == [m.REASON_TOO_SMALL]
    assert codes("nvme1c1n1") == [m.REASON_HIDDEN]
    assert codes("md0") == [m.REASON_NOT_DISK, m.REASON_MOUNTED]
    assert codes("dm-0") == [m.REASON_NOT_DISK, m.REASON_SWAP, m.REASON_ROOT_DISK]
    assert codes("dm-1") == [m.REASON_NOT_DISK, m.REASON_MOUNTED]
    assert codes("loop0") == [m.REASON_LOOP]
    assert codes("loop0") != [r.code for r in judge(list(devs.values()), JudgePolicy(allow_loop=True))["loop0"].reasons]


def test_probe_one_by_name_on_fixture(server1: Path) -> None:
    d = probe_one("sda2", str(server1 / "sys"), str(server1 / "dev"), str(server1 / "proc"), run_blkid=False)
    assert d.name == "sda2" and d.parent == "sda" and d.transport == "sata" and d.model == "ST4000NM0035-1V4"
    with pytest.raises(NotFound):
        probe_one("sdz", str(server1 / "sys"), str(server1 / "dev"), str(server1 / "proc"))


@needs_tool("mkfs.xfs")
def test_signatures_from_device_nodes(fixtures_dir: Path, tmp_path: Path) -> None:
    """Image files stand in for device nodes: the probe reads their first bytes like a device's."""
    root = tmp_path / "vm1"
    shutil.copytree(fixtures_dir / "sysfs" / "vm1", root, symlinks=True)
    loops = [d.name for d in _probe_host(root, run_blkid=False) if d.size > 0 and d.transport == "loop"]
    assert loops, "vm1 was captured with an attached loop device"
    image = root / "dev" / loops[0]
    image.parent.mkdir(exist_ok=True)  # git keeps no empty directory: a fresh clone has no vm1/dev
    subprocess.run(["truncate", "-s", "300M", str(image)], check=True)
    subprocess.run(["mkfs.xfs", "-q", "-L", "DIRECTPV-CSI", str(image)], check=True)
    (root / "dev" / "vda").mkdir()  # a node that cannot be read (EISDIR): fields empty, probe still succeeds
    errors: Dict[str, str] = {}
    got = {d.name: d for d in _probe_host(root, run_blkid=False, errors=errors)}
    loop = got[loops[0]]
    assert loop.fs_type == "xfs" and loop.fs_label == "DIRECTPV-CSI" and len(loop.fs_uuid) == 36
    assert "vda" in errors and got["vda"].fs_type == ""
    v = judge(list(got.values()), JudgePolicy(allow_loop=True))
    assert [r.code for r in v[loops[0]].reasons] == [m.REASON_OURS]


def test_udev_data_parser() -> None:
    props, links = parse_udev_data("S:disk/by-id/a\nS:disk/by-path/b\nE:ID_SERIAL=x=y\nE:bad\nI:1\nG:systemd\n")
    assert props == {"ID_SERIAL": "x=y"} and links == ("disk/by-id/a", "disk/by-path/b")


@pytest.mark.parametrize("ref", ["", "   ", "/dev/../etc/passwd", "../sda", "dev/sda", "sda/../sdb"])
def test_probe_one_rejects_bad_refs(ref: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        probe_one(ref)
    assert info.value.hint


def test_probe_one_regular_file_and_not_block(tmp_path: Path) -> None:
    f = tmp_path / "disk.img"
    f.write_bytes(b"x")
    with pytest.raises(InvalidArgument, match="regular file"):
        probe_one(str(f))
    with pytest.raises(InvalidArgument, match="not a block device"):
        probe_one("/dev/null")
    with pytest.raises(InvalidArgument, match="not a block device"):
        probe_one(str(tmp_path))
    with pytest.raises(NotFound):
        probe_one(str(tmp_path / "missing"))
    with pytest.raises(NotFound):
        probe_one("nosuchdev0")


def test_missing_nodes_reported_hidden_paths_not_read(server1: Path) -> None:
    errors: Dict[str, str] = {}
    got = {d.name: d for d in _probe_host(server1, run_blkid=False, errors=errors)}
    assert "sda" in errors and got["sda"].fs_type == "", "no device node in the captured tree: reported, not fatal"
    assert "nvme1c1n1" not in errors, "a hidden NVMe path has no node to read"
    assert "loop1" not in errors, "an empty device is not read"
