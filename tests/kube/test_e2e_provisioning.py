"""A PVC's whole life on a real control plane: Pending -> Bound -> staged and published ->
written -> expanded -> deleted, with the space given back.

Real: kube-apiserver + etcd (tests/kube/controlplane.py), kube-controller-manager's
PersistentVolume binder/expander/protection controllers, csi-provisioner (strict topology,
capacity tracking, leader election through a Lease) and csi-resizer (tests/kube/sidecars.py),
`directpv-csi controller` and `directpv-csi node` processes on the kube store, a loop drive
formatted by our format code, XFS really mounted, CSI over unix sockets.

Played by this test because they cannot run here (no container runtime): the scheduler (it
sets ``volume.kubernetes.io/selected-node``) and kubelet (the Node's topology labels and the
CSINode object that node-driver-registrar would make it write, NodeStage/NodePublish/
NodeExpand calls over the node socket, the PVC's resized status).
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
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import grpc
import pytest
from directpv_csi.core.units import MiB
from directpv_csi.csi.proto import csi_pb2 as pb
from directpv_csi.csi.proto import csi_pb2_grpc as pbg
from directpv_csi.kube.store import DRIVES, GROUP, VERSION, VOLUMES, object_name
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity as _parse_quantity

from testsupport import PYTHON

from .controlplane import Proc, start
from .sidecars import kcm_argv, provisioner_argv, require_tools, resizer_argv

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for loop drives and mounts; CI runs as root")

DRIVER = "csi.directpv.dev"
TOPOLOGY_NODE = "directpv.dev/node"
SELECTED_NODE = "volume.kubernetes.io/selected-node"
WAIT_S = 120.0


def parse_quantity(value: Any) -> int:
    """Bytes of a Kubernetes quantity ("64Mi", "67108864")."""
    return int(_parse_quantity(value))  # type: ignore[no-untyped-call]


def wait_for(what: str, check: Callable[[], Any], procs: List[Proc], timeout_s: float = WAIT_S) -> Any:
    """Poll ``check`` until it returns something truthy; on timeout, fail with every process's log tail."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        for p in procs:
            if p.popen.poll() is not None:
                pytest.fail(f"{p.name} exited {p.popen.returncode} while waiting for {what}:\n{p.tail(40)}")
        time.sleep(0.25)
    logs = "\n".join(f"--- {p.name}\n{p.tail(25)}" for p in procs)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})\n{logs}")


def mount_cap() -> pb.VolumeCapability:
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type="xfs"),
        access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )


def directpv_proc(role: str, log_dir: Path, *args: str) -> Proc:
    # metrics on a free loopback port: the defaults (:30443, :10443) may be taken on a shared machine
    argv = [PYTHON, "-m", "directpv_csi.cmd.main", role, "--metrics-address", "127.0.0.1:0", *args]
    return start(f"directpv-{role}", argv, log_dir)


def wait_socket(proc: Proc, socket: Path, procs: List[Proc]) -> grpc.Channel:
    def ready() -> bool:
        if not socket.exists():
            return False
        with grpc.insecure_channel("unix://" + str(socket)) as ch:
            try:
                return bool(pbg.IdentityStub(ch).Probe(pb.ProbeRequest(), timeout=2).ready.value)
            except grpc.RpcError:
                return False

    wait_for(f"{proc.name} ready on {socket}", ready, procs)
    return grpc.insecure_channel("unix://" + str(socket))


class Cluster:
    """Names of this test's objects and API handles (everything unique: the control plane is shared)."""

    def __init__(self, api: client.ApiClient) -> None:
        suffix = uuid.uuid4().hex[:6]
        self.node = f"e2e-node-{suffix}"
        self.namespace = f"e2e-{suffix}"  # the driver's namespace (Leases, CSIStorageCapacity)
        self.app_namespace = f"e2e-app-{suffix}"
        self.storage_class = f"directpv-e2e-{suffix}"
        # Any: the client's models make every field Optional; a missing one fails the test anyway
        self.core: Any = client.CoreV1Api(api)
        self.storage: Any = client.StorageV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.created_csidriver = False

    def capacities(self) -> List[Any]:
        items: List[Any] = self.storage.list_namespaced_csi_storage_capacity(self.namespace).items
        return [c for c in items if c.storage_class_name == self.storage_class]

    def capacity_bytes(self) -> Optional[int]:
        """Capacity of the CSIStorageCapacity object for our class and node, None while there is none."""
        for c in self.capacities():
            labels = (c.node_topology.match_labels or {}) if c.node_topology else {}
            if labels.get(TOPOLOGY_NODE) == self.node and c.capacity is not None:
                return parse_quantity(c.capacity)
        return None

    def drive(self) -> Optional[Dict[str, Any]]:
        items = self.custom.list_cluster_custom_object(
            GROUP, VERSION, DRIVES, label_selector=f"{TOPOLOGY_NODE}={self.node}")["items"]
        return items[0] if len(items) == 1 else None

    def allocated(self) -> int:
        d = self.drive()
        assert d is not None
        return int(d["status"].get("allocated", 0))

    def event_reasons(self, object_name: str) -> Set[str]:
        """Reasons of the events.k8s.io Events about a DirectPV object (recorded in ``default``)."""
        events = client.EventsV1Api(self.core.api_client).list_namespaced_event("default").items
        return {str(e.reason) for e in events if e.regarding is not None and e.regarding.name == object_name}

    def pvc(self, name: str) -> Any:
        return self.core.read_namespaced_persistent_volume_claim(name, self.app_namespace)


@pytest.fixture(name="workdir")
def workdir_fixture() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="dpve2e", dir="/tmp"))  # short: unix socket paths
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _unmount_under(root: Path) -> None:
    from directpv_csi.device.mountinfo import parse_mountinfo

    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [m.mount_point for m in parse_mountinfo(f.read()) if m.mount_point.startswith(prefix)]
    for p in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True, check=False)


def test_pvc_pending_bound_published_written_expanded_deleted(
    kube_store_cluster: Any, loopdev: Callable[..., str], workdir: Path
) -> None:
    from directpv_csi.device.format import format_drive

    tools = require_tools()
    cp = kube_store_cluster.control_plane
    kube_store_cluster.wipe()
    c = Cluster(cp.api_client)
    dev = loopdev("400M")
    format_drive(dev, allow_loop=True, min_size=300 * MiB)
    logs = workdir / "logs"
    logs.mkdir()
    kubelet = workdir / "kubelet"
    kubelet.mkdir()
    ctrl_sock, node_sock = workdir / "controller.sock", workdir / "node.sock"
    kubeconfig = str(cp.kubeconfig)
    procs: List[Proc] = []
    channels: List[grpc.Channel] = []
    try:
        for ns in (c.namespace, c.app_namespace):
            c.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        try:
            c.storage.create_csi_driver(client.V1CSIDriver(
                metadata=client.V1ObjectMeta(name=DRIVER),
                spec=client.V1CSIDriverSpec(attach_required=False, pod_info_on_mount=True, storage_capacity=True,
                                            volume_lifecycle_modes=["Persistent"])))
            c.created_csidriver = True
        except ApiException as e:
            if e.status != 409:
                raise
        c.storage.create_storage_class(client.V1StorageClass(
            metadata=client.V1ObjectMeta(name=c.storage_class), provisioner=DRIVER,
            volume_binding_mode="WaitForFirstConsumer", allow_volume_expansion=True, reclaim_policy="Delete",
            parameters={"csi.storage.k8s.io/fstype": "xfs"}))

        # --- our driver: controller and node processes on the kube store
        procs.append(directpv_proc("controller", logs, "--kubeconfig", kubeconfig,
                                   "--endpoint", f"unix://{ctrl_sock}"))
        procs.append(directpv_proc("node", logs, "--kubeconfig", kubeconfig, "--endpoint", f"unix://{node_sock}",
                                   "--node-id", c.node, "--state-dir", str(workdir / "state"),
                                   "--kubelet-dir", str(kubelet), "--allow-loop", "--device", dev,
                                   "--sync-interval", "1"))
        ctrl = wait_socket(procs[0], ctrl_sock, procs)
        node_ch = wait_socket(procs[1], node_sock, procs)
        channels += [ctrl, node_ch]
        node = pbg.NodeStub(node_ch)
        drive = wait_for("the node to register its drive Ready",
                         lambda: (d := c.drive()) is not None and d["status"].get("status") == "Ready" and d, procs)
        total = int(drive["status"]["total"])

        # --- kubelet's part of node registration: topology labels on the Node, the CSINode object
        info = node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
        segments = dict(info.accessible_topology.segments)
        assert info.node_id == c.node and segments[TOPOLOGY_NODE] == c.node
        c.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=c.node, labels=segments)))
        c.storage.create_csi_node(client.V1CSINode(
            metadata=client.V1ObjectMeta(name=c.node),
            spec=client.V1CSINodeSpec(drivers=[client.V1CSINodeDriver(
                name=DRIVER, node_id=info.node_id, topology_keys=sorted(segments))])))

        # --- the rest of the cluster
        env = {"NAMESPACE": c.namespace, "POD_NAME": "directpv-controller-e2e"}
        procs.append(start("kube-controller-manager",
                           kcm_argv(tools["kube-controller-manager"], cp.kubeconfig, workdir / "kcm-certs"), logs))
        procs.append(start("csi-provisioner", provisioner_argv(
            tools["csi-provisioner"], cp.kubeconfig, ctrl_sock, c.namespace), logs, env))
        procs.append(start("csi-resizer",
                           resizer_argv(tools["csi-resizer"], cp.kubeconfig, ctrl_sock, c.namespace), logs, env))

        # --- capacity tracking: one CSIStorageCapacity for (class, node) with the drive's free space
        wait_for("CSIStorageCapacity = the whole drive", lambda: c.capacity_bytes() == total, procs)

        # --- Pending -> Bound
        pvc_name = "data"
        c.core.create_namespaced_persistent_volume_claim(c.app_namespace, client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name=pvc_name, annotations={SELECTED_NODE: c.node}),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"], storage_class_name=c.storage_class,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "64Mi"}))))
        assert c.pvc(pvc_name).status.phase == "Pending"
        bound = wait_for("the PVC to be Bound", lambda: (p := c.pvc(pvc_name)).status.phase == "Bound" and p, procs)
        pv = c.core.read_persistent_volume(bound.spec.volume_name)
        handle = pv.spec.csi.volume_handle
        assert pv.spec.csi.driver == DRIVER
        assert pv.spec.csi.fs_type == "xfs"
        assert parse_quantity(pv.spec.capacity["storage"]) == 64 * MiB
        assert pv.spec.claim_ref.name == pvc_name and pv.spec.claim_ref.namespace == c.app_namespace
        terms = pv.spec.node_affinity.required.node_selector_terms
        assert [(e.key, e.operator, e.values) for t in terms for e in t.match_expressions] == \
            [(TOPOLOGY_NODE, "In", [c.node])]
        vol_obj = c.custom.get_cluster_custom_object(GROUP, VERSION, VOLUMES, object_name(handle))
        assert vol_obj["spec"]["node"] == c.node and int(vol_obj["spec"]["size"]) == 64 * MiB
        # --extra-create-metadata: the PVC's identity reaches CreateVolume and is recorded
        assert vol_obj["spec"]["parameters"]["csi.storage.k8s.io/pvc/name"] == pvc_name
        assert c.allocated() == 64 * MiB
        wait_for("CSIStorageCapacity to drop by the volume", lambda: c.capacity_bytes() == total - 64 * MiB, procs)

        # --- kubelet: stage, publish, write, read back
        context = dict(pv.spec.csi.volume_attributes or {})
        digest = hashlib.sha256(handle.encode()).hexdigest()
        staging = kubelet / "plugins" / "kubernetes.io" / "csi" / DRIVER / digest / "globalmount"
        staging.mkdir(parents=True)
        target = kubelet / "pods" / str(uuid.uuid4()) / "volumes" / "kubernetes.io~csi" / pv.metadata.name / "mount"
        target.parent.mkdir(parents=True)
        node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=handle, staging_target_path=str(staging), volume_capability=mount_cap(),
            volume_context=context), timeout=30)
        node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=handle, staging_target_path=str(staging), target_path=str(target),
            volume_capability=mount_cap(), volume_context=context), timeout=30)
        payload = os.urandom(3 * MiB)
        (target / "object.bin").write_bytes(payload)
        os.sync()
        assert (target / "object.bin").read_bytes() == payload
        stats = node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=handle, volume_path=str(target)),
                                        timeout=10)
        used = [u.used for u in stats.usage if u.unit == pb.VolumeUsage.BYTES]
        assert used and used[0] >= len(payload)

        # --- expansion: KCM's expander hands the PVC to csi-resizer -> ControllerExpandVolume;
        # kubelet's part: NodeExpandVolume, then the PVC's status capacity
        c.core.patch_namespaced_persistent_volume_claim(pvc_name, c.app_namespace, {
            "spec": {"resources": {"requests": {"storage": "128Mi"}}}})
        wait_for("the PV to grow to 128Mi (csi-resizer)",
                 lambda: parse_quantity(c.core.read_persistent_volume(pv.metadata.name).spec.capacity["storage"])
                 == 128 * MiB, procs)
        wait_for("the PVC condition FileSystemResizePending",
                 lambda: any(cond.type == "FileSystemResizePending"
                             for cond in (c.pvc(pvc_name).status.conditions or [])), procs)
        expanded = node.NodeExpandVolume(pb.NodeExpandVolumeRequest(
            volume_id=handle, volume_path=str(target), staging_target_path=str(staging),
            capacity_range=pb.CapacityRange(required_bytes=128 * MiB), volume_capability=mount_cap()), timeout=30)
        assert expanded.capacity_bytes == 128 * MiB
        c.core.patch_namespaced_persistent_volume_claim_status(pvc_name, c.app_namespace, {
            "status": {"capacity": {"storage": "128Mi"}, "conditions": None, "allocatedResourceStatuses": None}})
        assert parse_quantity(c.pvc(pvc_name).status.capacity["storage"]) == 128 * MiB
        vol_obj = c.custom.get_cluster_custom_object(GROUP, VERSION, VOLUMES, object_name(handle))
        assert int(vol_obj["spec"]["size"]) == 128 * MiB
        assert c.allocated() == 128 * MiB
        assert (target / "object.bin").read_bytes() == payload
        wait_for("CSIStorageCapacity to follow the expansion",
                 lambda: c.capacity_bytes() == total - 128 * MiB, procs)

        # --- a claim no drive can hold: the user reads why on the PVC (csi-provisioner's event
        # carries our RESOURCE_EXHAUSTED message, naming the drive and its free space); nothing is reserved
        c.core.create_namespaced_persistent_volume_claim(c.app_namespace, client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="too-big", annotations={SELECTED_NODE: c.node}),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"], storage_class_name=c.storage_class,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}))))

        def refusal() -> str:
            events = c.core.list_namespaced_event(c.app_namespace,
                                                  field_selector="involvedObject.name=too-big").items
            return next((e.message for e in events if e.reason == "ProvisioningFailed"
                         and "no drive can hold" in (e.message or "")), "")

        why = wait_for("ProvisioningFailed on the too-big PVC", refusal, procs)
        assert drive["metadata"]["name"] in why and "free" in why, why
        assert c.pvc("too-big").status.phase == "Pending" and c.allocated() == 128 * MiB
        c.core.delete_namespaced_persistent_volume_claim("too-big", c.app_namespace)

        # --- kubelet tears the pod down; the PVC is deleted; the space comes back
        node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=handle, target_path=str(target)),
                                 timeout=30)
        node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=handle, staging_target_path=str(staging)),
                               timeout=30)
        c.core.delete_namespaced_persistent_volume_claim(pvc_name, c.app_namespace)

        def pv_gone() -> bool:
            try:
                c.core.read_persistent_volume(pv.metadata.name)
            except ApiException as e:
                return bool(e.status == 404)
            return False

        wait_for("the PV to be deleted (Released -> DeleteVolume)", pv_gone, procs)
        with pytest.raises(ApiException) as gone:
            c.custom.get_cluster_custom_object(GROUP, VERSION, VOLUMES, object_name(handle))
        assert gone.value.status == 404
        assert c.allocated() == 0
        mountpoint = Path(c.drive()["status"]["mountpoint"])  # type: ignore[index]
        wait_for("the node to purge the volume's directory",
                 lambda: not any(handle in p.name for p in mountpoint.iterdir()), procs)
        wait_for("CSIStorageCapacity back to the whole drive", lambda: c.capacity_bytes() == total, procs)
        # the store's Events about this volume, as `kubectl describe` would list them
        reasons = wait_for("the volume's Events", lambda: (r := c.event_reasons(object_name(handle))) >= {
            "VolumeProvisioned", "VolumeExpanded", "VolumeReleased"} and r, procs)
        assert "DriveAdded" in c.event_reasons(drive["metadata"]["name"]), reasons
        # both sidecars really elected a leader through a Lease in the driver's namespace
        leases = client.CoordinationV1Api(cp.api_client).list_namespaced_lease(c.namespace).items
        assert len([le for le in leases if le.spec and le.spec.holder_identity]) == 2, leases
        for p in procs:
            assert p.popen.poll() is None, f"{p.name} died:\n{p.tail(40)}"
    finally:
        for ch in channels:
            ch.close()
        for p in reversed(procs):
            p.stop()
        _unmount_under(kubelet)
        _unmount_under(workdir / "state")
        _cleanup(c)
        kube_store_cluster.wipe()


def _cleanup(c: Cluster) -> None:
    """Delete this test's cluster-scoped objects (namespaced ones die with their unique namespaces)."""
    calls: List[Tuple[Callable[..., Any], str]] = [
        (c.storage.delete_csi_node, c.node), (c.core.delete_node, c.node),
        (c.storage.delete_storage_class, c.storage_class),
    ]
    if c.created_csidriver:
        calls.append((c.storage.delete_csi_driver, DRIVER))
    for pv in c.core.list_persistent_volume().items:
        if pv.spec.claim_ref is not None and pv.spec.claim_ref.namespace == c.app_namespace:
            c.core.patch_persistent_volume(pv.metadata.name, {"metadata": {"finalizers": None}})
            calls.append((c.core.delete_persistent_volume, pv.metadata.name))
    for fn, name in calls:
        try:
            fn(name)
        except ApiException as e:
            if e.status != 404:
                raise
