"""Fixtures of the tests that run inside the QEMU guest (tests/vm/run.sh boots it).

Outside the guest every test here skips with the reason: these tests need the
guest's kernel (XFS quota, partition tables, udevd, the virtual disks of
disks.json). Inside, ``DIRECTPV_VM=1`` and ``DIRECTPV_VM_WORK`` (the work share)
are set by tests/vm/stage2.sh.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from vmhelpers import Control, disk_specs, find_disk

HERE = Path(__file__).resolve().parent
IN_VM = os.environ.get("DIRECTPV_VM") == "1"

# The self-test's deliberately broken test runs only when its file is named explicitly
# (tests/vm/run.sh --self-test, and the canary of every default run).
collect_ignore = ["selftest"]


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="runs only inside the QEMU guest: bash tests/vm/run.sh")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.vm)
            if not IN_VM:
                item.add_marker(skip)


@pytest.fixture
def vm_disk() -> Callable[[str], str]:
    """``vm_disk(id) -> kernel name`` of an attached disk of disks.json (fails if it is missing)."""
    specs = disk_specs()

    def get(disk_id: str) -> str:
        name = find_disk(specs[disk_id]["serial"], timeout=10)
        assert name, f"disk {disk_id} (serial {specs[disk_id]['serial']}) is not attached to the guest"
        return name

    return get


@pytest.fixture
def vm_control() -> Iterator[Control]:
    work = os.environ.get("DIRECTPV_VM_WORK", "")
    assert work, "DIRECTPV_VM_WORK is not set: run through tests/vm/run.sh"
    yield Control(Path(work))


@pytest.fixture
def mount_dir(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``mount_dir(name) -> path`` of a fresh directory; anything mounted there is unmounted at teardown."""
    from directpv_csi.device import mount as _mount

    made: List[str] = []

    def make(name: str) -> str:
        p = tmp_path / name
        p.mkdir()
        made.append(str(p))
        return str(p)

    yield make
    for p in reversed(made):
        while _mount.is_mountpoint(p):
            _mount.unmount(p)
