"""The drive registry on real loop XFS drives formatted by our format code."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Dict

import pytest
from directpv_csi.core.models import DRIVE_ERROR, DRIVE_LOST, DRIVE_READY, DRIVE_REMOVED, Drive, Volume
from directpv_csi.device import mount as m
from directpv_csi.node.registry import DriveRegistry
from directpv_csi.store.embedded import EmbeddedStore
from node.node_helpers import (
    OurDrive,
    attach,
    detach,
    only_under,
    unmount_under,
)

pytestmark = [pytest.mark.root]


def test_sync_finds_mounts_and_records_our_drives(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive]
) -> None:
    a, b = make_drive(), make_drive()
    drives = {d.drive_id: d for d in registry.sync()}
    assert set(drives) == {a.drive_id, b.drive_id}
    for ours in (a, b):
        rec = store.get_drive(ours.drive_id)
        assert rec is not None and rec.status == DRIVE_READY and rec.node == "node-a"
        assert rec.name == os.path.basename(ours.dev)
        assert 300 * 2**20 < rec.total <= 400 * 2**20
        mp = registry.drive_mount(ours.drive_id)
        assert mp is not None and mp == registry.config.state_dir / "mnt" / ours.drive_id
        info = m.mount_of(str(mp))
        assert info is not None and info.mount_point == str(mp) and info.fs_type == "xfs"
        assert "noatime" in info.options.split(",")
        assert (mp / ".directpv" / "meta.json").is_file()
    assert registry.synced_once


def test_sync_is_idempotent_and_quiet(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive]
) -> None:
    a = make_drive()
    registry.sync()
    gen = store.get_drive(a.drive_id).generation
    points = [p for p in Path("/proc/self/mountinfo").read_text().split("\n") if a.drive_id in p]
    registry.sync()
    # no second mount stacked, no store write when nothing changed
    assert [p for p in Path("/proc/self/mountinfo").read_text().split("\n") if a.drive_id in p] == points
    assert store.get_drive(a.drive_id).generation == gen


def test_restart_remounts(
    config: object, store: EmbeddedStore, make_drive: Callable[..., OurDrive], node_env: Dict[str, Path]
) -> None:
    a = make_drive()
    r1 = DriveRegistry(config, store, probe=only_under(node_env["root"]))  # type: ignore[arg-type]
    r1.sync()
    mp = r1.drive_mount(a.drive_id)
    assert mp is not None
    (mp / "data").write_text("kept")
    m.unmount(str(mp))  # as after a reboot: nothing mounted
    assert not m.is_mountpoint(str(mp))
    r2 = DriveRegistry(config, store, probe=only_under(node_env["root"]))  # type: ignore[arg-type]
    r2.sync()
    assert r2.drive_mount(a.drive_id) == mp and m.is_mountpoint(str(mp))
    assert (mp / "data").read_text() == "kept"


def test_renamed_device_keeps_drive_id_and_updates_name(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive], node_env: Dict[str, Path]
) -> None:
    a = make_drive()
    registry.sync()
    unmount_under(node_env["state"])
    detach(a.dev)
    free = subprocess.run(["losetup", "--find"], check=True, capture_output=True, text=True).stdout.strip()
    if free == a.dev:  # take the old number so the drive comes back under another name
        hold_img = node_env["root"] / "hold.img"
        hold_img.write_bytes(b"\0" * 2**20)
        make_drive.reattached.append(attach(hold_img))  # type: ignore[attr-defined]
    new = attach(a.backing)
    make_drive.reattached.append(new)  # type: ignore[attr-defined]
    assert new != a.dev
    drives = {d.drive_id: d for d in registry.sync()}
    assert drives[a.drive_id].status == DRIVE_READY
    assert drives[a.drive_id].name == os.path.basename(new)
    rec = store.get_drive(a.drive_id)
    assert rec is not None and rec.name == os.path.basename(new) and rec.generation > 0
    mp = registry.drive_mount(a.drive_id)
    assert mp is not None and (mp / ".directpv" / "meta.json").is_file()


def test_lost_then_back(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive], node_env: Dict[str, Path]
) -> None:
    a = make_drive()
    registry.sync()
    name = os.path.basename(a.dev)
    unmount_under(node_env["state"])
    detach(a.dev)
    drives = {d.drive_id: d for d in registry.sync()}
    lost = drives[a.drive_id]
    assert lost.status == DRIVE_LOST and lost.name == ""
    assert "since" in lost.message and name in lost.message
    assert store.get_drive(a.drive_id).status == DRIVE_LOST
    assert registry.drive_mount(a.drive_id) is None
    # a second sync keeps the "since" time
    assert {d.drive_id: d for d in registry.sync()}[a.drive_id].message == lost.message
    new = attach(a.backing)
    make_drive.reattached.append(new)  # type: ignore[attr-defined]
    back = {d.drive_id: d for d in registry.sync()}[a.drive_id]
    assert back.status == DRIVE_READY and back.name == os.path.basename(new) and back.message == ""
    assert registry.drive_mount(a.drive_id) is not None


def test_same_drive_id_on_two_devices_is_error_and_mounts_none(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive], node_env: Dict[str, Path]
) -> None:
    a = make_drive()
    clone = node_env["root"] / "clone.img"
    # a byte copy of the image (sparse) = the same filesystem UUID on a second device
    os.system(f"cp --sparse=always {a.backing} {clone}")
    dup = attach(clone)
    make_drive.reattached.append(dup)  # type: ignore[attr-defined]
    drives = {d.drive_id: d for d in registry.sync()}
    err = drives[a.drive_id]
    assert err.status == DRIVE_ERROR and "multiple matches" in err.message
    assert os.path.basename(a.dev) in err.message and os.path.basename(dup) in err.message
    assert registry.drive_mount(a.drive_id) is None
    target = registry.config.drive_mount_dir(a.drive_id)
    assert not target.exists() or not m.is_mountpoint(str(target))


def test_mount_failure_is_error(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive], node_env: Dict[str, Path]
) -> None:
    a = make_drive()
    # something else already mounted at the drive's mount point -> Error, not a stacked mount
    target = registry.config.drive_mount_dir(a.drive_id)
    target.mkdir(parents=True)
    other = node_env["root"] / "other"
    other.mkdir()
    m.bind(str(other), str(target))
    drives = {d.drive_id: d for d in registry.sync()}
    assert drives[a.drive_id].status == DRIVE_ERROR
    assert os.path.basename(a.dev) in drives[a.drive_id].message
    assert registry.drive_mount(a.drive_id) is None


def test_gc_removes_released_volume_dirs_only(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive]
) -> None:
    a = make_drive()
    registry.sync()
    mp = registry.drive_mount(a.drive_id)
    assert mp is not None
    keep = store.reserve_volume(Volume(name="pvc-keep", drive_id=a.drive_id, node="node-a", size=2**20, project_id=0))
    gone = store.reserve_volume(Volume(name="pvc-gone", drive_id=a.drive_id, node="node-a", size=2**20, project_id=0))
    for v in (keep, gone):
        (mp / v.name).mkdir()
        (mp / v.name / "file").write_bytes(b"x" * 4096)
    assert store.delete_volume(gone.name) is not None
    removed = registry.gc()
    assert removed == [f"{a.drive_id}/pvc-gone"]
    assert not (mp / "pvc-gone").exists()
    assert (mp / "pvc-keep" / "file").is_file()
    assert (mp / ".directpv" / "meta.json").is_file()
    assert not any((mp / ".deleted").iterdir())
    assert registry.gc() == []


def test_loop_drives_ignored_unless_allowed(
    store: EmbeddedStore, make_drive: Callable[..., OurDrive], node_env: Dict[str, Path]
) -> None:
    from directpv_csi.node.config import NodeConfig

    a = make_drive()
    cfg = NodeConfig(node_id="node-a", state_dir=node_env["state"], kubelet_dirs=(node_env["kubelet"],))
    reg = DriveRegistry(cfg, store, probe=only_under(node_env["root"]))
    assert reg.sync() == []
    assert store.get_drive(a.drive_id) is None
    assert not cfg.drive_mount_dir(a.drive_id).exists()


def test_background_loop_notices_a_new_drive(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive]
) -> None:
    import time

    registry.start(0.05)
    assert registry.synced_once
    a = make_drive()
    deadline = time.monotonic() + 20
    while registry.drive_mount(a.drive_id) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.drive_mount(a.drive_id) is not None
    registry.stop()


def test_only_drives_limits_the_registry(
    store: EmbeddedStore, make_drive: Callable[..., OurDrive], node_env: Dict[str, Path]
) -> None:
    from directpv_csi.node.config import NodeConfig

    a, b = make_drive(), make_drive()
    cfg = NodeConfig(node_id="node-a", state_dir=node_env["state"], kubelet_dirs=(node_env["kubelet"],),
                     allow_loop=True, only_drives=(b.drive_id.upper(),))
    reg = DriveRegistry(cfg, store, probe=only_under(node_env["root"]))
    assert [d.drive_id for d in reg.sync()] == [b.drive_id]
    assert store.get_drive(a.drive_id) is None and reg.drive_mount(a.drive_id) is None


def test_release_volume_now(registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive]) -> None:
    a = make_drive()
    registry.sync()
    mp = registry.drive_mount(a.drive_id)
    assert mp is not None
    v = store.reserve_volume(Volume(name="pvc-now", drive_id=a.drive_id, node="node-a", size=2**20, project_id=0))
    (mp / "pvc-now").mkdir()
    assert not registry.release_volume(v)  # the record still exists
    assert (mp / "pvc-now").is_dir()
    deleted = store.delete_volume("pvc-now")
    assert deleted is not None
    assert registry.inflight.try_acquire("pvc-now")  # a node call holds it: left for gc
    assert not registry.release_volume(deleted)
    registry.inflight.release("pvc-now")
    assert registry.release_volume(deleted)
    assert not (mp / "pvc-now").exists()
    assert not registry.release_volume(deleted)  # already gone
    # DeleteVolume holding the shared in-flight table calls it with caller_holds=True
    v2 = store.reserve_volume(Volume(name="pvc-held", drive_id=a.drive_id, node="node-a", size=2**20, project_id=0))
    (mp / "pvc-held").mkdir()
    with registry.inflight.hold("pvc-held"):
        gone = store.delete_volume(v2.name)
        assert gone is not None and registry.release_volume(gone, caller_holds=True)
    assert not (mp / "pvc-held").exists() and "pvc-held" not in registry.inflight


def test_removed_drive_stays_removed(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive]
) -> None:
    a = make_drive()
    registry.sync()
    store.update_drive(a.drive_id, status=DRIVE_REMOVED, message="released by the operator")
    drives = {d.drive_id: d for d in registry.sync()}
    assert drives[a.drive_id].status == DRIVE_REMOVED
    assert store.get_drive(a.drive_id).status == DRIVE_REMOVED
    assert registry.drive_mount(a.drive_id) is None  # no new volumes go there


def test_drive_recorded_for_another_node_is_left_alone(
    registry: DriveRegistry, store: EmbeddedStore, make_drive: Callable[..., OurDrive]
) -> None:
    a = make_drive()
    store.put_drive(Drive(drive_id=a.drive_id, node="node-b", name="sdq", total=2**30))
    assert registry.sync() == []
    rec = store.get_drive(a.drive_id)
    assert rec is not None and rec.node == "node-b" and rec.name == "sdq"
    assert registry.drive_mount(a.drive_id) is None
    assert not registry.config.drive_mount_dir(a.drive_id).exists()
