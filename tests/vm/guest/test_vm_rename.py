"""A drive keeps its identity when the kernel gives it another name, in the same boot.

The "moving" SCSI disk is formatted by us, then hot-unplugged through the host's QEMU
(QMP ``device_del`` over the harness's control channel); the "spare" disk is plugged
in and takes the freed kernel name; the moving disk is plugged back and comes up
under a new name. The project's code must still recognise it: same drive id (the XFS
UUID we assigned), same hardware id (WWN), adopted instead of re-formatted, and a
state token taken under the old name is stale.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Dict, List

import pytest
from directpv_csi.core.errors import DeviceRefused
from directpv_csi.core.identity import hardware_id, state_token
from directpv_csi.core.models import Device
from directpv_csi.device import format as fmt
from directpv_csi.device.probe import probe, probe_one
from vmhelpers import Control, disk_specs, find_disk

SPECS = disk_specs()


def _gone(name: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/sys/block/{name}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _settle() -> None:
    if os.path.isdir("/run/udev/data"):
        subprocess.run(["udevadm", "settle", "--timeout=60"], check=False)


def _ours(devices: List[Device], drive_id: str) -> List[Device]:
    return [d for d in fmt.find_our_drives(devices) if d.fs_uuid == drive_id]


def test_drive_keeps_its_identity_under_another_name(vm_control: Control) -> None:
    moving, spare = SPECS["moving"], SPECS["spare"]
    old_name = find_disk(moving["serial"], timeout=10)
    assert old_name, "the moving disk is not attached"
    assert find_disk(spare["serial"]) is None, "the spare disk must not be attached yet"

    done = fmt.format_drive(f"/dev/{old_name}", force=True)
    assert isinstance(done, fmt.FormattedDrive)
    before = probe_one(old_name)
    old_token = state_token(before)
    hw = hardware_id(before)
    assert hw == moving["wwn"], f"hardware id of {old_name}: {hw!r}"

    # Unplug it; plug the spare (it takes the free name); plug ours back.
    vm_control.device_del("dev-moving")
    assert _gone(old_name), f"{old_name} still present after device_del"
    vm_control.device_add(spare)
    spare_name = find_disk(spare["serial"], timeout=60)
    assert spare_name, "the spare disk did not appear"
    vm_control.device_add(moving)
    new_name = find_disk(moving["serial"], timeout=60)
    assert new_name, "the moving disk did not come back"
    _settle()

    assert new_name != old_name, "the drive came back under the same name: the scenario did not happen"
    assert spare_name == old_name, f"expected the spare to take {old_name}, it is {spare_name}"

    devices = probe()
    by_name: Dict[str, Device] = {d.name: d for d in devices}
    found = _ours(devices, done.drive_id)
    assert [d.name for d in found] == [new_name], "our drive is not recognised under its new name"
    assert hardware_id(by_name[new_name]) == hw
    assert hardware_id(by_name[old_name]) == spare["wwn"] != hw
    assert by_name[old_name].fs_type == "" and not _ours([by_name[old_name]], done.drive_id)

    # Planning by the new name adopts it (no mkfs); a token taken under the old name is stale.
    plan = fmt.plan_format(f"/dev/{new_name}")
    assert plan.adopt and plan.commands == [] and plan.drive_id == done.drive_id
    assert plan.metadata["hardware_id"] == hw
    with pytest.raises(DeviceRefused):
        fmt.plan_format(f"/dev/{new_name}", expected_token=old_token)
    adopted = fmt.execute_format(plan)
    assert adopted.adopted and adopted.drive_id == done.drive_id
    assert adopted.metadata.get("device") == old_name  # written at format time, under the old name

    if os.path.isdir("/run/udev/data"):
        link = f"/dev/disk/by-id/wwn-{moving['wwn']}"
        assert os.path.realpath(link) == f"/dev/{new_name}", "udev did not move the by-id link"
        assert link in by_name[new_name].by_id
