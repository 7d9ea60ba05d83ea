"""100 concurrent CreateVolume calls over CSI (gRPC on unix sockets) through TWO
`directpv-csi controller` processes (two replicas of the controller Deployment, each with its
own API client and watch cache) onto 3 drives of the kube store, on the real kube-apiserver +
etcd of tests/kube, under real resourceVersion conflicts (the API server's own /metrics counts
the 409s it served).

The drives are registered the way the node's registry does it (``KubeStore.put_drive``: node,
total, Ready). The controller never touches block devices (it only reads and writes
DirectPVDrive/DirectPVVolume objects), so no loop devices are needed.

3 drives x 1 GiB and 100 requests of 64 MiB: exactly 48 fit. Checked against objects read fresh
from the API server (not through any cache): no drive over-committed, every success backed by a
DirectPVVolume object and exactly one ledger record of the right size, the successes are
maximal (every drive's remaining free space is smaller than one request), every failure is
RESOURCE_EXHAUSTED naming each drive's refusal, ``KubeStore.check() == []``; a second round of
the same 100 names returns the same volumes and writes nothing to the drives; deleting them all
concurrently brings every drive's allocation back to 0.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, cast

import grpc
import pytest
from directpv_csi.core.models import Drive
from directpv_csi.csi.proto import csi_pb2 as pb
from directpv_csi.csi.proto import csi_pb2_grpc as pbg
from directpv_csi.kube.store import DRIVES, GROUP, VERSION, VOLUMES, KubeStore, object_name
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from testsupport import DriverProcess, eventually

from .cluster import KubeStoreCluster

pytestmark = pytest.mark.slow

MiB = 1024**2
GiB = 1024**3
DRIVE_SIZE = GiB
REQUEST = 64 * MiB
N_DRIVES = 3
N_CALLS = 100
FITS = N_DRIVES * (DRIVE_SIZE // REQUEST)  # 48
DRIVE_IDS = [f"cc-drive-{i}" for i in range(N_DRIVES)]
NAMES = [f"pvc-{i:03d}" for i in range(N_CALLS)]

Outcome = Tuple[str, Any]  # ("ok", csi Volume) or (status code name, details)


class Controller(DriverProcess):
    """One `directpv-csi controller` child process and a client channel to its socket."""

    def __init__(self, kubeconfig: Path, workdir: Path, tag: str) -> None:
        super().__init__("controller", workdir / f"{tag}.sock",
                         ["--kubeconfig", str(kubeconfig), "--log-level", "WARNING",
                          "--metrics-address", "127.0.0.1:0"])  # two replicas on one host: not both on :30443

    @property
    def stub(self) -> Any:
        return pbg.ControllerStub(self.channel)

    def capacity(self) -> int:
        return int(self.stub.GetCapacity(pb.GetCapacityRequest(), timeout=10).available_capacity)


def conflicts_served(cluster: KubeStoreCluster) -> int:
    """409 answers the API server has given so far (its own /metrics counter)."""
    cp = cluster.control_plane
    ctx = ssl.create_default_context(cafile=str(cp.pki.ca_cert))
    ctx.load_cert_chain(str(cp.pki.admin_cert), str(cp.pki.admin_key))
    with urllib.request.urlopen(cp.url + "/metrics", context=ctx, timeout=10) as resp:
        text = resp.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("apiserver_request_total{") and 'code="409"' in line))


def fresh_drives(cluster: KubeStoreCluster) -> Dict[str, Dict[str, Any]]:
    """The drive objects as the API server holds them now (no cache in between)."""
    api = client.CustomObjectsApi(cluster.api_client)
    listed = cast(Dict[str, Any], api.list_cluster_custom_object(GROUP, VERSION, DRIVES))
    return {o["metadata"]["name"]: o for o in listed["items"]}


def fresh_volume(cluster: KubeStoreCluster, name: str) -> Optional[Dict[str, Any]]:
    try:
        obj = cast(Dict[str, Any], client.CustomObjectsApi(cluster.api_client).get_cluster_custom_object(
            GROUP, VERSION, VOLUMES, object_name(name)))
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return obj


def create_req(name: str) -> Any:
    mode = pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER)
    cap = pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(), access_mode=mode)
    return pb.CreateVolumeRequest(name=name, volume_capabilities=[cap],
                                  capacity_range=pb.CapacityRange(required_bytes=REQUEST))


def storm(controllers: List[Controller], call: Callable[[Controller, str], Outcome], names: List[str],
          offset: int = 0) -> Dict[str, Outcome]:
    """``call`` for every name at once (one thread each), name i through controller (i + offset) % 2."""
    def one(i: int) -> Outcome:
        return call(controllers[(i + offset) % len(controllers)], names[i])

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return dict(zip(names, pool.map(one, range(len(names)))))


def create(c: Controller, name: str) -> Outcome:
    try:
        return "ok", c.stub.CreateVolume(create_req(name), timeout=120).volume
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()


def delete(c: Controller, name: str) -> Outcome:
    try:
        c.stub.DeleteVolume(pb.DeleteVolumeRequest(volume_id=name), timeout=120)
        return "ok", None
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()


@pytest.fixture(name="cluster")
def cluster_fixture(kube_store_cluster: KubeStoreCluster) -> Iterator[KubeStoreCluster]:
    kube_store_cluster.wipe()  # the control plane is shared by the session
    yield kube_store_cluster
    kube_store_cluster.wipe()


@pytest.fixture(name="controllers")
def controllers_fixture(cluster: KubeStoreCluster) -> Iterator[List[Controller]]:
    """3 registered drives, then two controller replicas serving (each one's informer listed them)."""
    node_store = KubeStore(cluster.new_client())  # what the node registry of each node would write
    try:
        for i, drive_id in enumerate(DRIVE_IDS):
            node = f"cc-node-{i}"
            node_store.put_drive(Drive(drive_id=drive_id, node=node, name="nvme0n1", total=DRIVE_SIZE,
                                       topology={"directpv.dev/node": node}))
    finally:
        node_store.close()
    workdir = Path(tempfile.mkdtemp(prefix="dpvcc", dir="/tmp"))  # unix socket paths are short
    started: List[Controller] = []
    try:
        for tag in ("replica-a", "replica-b"):
            started.append(Controller(cluster.control_plane.kubeconfig, workdir, tag).start())
        for c in started:
            c.wait_ready()
        yield started
    finally:
        for c in started:
            c.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_100_concurrent_creates_through_two_controllers_never_overcommit(
    cluster: KubeStoreCluster, controllers: List[Controller]
) -> None:
    for c in controllers:
        assert c.capacity() == N_DRIVES * DRIVE_SIZE, c.tail()  # both caches hold the 3 drives

    before = conflicts_served(cluster)
    first = storm(controllers, create, NAMES)
    served = conflicts_served(cluster) - before

    codes = {kind for kind, _ in first.values()}
    assert codes <= {"ok", "RESOURCE_EXHAUSTED"}, {n: r for n, r in first.items() if r[0] != "ok"}
    created = {name: res for name, (kind, res) in first.items() if kind == "ok"}
    refused = {name: res for name, (kind, res) in first.items() if kind != "ok"}
    assert served > 0, "no 409 was served: the two replicas never raced on a drive's resourceVersion"

    # --- the API server's truth, read fresh ---------------------------------------------------
    drives = fresh_drives(cluster)
    assert sorted(drives) == DRIVE_IDS
    ledger_names: List[str] = []
    for drive_id, obj in drives.items():
        st = obj["status"]
        ledger: Dict[str, Any] = st.get("volumes") or {}
        assert st["allocated"] == sum(int(r["size"]) for r in ledger.values()) <= st["total"] == DRIVE_SIZE
        assert st["volumeCount"] == len(ledger)
        assert sorted(int(r["projectID"]) for r in ledger.values()) == list(range(1, len(ledger) + 1))
        # maximal: no drive keeps room for one more request
        assert st["total"] - st["allocated"] < REQUEST, (drive_id, st["allocated"])
        assert all(int(r["size"]) == REQUEST for r in ledger.values())
        ledger_names += list(ledger)
        for n in ledger:
            assert n in created and created[n].volume_context["directpv.dev/drive-id"] == drive_id
    assert sorted(ledger_names) == sorted(created)  # exactly one record per success, none for a failure
    assert len(created) == FITS and len(refused) == N_CALLS - FITS

    for name, vol in created.items():
        vobj = fresh_volume(cluster, name)
        assert vobj is not None, name
        assert vobj["spec"]["name"] == name and int(vobj["spec"]["size"]) == REQUEST == vol.capacity_bytes
        assert vobj["spec"]["driveID"] == vol.volume_context["directpv.dev/drive-id"]
        assert vobj["spec"]["node"] == vol.volume_context["directpv.dev/node"]
        assert dict(vol.accessible_topology[0].segments) == {"directpv.dev/node": vobj["spec"]["node"]}
    for name, message in refused.items():
        assert fresh_volume(cluster, name) is None, name
        assert f"no drive can hold volume {name} (64 MiB)" in message, message
        for drive_id in DRIVE_IDS:  # each drive's refusal is named, with the reason
            assert f"drive {drive_id} has " in message and "free, needs 64 MiB" in message, message

    checker = KubeStore(cluster.new_client())  # a replica starting now sees the server's truth
    try:
        assert checker.check() == []
        assert sorted(v.name for v in checker.list_volumes()) == sorted(created)
    finally:
        checker.close()
    print(f"\n{N_CALLS} CreateVolume through 2 controller replicas onto {N_DRIVES} x 1 GiB: "
          f"{len(created)} created, {len(refused)} RESOURCE_EXHAUSTED, {served} conflicts (409) served")

    # --- second round: the same 100 names (each through the other replica) ---------------------
    remaining = sum(DRIVE_SIZE - int(o["status"]["allocated"]) for o in drives.values())
    for c in controllers:  # both watch caches caught up with the other replica's writes
        assert eventually(lambda c=c: c.capacity() == remaining, 20.0), c.tail()  # type: ignore[misc]
    versions = {d: o["metadata"]["resourceVersion"] for d, o in drives.items()}
    second = storm(controllers, create, NAMES, offset=1)
    for name, (kind, res) in second.items():
        if name in created:
            assert kind == "ok" and res == created[name], (name, kind, res)
        else:
            assert kind == "RESOURCE_EXHAUSTED", (name, kind, res)
    again = fresh_drives(cluster)
    assert {d: o["metadata"]["resourceVersion"] for d, o in again.items()} == versions  # no write at all
    assert {d: o["status"].get("volumes") for d, o in again.items()} == \
        {d: o["status"].get("volumes") for d, o in drives.items()}

    # --- delete everything concurrently through both replicas --------------------------------
    deleted = storm(controllers, delete, sorted(created))
    assert all(kind == "ok" for kind, _ in deleted.values()), deleted
    for drive_id, obj in fresh_drives(cluster).items():
        st = obj["status"]
        assert (st["allocated"], st["volumeCount"], st.get("volumes") or {}) == (0, 0, {}), drive_id
    left = cast(Dict[str, Any], client.CustomObjectsApi(cluster.api_client).list_cluster_custom_object(
        GROUP, VERSION, VOLUMES))
    assert left["items"] == []
    for c in controllers:
        assert eventually(lambda c=c: c.capacity() == N_DRIVES * DRIVE_SIZE, 20.0), c.tail()  # type: ignore[misc]
