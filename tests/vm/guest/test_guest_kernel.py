"""The guest itself: the harness booted the stock kernel with what the other guest tests need."""

from __future__ import annotations

import os
import platform

from vmhelpers import disk_specs, find_disk


def test_guest_kernel_is_not_the_host_kernel_and_has_xfs() -> None:
    with open("/proc/1/cmdline", "rb") as f:
        init = f.read().split(b"\0")[0].decode()
    assert init in ("/bin/sh", "sh"), f"PID 1 is {init!r}: not the harness's stage 2"
    assert platform.release().endswith("-amd64"), platform.release()  # Debian's stock kernel
    with open("/proc/filesystems") as f:
        assert "xfs" in f.read().split()


def test_every_attached_disk_is_visible_with_its_serial() -> None:
    for spec in disk_specs().values():
        attach = spec.get("attach", True)
        name = find_disk(spec["serial"], timeout=10 if attach else 0)
        if attach:
            assert name, f"disk {spec['id']} (serial {spec['serial']}) is not visible"
            assert os.path.exists(f"/dev/{name}")
        else:
            assert name is None, f"disk {spec['id']} should not be attached at boot, found as {name}"


def test_root_is_the_host_root_read_only() -> None:
    with open("/proc/self/mountinfo") as f:
        root = [line.split() for line in f if line.split()[4] == "/"]
    assert root, "no mount at /"
    fields = root[-1]
    sep = fields.index("-")
    assert fields[sep + 1] == "9p", fields
    assert "ro" in fields[5].split(","), fields
