"""Helpers of the guest tests (imported by conftest.py and the tests): the virtual
disks of disks.json, found by serial straight from sysfs, and the control channel
to the host (QMP commands such as disk hot-unplug/plug)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

HERE = Path(__file__).resolve().parent


def disk_specs() -> Dict[str, Dict[str, Any]]:
    """disks.json by id: what the harness attached (or holds ready for hot-plug)."""
    return {d["id"]: d for d in json.loads((HERE / "disks.json").read_text())}


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def sysfs_serial(name: str) -> str:
    """Serial of a disk straight from sysfs (independent of the code under test):
    virtio ``serial``, NVMe ``device/serial``, SCSI unit serial VPD page 0x80."""
    s = _read(f"/sys/block/{name}/serial") or _read(f"/sys/block/{name}/device/serial")
    if s:
        return s
    try:
        with open(f"/sys/block/{name}/device/vpd_pg80", "rb") as f:
            page = f.read()
    except OSError:
        return ""
    return page[4:].decode("ascii", "replace").strip("\0 ")


def find_disk(serial: str, timeout: float = 0.0) -> Optional[str]:
    """Kernel name of the whole disk with this serial (None if absent after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        for name in sorted(os.listdir("/sys/block")):
            if sysfs_serial(name) == serial:
                return name
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


class Control:
    """Ask the host to run a QMP command (tests/vm/harness.py serves ``ctl/req-*.json``)."""

    def __init__(self, work: Path) -> None:
        self.ctl = work / "ctl"
        self.n = 0

    def qmp(self, execute: str, timeout: float = 60, **arguments: Any) -> Dict[str, Any]:
        self.n += 1
        tag = f"{os.getpid()}-{self.n}"
        req = self.ctl / f"req-{tag}.json"
        tmp = self.ctl / f".req-{tag}.tmp"
        tmp.write_text(json.dumps({"execute": execute, "arguments": arguments}))
        tmp.rename(req)
        resp = self.ctl / f"resp-{tag}.json"
        deadline = time.monotonic() + timeout
        while not resp.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"host did not answer QMP {execute} within {timeout} s")
            time.sleep(0.2)
        reply: Dict[str, Any] = json.loads(resp.read_text())
        if "error" in reply:
            raise RuntimeError(f"QMP {execute} {arguments}: {reply['error']}")
        return reply

    def device_del(self, dev_id: str) -> None:
        self.qmp("device_del", id=dev_id)

    def device_add(self, spec: Dict[str, Any]) -> None:
        args: Dict[str, Any] = {
            "driver": {"virtio": "virtio-blk-pci", "scsi": "scsi-hd", "nvme": "nvme"}[spec["bus"]],
            "drive": spec["id"],
            "id": "dev-" + spec["id"],
        }
        if spec["bus"] == "scsi":
            args["bus"] = "scsi0.0"
        for key in ("serial", "wwn", "vendor", "product"):
            if spec.get(key):
                args[key] = spec[key]
        self.qmp("device_add", **args)
