"""A GPT-partitioned disk on a real kernel: probed, judged "partitioned", its partitions
selected and formatted through the project's probe/judge/selection/format code.

The host kernel has no partition-table support (loop devices never show partitions):
only here do /sys/block/<disk>/<disk>N exist.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Iterator, List

import pytest
from directpv_csi.core.errors import DeviceRefused
from directpv_csi.core.judge import JudgePolicy, judge
from directpv_csi.core.models import REASON_HAS_PARTITION_TABLE, REASON_OURS, REASON_PARTITIONED
from directpv_csi.core.selection import DriveRequest, select
from directpv_csi.device import format as fmt
from directpv_csi.device.probe import probe, probe_one

GiB = 1024**3
MiB = 1024**2


def _wait_partitions(disk: str, want: int, timeout: float = 30) -> List[str]:
    deadline = time.monotonic() + timeout
    while True:
        parts = sorted(p for p in os.listdir(f"/sys/block/{disk}") if p.startswith(disk))
        if len(parts) == want or time.monotonic() > deadline:
            return parts
        time.sleep(0.2)


@pytest.fixture(scope="module")
def parted_disk() -> Iterator[str]:
    """The "parted" disk with a fresh GPT: two 700 MiB partitions and a 100 MiB one."""
    from vmhelpers import disk_specs, find_disk

    name = find_disk(disk_specs()["parted"]["serial"], timeout=10)
    assert name, "the parted disk is not attached"
    dev = f"/dev/{name}"
    subprocess.run(["sgdisk", "--zap-all", dev], check=True, capture_output=True)
    subprocess.run(
        ["sgdisk", "-n1:0:+700M", "-c1:data1", "-n2:0:+700M", "-c2:data2", "-n3:0:+100M", "-c3:tiny", dev],
        check=True,
        capture_output=True,
    )
    subprocess.run(["blockdev", "--rereadpt", dev], check=False, capture_output=True)
    parts = _wait_partitions(name, 3)
    assert len(parts) == 3, f"the kernel did not read the GPT of {dev}: {parts}"
    yield name


def test_probe_sees_the_partition_table_and_partitions(parted_disk: str) -> None:
    devs = {d.name: d for d in probe()}
    disk = devs[parted_disk]
    assert disk.partition_table == "gpt"
    assert set(disk.partitions) == {f"{parted_disk}{i}" for i in (1, 2, 3)}
    p1 = devs[f"{parted_disk}1"]
    assert p1.is_partition and p1.parent == parted_disk and p1.partition_number == 1
    assert 699 * MiB <= p1.size <= 700 * MiB


def test_disk_is_judged_partitioned_and_partitions_available(parted_disk: str) -> None:
    devices = probe()
    verdicts = judge(devices, JudgePolicy())
    codes = {r.code for r in verdicts[parted_disk].reasons}
    assert REASON_PARTITIONED in codes, verdicts[parted_disk]
    assert not verdicts[parted_disk].available_with_force  # a partitioned disk is never formatted whole
    assert REASON_HAS_PARTITION_TABLE in codes
    assert verdicts[f"{parted_disk}1"].available, verdicts[f"{parted_disk}1"]
    assert verdicts[f"{parted_disk}2"].available
    assert not verdicts[f"{parted_disk}3"].available  # 100 MiB: too small


def test_whole_disk_format_is_refused_even_with_force(parted_disk: str) -> None:
    with pytest.raises(DeviceRefused) as exc:
        fmt.plan_format(f"/dev/{parted_disk}", force=True)
    assert REASON_PARTITIONED in exc.value.reasons


def test_partitions_are_selected_and_formatted(parted_disk: str) -> None:
    devices = probe()
    verdicts = judge(devices, JudgePolicy())
    p1, p2, p3 = (f"{parted_disk}{i}" for i in (1, 2, 3))
    sel = select(devices, verdicts, requests=[DriveRequest(f"/dev/{p1}"), DriveRequest(p2)])
    assert sel.ok, [str(p) for p in sel.problems]
    assert sorted(c.name for c in sel.selected) == [p1, p2]
    rejected = {r.name: r for r in sel.rejected}
    assert REASON_PARTITIONED in rejected[parted_disk].codes

    for chosen in sel.selected:
        done = fmt.format_drive(chosen.path, expected_token=chosen.expected_token or None)
        assert isinstance(done, fmt.FormattedDrive)
        assert done.device.name == chosen.name
        assert 600 * MiB < done.capacity <= 700 * MiB

    after = {d.name: d for d in probe()}
    assert after[p1].fs_type == "xfs" and after[p2].fs_type == "xfs"
    assert after[p1].fs_uuid != after[p2].fs_uuid
    ours = {d.name for d in fmt.find_our_drives(list(after.values()))}
    assert {p1, p2} <= ours and parted_disk not in ours and p3 not in ours
    verdicts = judge(list(after.values()), JudgePolicy())
    assert REASON_OURS in {r.code for r in verdicts[p1].reasons}
    # Re-planning a formatted partition adopts it instead of formatting again.
    plan = fmt.plan_format(f"/dev/{p1}")
    assert plan.adopt and plan.commands == [] and plan.drive_id == after[p1].fs_uuid
    assert probe_one(p2).parent == parted_disk
