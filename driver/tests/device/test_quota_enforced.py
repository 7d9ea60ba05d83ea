"""XFS project quota enforcement through device/quota.py, in a kernel that has it.

The host kernel lacks CONFIG_XFS_QUOTA, so these skip there; the QEMU guest
(`make test-vm`) runs them on a real XFS mounted with prjquota. A write past a
project's block limit fails with ENOSPC (XFS reports project quota exhaustion as
ENOSPC; EDQUOT is accepted too), raising the limit lets writes continue, inode
limits stop file creation, and statfs on the project directory reports the limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest
from directpv_csi.device import mount as m
from directpv_csi.device import quota as q

pytestmark = pytest.mark.vm
SKIP_REASON = "needs a kernel with XFS quota (runs in the QEMU guest: make test-vm)"
MiB = 1024 * 1024
FULL = (errno.ENOSPC, errno.EDQUOT)


@pytest.fixture
def quota_drive(loopdev: Callable[..., str], tmp_path: Path) -> Iterator[str]:
    if subprocess.run(["which", "mkfs.xfs"], capture_output=True).returncode != 0:
        pytest.skip("needs mkfs.xfs on PATH (make setup installs it)")
    dev = loopdev("600M")
    subprocess.run(["mkfs.xfs", "-q", dev], check=True)
    mp = str(tmp_path / "drive")
    res = m.mount_drive(dev, mp, quota=True)
    try:
        if not res.quota_enabled or not q.quota_supported(mp):
            pytest.skip(SKIP_REASON)
        yield mp
    finally:
        subprocess.run(["umount", "-l", mp], capture_output=True)
        # The guest's /tmp is a small tmpfs: unlink the backing image now so its space is
        # freed when the loopdev fixture detaches the device, not at the end of the session.
        backing = Path("/sys/block", os.path.basename(dev), "loop", "backing_file")
        with contextlib.suppress(OSError):
            os.unlink(backing.read_text().strip())


def _volume(mp: str, name: str, project_id: int) -> str:
    d = os.path.join(mp, name)
    os.mkdir(d)
    q.set_project(d, project_id)
    return d


def _write(path: str, nbytes: int, chunk: int = MiB) -> int:
    """Write up to ``nbytes`` with fsync; returns bytes written before ENOSPC/EDQUOT (re-raised otherwise)."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        block = b"\xa5" * chunk
        while written < nbytes:
            try:
                n = os.write(fd, block[: min(chunk, nbytes - written)])
                os.fsync(fd)
            except OSError as e:
                if e.errno in FULL:
                    return written
                raise
            written += n
    finally:
        try:
            os.close(fd)
        except OSError as e:
            if e.errno not in FULL:
                raise
    return written


def test_limits_round_trip(quota_drive: str) -> None:
    _volume(quota_drive, "v1", 11)
    q.set_limits(quota_drive, 11, 10 * MiB, inodes_hard=100)
    got = q.get_quota(quota_drive, 11)
    assert got.bytes_limit == 10 * MiB
    assert got.inodes_limit == 100
    assert got.bytes_soft_limit == 10 * MiB
    q.clear_limits(quota_drive, 11)
    cleared = q.get_quota(quota_drive, 11)
    assert cleared.bytes_limit == 0 and cleared.inodes_limit == 0


def test_write_past_limit_fails_then_raising_it_lets_writes_continue(quota_drive: str) -> None:
    vol = _volume(quota_drive, "v2", 12)
    q.set_limits(quota_drive, 12, 8 * MiB)
    f = os.path.join(vol, "data")
    first = _write(f, 20 * MiB)
    assert first <= 8 * MiB, "the write went past the project's hard limit"
    assert first >= 4 * MiB, "the limit stopped writes far too early"
    used = q.get_quota(quota_drive, 12)
    assert 0 < used.bytes_used <= 8 * MiB
    with pytest.raises(OSError) as exc, open(f, "ab") as fh:
        fh.write(b"x" * MiB)
        fh.flush()
        os.fsync(fh.fileno())
    assert exc.value.errno in FULL
    q.set_limits(quota_drive, 12, 32 * MiB)
    more = _write(f, 8 * MiB)
    assert more == 8 * MiB
    assert q.get_quota(quota_drive, 12).bytes_used >= first + more - MiB


def test_usage_is_reported(quota_drive: str) -> None:
    vol = _volume(quota_drive, "v3", 13)
    q.set_limits(quota_drive, 13, 64 * MiB)
    assert _write(os.path.join(vol, "a"), 5 * MiB) == 5 * MiB
    os.mkdir(os.path.join(vol, "sub"))
    Path(vol, "sub", "b").write_bytes(b"y" * 4096)
    got = q.get_quota(quota_drive, 13)
    assert 5 * MiB <= got.bytes_used <= 6 * MiB
    assert got.inodes_used >= 4  # the directory, a, sub, sub/b
    other = q.get_quota(quota_drive, 14)  # never used: zeros, not an error
    assert other.bytes_used == 0 and other.bytes_limit == 0


def test_inode_limit_stops_file_creation(quota_drive: str) -> None:
    vol = _volume(quota_drive, "v4", 15)
    q.set_limits(quota_drive, 15, 0, inodes_hard=10)
    created = 0
    with pytest.raises(OSError) as exc:
        for i in range(50):
            Path(vol, f"f{i}").write_bytes(b"")
            created += 1
    assert exc.value.errno in FULL
    assert created < 10  # the directory itself counts
    q.set_limits(quota_drive, 15, 0, inodes_hard=100)
    Path(vol, "after-raise").write_bytes(b"")


def test_statfs_of_project_dir_reports_the_limit(quota_drive: str) -> None:
    vol = _volume(quota_drive, "v5", 16)
    q.set_limits(quota_drive, 16, 20 * MiB)
    st = os.statvfs(vol)
    assert st.f_blocks * st.f_frsize == 20 * MiB
    whole = os.statvfs(quota_drive)
    assert whole.f_blocks * whole.f_frsize > 100 * MiB  # the drive itself still shows its size


def test_projects_are_isolated(quota_drive: str) -> None:
    a = _volume(quota_drive, "va", 21)
    b = _volume(quota_drive, "vb", 22)
    q.set_limits(quota_drive, 21, 4 * MiB)
    q.set_limits(quota_drive, 22, 16 * MiB)
    assert _write(os.path.join(a, "x"), 16 * MiB) <= 4 * MiB
    assert _write(os.path.join(b, "x"), 8 * MiB) == 8 * MiB  # b unaffected by a being full
