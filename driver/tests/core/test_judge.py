"""core/judge.py: every reason a device is refused, on hand-made devices (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, List, Optional, Sequence

import pytest
from directpv_csi.core import models as m
from directpv_csi.core.judge import REASON_TEXTS, JudgePolicy, judge, root_disk_names
from directpv_csi.core.models import Device

GiB = 2**30
MiB = 2**20


def disk(name: str = "sdx", **kw: Any) -> Device:
    base = dict(name=name, major=8, minor=0, size=10 * GiB, transport="sata")
    base.update(kw)
    return Device(**base)  # type: ignore[arg-type]


def codes(devices: Sequence[Device], name: str, policy: Optional[JudgePolicy] = None) -> List[str]:
    return [r.code for r in judge(devices, policy or JudgePolicy())[name].reasons]


def test_plain_disk_is_available() -> None:
    v = judge([disk()])["sdx"]
    assert v.available and v.available_with_force and v.description == ""


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"size": 100 * MiB}, m.REASON_TOO_SMALL),
        ({"size": 512 * MiB - 1}, m.REASON_TOO_SMALL),
        ({"hidden": True}, m.REASON_HIDDEN),
        ({"read_only": True}, m.REASON_READ_ONLY),
        ({"partitions": ("sdx1", "sdx2")}, m.REASON_PARTITIONED),
        ({"holders": ("dm-3",)}, m.REASON_HELD),
        ({"mountpoints": ("/data",)}, m.REASON_MOUNTED),
        ({"cdrom": True}, m.REASON_CDROM),
        ({"name": "sr0"}, m.REASON_CDROM),
        ({"name": "loop7", "transport": "loop"}, m.REASON_LOOP),
        ({"name": "dm-2", "transport": "dm", "dm_name": "vg-lv"}, m.REASON_NOT_DISK),
        ({"name": "md5", "transport": "md", "md_level": "raid1"}, m.REASON_NOT_DISK),
        ({"name": "zram1", "transport": "zram"}, m.REASON_NOT_DISK),
        ({"name": "ram0", "transport": "ram"}, m.REASON_NOT_DISK),
        ({"fs_type": "xfs", "fs_label": "DIRECTPV-CSI", "fs_uuid": "u"}, m.REASON_OURS),
        ({"fs_type": "xfs", "fs_label": "DIRECTPV", "fs_uuid": "u", "drive_kind": "directpv-csi-v1"}, m.REASON_OURS),
        ({"fs_type": "xfs", "fs_label": "DIRECTPV", "fs_uuid": "u"}, m.REASON_UNVERIFIED),
        ({"fs_type": "xfs", "fs_label": "DIRECTPV", "drive_kind": "unverified"}, m.REASON_UNVERIFIED),
        ({"fs_type": "xfs", "fs_label": "DIRECTPV", "drive_kind": "minio-directpv"}, m.REASON_DIRECTPV),
        ({"fs_type": "ext4", "fs_uuid": "u"}, m.REASON_HAS_FILESYSTEM),
        ({"fs_type": "xfs", "fs_label": "other"}, m.REASON_HAS_FILESYSTEM),
        ({"fs_type": "LVM2_member"}, m.REASON_HAS_FILESYSTEM),
        ({"partition_table": "gpt"}, m.REASON_HAS_PARTITION_TABLE),
    ],
)
def test_each_reason(kw: Any, code: str) -> None:
    dev = disk(**kw)
    got = judge([dev])[dev.name]
    assert code in [r.code for r in got.reasons]
    assert not got.available
    for r in got.reasons:
        assert r.text and r.code in REASON_TEXTS


def test_swap_is_refused_and_its_disk_is_a_root_disk() -> None:
    got = codes([disk(swap=True)], "sdx")
    assert m.REASON_SWAP in got and m.REASON_ROOT_DISK in got


def test_min_size_boundary_and_policy() -> None:
    assert codes([disk(size=512 * MiB)], "sdx") == []
    assert codes([disk(size=512 * MiB - 512)], "sdx") == [m.REASON_TOO_SMALL]
    assert codes([disk(size=2 * GiB)], "sdx", JudgePolicy(min_size=4 * GiB)) == [m.REASON_TOO_SMALL]
    text = judge([disk(size=100 * MiB)])["sdx"].reasons[0].text
    assert "100 MiB" in text and "512 MiB" in text


def test_loop_allowed_only_by_policy() -> None:
    loop = disk("loop3", major=7, minor=3, transport="loop", loop_backing_file="/x.img")
    assert codes([loop], "loop3") == [m.REASON_LOOP]
    assert codes([loop], "loop3", JudgePolicy(allow_loop=True)) == []


def test_removable_allowed_by_default_refused_by_policy() -> None:
    usb = disk(removable=True, transport="usb")
    assert codes([usb], "sdx") == []
    assert codes([usb], "sdx", JudgePolicy(allow_removable=False)) == [m.REASON_REMOVABLE]


def test_every_reason_listed_not_just_the_first() -> None:
    dev = disk(size=10 * MiB, read_only=True, hidden=True, mountpoints=("/b", "/a"), fs_type="ext4", holders=("md0",))
    got = codes([dev], "sdx")
    assert got == [
        m.REASON_TOO_SMALL,
        m.REASON_HIDDEN,
        m.REASON_READ_ONLY,
        m.REASON_HELD,
        m.REASON_MOUNTED,
        m.REASON_HAS_FILESYSTEM,
    ]
    assert "mounted at /a, /b" in judge([dev])["sdx"].description


def test_forceable_only_for_filesystem_and_partition_table() -> None:
    v = judge([disk(fs_type="ext4", partition_table="dos")])["sdx"]
    assert not v.available and v.available_with_force
    assert all(r.forceable for r in v.reasons)
    v = judge([disk(fs_type="xfs", mountpoints=("/mnt",))])["sdx"]
    assert not v.available_with_force
    v = judge([disk(fs_type="xfs", fs_label="DIRECTPV-CSI")])["sdx"]
    assert [r.forceable for r in v.reasons] == [False], "ours is adopted, never formatted again by force"


def _directpv(**kw: Any) -> Device:
    return disk(fs_type="xfs", fs_label="DIRECTPV", fs_uuid="0a1b", drive_kind="minio-directpv", **kw)


def test_directpv_drive_with_volumes_is_never_forceable_and_says_what_it_holds() -> None:
    v = judge([_directpv(contents=m.Contents(used_bytes=3 * MiB, volume_dirs=2))])["sdx"]
    assert [(r.code, r.forceable) for r in v.reasons] == [(m.REASON_DIRECTPV, False)]
    text = v.reasons[0].text
    assert "MinIO DirectPV drive" in text and "2 volume directories" in text and "3 MiB" in text
    assert "migration" in text and "format" not in text.replace("formatted while", "")
    # Contents unknown: it may hold volumes, so it is never formatted either.
    assert [r.forceable for r in judge([_directpv()])["sdx"].reasons] == [False]


def test_empty_directpv_drive_is_a_filesystem_with_data() -> None:
    c = m.Contents(files=1, directories=1, used_bytes=MiB, walked=True)
    v = judge([_directpv(contents=c)])["sdx"]
    assert [(r.code, r.forceable) for r in v.reasons] == [(m.REASON_DIRECTPV, True), (m.REASON_HAS_DATA, True)]


def test_directpv_label_is_never_ours_unless_the_files_say_so() -> None:
    for kind in ("", "unverified", "unclaimed", "minio-directpv"):
        dev = disk(fs_type="xfs", fs_label="DIRECTPV", drive_kind=kind)
        assert m.REASON_OURS not in codes([dev], "sdx"), kind
    for kind in ("directpv-csi-v1", "directpv-csi-imported"):
        assert codes([disk(fs_type="xfs", fs_label="DIRECTPV", drive_kind=kind)], "sdx") == [m.REASON_OURS]


def test_data_on_a_filesystem_is_a_reason_only_once_counted() -> None:
    assert codes([disk(fs_type="ext4")], "sdx") == [m.REASON_HAS_FILESYSTEM]
    empty = m.Contents(walked=True)
    assert codes([disk(fs_type="ext4", contents=empty)], "sdx") == [m.REASON_HAS_FILESYSTEM]
    full = m.Contents(files=12, directories=3, data_bytes=5 * MiB, used_bytes=6 * MiB, walked=True)
    v = judge([disk(fs_type="ext4", contents=full)])["sdx"]
    assert [r.code for r in v.reasons] == [m.REASON_HAS_FILESYSTEM, m.REASON_HAS_DATA]
    assert "12 file(s), 3 directories, 5 MiB in files, 6 MiB in use" in v.reasons[1].text
    assert v.available_with_force
    # Could not be read (LVM, LUKS...): counted as data.
    v = judge([disk(fs_type="LVM2_member", inspect_error="cannot mount")])["sdx"]
    assert [r.code for r in v.reasons] == [m.REASON_HAS_FILESYSTEM, m.REASON_HAS_DATA]


def test_partitioned_disk_refused_but_its_free_partition_usable() -> None:
    devs = [
        disk("sdb", partitions=("sdb1", "sdb2"), partition_table="gpt"),
        disk("sdb1", minor=17, is_partition=True, parent="sdb", partition_number=1, mountpoints=("/srv",)),
        disk("sdb2", minor=18, is_partition=True, parent="sdb", partition_number=2),
    ]
    v = judge(devs)
    assert [r.code for r in v["sdb"].reasons] == [m.REASON_PARTITIONED, m.REASON_HAS_PARTITION_TABLE]
    assert [r.code for r in v["sdb1"].reasons] == [m.REASON_MOUNTED]
    assert v["sdb2"].available


def _root_lvm_md_host() -> List[Device]:
    """/ on LVM (dm-0 over sda2), /boot on md0 (RAID1 of sdb1 + sdc1), /boot/efi on nvme0n1p1."""
    return [
        disk("sda", partitions=("sda1", "sda2")),
        disk("sda1", is_partition=True, parent="sda"),
        disk("sda2", is_partition=True, parent="sda", holders=("dm-0",)),
        disk("dm-0", transport="dm", dm_name="vg-root", slaves=("sda2",), mountpoints=("/",)),
        disk("sdb", partitions=("sdb1",)),
        disk("sdb1", is_partition=True, parent="sdb", holders=("md0",)),
        disk("sdc", partitions=("sdc1",)),
        disk("sdc1", is_partition=True, parent="sdc", holders=("md0",)),
        disk("md0", transport="md", md_level="raid1", slaves=("sdb1", "sdc1"), mountpoints=("/boot",)),
        disk("nvme0n1", transport="nvme", partitions=("nvme0n1p1", "nvme0n1p2")),
        disk("nvme0n1p1", is_partition=True, parent="nvme0n1", mountpoints=("/boot/efi",)),
        disk("nvme0n1p2", is_partition=True, parent="nvme0n1"),
        disk("sdd"),
        disk("sde", mountpoints=("/var/lib/data",)),
    ]


def test_root_disk_followed_through_dm_md_and_partitions() -> None:
    devs = _root_lvm_md_host()
    roots = root_disk_names(devs)
    assert roots == {"dm-0", "sda2", "sda", "md0", "sdb1", "sdb", "sdc1", "sdc", "nvme0n1p1", "nvme0n1"}
    v = judge(devs)
    for name in ("sda", "sdb", "sdc", "nvme0n1", "sda2", "sdb1", "sdc1"):
        assert m.REASON_ROOT_DISK in [r.code for r in v[name].reasons], name
    assert [r.code for r in v["sda2"].reasons] == [m.REASON_HELD, m.REASON_ROOT_DISK]
    assert "dm-0 (vg-root)" in v["sda2"].description
    assert "md0 (raid1)" in v["sdb1"].description
    assert v["sdd"].available
    assert v["nvme0n1p2"].available, "a free partition beside the EFI partition is not itself a system device"
    assert m.REASON_ROOT_DISK not in [r.code for r in v["sde"].reasons], "/var/lib/data is not a system mount"


def test_verdicts_cover_every_device_and_are_stable() -> None:
    devs = _root_lvm_md_host()
    a = judge(devs)
    b = judge(list(reversed(devs)))
    assert set(a) == {d.name for d in devs}
    assert a == b


def test_reason_texts_cover_every_code() -> None:
    all_codes = {v for k, v in vars(m).items() if k.startswith("REASON_") and isinstance(v, str)}
    assert all_codes == set(REASON_TEXTS)


def test_device_changes_change_verdict() -> None:
    d = disk()
    assert judge([d])["sdx"].available
    assert not judge([replace(d, mountpoints=("/x",))])["sdx"].available
