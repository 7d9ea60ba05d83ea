"""XFS project quota really enforced, on a real kernel, through the project's own code.

A virtio disk (disks.json "quota") is formatted with device/format.py, mounted with
device/mount.py (prjquota), and each volume is a directory with a project ID and
limits set by device/quota.py. The kernel enforces the limits: XFS reports ENOSPC
(not EDQUOT) for project quota, and statfs on the directory reports the limit.
"""

from __future__ import annotations

import errno
import os
from typing import Callable, Iterator, Tuple

import pytest
from directpv_csi.core.errors import Unsupported
from directpv_csi.device import format as fmt
from directpv_csi.device import quota
from directpv_csi.device.mount import mount_drive

MiB = 1024 * 1024
CHUNK = b"\xa5" * MiB


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, str]]:
    """(device, mount point) of the "quota" disk, formatted by us and mounted with prjquota."""
    from directpv_csi.device.mount import is_mountpoint, unmount
    from vmhelpers import disk_specs, find_disk

    name = find_disk(disk_specs()["quota"]["serial"], timeout=10)
    assert name, "the quota disk is not attached"
    done = fmt.format_drive(f"/dev/{name}", force=True)
    assert isinstance(done, fmt.FormattedDrive)
    mp = str(tmp_path_factory.mktemp("quota-drive"))
    res = mount_drive(f"/dev/{name}", mp, quota=True)
    assert res.quota_enabled, f"prjquota not enabled on the guest kernel: {res.message}"
    yield f"/dev/{name}", mp
    while is_mountpoint(mp):
        unmount(mp)


def volume(mp: str, name: str, project_id: int, limit: int, inodes: int = 0) -> str:
    path = os.path.join(mp, name)
    os.mkdir(path)
    quota.set_project(path, project_id)
    quota.set_limits(mp, project_id, limit, inodes)
    return path


def fill(path: str, max_bytes: int) -> Tuple[int, int]:
    """Write 1 MiB chunks (fsync'ed) until an error or ``max_bytes``: (bytes written, errno or 0)."""
    written = 0
    with open(path, "ab", buffering=0) as f:
        while written < max_bytes:
            try:
                written += f.write(CHUNK)
                os.fsync(f.fileno())
            except OSError as e:
                return written, e.errno or -1
    return written, 0


def test_quota_is_supported_on_the_guest_kernel(drive: Tuple[str, str]) -> None:
    _, mp = drive
    assert quota.quota_supported(mp)


def test_write_past_the_limit_fails_with_enospc_and_usage_reads_back(drive: Tuple[str, str]) -> None:
    _, mp = drive
    vol = volume(mp, "vol-enospc", 11, 32 * MiB)
    assert quota.get_project(vol) == 11
    written, err = fill(os.path.join(vol, "data"), 64 * MiB)
    assert err == errno.ENOSPC, f"expected ENOSPC past a 32 MiB project limit, got {errno.errorcode.get(err, err)}"
    assert 31 * MiB <= written <= 32 * MiB, written
    q = quota.get_quota(mp, 11)
    assert q.bytes_limit == 32 * MiB
    assert 31 * MiB <= q.bytes_used <= 32 * MiB, q
    assert q.inodes_used == 2  # the directory and the file


def test_raising_the_limit_lets_writes_continue(drive: Tuple[str, str]) -> None:
    _, mp = drive
    vol = volume(mp, "vol-expand", 12, 16 * MiB)
    data = os.path.join(vol, "data")
    first, err = fill(data, 64 * MiB)
    assert err == errno.ENOSPC and first <= 16 * MiB
    quota.set_limits(mp, 12, 48 * MiB)  # volume expansion
    more, err = fill(data, 16 * MiB)
    assert (more, err) == (16 * MiB, 0), "writes should continue after the limit was raised"
    assert quota.get_quota(mp, 12).bytes_limit == 48 * MiB
    _, err = fill(data, 64 * MiB)
    assert err == errno.ENOSPC, "the raised limit is enforced too"
    assert os.path.getsize(data) <= 48 * MiB


def test_inode_limit(drive: Tuple[str, str]) -> None:
    _, mp = drive
    vol = volume(mp, "vol-inodes", 13, 64 * MiB, inodes=10)
    created = 0
    with pytest.raises(OSError) as exc:
        for i in range(100):
            with open(os.path.join(vol, f"f{i}"), "w"):
                created += 1
    assert exc.value.errno in (errno.ENOSPC, errno.EDQUOT), exc.value
    assert created == 9, created  # 10 inodes: the directory itself and 9 files
    q = quota.get_quota(mp, 13)
    assert (q.inodes_limit, q.inodes_used) == (10, 10)


def test_statfs_on_the_volume_reports_its_limit(drive: Tuple[str, str]) -> None:
    _, mp = drive
    vol = volume(mp, "vol-statfs", 14, 40 * MiB)
    fill(os.path.join(vol, "data"), 8 * MiB)
    st = os.statvfs(vol)
    assert st.f_blocks * st.f_frsize == 40 * MiB
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert used == quota.get_quota(mp, 14).bytes_used
    assert 8 * MiB <= used < 9 * MiB
    whole = os.statvfs(mp)
    assert whole.f_blocks * whole.f_frsize > 900 * MiB  # the drive's root still reports the whole drive


def test_clear_limits_removes_enforcement(drive: Tuple[str, str]) -> None:
    _, mp = drive
    vol = volume(mp, "vol-clear", 15, 8 * MiB)
    _, err = fill(os.path.join(vol, "a"), 16 * MiB)
    assert err == errno.ENOSPC
    quota.clear_limits(mp, 15)
    assert quota.get_quota(mp, 15).bytes_limit == 0
    written, err = fill(os.path.join(vol, "b"), 16 * MiB)
    assert (written, err) == (16 * MiB, 0)


def test_without_prjquota_limits_are_refused(loopdev: Callable[..., str], mount_dir: Callable[[str], str]) -> None:
    """A drive mounted without prjquota on the same kernel: no enforcement, and the API says so."""
    import subprocess

    dev = loopdev("320M")
    subprocess.run(["mkfs.xfs", "-q", dev], check=True)
    mp = mount_dir("noquota")
    res = mount_drive(dev, mp, quota=False)
    assert not res.quota_enabled
    assert not quota.quota_supported(mp)
    with pytest.raises(Unsupported):
        quota.set_limits(mp, 1, MiB)
