"""Mounts by syscalls on real directories and real XFS loop devices.

Every mount a test makes is under its own tmp_path and is removed by exact mount
point at teardown, even on failure.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator, List

import pytest
from directpv_csi.core.errors import FailedPrecondition, InvalidArgument, NotFound
from directpv_csi.device import mount as m
from directpv_csi.device.mountinfo import MountInfo

from testsupport import needs_root, needs_tool

pytestmark = needs_root


@pytest.fixture
def cleanup() -> Iterator[List[str]]:
    """Mount points to remove at teardown (deepest/latest first), by exact path."""
    points: List[str] = []
    yield points
    for p in reversed(points):
        for _ in range(4):  # stacked mounts, if a test left several
            if subprocess.run(["umount", "-l", p], capture_output=True).returncode != 0:
                break


def _table_entry(path: str) -> MountInfo:
    found = [x for x in m.mounts() if x.mount_point == os.path.realpath(path)]
    assert found, f"{path} not in mountinfo"
    return found[-1]


def _dirs(tmp_path: Path, *names: str) -> List[str]:
    out = []
    for n in names:
        d = tmp_path / n
        d.mkdir()
        out.append(str(d))
    return out


def test_parse_options_splits_flags_and_data() -> None:
    flags, data = m.parse_options(["noatime", "ro", "prjquota", "defaults", "nosuid", "logbsize=256k"])
    assert flags == m.MS_NOATIME | m.MS_RDONLY | m.MS_NOSUID
    assert data == "prjquota,logbsize=256k"
    flags, _ = m.parse_options(["ro", "rw", "bind"])
    assert flags == m.MS_BIND


def test_bind_and_unmount(tmp_path: Path, cleanup: List[str]) -> None:
    src, tgt = _dirs(tmp_path, "src", "tgt")
    Path(src, "hello").write_text("world")
    assert not m.is_mountpoint(tgt)
    cleanup.append(tgt)
    assert m.bind(src, tgt) is True
    assert m.is_mountpoint(tgt)
    assert Path(tgt, "hello").read_text() == "world"
    Path(tgt, "back").write_text("x")  # read-write bind: writes reach the source
    assert Path(src, "back").read_text() == "x"
    info = m.mount_of(os.path.join(tgt, "hello"))
    assert info is not None and info.mount_point == tgt and not info.read_only
    assert m.unmount(tgt) is True
    assert not m.is_mountpoint(tgt)
    assert not Path(tgt, "hello").exists()


def test_read_only_bind_really_is_read_only(tmp_path: Path, cleanup: List[str]) -> None:
    src, tgt = _dirs(tmp_path, "src", "ro")
    Path(src, "data").write_text("v1")
    cleanup.append(tgt)
    assert m.bind(src, tgt, read_only=True)
    assert _table_entry(tgt).read_only
    with pytest.raises(OSError) as exc:
        Path(tgt, "new").write_text("nope")
    assert exc.value.errno == errno.EROFS
    with pytest.raises(OSError) as exc:
        Path(tgt, "data").write_text("v2")
    assert exc.value.errno == errno.EROFS
    Path(src, "data").write_text("v2")  # the source stays writable
    assert Path(tgt, "data").read_text() == "v2"
    src_mount = m.mount_of(src)
    assert src_mount is not None and src_mount.mount_point != tgt and not src_mount.read_only


def test_bind_is_idempotent_and_refuses_something_else(tmp_path: Path, cleanup: List[str]) -> None:
    src, other, tgt = _dirs(tmp_path, "src", "other", "tgt")
    cleanup.append(tgt)
    assert m.bind(src, tgt) is True
    assert m.bind(src, tgt) is False  # same source, same mode: no change, no stacked mount
    assert sum(1 for x in m.mounts() if x.mount_point == tgt) == 1
    with pytest.raises(FailedPrecondition, match="already has a read-write mount") as exc:
        m.bind(other, tgt)
    assert "unmount" in exc.value.hint
    with pytest.raises(FailedPrecondition):
        m.bind(src, tgt, read_only=True)  # same source, different mode
    assert sum(1 for x in m.mounts() if x.mount_point == tgt) == 1


def test_unmount_of_non_mountpoint_is_a_noop(tmp_path: Path) -> None:
    (d,) = _dirs(tmp_path, "plain")
    assert m.unmount(d) is False
    assert m.unmount(d, force=True, lazy=True) is False
    assert m.unmount(str(tmp_path / "missing")) is False


def test_bad_arguments(tmp_path: Path) -> None:
    (d,) = _dirs(tmp_path, "d")
    with pytest.raises(InvalidArgument, match="not absolute"):
        m.bind("relative/src", d)
    with pytest.raises(InvalidArgument, match="not absolute"):
        m.unmount("relative")
    with pytest.raises(InvalidArgument, match="NUL"):
        m.bind(d, d + "\0x")
    with pytest.raises(InvalidArgument, match="NUL"):
        m.mount("tmp\0fs", d, "tmpfs")
    with pytest.raises(NotFound):
        m.bind(str(tmp_path / "missing-src"), d)
    assert not m.is_mountpoint(d)
    with pytest.raises(NotFound):
        m.mount_drive(str(tmp_path / "no-such-device"), d)
    reg = tmp_path / "regular"
    reg.write_bytes(b"\0" * 4096)
    with pytest.raises(InvalidArgument, match="not a block device"):
        m.mount_drive(str(reg), d)
    assert not m.is_mountpoint(d)


def test_mounts_reads_this_namespace() -> None:
    table = m.mounts()
    assert any(x.mount_point == "/" for x in table)
    assert m.mount_of("/") is not None
    assert m.mount_of("/definitely/not/here/at/all") is None


@pytest.fixture
def xfs_dev(loopdev: Callable[..., str]) -> str:
    if subprocess.run(["which", "mkfs.xfs"], capture_output=True).returncode != 0:
        pytest.skip("needs mkfs.xfs on PATH (make setup installs it)")
    dev = loopdev("600M")
    subprocess.run(["mkfs.xfs", "-q", dev], check=True)
    return dev


@needs_tool("mkfs.xfs")
def test_mount_drive_noatime_quota_fallback_and_idempotent(xfs_dev: str, tmp_path: Path, cleanup: List[str]) -> None:
    target = str(tmp_path / "drive")  # created by mount_drive
    cleanup.append(target)
    res = m.mount_drive(xfs_dev, target)
    assert res.changed
    entry = _table_entry(target)
    st = os.stat(xfs_dev)
    assert (entry.major, entry.minor) == (os.major(st.st_rdev), os.minor(st.st_rdev))
    assert entry.fs_type == "xfs"
    assert "noatime" in entry.options.split(",")
    has_quota = "prjquota" in entry.super_options.split(",")
    assert res.quota_enabled is has_quota
    if not has_quota:  # this host's kernel: no XFS quota; the result must say so
        assert "CONFIG_XFS_QUOTA" in res.message
    again = m.mount_drive(xfs_dev, target)
    assert again.changed is False and again.quota_enabled is has_quota
    assert sum(1 for x in m.mounts() if x.mount_point == target) == 1
    knob = f"/sys/fs/xfs/{os.path.basename(xfs_dev)}/error/metadata/EIO/max_retries"
    if os.path.exists(knob):
        assert Path(knob).read_text().strip() == "0"


@needs_tool("mkfs.xfs")
def test_mount_drive_without_quota(xfs_dev: str, tmp_path: Path, cleanup: List[str]) -> None:
    target = str(tmp_path / "noq")
    cleanup.append(target)
    res = m.mount_drive(xfs_dev, target, quota=False)
    assert res.quota_enabled is False and res.message == ""
    assert "prjquota" not in _table_entry(target).super_options.split(",")


@needs_tool("mkfs.xfs")
def test_mount_drive_refuses_when_something_else_is_mounted(
    xfs_dev: str, loopdev: Callable[..., str], tmp_path: Path, cleanup: List[str]
) -> None:
    other = loopdev("600M")
    subprocess.run(["mkfs.xfs", "-q", other], check=True)
    target = str(tmp_path / "busy")
    cleanup.append(target)
    m.mount_drive(other, target)
    with pytest.raises(FailedPrecondition) as exc:
        m.mount_drive(xfs_dev, target)
    assert other in str(exc.value) and xfs_dev in str(exc.value)
    assert "unmount" in exc.value.hint
    entry = _table_entry(target)
    st = os.stat(other)
    assert (entry.major, entry.minor) == (os.major(st.st_rdev), os.minor(st.st_rdev))  # untouched
    # a plain bind of a directory there is "something else" too
    (src,) = _dirs(tmp_path, "somedir")
    tgt2 = str(tmp_path / "bound")
    os.mkdir(tgt2)
    cleanup.append(tgt2)
    m.bind(src, tgt2)
    with pytest.raises(FailedPrecondition):
        m.mount_drive(xfs_dev, tgt2)


@needs_tool("mkfs.xfs")
def test_read_only_bind_of_a_drive_directory(xfs_dev: str, tmp_path: Path, cleanup: List[str]) -> None:
    """The node server's case: a volume directory on a drive, bound read-only into a pod path."""
    drive = str(tmp_path / "drive")
    cleanup.append(drive)
    m.mount_drive(xfs_dev, drive, quota=False)
    vol = os.path.join(drive, "vol1")
    os.mkdir(vol)
    tgt = str(tmp_path / "pod")
    os.mkdir(tgt)
    cleanup.append(tgt)
    assert m.bind(vol, tgt, read_only=True)
    entry = _table_entry(tgt)
    assert entry.root == "/vol1" and entry.read_only
    assert m.bind(vol, tgt, read_only=True) is False  # idempotent on a directory bind
    with pytest.raises(OSError) as exc:
        Path(tgt, "f").write_text("x")
    assert exc.value.errno == errno.EROFS
    Path(vol, "f").write_text("x")
    assert Path(tgt, "f").read_text() == "x"
    assert m.unmount(tgt) and m.unmount(drive)
    assert not m.is_mountpoint(drive)


def test_without_statx_the_mount_table_decides(
    tmp_path: Path, cleanup: List[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels or libcs without statx(STATX_MNT_ID / ATTR_MOUNT_ROOT): the mountinfo fallback gives the same answers."""
    src, tgt = _dirs(tmp_path, "src", "tgt")
    cleanup.append(tgt)
    assert m.bind(src, tgt)
    with_statx = (m.is_mountpoint(tgt), m.mount_of(os.path.join(tgt)), m.is_mountpoint(src))
    monkeypatch.setattr(m, "_statx", lambda path: None)
    assert (m.is_mountpoint(tgt), m.mount_of(tgt), m.is_mountpoint(src)) == with_statx
    assert m.bind(src, tgt) is False  # idempotency still detected
    (other,) = _dirs(tmp_path, "other")
    with pytest.raises(FailedPrecondition):
        m.bind(other, tgt)
    assert m.unmount(tgt) is True
    assert not m.is_mountpoint(tgt)
