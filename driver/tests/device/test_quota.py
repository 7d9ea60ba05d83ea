"""Project quota API on the host: project IDs by FS_IOC_FS{GET,SET}XATTR on a real XFS
(that ioctl needs no quota support), argument validation, and a clear Unsupported on a
kernel or mount without XFS quota. Enforcement itself (writes past the limit fail) needs
a kernel with CONFIG_XFS_QUOTA: test_quota_enforced.py, run in the QEMU guest."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest
from directpv_csi.core.errors import InvalidArgument, NotFound, Unsupported
from directpv_csi.device import mount as m
from directpv_csi.device import quota as q

from testsupport import needs_root, needs_tool

BAD_IDS = [0, -1, 2**32 - 1, 2**32, True, "7", 1.5]


def test_constants_match_the_kernel_headers() -> None:
    assert q._DQ.size == 112  # sizeof(struct fs_disk_quota)
    assert q._FSXATTR.size == 28  # sizeof(struct fsxattr)
    # QCMD(Q_XSETQLIM, PRJQUOTA) etc.: ('X' << 8 | n) << 8 | type
    assert q._qcmd(q.Q_XSETQLIM, q.PRJQUOTA) == 0x580402
    assert q._qcmd(q.Q_XGETQUOTA, q.PRJQUOTA) == 0x580302
    assert q._qcmd(q.Q_XGETQSTAT, q.PRJQUOTA) == 0x580502
    # _IOR('X', 31, struct fsxattr) / _IOW('X', 32, struct fsxattr)
    assert (2 << 30) | (28 << 16) | (ord("X") << 8) | 31 == q.FS_IOC_FSGETXATTR
    assert (1 << 30) | (28 << 16) | (ord("X") << 8) | 32 == q.FS_IOC_FSSETXATTR


def test_blocks_round_up() -> None:
    assert q._blocks(0) == 0
    assert q._blocks(1) == 1
    assert q._blocks(512) == 1
    assert q._blocks(513) == 2
    assert q._blocks(10 * 1024 * 1024) == 20480


@pytest.fixture
def xfs_mount(loopdev: Callable[..., str], tmp_path: Path) -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts); CI runs as root")
    if subprocess.run(["which", "mkfs.xfs"], capture_output=True).returncode != 0:
        pytest.skip("needs mkfs.xfs on PATH (make setup installs it)")
    dev = loopdev("600M")
    subprocess.run(["mkfs.xfs", "-q", dev], check=True)
    mp = str(tmp_path / "drive")
    m.mount_drive(dev, mp)  # prjquota when the kernel has it
    try:
        yield mp
    finally:
        subprocess.run(["umount", "-l", mp], capture_output=True)


@needs_root
@needs_tool("mkfs.xfs")
def test_project_id_set_get_and_inherit(xfs_mount: str) -> None:
    vol = os.path.join(xfs_mount, "vol-a")
    os.mkdir(vol)
    assert q.get_project(vol) == 0
    assert not q.project_inherit(vol)
    q.set_project(vol, 42)
    assert q.get_project(vol) == 42
    assert q.project_inherit(vol)
    sub = os.path.join(vol, "sub")
    os.mkdir(sub)  # created after: inherits the project ID and the inherit flag
    assert q.get_project(sub) == 42
    assert q.project_inherit(sub)
    q.set_project(vol, 42)  # idempotent
    assert q.get_project(vol) == 42
    q.set_project(vol, 70000)  # 32-bit project IDs (projid32bit, the mkfs.xfs default)
    assert q.get_project(vol) == 70000
    assert q.get_project(sub) == 42  # only new children inherit
    other = os.path.join(xfs_mount, "vol-b")
    os.mkdir(other)
    assert q.get_project(other) == 0  # siblings unaffected


@needs_root
@needs_tool("mkfs.xfs")
@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_bad_project_ids_change_nothing(xfs_mount: str, bad: object) -> None:
    vol = os.path.join(xfs_mount, "v")
    os.mkdir(vol)
    q.set_project(vol, 5)
    with pytest.raises(InvalidArgument, match="project ID"):
        q.set_project(vol, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="project ID"):
        q.set_limits(xfs_mount, bad, 1024)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="project ID"):
        q.get_quota(xfs_mount, bad)  # type: ignore[arg-type]
    assert q.get_project(vol) == 5


@needs_root
@needs_tool("mkfs.xfs")
def test_bad_limits_and_paths(xfs_mount: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="bytes_hard"):
        q.set_limits(xfs_mount, 3, -1)
    with pytest.raises(InvalidArgument, match="inodes_hard"):
        q.set_limits(xfs_mount, 3, 1024, inodes_hard=-5)
    with pytest.raises(InvalidArgument, match="bytes_hard"):
        q.set_limits(xfs_mount, 3, "1Gi")  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        q.set_project(os.path.join(xfs_mount, "missing"), 3)
    f = os.path.join(xfs_mount, "file")
    Path(f).write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        q.set_project(f, 3)
    with pytest.raises(InvalidArgument, match="not absolute"):
        q.set_project("relative/dir", 3)
    link = os.path.join(xfs_mount, "link")
    os.mkdir(os.path.join(xfs_mount, "real"))
    os.symlink(os.path.join(xfs_mount, "real"), link)
    with pytest.raises(InvalidArgument, match="symlink"):
        q.set_project(link, 3)
    assert q.get_project(os.path.join(xfs_mount, "real")) == 0
    with pytest.raises(NotFound, match="not a mount point"):
        q.quota_supported(str(tmp_path))
    with pytest.raises(InvalidArgument):
        q.quota_supported("relative")


def test_project_ids_need_a_filesystem_that_has_them() -> None:
    with pytest.raises(Unsupported, match="does not support project IDs"):
        q.get_project("/proc")


@needs_root
@needs_tool("mkfs.xfs")
def test_quota_support_is_detected_and_reported(xfs_mount: str) -> None:
    entry = [x for x in m.mounts() if x.mount_point == xfs_mount][-1]
    enforced = "prjquota" in entry.super_options.split(",")
    assert q.quota_supported(xfs_mount) is enforced
    if enforced:
        pytest.skip("this kernel enforces XFS project quota: see test_quota_enforced.py (make test-vm)")
    # A kernel without CONFIG_XFS_QUOTA (this host), or a mount without prjquota:
    for call in (
        lambda: q.set_limits(xfs_mount, 9, 10 * 1024 * 1024),
        lambda: q.get_quota(xfs_mount, 9),
        lambda: q.clear_limits(xfs_mount, 9),
        lambda: q.require_quota(xfs_mount),
    ):
        with pytest.raises(Unsupported) as exc:
            call()
        assert xfs_mount in str(exc.value)
        assert "CONFIG_XFS_QUOTA" in exc.value.hint and "prjquota" in exc.value.hint


@needs_root
def test_quotactl_on_a_filesystem_without_quota_ops_is_unsupported(xfs_mount: str) -> None:
    """The raw call behind set_limits: the kernel's answer maps to Unsupported, not a bare OSError."""
    if q.quota_supported(xfs_mount):
        pytest.skip("this kernel enforces XFS project quota: see test_quota_enforced.py (make test-vm)")
    entry = q._mount_for(xfs_mount)
    buf = bytearray(q._DQ.size)
    import ctypes

    cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
    with pytest.raises(Unsupported):
        q._quotactl(q.Q_XGETQUOTA, q._block_device(entry), 1, cbuf, xfs_mount)
    assert struct.unpack_from("=b", bytes(buf), 0)[0] == 0  # nothing written back
