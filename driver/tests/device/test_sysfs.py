"""device/sysfs.py over captured trees: server1 (hand-built after real layouts) and vm1 (captured here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from directpv_csi.device import sysfs as S


@pytest.fixture
def server1(fixtures_dir: Path) -> str:
    return str(fixtures_dir / "sysfs" / "server1" / "sys")


def test_list_is_natural_order(server1: str) -> None:
    names = S.list_blocks(server1)
    assert names.index("sda") < names.index("sda1") < names.index("sda2")
    assert set(names) >= {"nvme0n1", "nvme0n1p1", "sr0", "md0", "dm-0", "dm-1", "loop0", "zram0", "mmcblk0"}


def test_nvme_disk(server1: str) -> None:
    b = S.read_block(server1, "nvme0n1")
    assert b is not None
    assert (b.major, b.minor, b.size) == (259, 0, 1953525168 * 512)
    assert b.partitions == ("nvme0n1p1", "nvme0n1p2", "nvme0n1p3")
    assert b.model == "Samsung SSD 980 PRO 1TB" and b.serial == "S5GXNF0R123456"
    assert b.wwn == "eui.002538b911b2c3d4" and b.transport == "nvme"
    assert not b.rotational and not b.is_partition


def test_partition_uses_its_disk(server1: str) -> None:
    b = S.read_block(server1, "sda2")
    assert b is not None
    assert b.is_partition and b.parent == "sda" and b.partition_number == 2
    assert b.holders == ("dm-0", "dm-1")
    assert b.rotational and b.physical_sector_size == 4096, "queue/ comes from the disk"
    assert b.serial == "" and b.wwn == "", "a partition is not the drive: no hardware identity"


@pytest.mark.parametrize(
    ("name", "transport"),
    [
        ("sda", "sata"),
        ("sdb", "sas"),
        ("sdc", "usb"),
        ("sr0", "sata"),
        ("mmcblk0", "mmc"),
        ("md0", "md"),
        ("dm-0", "dm"),
        ("loop0", "loop"),
        ("zram0", "zram"),
        ("nvme1c1n1", "nvme"),
    ],
)
def test_transport(server1: str, name: str, transport: str) -> None:
    b = S.read_block(server1, name)
    assert b is not None and b.transport == transport


def test_scsi_identity_and_flags(server1: str) -> None:
    sda = S.read_block(server1, "sda")
    assert sda is not None
    assert (sda.vendor, sda.model, sda.wwn, sda.scsi_type) == ("ATA", "ST4000NM0035-1V4", "0x5000c500a1b2c3d4", "0")
    sr0 = S.read_block(server1, "sr0")
    assert sr0 is not None and sr0.scsi_type == "5" and sr0.removable and sr0.logical_sector_size == 2048
    sde = S.read_block(server1, "sde")
    assert sde is not None and sde.read_only
    hidden = S.read_block(server1, "nvme1c1n1")
    assert hidden is not None and hidden.hidden


def test_virtual_devices(server1: str) -> None:
    md0 = S.read_block(server1, "md0")
    assert md0 is not None and md0.md_level == "raid1" and md0.slaves == ("sda1", "sdd")
    dm0 = S.read_block(server1, "dm-0")
    assert dm0 is not None and dm0.dm_name == "vg0-swap" and dm0.dm_uuid.startswith("LVM-")
    loop0 = S.read_block(server1, "loop0")
    assert loop0 is not None and loop0.loop_backing_file == "/var/lib/images/disk 1.img" and loop0.size == 2**30


def test_missing_device(server1: str) -> None:
    assert S.read_block(server1, "sdz") is None
    assert S.read_all("/nonexistent") == []


def test_captured_vm(fixtures_dir: Path) -> None:
    """This machine as captured by make_fixtures.py --capture vm1 (virtio disk, loop devices, zram)."""
    blocks = {b.name: b for b in S.read_all(str(fixtures_dir / "sysfs" / "vm1" / "sys"))}
    vda = blocks["vda"]
    assert vda.transport == "virtio" and vda.serial and vda.size > 0 and vda.majmin.startswith("254:")
    attached = [b for b in blocks.values() if b.loop_backing_file]
    assert attached and all(b.transport == "loop" and b.size > 0 for b in attached)


@pytest.mark.parametrize(
    ("raw", "canon"),
    [("naa.5000C500A1B2C3D4", "0x5000c500a1b2c3d4"), ("0x5000C5", "0x5000c5"), ("eui.00253", "eui.00253"), ("", "")],
)
def test_normalize_wwn(raw: str, canon: str) -> None:
    assert S.normalize_wwn(raw) == canon


def test_parse_uevent() -> None:
    assert S.parse_uevent("MAJOR=8\nMINOR=0\nDEVNAME=sda\nbad\n") == {"MAJOR": "8", "MINOR": "0", "DEVNAME": "sda"}


@pytest.mark.parametrize("root", ["server1", "vm1", "/"])
def test_read_all_and_read_block_agree(fixtures_dir: Path, root: str) -> None:
    """The bulk path (via dev/block, parents read once) and the one-device path see the same facts."""
    sys_root = "/sys" if root == "/" else str(fixtures_dir / "sysfs" / root / "sys")
    bulk = S.read_all(sys_root)
    assert bulk
    for b in bulk:
        if root == "/" and b.name.startswith("loop"):
            continue  # other tests attach and detach loop devices meanwhile; vm1 covers loop devices
        one = S.read_block(sys_root, b.name)
        assert one is not None
        if b.is_partition:  # read_all copies the disk's make onto its partitions; read_block leaves that to probe
            one.transport, one.vendor, one.model = b.transport, b.vendor, b.model
        assert one == b, b.name


def test_class_block_fallback_without_dev_block(fixtures_dir: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "sys"
    shutil.copytree(fixtures_dir / "sysfs" / "server1" / "sys", root, symlinks=True)
    shutil.rmtree(root / "dev")
    names = {b.name for b in S.read_all(str(root))}
    assert names == {b.name for b in S.read_all(str(fixtures_dir / "sysfs" / "server1" / "sys"))}


def test_scsi_unit_serial_from_vpd_page(server1: str) -> None:
    sda = S.read_block(server1, "sda")
    assert sda is not None and sda.serial == "ZC1A2B3C", "VPD page 0x80 (no udev needed)"


@pytest.mark.parametrize(
    ("page", "serial"),
    [
        (b"\x00\x80\x00\x0e" + b"DPV-SCSI-0001\x00", "DPV-SCSI-0001"),
        (b"\x00\x80\x00\x08" + b"  ABC123", "ABC123"),
        (b"\x00\x83\x00\x04abcd", ""),  # another page
        (b"\x00\x80", ""),
        (b"", ""),
    ],
)
def test_parse_vpd_serial(page: bytes, serial: str) -> None:
    assert S.parse_vpd_serial(page) == serial
