"""Fixtures shared by the driver's and the collection's tests.

Real devices only: loop devices over sparse files, removed by the exact name
they were given. Tests that need root or a tool skip with the reason.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from directpv_csi.device.mountinfo import parse_mountinfo

from testsupport import FIXTURES, backing_file, is_root

# Fixtures shared across test directories, registered once here (pytest only honours
# pytest_plugins in the root conftest; no conftest re-imports fixtures): the standalone CSI
# process and short socket dirs (csi/, observe/), the node service on loop drives (node/, csi/),
# the real control plane (one kube-apiserver + etcd for the session, tests/kube) and a kube store
# cluster on it (store contract, csi-sanity in kube mode, install playbooks), the ansible-playbook
# runner (tests/playbooks, tests/realnode). Closer conftest.py files override by name
# (driver/tests/store/conftest.py defines its own `store`).
pytest_plugins = ["csi.csi_helpers", "node.node_helpers", "kube.controlplane", "kube.cluster",
                  "playbooks.playbook_helpers"]


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def _mounted_from(dev: str) -> List[str]:
    """Mount points whose source is exactly ``dev`` (deepest first)."""
    st = os.stat(dev)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = parse_mountinfo(f.read())
    points = [m.mount_point for m in mounts if (m.major, m.minor) == (os.major(st.st_rdev), os.minor(st.st_rdev))]
    return sorted(points, key=len, reverse=True)


@pytest.fixture
def loopdev(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """``loopdev(size="400M", read_only=False) -> "/dev/loopN"``.

    Sparse backing files live in the test's tmp_path. At teardown each device this
    fixture attached is swapped off, unmounted and detached by its exact name.
    """
    if not is_root():
        pytest.skip("needs root to attach loop devices; CI runs as root")
    created: List[str] = []
    backings: List[Path] = []

    def make(size: str = "400M", read_only: bool = False) -> str:
        backing = tmp_path / f"drive{len(created)}.img"
        subprocess.run(["truncate", "-s", size, str(backing)], check=True)
        cmd = ["losetup", "--find", "--show"] + (["--read-only"] if read_only else []) + [str(backing)]
        dev = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
        created.append(dev)
        backings.append(backing)
        return dev

    yield make
    for dev, backing in zip(created, backings):
        # A test may have detached the device itself, and the name may since have been
        # reused by another test: act only while it still points at our own file (which the
        # test may have unlinked already: the kernel then shows it with " (deleted)").
        if backing_file(dev) not in (str(backing), f"{backing} (deleted)"):
            continue
        subprocess.run(["swapoff", dev], capture_output=True)
        for point in _mounted_from(dev):
            subprocess.run(["umount", "-l", point], capture_output=True)
        subprocess.run(["losetup", "--detach", dev], capture_output=True)
