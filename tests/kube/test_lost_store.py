"""Volumes survive a lost store, on the real API server with a real `directpv-csi node` process.

Volumes are reserved (as the controller does, through the kube store), staged and published by
the node process over its CSI socket, and filled with data. Then the cluster forgets everything:
every DirectPV object deleted (its finalizer removed by the test, as an operator would have to)
and the CRDs themselves deleted and re-created. The node restarts: every volume is restored from
its on-drive metadata (same size, project id, uid; the drive's allocation equal to before), is
staged and published again under its CSI name, and holds the same bytes. An orphan directory is
kept, listed in the DirectPVNode report and announced by an Event; a volume deleted while the node
was down is removed when it comes back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import grpc
import pytest
from directpv_csi.core.models import Volume
from directpv_csi.core.units import MiB
from directpv_csi.csi.proto import csi_pb2 as pb
from directpv_csi.csi.proto import csi_pb2_grpc as pbg
from directpv_csi.kube.nodes import NODES
from directpv_csi.kube.store import GROUP, VERSION, KubeStore, apply_crds
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testsupport import PYTHON, eventually, needs_root

from .cluster import CRD_DIR, node_process

pytestmark = [needs_root, pytest.mark.slow]


@pytest.fixture(name="workdir")
def workdir_fixture() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dpvls", dir="/tmp"))  # unix socket paths are short
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _cap() -> Any:
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type="xfs"),
                               access_mode=pb.VolumeCapability.AccessMode(
                                   mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))


def _publish(stub: Any, kubelet: Path, vid: str) -> str:
    staging = kubelet / "plugins" / vid
    staging.mkdir(parents=True, exist_ok=True)
    stub.NodeStageVolume(pb.NodeStageVolumeRequest(volume_id=vid, staging_target_path=str(staging),
                                                   volume_capability=_cap()), timeout=30)
    target = kubelet / "pods" / "p1" / "volumes" / vid
    target.parent.mkdir(parents=True, exist_ok=True)
    stub.NodePublishVolume(pb.NodePublishVolumeRequest(volume_id=vid, staging_target_path=str(staging),
                                                       target_path=str(target), volume_capability=_cap()), timeout=30)
    return str(target)


def _release(stub: Any, kubelet: Path, vid: str) -> None:
    stub.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(
        volume_id=vid, target_path=str(kubelet / "pods" / "p1" / "volumes" / vid)), timeout=30)
    stub.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
        volume_id=vid, staging_target_path=str(kubelet / "plugins" / vid)), timeout=30)


def _digest(path: str) -> str:
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, path).encode() + b"\0" + Path(p).read_bytes())
    return h.hexdigest()


def _forget_everything(cluster: Any) -> None:
    """Objects deleted (finalizers removed), CRDs deleted, CRDs re-created."""
    cluster.wipe()
    ext = client.ApiextensionsV1Api(cluster.api_client)
    ours = [n for n in cluster.crds if n.startswith(("directpvdrives.", "directpvvolumes."))]
    for name in ours:
        ext.delete_custom_resource_definition(name)
    for name in ours:
        def gone(n: str = name) -> bool:
            try:
                ext.read_custom_resource_definition(n)
            except ApiException as e:
                return bool(e.status == 404)
            return False
        assert eventually(gone, 60), f"CRD {name} still there"
    apply_crds(cluster.api_client, CRD_DIR)


def test_crds_deleted_and_recreated_volumes_restored(
    kube_store_cluster: Any, loopdev: Callable[..., str], workdir: Path
) -> None:
    from directpv_csi.device.format import format_drive

    cp = kube_store_cluster.control_plane
    kube_store_cluster.wipe()
    api: Any = client.CustomObjectsApi(cp.api_client)
    node = f"lost-{uuid.uuid4().hex[:6]}"
    dev = loopdev("600M")
    drive = format_drive(dev, allow_loop=True, min_size=300 * MiB).drive_id
    kubelet = workdir / "kubelet"
    kubelet.mkdir()
    mnt = workdir / "state" / "mnt" / drive

    def start() -> Any:
        proc = node_process(cp.kubeconfig, workdir, node, [dev], sync_interval=1)
        proc.start().wait_ready()
        return proc

    def accounting(store: KubeStore) -> Tuple[int, int, List[Tuple[str, int, int, str]]]:
        d = store.get_drive(drive)
        assert d is not None
        return d.allocated, d.volume_count, sorted(
            (v.name, v.size, v.project_id, v.uid) for v in store.list_volumes(drive_id=drive))

    store = KubeStore(kube_store_cluster.new_client(), events=False)
    proc = start()
    digests: Dict[str, str] = {}
    try:
        assert eventually(lambda: store.get_drive(drive) is not None, 30), proc.tail()
        stub = pbg.NodeStub(grpc.insecure_channel(proc.endpoint))
        for i in range(2):
            name = f"pvc-{uuid.uuid4()}"
            store.reserve_volume(Volume(name=name, drive_id=drive, node="", size=(32 + 16 * i) * MiB,
                                        project_id=0, parameters={"fsType": "xfs"}))
            target = _publish(stub, kubelet, name)
            Path(target, "data.bin").write_bytes(os.urandom(3 * MiB))
            digests[name] = _digest(target)
            _release(stub, kubelet, name)
        before = accounting(store)
        assert before[:2] == (80 * MiB, 2)
        proc.stop()
        store.close()
        subprocess.run(["umount", "-R", "-l", str(workdir / "state" / "mnt")], capture_output=True, check=False)

        _forget_everything(kube_store_cluster)

        store = KubeStore(kube_store_cluster.new_client(), events=False)
        assert store.get_drive(drive) is None and store.list_volumes() == []
        proc = start()
        assert eventually(lambda: len(store.list_volumes(drive_id=drive)) == 2, 30), proc.tail()
        assert eventually(lambda: accounting(store) == before, 10), (accounting(store), before)
        stub = pbg.NodeStub(grpc.insecure_channel(proc.endpoint))
        for name, digest in digests.items():
            assert _digest(_publish(stub, kubelet, name)) == digest  # the same bytes under the same CSI name
            _release(stub, kubelet, name)

        # an orphan: kept, in the DirectPVNode report, announced by an Event
        (mnt / "pvc-orphan").mkdir()
        (mnt / "pvc-orphan" / "keep.bin").write_bytes(b"k" * 4096)

        def report() -> Optional[Dict[str, Any]]:
            try:
                obj: Dict[str, Any] = api.get_cluster_custom_object(GROUP, VERSION, NODES, node)
            except ApiException as e:
                if e.status == 404:
                    return None
                raise
            return obj

        assert eventually(lambda: ((report() or {}).get("status") or {}).get("orphans") ==
                          [{"drive": drive, "name": "pvc-orphan"}], 30), (report(), proc.tail())
        events = client.EventsV1Api(cp.api_client)
        assert eventually(lambda: any(
            e.reason == "OrphanVolumes" and e.regarding is not None and e.regarding.name == drive
            for e in events.list_namespaced_event("default").items), 30)
        time.sleep(2.5)  # more syncs: still kept
        assert (mnt / "pvc-orphan" / "keep.bin").read_bytes() == b"k" * 4096

        # a volume deleted while the node is down: removed when it comes back
        victim = sorted(digests)[0]
        proc.stop()
        assert store.delete_volume(victim) is not None
        assert (mnt / victim / "data.bin").is_file()
        proc = start()
        assert eventually(lambda: not (mnt / victim).exists(), 30), proc.tail()
        assert eventually(lambda: store.list_tombstones(drive) == [], 10)
        survivor = sorted(digests)[1]
        assert _digest(str(mnt / survivor)) == digests[survivor]
        assert (mnt / "pvc-orphan" / "keep.bin").read_bytes() == b"k" * 4096

        # the explicit clean through the CLI on the kube store: preview, then removal by the node
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([PYTHON, "-m", "directpv_csi.cmd.main", "client", "orphans", "--state-dir",
                                   str(workdir / "state"), "--kubeconfig", str(cp.kubeconfig), *args],
                                  capture_output=True, text=True, timeout=120)

        listed = cli()
        assert listed.returncode == 0 and "pvc-orphan" in listed.stdout, listed.stderr
        preview = cli("--clean", "pvc-orphan", "--check")
        assert preview.returncode == 0 and "would be removed" in preview.stdout, preview.stderr
        assert store.list_tombstones(drive) == []
        refused = cli("--clean", survivor)
        assert refused.returncode == 2 and "not an orphan" in refused.stderr
        done = cli("--clean", "pvc-orphan")
        assert done.returncode == 0, done.stderr
        assert eventually(lambda: not (mnt / "pvc-orphan").exists(), 30), proc.tail()
        assert eventually(lambda: ((report() or {}).get("status") or {}).get("orphanCount") == 0, 30)
        assert _digest(str(mnt / survivor)) == digests[survivor]
    finally:
        proc.stop()
        store.close()
        subprocess.run(["umount", "-R", "-l", str(workdir / "state" / "mnt")], capture_output=True, check=False)
        subprocess.run(["umount", "-R", "-l", str(kubelet)], capture_output=True, check=False)
        try:
            api.delete_cluster_custom_object(GROUP, VERSION, NODES, node)
        except ApiException as e:
            if e.status != 404:
                raise
        kube_store_cluster.wipe()
