"""CSI Node service over a real unix socket, on real loop XFS drives formatted by our
format code, with real bind mounts. Runs as root (CI does)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
from directpv_csi.core.models import DRIVE_LOST, VOLUME_PENDING, VOLUME_READY, Drive
from directpv_csi.csi.proto import csi_pb2
from directpv_csi.device import mount as m
from node.node_helpers import (
    NodeServer,
    detach,
    unmount_under,
)

pytestmark = [pytest.mark.root]

SNW = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
RO_MODE = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY


def cap(
    mode: csi_pb2.VolumeCapability.AccessMode.Mode = SNW, fs_type: str = "xfs", flags: tuple[str, ...] = ()
) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),
    )


def stage(s: NodeServer, vid: str, staging: str, c: csi_pb2.VolumeCapability | None = None) -> Any:
    return s.stub.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging, volume_capability=c or cap()))


def publish(s: NodeServer, vid: str, staging: str, target: str, readonly: bool = False,
            c: csi_pb2.VolumeCapability | None = None) -> Any:
    return s.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=c or cap(),
        readonly=readonly))


def unpublish(s: NodeServer, vid: str, target: str) -> Any:
    return s.stub.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target))


def unstage(s: NodeServer, vid: str, staging: str) -> Any:
    return s.stub.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))


def stats(s: NodeServer, vid: str, path: str) -> Any:
    return s.stub.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=path))


def code_of(fn: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return sorted(line.split()[4] for line in f if line.split()[4].startswith(prefix))


@pytest.fixture
def srv(node_server: NodeServer) -> Iterator[NodeServer]:
    yield node_server


def test_capabilities_and_info(srv: NodeServer) -> None:
    caps = srv.stub.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest())
    types = {c.rpc.type for c in caps.capabilities}
    R = csi_pb2.NodeServiceCapability.RPC
    assert {R.STAGE_UNSTAGE_VOLUME, R.EXPAND_VOLUME, R.GET_VOLUME_STATS, R.VOLUME_CONDITION} <= types
    info = srv.stub.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
    assert info.node_id == "node-a"
    assert dict(info.accessible_topology.segments) == {"directpv.dev/node": "node-a"}
    assert info.max_volumes_per_node == 0


def test_stage_publish_round_trip_keeps_data(srv: NodeServer) -> None:
    srv.volume("pvc-1")
    staging, target = srv.staging("pvc-1"), srv.target("pvc-1")
    stage(srv, "pvc-1", staging)
    vol = srv.store.get_volume("pvc-1")
    assert vol is not None and vol.status == VOLUME_READY and vol.staging_path == staging
    mp = srv.registry.drive_mount(srv.drive.drive_id)
    assert mp is not None and (mp / "pvc-1").is_dir()
    assert m.is_mountpoint(staging)
    publish(srv, "pvc-1", staging, target)
    assert srv.store.get_volume("pvc-1").target_paths == (target,)
    Path(target, "hello.txt").write_text("written through the target")
    # the data really is in the volume directory on the drive
    assert (mp / "pvc-1" / "hello.txt").read_text() == "written through the target"
    unpublish(srv, "pvc-1", target)
    assert not os.path.exists(target)  # the SP removes the target it created
    assert srv.store.get_volume("pvc-1").target_paths == ()
    unstage(srv, "pvc-1", staging)
    assert not m.is_mountpoint(staging) and os.path.isdir(staging)
    vol = srv.store.get_volume("pvc-1")
    assert vol is not None and vol.status == VOLUME_PENDING and vol.staging_path == ""
    # stage + publish again (another pod): the data is still there
    stage(srv, "pvc-1", staging)
    target2 = srv.target("pvc-1", pod="pod2")
    publish(srv, "pvc-1", staging, target2)
    assert Path(target2, "hello.txt").read_text() == "written through the target"
    unpublish(srv, "pvc-1", target2)
    unstage(srv, "pvc-1", staging)
    assert mounts_under(srv.kubelet) == []


def test_read_only_publish_is_really_read_only(srv: NodeServer) -> None:
    srv.volume("pvc-ro")
    staging = srv.staging("pvc-ro")
    stage(srv, "pvc-ro", staging)
    rw, ro, ro_mode = srv.target("pvc-ro", "rw"), srv.target("pvc-ro", "ro"), srv.target("pvc-ro", "romode")
    publish(srv, "pvc-ro", staging, rw)
    publish(srv, "pvc-ro", staging, ro, readonly=True)
    Path(rw, "f").write_text("rw")
    assert Path(ro, "f").read_text() == "rw"
    with pytest.raises(OSError) as e:
        Path(ro, "g").write_text("nope")
    assert e.value.errno == errno.EROFS
    assert srv.store.get_volume("pvc-ro").read_only_targets == (ro,)
    # a SINGLE_NODE_READER_ONLY capability also publishes read-only
    publish(srv, "pvc-ro", staging, ro_mode, c=cap(RO_MODE))
    with pytest.raises(OSError) as e:
        Path(ro_mode, "h").write_text("nope")
    assert e.value.errno == errno.EROFS
    Path(rw, "f2").write_text("still writable")  # the read-write bind is unaffected
    for t in (rw, ro, ro_mode):
        unpublish(srv, "pvc-ro", t)
    unstage(srv, "pvc-ro", staging)


def test_every_call_is_idempotent(srv: NodeServer) -> None:
    srv.volume("pvc-idem")
    staging, target = srv.staging("pvc-idem"), srv.target("pvc-idem")
    for _ in range(3):
        stage(srv, "pvc-idem", staging)
    gen = srv.store.get_volume("pvc-idem").generation
    stage(srv, "pvc-idem", staging)
    assert srv.store.get_volume("pvc-idem").generation == gen  # no write on a repeat
    for _ in range(3):
        publish(srv, "pvc-idem", staging, target)
    assert mounts_under(srv.kubelet) == sorted([staging, target])  # no stacked mounts
    assert srv.store.get_volume("pvc-idem").target_paths == (target,)
    for _ in range(3):
        unpublish(srv, "pvc-idem", target)
    for _ in range(3):
        unstage(srv, "pvc-idem", staging)
    assert mounts_under(srv.kubelet) == []
    vol = srv.store.get_volume("pvc-idem")
    assert vol is not None and vol.status == VOLUME_PENDING and vol.target_paths == ()


def test_incompatible_repeat_is_already_exists(srv: NodeServer) -> None:
    srv.volume("pvc-x")
    staging, target = srv.staging("pvc-x"), srv.target("pvc-x")
    stage(srv, "pvc-x", staging)
    assert code_of(lambda: stage(srv, "pvc-x", staging, cap(flags=("noexec",)))) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: stage(srv, "pvc-x", staging, cap(RO_MODE))) == grpc.StatusCode.ALREADY_EXISTS
    publish(srv, "pvc-x", staging, target)
    assert code_of(lambda: publish(srv, "pvc-x", staging, target, readonly=True)) == \
        grpc.StatusCode.ALREADY_EXISTS
    Path(target, "f").write_text("still rw")  # the failed call changed nothing
    unpublish(srv, "pvc-x", target)
    unstage(srv, "pvc-x", staging)


def test_mount_flags_are_applied_and_unknown_ones_refused(srv: NodeServer) -> None:
    srv.volume("pvc-flags")
    staging, target = srv.staging("pvc-flags"), srv.target("pvc-flags")
    c = cap(flags=("noexec", "nosuid"))
    stage(srv, "pvc-flags", staging, c)
    publish(srv, "pvc-flags", staging, target, c=c)
    f = os.statvfs(target).f_flag
    assert f & os.ST_NOEXEC and f & os.ST_NOSUID
    assert code_of(lambda: publish(srv, "pvc-flags", staging, srv.target("pvc-flags", "p2"),
                                   c=cap(flags=("uid=0",)))) == grpc.StatusCode.INVALID_ARGUMENT
    unpublish(srv, "pvc-flags", target)
    unstage(srv, "pvc-flags", staging)


@pytest.mark.parametrize("bad", ["relative/path", "/tmp/outside-kubelet", "{kubelet}/a/../../escape",
                                 "{kubelet}/../x"])
def test_paths_outside_kubelet_dir_are_invalid(srv: NodeServer, bad: str) -> None:
    srv.volume("pvc-path")
    path = bad.format(kubelet=srv.kubelet)
    staging = srv.staging("pvc-path")
    before = mounts_under(srv.root)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: stage(srv, "pvc-path", path)) == invalid
    assert code_of(lambda: unstage(srv, "pvc-path", path)) == invalid
    stage(srv, "pvc-path", staging)
    assert code_of(lambda: publish(srv, "pvc-path", staging, path)) == invalid
    assert code_of(lambda: publish(srv, "pvc-path", path, srv.target("pvc-path"))) == invalid
    assert code_of(lambda: unpublish(srv, "pvc-path", path)) == invalid
    assert mounts_under(srv.root) == sorted([*before, staging])  # no side effect
    unstage(srv, "pvc-path", staging)


def test_missing_fields_are_invalid(srv: NodeServer) -> None:
    srv.volume("pvc-f")
    staging, target = srv.staging("pvc-f"), srv.target("pvc-f")
    st = srv.stub
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    calls: list[Callable[[], Any]] = [
        lambda: st.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(staging_target_path=staging,
                                                                   volume_capability=cap())),
        lambda: st.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(volume_id="pvc-f", volume_capability=cap())),
        lambda: st.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(volume_id="pvc-f", staging_target_path=staging)),
        lambda: stage(srv, "pvc-f", staging, csi_pb2.VolumeCapability(
            block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=cap().access_mode)),
        lambda: stage(srv, "pvc-f", staging, cap(fs_type="ext4")),
        lambda: stage(srv, "pvc-f", staging, cap(csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER)),
        lambda: st.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            target_path=target, staging_target_path=staging, volume_capability=cap())),
        lambda: st.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id="pvc-f", staging_target_path=staging, volume_capability=cap())),
        lambda: st.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id="pvc-f", staging_target_path=staging, target_path=target)),
        lambda: st.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(target_path=target)),
        lambda: st.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id="pvc-f")),
        lambda: st.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(staging_target_path=staging)),
        lambda: st.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id="pvc-f")),
        lambda: st.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_path=staging)),
        lambda: st.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(volume_id="pvc-f")),
        lambda: st.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(volume_path=staging)),
        lambda: st.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(volume_id="pvc-f")),
    ]
    for i, call in enumerate(calls):
        assert code_of(call) == invalid, f"call #{i}"
    assert srv.store.get_volume("pvc-f").status == VOLUME_PENDING
    assert mounts_under(srv.kubelet) == []


def test_unknown_volume(srv: NodeServer) -> None:
    staging, target = srv.staging("nope"), srv.target("nope")
    N = grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stage(srv, "nope", staging)) == N
    assert code_of(lambda: publish(srv, "nope", staging, target)) == N
    assert code_of(lambda: stats(srv, "nope", "some/path")) == N
    assert code_of(lambda: srv.stub.NodeExpandVolume(
        csi_pb2.NodeExpandVolumeRequest(volume_id="nope", volume_path="some/path"))) == N
    # tearing down what is already gone succeeds
    unpublish(srv, "nope", target)
    unstage(srv, "nope", staging)


def test_volume_of_another_node_is_failed_precondition(srv: NodeServer) -> None:
    srv.store.put_drive(Drive(drive_id="11111111-2222-3333-4444-555555555555", node="node-b", name="sdz",
                              total=2**30))
    srv.volume("pvc-b", node="node-b", drive_id="11111111-2222-3333-4444-555555555555")
    staging = srv.staging("pvc-b")
    code = code_of(lambda: stage(srv, "pvc-b", staging))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: stats(srv, "pvc-b", staging)) == grpc.StatusCode.NOT_FOUND


def test_publish_unstaged_is_failed_precondition(srv: NodeServer) -> None:
    srv.volume("pvc-u")
    staging, target = srv.staging("pvc-u"), srv.target("pvc-u")
    assert code_of(lambda: publish(srv, "pvc-u", staging, target)) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: srv.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id="pvc-u", target_path=target, volume_capability=cap()))) == grpc.StatusCode.FAILED_PRECONDITION
    assert not os.path.exists(target)


def test_unstage_while_published_is_refused(srv: NodeServer) -> None:
    srv.volume("pvc-busy")
    staging, target = srv.staging("pvc-busy"), srv.target("pvc-busy")
    stage(srv, "pvc-busy", staging)
    publish(srv, "pvc-busy", staging, target)
    assert code_of(lambda: unstage(srv, "pvc-busy", staging)) == grpc.StatusCode.FAILED_PRECONDITION
    assert m.is_mountpoint(staging)
    unpublish(srv, "pvc-busy", target)
    unstage(srv, "pvc-busy", staging)


def test_call_on_a_volume_in_flight_is_aborted(srv: NodeServer) -> None:
    srv.volume("pvc-busy")
    staging = srv.staging("pvc-busy")
    table = srv.servicer.inflight  # type: ignore[attr-defined]
    assert table.try_acquire("pvc-busy")  # as if another call were working on it
    try:
        assert code_of(lambda: stage(srv, "pvc-busy", staging)) == grpc.StatusCode.ABORTED
        assert code_of(lambda: unstage(srv, "pvc-busy", staging)) == grpc.StatusCode.ABORTED
    finally:
        table.release("pvc-busy")
    stage(srv, "pvc-busy", staging)  # free again: works
    unstage(srv, "pvc-busy", staging)


def test_stats_bytes_and_inodes(srv: NodeServer) -> None:
    srv.volume("pvc-s")
    staging, target = srv.staging("pvc-s"), srv.target("pvc-s")
    stage(srv, "pvc-s", staging)
    publish(srv, "pvc-s", staging, target)
    U = csi_pb2.VolumeUsage

    def usage() -> dict[int, Any]:
        r = stats(srv, "pvc-s", target)
        assert not r.volume_condition.abnormal, r.volume_condition.message
        return {u.unit: u for u in r.usage}

    before = usage()
    assert set(before) == {U.BYTES, U.INODES}
    assert before[U.BYTES].total > 0 and before[U.INODES].total > 0
    for i in range(20):
        Path(target, f"f{i}").write_bytes(os.urandom(256 * 1024))
    os.sync()
    after = usage()
    assert after[U.INODES].used >= before[U.INODES].used + 20
    assert after[U.BYTES].used >= before[U.BYTES].used + 20 * 256 * 1024
    assert after[U.BYTES].available < before[U.BYTES].available
    # The volume's own figures, with or without a quota kernel: its size, and only what it holds
    # (not the whole drive's usage, XFS log and all).
    size = srv.store.get_volume("pvc-s").size
    assert after[U.BYTES].total == size
    assert after[U.BYTES].used < 20 * 256 * 1024 + 2**20
    assert stats(srv, "pvc-s", staging).usage  # the staging path works too
    assert code_of(lambda: stats(srv, "pvc-s", "some/path")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stats(srv, "pvc-s", srv.target("pvc-s", "other"))) == grpc.StatusCode.NOT_FOUND
    unpublish(srv, "pvc-s", target)
    unstage(srv, "pvc-s", staging)


def test_stats_abnormal_when_not_mounted(srv: NodeServer) -> None:
    srv.volume("pvc-nm")
    staging, target = srv.staging("pvc-nm"), srv.target("pvc-nm")
    stage(srv, "pvc-nm", staging)
    publish(srv, "pvc-nm", staging, target)
    m.unmount(target)  # someone unmounted it behind our back
    r = stats(srv, "pvc-nm", target)
    assert r.volume_condition.abnormal and "not mounted" in r.volume_condition.message
    assert not stats(srv, "pvc-nm", staging).volume_condition.abnormal
    unpublish(srv, "pvc-nm", target)
    unstage(srv, "pvc-nm", staging)


def test_stats_abnormal_when_drive_lost(srv: NodeServer) -> None:
    srv.volume("pvc-lost")
    staging, target = srv.staging("pvc-lost"), srv.target("pvc-lost")
    stage(srv, "pvc-lost", staging)
    publish(srv, "pvc-lost", staging, target)
    # the disk goes away: every mount of it is released and the device detached
    unmount_under(srv.root)
    detach(srv.drive.dev)
    drives = {d.drive_id: d for d in srv.registry.sync()}
    assert drives[srv.drive.drive_id].status == DRIVE_LOST
    r = stats(srv, "pvc-lost", target)
    assert r.volume_condition.abnormal
    assert "Lost" in r.volume_condition.message and srv.drive.drive_id in r.volume_condition.message
    # and the volume can still be torn down
    unpublish(srv, "pvc-lost", target)
    unstage(srv, "pvc-lost", staging)
    vol = srv.store.get_volume("pvc-lost")
    assert vol is not None and vol.staging_path == "" and vol.target_paths == ()
    # staging a volume of a lost drive is refused with the reason
    with pytest.raises(grpc.RpcError) as e:
        stage(srv, "pvc-lost", staging)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "Lost" in (e.value.details() or "")


def test_expand_follows_the_reservation(srv: NodeServer) -> None:
    srv.volume("pvc-e", size=64 * 2**20)
    staging, target = srv.staging("pvc-e"), srv.target("pvc-e")
    stage(srv, "pvc-e", staging)
    publish(srv, "pvc-e", staging, target)

    def expand(required: int) -> Any:
        return srv.stub.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
            volume_id="pvc-e", volume_path=target, capacity_range=csi_pb2.CapacityRange(required_bytes=required)))

    assert code_of(lambda: expand(128 * 2**20)) == grpc.StatusCode.OUT_OF_RANGE  # not reserved yet
    srv.store.expand_volume("pvc-e", 128 * 2**20)  # what ControllerExpandVolume does
    assert expand(128 * 2**20).capacity_bytes == 128 * 2**20
    assert expand(128 * 2**20).capacity_bytes == 128 * 2**20  # idempotent
    assert code_of(lambda: srv.stub.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
        volume_id="pvc-e", volume_path=srv.target("pvc-e", "else")))) == grpc.StatusCode.NOT_FOUND
    unpublish(srv, "pvc-e", target)
    unstage(srv, "pvc-e", staging)


def test_released_volume_directory_is_collected(srv: NodeServer) -> None:
    srv.volume("pvc-gc")
    staging, target = srv.staging("pvc-gc"), srv.target("pvc-gc")
    stage(srv, "pvc-gc", staging)
    publish(srv, "pvc-gc", staging, target)
    Path(target, "data").write_bytes(b"x" * 65536)
    unpublish(srv, "pvc-gc", target)
    unstage(srv, "pvc-gc", staging)
    mp = srv.registry.drive_mount(srv.drive.drive_id)
    assert mp is not None and (mp / "pvc-gc" / "data").is_file()
    assert srv.registry.gc() == []  # the record still exists: kept
    srv.store.delete_volume("pvc-gc")  # DeleteVolume in the controller
    assert srv.registry.gc() == [f"{srv.drive.drive_id}/pvc-gc"]
    assert not (mp / "pvc-gc").exists()


def test_require_quota_refuses_without_quota(srv: NodeServer) -> None:
    from dataclasses import replace

    md = srv.registry.mounted(srv.drive.drive_id)
    assert md is not None
    if md.quota:
        pytest.skip("this kernel has XFS quota: nothing to refuse")
    srv.servicer.config = replace(srv.config, require_quota=True)  # type: ignore[attr-defined]
    srv.volume("pvc-q")
    staging = srv.staging("pvc-q")
    with pytest.raises(grpc.RpcError) as e:
        stage(srv, "pvc-q", staging)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "quota" in (e.value.details() or "")
    assert not m.is_mountpoint(staging)
    mp = srv.registry.drive_mount(srv.drive.drive_id)
    assert mp is not None and not (mp / "pvc-q").exists()


def test_no_subprocess_on_the_hot_path(srv: NodeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage/publish/unpublish/unstage run syscalls only (the benchmark measures the time)."""
    srv.volume("pvc-hot")
    staging, target = srv.staging("pvc-hot"), srv.target("pvc-hot")
    spawned: list[Any] = []
    real = subprocess.Popen.__init__

    def spy(self: Any, *a: Any, **k: Any) -> None:
        spawned.append(a[0] if a else k.get("args"))
        real(self, *a, **k)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy)
    stage(srv, "pvc-hot", staging)
    publish(srv, "pvc-hot", staging, target)
    unpublish(srv, "pvc-hot", target)
    unstage(srv, "pvc-hot", staging)
    assert spawned == []


def test_teardown_never_unmounts_another_volume(srv: NodeServer) -> None:
    srv.volume("pvc-a")
    srv.volume("pvc-b")
    sa, sb, tb = srv.staging("pvc-a"), srv.staging("pvc-b"), srv.target("pvc-b")
    stage(srv, "pvc-a", sa)
    stage(srv, "pvc-b", sb)
    publish(srv, "pvc-b", sb, tb)
    # a confused caller names pvc-a with pvc-b's paths: pvc-b stays mounted
    unpublish(srv, "pvc-a", tb)
    unstage(srv, "pvc-a", sb)
    assert m.is_mountpoint(tb) and m.is_mountpoint(sb)
    Path(tb, "f").write_text("b is still here")
    unpublish(srv, "pvc-b", tb)
    unstage(srv, "pvc-b", sb)
    unstage(srv, "pvc-a", sa)
    assert mounts_under(srv.kubelet) == []


def test_teardown_after_the_record_is_gone_releases_our_mounts(srv: NodeServer) -> None:
    srv.volume("pvc-gone")
    staging, target = srv.staging("pvc-gone"), srv.target("pvc-gone")
    stage(srv, "pvc-gone", staging)
    publish(srv, "pvc-gone", staging, target)
    # the record disappears behind the node's back (the store does not refuse; the controller would)
    assert srv.store.delete_volume("pvc-gone") is not None
    assert srv.store.get_volume("pvc-gone") is None
    unpublish(srv, "pvc-gone", target)
    unstage(srv, "pvc-gone", staging)
    assert not os.path.exists(target) and not m.is_mountpoint(staging)


def test_missing_staging_dir_or_target_parent_is_failed_precondition(srv: NodeServer) -> None:
    srv.volume("pvc-m")
    missing = str(srv.kubelet / "plugins" / "never-created")
    assert code_of(lambda: stage(srv, "pvc-m", missing)) == grpc.StatusCode.FAILED_PRECONDITION
    staging = srv.staging("pvc-m")
    stage(srv, "pvc-m", staging)
    orphan = str(srv.kubelet / "pods" / "no-such-pod" / "volumes" / "pvc-m")
    assert code_of(lambda: publish(srv, "pvc-m", staging, orphan)) == grpc.StatusCode.FAILED_PRECONDITION
    assert not os.path.exists(orphan)
    unstage(srv, "pvc-m", staging)


def test_concurrent_calls(srv: NodeServer) -> None:
    """Many volumes in parallel all succeed; racing calls on one volume get ABORTED or the
    same answer, and leave exactly one mount."""
    from concurrent.futures import ThreadPoolExecutor

    names = [f"pvc-c{i}" for i in range(12)]
    for n in names:
        srv.volume(n, size=2**20)
    paths = {n: (srv.staging(n), srv.target(n)) for n in names}

    def up(n: str) -> None:
        stage(srv, n, paths[n][0])
        publish(srv, n, paths[n][0], paths[n][1])
        Path(paths[n][1], "id").write_text(n)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(up, names))
    mp = srv.registry.drive_mount(srv.drive.drive_id)
    assert mp is not None
    for n in names:  # no cross-talk: each target shows its own volume directory
        assert (mp / n / "id").read_text() == n
        assert srv.store.get_volume(n).target_paths == (paths[n][1],)

    def race(_: int) -> str:
        try:
            stage(srv, "pvc-race", paths["pvc-race"][0])
            return "OK"
        except grpc.RpcError as e:
            return str(e.code().name)

    srv.volume("pvc-race", size=2**20)
    paths["pvc-race"] = (srv.staging("pvc-race"), srv.target("pvc-race"))
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(race, range(16)))
    assert set(outcomes) <= {"OK", "ABORTED"} and "OK" in outcomes
    assert mounts_under(srv.kubelet).count(paths["pvc-race"][0]) == 1

    def down(n: str) -> None:
        unpublish(srv, n, paths[n][1])
        unstage(srv, n, paths[n][0])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(down, names))
    unstage(srv, "pvc-race", paths["pvc-race"][0])
    assert mounts_under(srv.kubelet) == []
