"""Block-device uevents (node/uevents.py) from the real kernel: loop devices attached and
detached while a pyudev netlink monitor listens, and the drive registry reacting at once.

Other engineers attach loop devices on the same kernel at the same time: every assertion is
about this test's own devices (by name in ``seen``) or allows foreign events to add calls.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Callable, List

import pytest
from directpv_csi.core.models import DRIVE_LOST, DRIVE_READY
from directpv_csi.node.registry import DriveRegistry
from directpv_csi.node.uevents import UeventMonitor, default_source
from directpv_csi.store.embedded import EmbeddedStore
from node.node_helpers import (
    OurDrive,
    attach,
    detach,
)

from testsupport import backing_file

pytest.importorskip("pyudev", reason="pyudev (the driver's 'udev' extra) is not installed")


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


class Calls:
    def __init__(self) -> None:
        self.at: List[float] = []

    def __call__(self) -> None:
        self.at.append(time.monotonic())


def test_default_source_follows_udevd(tmp_path: Path) -> None:
    assert default_source(str(tmp_path / "absent")) == "kernel"
    (tmp_path / "control").touch()
    assert default_source(str(tmp_path / "control")) == "udev"


def test_bad_debounce_is_refused() -> None:
    with pytest.raises(ValueError, match="debounce_s"):
        UeventMonitor(lambda: None, debounce_s=2.0, max_delay_s=1.0)


@pytest.mark.root
def test_attach_and_detach_each_trigger_one_call(loopdev: Callable[..., str]) -> None:
    calls = Calls()
    mon = UeventMonitor(calls, debounce_s=0.2, source="kernel")
    assert mon.start(), "a kernel uevent monitor must start as root in the host's network namespace"
    try:
        dev = loopdev("64M")
        name = dev.rsplit("/", 1)[1]
        assert wait_for(lambda: any(n == name for _, n in mon.seen)), f"no uevent for {name}: {list(mon.seen)}"
        assert wait_for(lambda: len(calls.at) >= 1)
        n = len(calls.at)
        t0 = time.monotonic()
        detach(dev)
        assert wait_for(lambda: len(calls.at) > n), "detaching a loop device triggered no call"
        assert calls.at[-1] - t0 < 2.0, "the call must come at once (debounce 0.2 s), not at a scan"
        assert sum(1 for _, n2 in mon.seen if n2 == name) >= 2
    finally:
        mon.stop()


@pytest.mark.root
def test_a_burst_is_one_call(loopdev: Callable[..., str], tmp_path: Path) -> None:
    first = loopdev("64M")  # a backing file of ours to attach repeatedly
    file = Path(subprocess.run(["losetup", "--noheadings", "-O", "BACK-FILE", first], check=True,
                               capture_output=True, text=True).stdout.strip())
    detach(first)
    calls = Calls()
    mon = UeventMonitor(calls, debounce_s=0.6, max_delay_s=5.0, source="kernel")
    assert mon.start()
    attached: List[str] = []
    try:
        time.sleep(0.7)  # let a foreign event just before the burst fire its own call
        before_calls, before_events = len(calls.at), mon.events
        for _ in range(5):  # about 10 ms apart: one burst
            dev = attach(file)
            attached.append(dev)
            detach(dev)
            attached.pop()
        assert wait_for(lambda: len(calls.at) > before_calls, timeout=5)
        time.sleep(0.8)
        burst_events = mon.events - before_events
        burst_calls = len(calls.at) - before_calls
        assert burst_events >= 10, f"5 attach/detach pairs gave only {burst_events} uevents"
        assert burst_calls == 1 or (burst_calls == 2 and burst_events > 10), (
            f"{burst_events} events became {burst_calls} calls (debounced: one, or two with a foreign event)"
        )
    finally:
        for dev in attached:
            detach(dev)
        mon.stop()


@pytest.mark.root
def test_an_endless_stream_still_calls_within_max_delay(loopdev: Callable[..., str]) -> None:
    dev = loopdev("64M")
    file = Path(subprocess.run(["losetup", "--noheadings", "-O", "BACK-FILE", dev], check=True,
                               capture_output=True, text=True).stdout.strip())
    detach(dev)
    calls = Calls()
    mon = UeventMonitor(calls, debounce_s=0.5, max_delay_s=0.6, source="kernel")
    assert mon.start()
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:  # events every ~50 ms: never 0.5 s of quiet
            d = attach(file)
            detach(d)
            time.sleep(0.05)
        during = [t for t in calls.at if t0 < t < t0 + 2.5]
        assert len(during) >= 2, f"max_delay 0.6 s over a 2.5 s stream gave {len(during)} calls"
    finally:
        mon.stop()


@pytest.mark.root
def test_stop_is_prompt_and_final() -> None:
    calls = Calls()
    mon = UeventMonitor(calls, source="kernel")
    assert mon.start() and mon.running
    t0 = time.monotonic()
    mon.stop()
    assert time.monotonic() - t0 < 1.0
    assert not mon.running
    mon.stop()  # twice is harmless


@pytest.mark.root
def test_registry_sees_a_plugged_drive_at_once_and_its_removal(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive]
) -> None:
    """A drive formatted elsewhere is plugged in (attached) while the node runs with a periodic
    scan of an hour: only the uevent can make it Ready within seconds; unplugged, it is Lost."""
    drive = make_drive()
    detach(drive.dev)
    registry.start(3600)
    mon = UeventMonitor(registry.request_sync, debounce_s=0.2, source="kernel")
    assert mon.start()
    dev = ""
    try:
        assert registry.drive_mount(drive.drive_id) is None
        dev = attach(drive.backing)
        assert wait_for(lambda: registry.drive_mount(drive.drive_id) is not None, timeout=10), (
            f"the plugged drive was not mounted within 10 s (uevents seen: {list(mon.seen)[-5:]})"
        )
        rec = registry.drive_record(drive.drive_id)
        assert rec is not None and rec.status == DRIVE_READY and rec.name == os.path.basename(dev)
        # Unplugged: lazily unmounted by the registry, recorded Lost.
        subprocess.run(["umount", "-l", str(registry.drive_mount(drive.drive_id))], check=False)
        detach(dev)
        assert wait_for(lambda: (registry.drive_record(drive.drive_id) or rec).status == DRIVE_LOST, timeout=10)
    finally:
        mon.stop()
        registry.stop()
        # Detach only while the name still points at our file (it may have been reused since).
        if dev and backing_file(dev) in (str(drive.backing), f"{drive.backing} (deleted)"):
            subprocess.run(["umount", "-l", dev], capture_output=True)
            detach(dev)
