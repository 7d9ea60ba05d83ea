"""The store decides every deletion; orphans are kept; volumes survive a lost store.

Real loop XFS drives, real mounts, the real node server over gRPC, on BOTH stores: the
embedded SQLite store and the kube store on the real kube-apiserver (skipped when it is not
built). Every case writes data into volumes first and checks it afterwards, byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import grpc
import pytest
from directpv_csi.core.models import Tombstone, Volume
from directpv_csi.csi.proto import csi_pb2, csi_pb2_grpc
from directpv_csi.node.config import NodeConfig
from directpv_csi.node.registry import DriveRegistry
from directpv_csi.store.embedded import EmbeddedStore
from node.node_helpers import (
    OurDrive,
    only_under,
    unmount_under,
)

pytestmark = [pytest.mark.root]

MiB = 2**20
SNW = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER


# --- two stores, one way to lose them ---------------------------------------------------------


class Backend:
    """A store backend: ``open()`` a store on it, ``lose()`` every record (the store is gone)."""

    def open(self) -> Any:
        raise NotImplementedError

    def lose(self) -> None:
        raise NotImplementedError


class Embedded(Backend):
    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> Any:
        return EmbeddedStore(str(self.path))

    def lose(self) -> None:
        for p in self.path.parent.glob(self.path.name + "*"):  # the file, its -wal and -shm
            p.unlink()


class Kube(Backend):
    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def open(self) -> Any:
        from directpv_csi.kube.store import KubeStore

        return KubeStore(self.cluster.new_client(), events=False)

    def lose(self) -> None:
        """Delete every object (finalizers removed, as an operator would have to), then the CRDs
        themselves, then re-create the CRDs: the cluster forgot everything."""
        import time

        from directpv_csi.kube.store import apply_crds
        from kube.cluster import CRD_DIR
        from kubernetes import client

        self.cluster.wipe()
        ext = client.ApiextensionsV1Api(self.cluster.api_client)
        for name in self.cluster.crds:
            if name.startswith(("directpvdrives.", "directpvvolumes.")):
                ext.delete_custom_resource_definition(name)
        for name in self.cluster.crds:
            if not name.startswith(("directpvdrives.", "directpvvolumes.")):
                continue
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    ext.read_custom_resource_definition(name)
                except client.exceptions.ApiException as e:
                    if e.status == 404:
                        break
                    raise
                time.sleep(0.2)
        apply_crds(self.cluster.api_client, CRD_DIR)


@pytest.fixture(name="backend", params=["embedded", "kube"])
def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "embedded":
        yield Embedded(tmp_path / "store.db")
        return
    cluster = request.getfixturevalue("kube_store_cluster")
    cluster.wipe()
    yield Kube(cluster)
    cluster.wipe()


# --- a node: registry + node server on a unix socket ----------------------------------------


@dataclass
class Node:
    store: Any
    registry: DriveRegistry
    stub: Any
    config: NodeConfig
    kubelet: Path

    def stage(self, vid: str) -> str:
        p = self.kubelet / "plugins" / "staging" / vid
        p.mkdir(parents=True, exist_ok=True)
        self.stub.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=vid, staging_target_path=str(p), volume_capability=_cap()))
        return str(p)

    def publish(self, vid: str) -> str:
        staging = self.stage(vid)
        parent = self.kubelet / "pods" / "pod1" / "volumes"
        parent.mkdir(parents=True, exist_ok=True)
        target = str(parent / vid)
        self.stub.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=vid, staging_target_path=staging, target_path=target, volume_capability=_cap()))
        return target

    def release(self, vid: str) -> None:
        """Unpublish and unstage (what the kubelet does when the pod goes)."""
        target = str(self.kubelet / "pods" / "pod1" / "volumes" / vid)
        staging = str(self.kubelet / "plugins" / "staging" / vid)
        self.stub.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target))
        self.stub.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging))

    def mount(self, drive_id: str) -> Path:
        mp = self.registry.drive_mount(drive_id)
        assert mp is not None
        return mp


def _cap() -> Any:
    return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs"),
                                    access_mode=csi_pb2.VolumeCapability.AccessMode(mode=SNW))


@contextlib.contextmanager
def running_node(backend: Backend, env: Dict[str, Path], node_id: str = "node-a") -> Iterator[Node]:
    """Start a node (a new store client, registry, node server); on exit stop it as a reboot
    would: server and registry stopped, every mount under the test's root gone."""
    from directpv_csi.csi.node import NodeServicer
    from directpv_csi.csi.server import create_server

    store = backend.open()
    config = NodeConfig(node_id=node_id, state_dir=env["state"], kubelet_dirs=(env["kubelet"],), allow_loop=True)
    registry = DriveRegistry(config, store, probe=only_under(env["root"]))
    registry.sync()
    servicer = NodeServicer(config, store, registry)
    sockdir = tempfile.mkdtemp(prefix="dpv-del-")
    server, address = create_server(f"unix://{sockdir}/csi.sock", servicer, max_workers=4)
    channel = grpc.insecure_channel(address)
    try:
        yield Node(store=store, registry=registry, stub=csi_pb2_grpc.NodeStub(channel), config=config,
                   kubelet=env["kubelet"])
    finally:
        channel.close()
        server.stop(None).wait()
        registry.stop()
        store.close()
        shutil.rmtree(sockdir, ignore_errors=True)
        unmount_under(env["root"])


def _reserve(store: Any, drive_id: str, name: str, size: int = 32 * MiB) -> Volume:
    v: Volume = store.reserve_volume(Volume(name=name, drive_id=drive_id, node="", size=size, project_id=0,
                                            parameters={"fsType": "xfs"}, labels={"claim": name}))
    return v


def _write(path: str, seed: str) -> str:
    """Write files (2 MiB + a small one in a subdirectory) under ``path``; returns their digest."""
    data = hashlib.sha256(seed.encode()).digest() * (2 * MiB // 32)
    Path(path, "data.bin").write_bytes(data)
    Path(path, "sub").mkdir()
    Path(path, "sub", "note.txt").write_text(seed)
    return _digest(path)


def _digest(path: str) -> str:
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, path).encode() + b"\0" + Path(p).read_bytes())
    return h.hexdigest()


def _accounting(store: Any, drive_id: str) -> Tuple[int, int, List[Tuple[str, int, int, str]]]:
    d = store.get_drive(drive_id)
    vols = sorted((v.name, v.size, v.project_id, v.uid) for v in store.list_volumes(drive_id=drive_id))
    return d.allocated, d.volume_count, vols


# --- the cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("new_node", [False, True], ids=["same-node", "drive-brought-to-another-node"])
def test_lost_store_restores_volumes_with_their_data(
    backend: Backend, node_env: Dict[str, Path], make_drive: Callable[..., OurDrive], new_node: bool
) -> None:
    drive = make_drive()
    digests: Dict[str, str] = {}
    with running_node(backend, node_env) as node:
        for i in range(3):
            v = _reserve(node.store, drive.drive_id, f"pvc-lost-{i}", size=(16 + 8 * i) * MiB)
            digests[v.name] = _write(node.publish(v.name), v.name)
            node.release(v.name)
        node.store.expand_volume("pvc-lost-2", 48 * MiB)
        node.registry.gc()  # the sync after an expansion refreshes the metadata file
        before = _accounting(node.store, drive.drive_id)
        assert before[0] == (16 + 24 + 48) * MiB and before[1] == 3
    backend.lose()
    if new_node:  # a drive brought to another node of an empty store: the state dir is new as well
        shutil.rmtree(node_env["state"])
        node_env["state"].mkdir()
    with running_node(backend, node_env, node_id="node-b" if new_node else "node-a") as node:
        assert sorted(node.registry.restored) == sorted(f"{drive.drive_id}/{n}" for n in digests)
        assert _accounting(node.store, drive.drive_id) == before  # sizes, project ids, uids, capacity
        assert all(v.node == node.config.node_id for v in node.store.list_volumes(drive_id=drive.drive_id))
        assert node.store.get_volume("pvc-lost-0").labels == {"claim": "pvc-lost-0"}
        assert node.registry.gc() == [] and node.registry.orphans() == {}
        for name, digest in digests.items():
            assert _digest(node.publish(name)) == digest  # staged and published again: the same bytes
            node.release(name)
        node.registry.sync()
        assert _accounting(node.store, drive.drive_id) == before
    # a restart on the restored store restores nothing more and removes nothing
    with running_node(backend, node_env, node_id="node-b" if new_node else "node-a") as node:
        assert node.registry.restored == [] and node.registry.orphans() == {}
        for name, digest in digests.items():
            assert _digest(str(node.mount(drive.drive_id) / name)) == digest


def test_delete_while_node_down_is_purged_when_it_returns(
    backend: Backend, node_env: Dict[str, Path], make_drive: Callable[..., OurDrive]
) -> None:
    drive = make_drive()
    with running_node(backend, node_env) as node:
        gone = _reserve(node.store, drive.drive_id, "pvc-gone")
        keep = _reserve(node.store, drive.drive_id, "pvc-keep")
        _write(node.publish(gone.name), "gone")
        kept = _write(node.publish(keep.name), "keep")
        node.release(gone.name)
        node.release(keep.name)
        mp = node.mount(drive.drive_id)
    # the node is down: DeleteVolume reaches only the store
    store = backend.open()
    try:
        assert store.delete_volume(gone.name) is not None
        [t] = store.list_tombstones(drive.drive_id)
        assert (t.name, t.uid, t.project_id) == (gone.name, gone.uid, gone.project_id)
        assert store.get_drive(drive.drive_id).allocated == keep.size  # capacity freed at once
    finally:
        store.close()
    with running_node(backend, node_env) as node:  # the first sync consumes the tombstone
        assert not (mp / gone.name).exists()
        assert not (mp / ".directpv" / "volumes" / f"{gone.name}.json").exists()
        assert list((mp / ".deleted").iterdir()) == []
        assert node.store.list_tombstones(drive.drive_id) == []
        assert _digest(str(mp / keep.name)) == kept
        assert node.registry.orphans() == {}
        # the project id is free again
        assert _reserve(node.store, drive.drive_id, "pvc-next").project_id == gone.project_id


def test_orphan_is_kept_reported_and_removed_only_by_the_explicit_clean(
    backend: Backend, node_env: Dict[str, Path], make_drive: Callable[..., OurDrive]
) -> None:
    from directpv_csi.node import orphans as orph

    drive = make_drive()
    with running_node(backend, node_env) as node:
        mp = node.mount(drive.drive_id)
        live = _reserve(node.store, drive.drive_id, "pvc-live")
        live_digest = _write(node.publish(live.name), "live")
        node.release(live.name)
        (mp / "pvc-orphan").mkdir()  # a volume directory no record or tombstone describes
        orphan_digest = _write(str(mp / "pvc-orphan"), "orphan")
        for _ in range(3):
            node.registry.sync()
        assert node.registry.orphans() == {drive.drive_id: ("pvc-orphan",)}
    with running_node(backend, node_env) as node:  # kept across restarts
        assert node.registry.orphans() == {drive.drive_id: ("pvc-orphan",)}
        assert _digest(str(mp / "pvc-orphan")) == orphan_digest
        # the preview (check mode) lists what would go and changes nothing
        plan = orph.clean(node.store, node.config.state_dir, node_id="node-a", names=["pvc-orphan"],
                          check_mode=True)
        assert [(o.drive_id, o.name) for o in plan] == [(drive.drive_id, "pvc-orphan")]
        assert plan[0].bytes_used >= 2 * MiB and plan[0].files == 2
        assert node.store.list_tombstones(drive.drive_id) == []
        node.registry.sync()
        assert _digest(str(mp / "pvc-orphan")) == orphan_digest
        # a live volume is never an orphan, and cannot be cleaned as one
        with pytest.raises(Exception, match="not an orphan"):
            orph.clean(node.store, node.config.state_dir, node_id="node-a", names=["pvc-live"], check_mode=True)
        done = orph.clean(node.store, node.config.state_dir, node_id="node-a", names=["pvc-orphan"])
        assert [o.name for o in done] == ["pvc-orphan"]
        assert [t.name for t in node.store.list_tombstones(drive.drive_id)] == ["pvc-orphan"]
        assert orph.clean(node.store, node.config.state_dir, node_id="node-a", names=["pvc-orphan"]) == []
        node.registry.sync()  # the node consumes the tombstone like any other
        assert not (mp / "pvc-orphan").exists() and node.registry.orphans() == {}
        assert node.store.list_tombstones(drive.drive_id) == []
        assert _digest(str(mp / live.name)) == live_digest


def test_recreated_name_never_gets_the_old_data(
    backend: Backend, node_env: Dict[str, Path], make_drive: Callable[..., OurDrive]
) -> None:
    drive = make_drive()
    with running_node(backend, node_env) as node:
        mp = node.mount(drive.drive_id)
        old = _reserve(node.store, drive.drive_id, "pvc-again")
        _write(node.publish(old.name), "old incarnation")
        node.release(old.name)
        assert node.store.delete_volume(old.name) is not None
        new = _reserve(node.store, drive.drive_id, "pvc-again")  # before the node consumed the tombstone
        assert new.uid != old.uid
        with pytest.raises(grpc.RpcError) as err:
            node.stage(new.name)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "earlier volume" in (err.value.details() or "")
        assert (mp / new.name / "data.bin").is_file()  # kept until its tombstone is consumed
        assert node.registry.gc() == [f"{drive.drive_id}/pvc-again"]
        target = node.publish(new.name)
        assert os.listdir(target) == []  # a fresh, empty directory
        node.release(new.name)


def test_an_earlier_incarnation_without_tombstone_is_an_orphan_cleaned_on_request(
    backend: Backend, node_env: Dict[str, Path], make_drive: Callable[..., OurDrive]
) -> None:
    """The directory of a name's earlier incarnation whose record and tombstone were lost: the new
    volume of that name is refused (never handed the old data), the old directory is an orphan,
    and the explicit clean removes it (its tombstone names the old uid, not the live one)."""
    from directpv_csi.node import orphans as orph
    from directpv_csi.node import volumes as vols

    drive = make_drive()
    with running_node(backend, node_env) as node:
        mp = node.mount(drive.drive_id)
        (mp / "pvc-twice").mkdir()
        old_digest = _write(str(mp / "pvc-twice"), "earlier incarnation")
        vols.write_volume_meta(mp, Volume(name="pvc-twice", drive_id=drive.drive_id, node="node-a", size=MiB,
                                          project_id=7, uid="uid-of-the-earlier-one"))
        new = _reserve(node.store, drive.drive_id, "pvc-twice")
        with pytest.raises(grpc.RpcError) as err:
            node.stage(new.name)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        node.registry.sync()
        assert node.registry.orphans() == {drive.drive_id: ("pvc-twice",)}
        assert _digest(str(mp / "pvc-twice")) == old_digest  # kept
        [o] = orph.clean(node.store, node.config.state_dir, "node-a", names=["pvc-twice"], check_mode=True)
        assert o.uid == "uid-of-the-earlier-one" and o.files == 2
        orph.clean(node.store, node.config.state_dir, "node-a", names=["pvc-twice"])
        assert node.registry.gc() == [f"{drive.drive_id}/pvc-twice"]
        assert os.listdir(node.publish(new.name)) == []
        assert node.registry.orphans() == {}
        assert node.store.get_volume("pvc-twice").uid == new.uid


def test_a_directory_of_another_incarnation_is_not_the_tombstones_to_remove(
    backend: Backend, node_env: Dict[str, Path], make_drive: Callable[..., OurDrive]
) -> None:
    from directpv_csi.node import volumes as vols

    drive = make_drive()
    with running_node(backend, node_env) as node:
        mp = node.mount(drive.drive_id)
        (mp / "pvc-other").mkdir()
        digest = _write(str(mp / "pvc-other"), "other")
        vols.write_volume_meta(mp, Volume(name="pvc-other", drive_id=drive.drive_id, node="node-a", size=MiB,
                                          project_id=5, uid="uid-of-the-directory"))
        node.store.add_tombstone(Tombstone(drive_id=drive.drive_id, node="", name="pvc-other", uid="another-uid",
                                           project_id=99))
        assert node.registry.gc() == []
        assert _digest(str(mp / "pvc-other")) == digest  # another incarnation's: kept, an orphan
        assert node.store.list_tombstones(drive.drive_id) == []
        assert node.registry.orphans() == {drive.drive_id: ("pvc-other",)}


def test_orphans_with_metadata_on_a_known_drive_are_restored_on_request(
    backend: Backend, node_env: Dict[str, Path], make_drive: Callable[..., OurDrive]
) -> None:
    """A drive whose record came back without its volumes' (a restore interrupted half-way, objects
    deleted by hand): the volumes are orphans, kept; the operator restores them explicitly."""
    from directpv_csi.core.models import Drive
    from directpv_csi.node import orphans as orph

    drive = make_drive()
    digests: Dict[str, str] = {}
    with running_node(backend, node_env) as node:
        for name in ("pvc-r1", "pvc-r2"):
            v = _reserve(node.store, drive.drive_id, name)
            digests[name] = _write(node.publish(v.name), name)
            node.release(v.name)
        before = _accounting(node.store, drive.drive_id)
    backend.lose()
    store = backend.open()
    try:
        store.put_drive(Drive(drive_id=drive.drive_id, node="node-a", name="", total=300 * MiB))
    finally:
        store.close()
    with running_node(backend, node_env) as node:
        assert node.registry.restored == []  # the drive was known: nothing restored by itself
        assert node.registry.orphans() == {drive.drive_id: ("pvc-r1", "pvc-r2")}
        plan = orph.restore(node.store, node.config.state_dir, "node-a", everything=True, check_mode=True)
        assert [o.name for o in plan] == ["pvc-r1", "pvc-r2"] and node.store.list_volumes() == []
        assert [o.name for o in orph.restore(node.store, node.config.state_dir, "node-a", names=["pvc-r1"])] == \
            ["pvc-r1"]
        assert _digest(node.publish("pvc-r1")) == digests["pvc-r1"]
        node.release("pvc-r1")
        node.registry.sync()
        assert node.registry.orphans() == {drive.drive_id: ("pvc-r2",)}
        orph.restore(node.store, node.config.state_dir, "node-a", everything=True)
        node.registry.sync()
        assert node.registry.orphans() == {}
        assert _accounting(node.store, drive.drive_id) == before
        assert _digest(node.publish("pvc-r2")) == digests["pvc-r2"]


def test_a_crash_half_way_through_a_deletion_finishes_at_the_next_sync(
    backend: Backend, node_env: Dict[str, Path], make_drive: Callable[..., OurDrive]
) -> None:
    """The node died after moving the directory to the trash but before moving the metadata file and
    clearing the tombstone (the rename is the step a crash can split): the next start finishes."""
    drive = make_drive()
    with running_node(backend, node_env) as node:
        mp = node.mount(drive.drive_id)
        v = _reserve(node.store, drive.drive_id, "pvc-split")
        keep = _reserve(node.store, drive.drive_id, "pvc-stays")
        _write(node.publish(v.name), "split")
        kept = _write(node.publish(keep.name), "stays")
        node.release(v.name)
        node.release(keep.name)
        assert node.store.delete_volume(v.name) is not None
        (mp / ".deleted").mkdir(exist_ok=True)
        os.rename(mp / v.name, mp / ".deleted" / f"{v.name}.{v.uid}.1")  # what move_to_trash does first
    with running_node(backend, node_env) as node:
        assert node.store.list_tombstones(drive.drive_id) == []
        assert not (mp / ".directpv" / "volumes" / f"{v.name}.json").exists()
        assert list((mp / ".deleted").iterdir()) == []
        assert _digest(str(mp / keep.name)) == kept and node.registry.orphans() == {}
