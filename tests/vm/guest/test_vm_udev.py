"""udev properties of real (virtual) drives reach the probe and the drive identity.

The harness starts Debian's systemd-udevd in the guest; the disks of disks.json carry
serials (virtio-blk, NVMe) and a WWN, vendor and product (virtio-scsi). On the host
there is no udevd and no such disks.
"""

from __future__ import annotations

import os
from typing import Dict

import pytest
from directpv_csi.core.identity import hardware_id
from directpv_csi.core.models import Device
from directpv_csi.device.probe import probe
from vmhelpers import disk_specs, find_disk

SPECS = disk_specs()


@pytest.fixture(scope="module")
def devices() -> Dict[str, Device]:
    if not os.path.isdir("/run/udev/data"):
        pytest.fail("udevd is not running in the guest (tests/vm/run.sh was given --no-udev?)")
    out = {}
    for d in probe():
        if d.is_partition:
            continue
        for spec in SPECS.values():
            if spec["serial"] in (d.serial, d.udev.get("ID_SERIAL_SHORT"), d.udev.get("ID_SCSI_SERIAL")):
                out[spec["id"]] = d
    return out


def test_scsi_disk_wwn_vendor_model(devices: Dict[str, Device]) -> None:
    spec = SPECS["scsi"]
    d = devices["scsi"]
    assert d.name.startswith("sd")
    assert d.udev.get("ID_SCSI_SERIAL") == spec["serial"]  # VPD page 0x80, from scsi_id run by udev's rules
    # The unit serial, not udev's ID_SERIAL_SHORT (which is the WWN on a SCSI disk that has one).
    assert d.serial == spec["serial"]
    assert d.wwn == spec["wwn"]
    assert d.udev.get("ID_WWN") == spec["wwn"]
    assert (d.vendor, d.model) == (spec["vendor"], spec["product"])
    assert f"/dev/disk/by-id/wwn-{spec['wwn']}" in d.by_id, d.by_id
    assert any(link.startswith("/dev/disk/by-id/scsi-") for link in d.by_id), d.by_id
    assert hardware_id(d) == spec["wwn"]
    assert d.transport == "scsi", d.transport


def test_virtio_disk_serial(devices: Dict[str, Device]) -> None:
    spec = SPECS["quota"]
    d = devices["quota"]
    assert d.name.startswith("vd")
    assert d.serial == spec["serial"]
    assert d.udev.get("ID_SERIAL") == spec["serial"]
    assert f"/dev/disk/by-id/virtio-{spec['serial']}" in d.by_id, d.by_id
    assert hardware_id(d) == spec["serial"]  # no WWN on virtio-blk: the serial is the identity


def test_nvme_disk_serial_and_model(devices: Dict[str, Device]) -> None:
    spec = SPECS["nvme"]
    d = devices["nvme"]
    assert d.name.startswith("nvme")
    assert d.serial == spec["serial"]
    assert d.transport == "nvme"
    assert d.model, "NVMe model not probed"
    assert d.udev.get("ID_SERIAL_SHORT") == spec["serial"]
    assert any(link.startswith("/dev/disk/by-id/nvme-") and spec["serial"] in link for link in d.by_id), d.by_id
    assert hardware_id(d) in (d.wwn, spec["serial"]) and hardware_id(d)


def test_hardware_ids_are_distinct(devices: Dict[str, Device]) -> None:
    # Every disk attached at boot, plus the spare if test_vm_rename.py hot-plugged it already.
    attached = [s["id"] for s in SPECS.values() if s.get("attach", True) or find_disk(s["serial"])]
    assert sorted(devices) == sorted(attached), f"disks found by serial: {sorted(devices)}"
    ids = [hardware_id(devices[k]) for k in attached]
    assert all(ids) and len(set(ids)) == len(ids), ids
