"""Project quota through the CSI Node service: needs a kernel with XFS quota.

On this host (no CONFIG_XFS_QUOTA) every test skips with the reason; in the QEMU
guest (`bash tests/vm/run.sh -- driver/tests/csi/test_node_vm.py`) they run on
loop XFS drives mounted with prjquota, over the real socket.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from directpv_csi.csi.proto import csi_pb2
from directpv_csi.device import quota
from node.node_helpers import (
    NodeServer,
)

pytestmark = [pytest.mark.root, pytest.mark.vm]

MiB = 2**20
NEEDS_QUOTA = "needs a kernel with XFS quota (QEMU guest: make test-vm)"


@pytest.fixture
def qsrv(node_server: NodeServer) -> Iterator[NodeServer]:
    md = node_server.registry.mounted(node_server.drive.drive_id)
    assert md is not None
    if not md.quota:
        pytest.skip(NEEDS_QUOTA)
    yield node_server


def _cap() -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )


def _up(s: NodeServer, name: str) -> tuple[str, str]:
    staging, target = s.staging(name), s.target(name)
    s.stub.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=name, staging_target_path=staging, volume_capability=_cap()))
    s.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=name, staging_target_path=staging, target_path=target, volume_capability=_cap()))
    return staging, target


def _down(s: NodeServer, name: str, staging: str, target: str) -> None:
    s.stub.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=name, target_path=target))
    s.stub.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
        volume_id=name, staging_target_path=staging))


def _fill(path: Path, total: int) -> int:
    """Write up to ``total`` bytes; returns what was written before ENOSPC (re-raised otherwise)."""
    written = 0
    chunk = b"\xab" * MiB
    with open(path, "wb") as f:
        try:
            while written < total:
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                written += len(chunk)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            return written
    return written


def test_stage_sets_project_and_limit_and_writes_stop_at_the_size(qsrv: NodeServer) -> None:
    vol: Any = qsrv.volume("pvc-q1", size=16 * MiB)
    staging, target = _up(qsrv, "pvc-q1")
    mp = qsrv.registry.drive_mount(qsrv.drive.drive_id)
    assert mp is not None
    vdir = str(mp / "pvc-q1")
    assert quota.get_project(vdir) == vol.project_id > 0
    assert quota.project_inherit(vdir)
    q = quota.get_quota(str(mp), vol.project_id)
    assert q.bytes_limit == 16 * MiB
    written = _fill(Path(target) / "big", 64 * MiB)
    assert written <= 16 * MiB, "the project quota did not stop the write"
    r = qsrv.stub.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
        volume_id="pvc-q1", volume_path=target))
    usage = {u.unit: u for u in r.usage}
    assert usage[csi_pb2.VolumeUsage.BYTES].total == 16 * MiB  # statfs reports the project limit
    assert usage[csi_pb2.VolumeUsage.BYTES].used >= written - MiB
    (Path(target) / "big").unlink()
    _down(qsrv, "pvc-q1", staging, target)


def test_expand_raises_the_limit(qsrv: NodeServer) -> None:
    vol: Any = qsrv.volume("pvc-q2", size=8 * MiB)
    staging, target = _up(qsrv, "pvc-q2")
    mp = qsrv.registry.drive_mount(qsrv.drive.drive_id)
    assert mp is not None
    qsrv.store.expand_volume("pvc-q2", 24 * MiB)
    resp = qsrv.stub.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
        volume_id="pvc-q2", volume_path=target, capacity_range=csi_pb2.CapacityRange(required_bytes=24 * MiB)))
    assert resp.capacity_bytes == 24 * MiB
    assert quota.get_quota(str(mp), vol.project_id).bytes_limit == 24 * MiB
    written = _fill(Path(target) / "f", 20 * MiB)
    assert written == 20 * MiB  # more than the old 8 MiB now fits
    _down(qsrv, "pvc-q2", staging, target)


def test_gc_clears_the_limit_of_a_released_volume(qsrv: NodeServer) -> None:
    vol: Any = qsrv.volume("pvc-q3", size=8 * MiB)
    staging, target = _up(qsrv, "pvc-q3")
    _down(qsrv, "pvc-q3", staging, target)
    mp = qsrv.registry.drive_mount(qsrv.drive.drive_id)
    assert mp is not None
    assert quota.get_quota(str(mp), vol.project_id).bytes_limit == 8 * MiB
    qsrv.store.delete_volume("pvc-q3")
    assert qsrv.registry.gc() == [f"{qsrv.drive.drive_id}/pvc-q3"]
    assert quota.get_quota(str(mp), vol.project_id).bytes_limit == 0
