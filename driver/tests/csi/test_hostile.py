"""Hostile requests to the CSI node and controller, over the real unix socket, on real loop
XFS drives with real bind mounts (issue 11). What is asserted is what must never happen:
nothing removed that the node did not make, nothing mounted or created outside the kubelet
dir, no INTERNAL, no reply past gRPC's metadata limits. Runs as root (CI does)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import grpc
import pytest
from csi.csi_helpers import (
    Standalone,
    create_req,
    format_loop_drive,
    mount_cap,
)
from directpv_csi.csi.proto import csi_pb2
from directpv_csi.device import mount as m
from node.node_helpers import (
    NodeServer,
    unmount_under,
)

pytestmark = [pytest.mark.root]

SNW = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
INVALID = grpc.StatusCode.INVALID_ARGUMENT
# A client refuses trailers past 8 KiB (grpc.max_metadata_size); the message travels
# percent-encoded in grpc-message, so its raw size must stay well below that.
METADATA_LIMIT = 8192


def cap(mode: csi_pb2.VolumeCapability.AccessMode.Mode = SNW) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"),
                                    access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))


def stage(s: NodeServer, vid: str, staging: str) -> Any:
    return s.stub.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(volume_id=vid, staging_target_path=staging, volume_capability=cap()))


def publish(s: NodeServer, vid: str, staging: str, target: str, timeout: float = 30) -> Any:
    return s.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=cap()), timeout=timeout)


def unpublish(s: NodeServer, vid: str, target: str) -> Any:
    return s.stub.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target))


def unstage(s: NodeServer, vid: str, staging: str) -> Any:
    return s.stub.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))


def failure(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def mount_points() -> List[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4].encode().decode("unicode_escape") for line in f]


def under(root: Path) -> List[str]:
    prefix = str(root).rstrip("/") + "/"
    return sorted(p for p in mount_points() if p.startswith(prefix))


@pytest.fixture
def srv(node_server: NodeServer) -> Iterator[NodeServer]:
    yield node_server


# ---------------------------------------------------------------- teardown removes only what it made

def test_unpublish_and_unstage_remove_nothing_they_did_not_make(srv: NodeServer) -> None:
    srv.volume("pvc-a")
    staging, target = srv.staging("pvc-a"), srv.target("pvc-a")
    stage(srv, "pvc-a", staging)
    publish(srv, "pvc-a", staging, target)
    Path(target, "data").write_text("volume data")
    Path(target, "inner").mkdir()
    pods = srv.kubelet / "pods" / "pod9"
    pods.mkdir(parents=True)
    kubelet_file = pods / "etc-hosts"
    kubelet_file.write_text("a kubelet file")
    foreign_dir = pods / "foreign"
    foreign_dir.mkdir()
    foreign_mount = pods / "tmpfs"
    foreign_mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "hostile-test", str(foreign_mount)], check=True)
    (foreign_mount / "kept").write_text("on a foreign mount")
    paths = [str(kubelet_file), str(foreign_dir), str(foreign_mount), f"{target}/data", f"{target}/inner"]
    srv.volume("pvc-b")
    staging_b = srv.staging("pvc-b")
    stage(srv, "pvc-b", staging_b)  # staged, not published: unstage may proceed
    for p in paths:
        for vid in ("pvc-a", "no-such-volume"):
            unpublish(srv, vid, p)  # success (CSI idempotency), and nothing removed
        for vid in ("pvc-b", "no-such-volume"):
            unstage(srv, vid, p)
    assert m.is_mountpoint(staging_b)
    unstage(srv, "pvc-b", staging_b)
    assert kubelet_file.read_text() == "a kubelet file"
    assert foreign_dir.is_dir()
    assert m.is_mountpoint(str(foreign_mount)) and (foreign_mount / "kept").read_text() == "on a foreign mount"
    assert Path(target, "data").read_text() == "volume data" and Path(target, "inner").is_dir()
    assert m.is_mountpoint(target) and m.is_mountpoint(staging)
    # a target the node made is removed only for the volume it was made for
    unpublish(srv, "other-volume", target)
    assert m.is_mountpoint(target)
    unpublish(srv, "pvc-a", target)
    assert not os.path.exists(target)
    assert srv.servicer.made.paths() == []  # type: ignore[attr-defined]
    unstage(srv, "pvc-a", staging)
    assert os.path.isdir(staging)  # the orchestrator's staging directory stays
    subprocess.run(["umount", str(foreign_mount)], check=True)


def test_a_target_directory_the_orchestrator_made_is_kept(srv: NodeServer) -> None:
    srv.volume("pvc-k")
    staging, target = srv.staging("pvc-k"), srv.target("pvc-k")
    os.mkdir(target)  # made by the orchestrator, not by the node
    stage(srv, "pvc-k", staging)
    publish(srv, "pvc-k", staging, target)
    unpublish(srv, "pvc-k", target)
    assert os.path.isdir(target) and not m.is_mountpoint(target)
    unstage(srv, "pvc-k", staging)


def test_a_made_directory_replaced_by_another_is_kept(srv: NodeServer) -> None:
    srv.volume("pvc-r")
    staging, target = srv.staging("pvc-r"), srv.target("pvc-r")
    stage(srv, "pvc-r", staging)
    publish(srv, "pvc-r", staging, target)
    m.unmount(target)
    os.rmdir(target)
    os.mkdir(target)  # someone else's directory now has the name (another inode)
    unpublish(srv, "pvc-r", target)
    assert os.path.isdir(target)
    unstage(srv, "pvc-r", staging)


def test_the_record_of_made_targets_survives_a_restart(srv: NodeServer) -> None:
    from directpv_csi.csi.node import NodeServicer

    srv.volume("pvc-s")
    staging, target = srv.staging("pvc-s"), srv.target("pvc-s")
    stage(srv, "pvc-s", staging)
    publish(srv, "pvc-s", staging, target)
    fresh = NodeServicer(srv.config, srv.store, srv.registry)  # a new process reads the same state dir
    assert fresh.made.paths() == [target]
    unpublish(srv, "pvc-s", target)
    assert not os.path.exists(target)
    unstage(srv, "pvc-s", staging)


# ---------------------------------------------------------------- nesting

def test_nested_targets_and_staging_paths_are_invalid(srv: NodeServer) -> None:
    srv.volume("pvc-n")
    srv.volume("pvc-o")
    staging, target = srv.staging("pvc-n"), srv.target("pvc-n")
    stage(srv, "pvc-n", staging)
    publish(srv, "pvc-n", staging, target)
    before = under(srv.root)
    so = srv.staging("pvc-o")
    stage(srv, "pvc-o", so)
    before = under(srv.root)
    cases: List[Tuple[str, Callable[[], Any]]] = [
        ("target == staging", lambda: publish(srv, "pvc-n", staging, staging)),
        ("target inside staging", lambda: publish(srv, "pvc-n", staging, staging + "/sub")),
        ("staging inside target", lambda: publish(srv, "pvc-n", target + "/st", target)),
        ("target inside another volume's target", lambda: publish(srv, "pvc-o", so, target + "/sub")),
        ("target inside another volume's staging", lambda: publish(srv, "pvc-o", so, staging + "/x")),
        ("staging inside a published target", lambda: stage(srv, "pvc-o", _mkdir(target + "/stage-here"))),
    ]
    for what, call in cases:
        err = failure(call)
        assert err.code() == INVALID, f"{what}: {err.code()} {err.details()}"
    assert under(srv.root) == before  # nothing mounted
    assert not os.path.exists(staging + "/sub") and not os.path.exists(target + "/sub")
    os.rmdir(target + "/stage-here")
    unpublish(srv, "pvc-n", target)
    unstage(srv, "pvc-n", staging)
    unstage(srv, "pvc-o", so)


def _mkdir(p: str) -> str:
    os.makedirs(p, exist_ok=True)
    return p


# ---------------------------------------------------------------- symlinks

def test_symlinks_beneath_the_kubelet_dir_are_never_followed(srv: NodeServer, tmp_path: Path) -> None:
    srv.volume("pvc-l")
    staging = srv.staging("pvc-l")
    stage(srv, "pvc-l", staging)
    outside = tmp_path / "outside"
    outside.mkdir()
    pod = srv.kubelet / "pods" / "podl"
    pod.mkdir(parents=True)
    os.symlink(outside, pod / "volumes")
    os.symlink(outside, pod / "t-link")
    for t in (str(pod / "volumes" / "t"), str(pod / "t-link")):
        assert failure(lambda t=t: publish(srv, "pvc-l", staging, t)).code() == INVALID  # type: ignore[misc]
        assert failure(lambda t=t: unpublish(srv, "pvc-l", t)).code() == INVALID  # type: ignore[misc]
    assert os.listdir(outside) == [] and under(outside) == []
    unstage(srv, "pvc-l", staging)


def test_flipping_a_target_parent_to_a_symlink_never_escapes(srv: NodeServer, tmp_path: Path) -> None:
    """For 20 s a thread swaps the target's parent between a directory and a symlink to a
    directory outside the kubelet dir while NodePublish/NodeUnpublish run in a loop. Zero
    mounts and zero directories may appear outside. (Correctness, not timing: the loop runs
    as many calls as the machine manages.)"""
    srv.volume("pvc-race")
    staging = srv.staging("pvc-race")
    stage(srv, "pvc-race", staging)
    outside = tmp_path / "outside"
    outside.mkdir()
    pod = srv.kubelet / "pods" / "podr"
    pod.mkdir(parents=True)
    parent = pod / "volumes"
    parent.mkdir()
    aside = pod / "volumes.aside"
    link = pod / "volumes.link"
    os.symlink(outside, link)
    stop = threading.Event()
    flips = [0]

    def flipper() -> None:
        while not stop.is_set():
            os.rename(parent, aside)  # the directory steps aside...
            os.rename(link, parent)  # ...and a symlink to the outside takes its name
            os.rename(parent, link)
            os.rename(aside, parent)
            flips[0] += 1

    outcomes: dict[str, int] = {}
    escaped: List[str] = []
    th = threading.Thread(target=flipper, daemon=True)
    th.start()
    try:
        deadline = time.monotonic() + 20
        i = 0
        while time.monotonic() < deadline:
            t = str(parent / f"t{i % 4}")
            calls: Tuple[Callable[[], object], ...] = (partial(publish, srv, "pvc-race", staging, t, timeout=10),
                                                       partial(unpublish, srv, "pvc-race", t))
            for call in calls:
                try:
                    call()
                    outcomes["OK"] = outcomes.get("OK", 0) + 1
                except grpc.RpcError as e:
                    outcomes[e.code().name] = outcomes.get(e.code().name, 0) + 1
            i += 1
            if under(outside) or os.listdir(outside):
                escaped.append(f"after call {i}: mounts {under(outside)} entries {os.listdir(outside)}")
    finally:
        stop.set()
        th.join()
    assert not escaped, escaped[:5]
    assert under(outside) == [] and os.listdir(outside) == []
    assert "INTERNAL" not in outcomes, outcomes
    assert flips[0] > 100 and outcomes.get("OK", 0) > 0, (flips, outcomes)
    # every mount the calls left is a mount of this test's kubelet dir (the swapped-aside directory included)
    for p in mount_points():
        assert not p.startswith(str(outside)), p
    for leftover in under(srv.kubelet):
        if leftover != staging:
            m.unmount(leftover)
    unstage(srv, "pvc-race", staging)


# ---------------------------------------------------------------- every input class gets its code

BIG = "x" * 10_000


def _node_cases(srv: NodeServer, staging: str, target: str) -> List[Tuple[str, grpc.StatusCode, Callable[[], Any]]]:
    st: Any = srv.stub
    bad_mode = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(),
                                        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=77))  # type: ignore[arg-type]  # not a Mode, on purpose
    long_component = str(srv.kubelet / "pods" / ("c" * 300))
    long_path = str(srv.kubelet) + ("/d" * 2100)
    nf = grpc.StatusCode.NOT_FOUND
    return [
        ("10 KB volume id, stage", INVALID, lambda: stage(srv, BIG, staging)),
        ("10 KB volume id, unpublish", INVALID, lambda: unpublish(srv, BIG, target)),
        ("10 KB volume id, stats", INVALID, lambda: st.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=BIG, volume_path=target))),
        ("volume id with NUL", INVALID, lambda: stage(srv, "a\0b", staging)),
        ("volume id with newline", INVALID, lambda: stage(srv, "pvc-h\n", staging)),
        ("unknown access mode number", INVALID, lambda: st.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id="pvc-h", staging_target_path=staging, volume_capability=bad_mode))),
        ("10 KB mount flag", INVALID, lambda: st.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id="pvc-h", staging_target_path=staging, volume_capability=csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(mount_flags=[BIG]), access_mode=cap().access_mode)))),
        ("300-byte path component", INVALID, lambda: publish(srv, "pvc-h", staging, long_component)),
        ("path over PATH_MAX", INVALID, lambda: publish(srv, "pvc-h", staging, long_path)),
        ("path over PATH_MAX, unpublish", INVALID, lambda: unpublish(srv, "pvc-h", long_path)),
        ("10 KB path outside the kubelet dir", INVALID, lambda: unstage(srv, "pvc-h", "/" + BIG[:200] * 20)),
        ("unknown volume", nf, lambda: stage(srv, "no-such-volume", staging)),
    ]


def test_every_node_input_class_gets_its_code_and_a_bounded_message(srv: NodeServer) -> None:
    srv.volume("pvc-h")
    staging, target = srv.staging("pvc-h"), srv.target("pvc-h")
    before = under(srv.root)
    for what, code, call in _node_cases(srv, staging, target):
        err = failure(call)
        assert err.code() == code, f"{what}: {err.code()} {err.details()[:300]}"
        assert len((err.details() or "").encode()) <= 2048, what
    assert under(srv.root) == before
    vol = srv.store.get_volume("pvc-h")
    assert vol is not None and vol.staging_path == "" and vol.target_paths == ()


def test_every_controller_input_class_gets_its_code(csi: Any) -> None:
    csi.add_drive("d1")
    c = csi.controller
    bad_mode = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(),
                                        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=77))  # type: ignore[arg-type]  # not a Mode, on purpose
    many = {f"k{i}": "v" for i in range(200)}
    cases: List[Tuple[str, grpc.StatusCode, Callable[[], Any]]] = [
        ("name with trailing newline", INVALID, lambda: c.CreateVolume(create_req("pvc-nl\n"))),
        ("10 KB name", INVALID, lambda: c.CreateVolume(create_req(BIG))),
        ("unknown access mode number", INVALID, lambda: c.CreateVolume(create_req("pvc-m", caps=[bad_mode]))),
        ("a 4 MiB parameter value", INVALID, lambda: c.CreateVolume(
            create_req("pvc-p", params={"csi.storage.k8s.io/pvc/name": "v" * (3 * 2**20)}))),
        ("200 parameters", INVALID, lambda: c.CreateVolume(create_req("pvc-q", params=many))),
        ("label value with newline", INVALID, lambda: c.CreateVolume(
            create_req("pvc-l", params={"directpv.dev/rack": "r1\n"}))),
        ("10 KB topology segment", INVALID, lambda: c.CreateVolume(
            create_req("pvc-t", requisite=[{"directpv.dev/node": "n" * 20_000}]))),
        ("200 topologies", INVALID, lambda: c.CreateVolume(
            create_req("pvc-u", requisite=[{"directpv.dev/node": f"n{i}"} for i in range(200)]))),
        ("10 KB id, delete", INVALID, lambda: c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=BIG))),
        ("10 KB id, expand", INVALID, lambda: c.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
            volume_id=BIG, capacity_range=csi_pb2.CapacityRange(required_bytes=1)))),
        ("10 KB id, validate", INVALID, lambda: c.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=BIG, volume_capabilities=[mount_cap()]))),
        ("unknown id", grpc.StatusCode.NOT_FOUND, lambda: c.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id="x" * 128, volume_capabilities=[mount_cap()]))),
        ("10 KB starting token", grpc.StatusCode.ABORTED, lambda: c.ListVolumes(
            csi_pb2.ListVolumesRequest(starting_token=BIG))),
    ]
    for what, code, call in cases:
        err = failure(call)
        assert err.code() == code, f"{what}: {err.code()} {(err.details() or '')[:300]}"
        assert len((err.details() or "").encode()) <= 2048, what
    assert csi.store.list_volumes() == []  # nothing reached the store


def test_no_message_passes_the_metadata_limit() -> None:
    """The translator bounds every message, whatever a domain error or a bug carries."""
    from directpv_csi.core.errors import FailedPrecondition
    from directpv_csi.csi.errors import MAX_MESSAGE_BYTES, translate

    for exc in (FailedPrecondition("é" * 50_000, "h" * 50_000), RuntimeError(BIG * 10),
                OSError(36, "File name too long", BIG)):
        _code, message = translate(exc)
        assert len(message.encode()) <= MAX_MESSAGE_BYTES
        assert MAX_MESSAGE_BYTES * 3 < METADATA_LIMIT  # even fully percent-encoded
    assert translate(OSError(36, "File name too long", BIG))[0] == INVALID


# ---------------------------------------------------------------- one server per state dir

def _digest(state: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(state.iterdir()) if p.name.startswith("store.sqlite")}


def test_a_second_server_on_one_state_dir_refuses_and_changes_nothing(
        loopdev: Callable[..., str], short_dir: Path) -> None:
    dev = loopdev("400M")
    format_loop_drive(dev)
    kubelet = short_dir / "kubelet"
    kubelet.mkdir()
    state = short_dir / "state"
    first = Standalone(state, devices=[dev], kubelet_dir=kubelet, extra=["--sync-interval", "3600"])
    try:
        first.start()
        before = _digest(state)
        assert "store.sqlite" in before
        second = subprocess.run(
            [sys.executable, "-m", "directpv_csi.cmd.main", "standalone", "--state-dir", str(state),
             "--endpoint", "unix://" + str(short_dir / "second.sock"), "--node-id", "test-node", "--allow-loop",
             "--device", dev, "--kubelet-dir", str(kubelet)],
            capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert f"pid {first.pid}" in second.stderr and str(state) in second.stderr, second.stderr
        assert _digest(state) == before  # byte-identical: the refused server wrote nothing
        assert not (short_dir / "second.sock").exists()
        # the first one still serves
        from directpv_csi.csi.proto import csi_pb2_grpc

        assert csi_pb2_grpc.IdentityStub(first.channel).Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value
    finally:
        first.stop()
        unmount_under(short_dir)


def test_the_node_role_takes_the_same_lock(short_dir: Path) -> None:
    """`directpv-csi node` refuses a locked state dir before it even reads its kubeconfig."""
    from directpv_csi.cmd.standalone import lock_state_dir

    state = short_dir / "state"
    fd = lock_state_dir(str(state))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "directpv_csi.cmd.main", "node", "--state-dir", str(state),
             "--endpoint", "unix://" + str(short_dir / "node.sock"), "--node-id", "n1",
             "--kubeconfig", str(short_dir / "no-such-kubeconfig"), "--kubelet-dir", str(short_dir / "kubelet"),
             "--metrics-address", ""],
            capture_output=True, text=True, timeout=60)
    finally:
        os.close(fd)
    assert proc.returncode == 1 and f"pid {os.getpid()}" in proc.stderr, proc.stderr
    assert sorted(p.name for p in state.iterdir()) == ["lock"]  # nothing else written
