"""The whole product on a real node, the way a user runs it: the driver image built here
(`make image`) and the Go-built sidecars packed into images are side-loaded into the node's
containerd by directpv.csi.image; playbooks/drives.yml formats the node's loop drives;
playbooks/install.yml installs the driver, whose DaemonSet and Deployment become Ready through
their real probes; the node plugin registers itself with the real kubelet; a StatefulSet of three
pods (MinIO's shape: volumeClaimTemplates) writes and reads data through the kubelet's
NodeStage/NodePublish; a re-created pod finds its data; a PVC grows through csi-resizer and the
kubelet's NodeExpandVolume; a read-only mount refuses writes; deleted PVCs give their space back;
the uninstall refuses while volumes exist, then removes everything but the CRDs.

Assertions are on Kubernetes objects and on the bytes on the drives (the drive mounts under the
node's state directory, seen from the host through the shared mount).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
from kube.controlplane import tools_dir
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from playbooks.playbook_helpers import Run

from .realnode import NODE_NAME, RealNode, image_ref, skip_or_fail

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

IMAGE_CACHE = Path(os.environ.get("IMAGE_CACHE", str(Path.home() / ".cache" / "directpv-csi" / "image")))
DRIVER_ARCHIVE = IMAGE_CACHE / "directpv-csi.oci.tar"
NAMESPACE = "dpv-e2e"
CRDS = ("directpvdrives.directpv.dev", "directpvvolumes.directpv.dev", "directpvnodes.directpv.dev",
        "directpvinitrequests.directpv.dev")

APP_SCRIPT = """
if [ -f /data/payload ]; then
  echo "restarted $(cat /data/payload)" >> /data/history
else
  head -c 1048576 /dev/urandom > /data/blob
  sha256sum /data/blob | cut -d' ' -f1 > /data/blob.sha256
  echo "$POD_NAME" > /data/payload
fi
exec sleep 100000
"""

RO_SCRIPT = """
if touch /data/ro-probe 2>/tmp/err; then echo WRITABLE; else echo "REFUSED $(cat /tmp/err)"; fi > /dev/termination-log
"""


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 180, node: Optional[RealNode] = None) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except ApiException as exc:
            last = f"{exc.status} {exc.reason}"
            if exc.status not in (404, 409):
                raise
        else:
            if last:
                return last
        time.sleep(1)
    tail = ""
    if node is not None:
        tail = "\n--- kubelet:\n" + node.procs["kubelet"].tail(40) if "kubelet" in node.procs else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last}){tail}")


def _ok(run: Run) -> str:
    return "\n".join(f"{h}: {t}: {m}" for h, t, m in run.failures()) or run.stderr[-3000:] or run.stdout[-3000:]


def _volume_dir(node: RealNode, pv_name: str) -> Optional[Path]:
    found = list((node.state_dir / "mnt").glob(f"*/{pv_name}"))
    return found[0] if found else None


def _statefulset(image: str) -> Dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web", "namespace": NAMESPACE},
        "spec": {
            "serviceName": "web", "replicas": 3, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "app", "image": image, "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", APP_SCRIPT],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "readinessProbe": {"exec": {"command": ["cat", "/data/payload"]}, "periodSeconds": 2},
                }]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "directpv",
                "resources": {"requests": {"storage": "64Mi"}}}}],
        },
    }


def _csinode_drivers(storage: k8s.StorageV1Api) -> List[Dict[str, Any]]:
    """The node's CSINode drivers, read raw (the client's model refuses ``drivers: null``)."""
    import json

    resp: Any = storage.read_csi_node(NODE_NAME, _preload_content=False)  # the raw HTTP response, not the model
    return list(json.loads(resp.data)["spec"].get("drivers") or [])


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def show(api: Any, title: str) -> None:
    """What a user would look at (kubectl get pods,pvc / kubectl directpv list drives,volumes): printed,
    shown by `make demo-cluster` (pytest -s), captured otherwise."""
    core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    print(f"\n=== {title}")
    for pod in core.list_pod_for_all_namespaces().items:
        statuses = pod.status.container_statuses or []
        ready = f"{sum(1 for c in statuses if c.ready)}/{len(statuses)}"
        print(f"pod  {pod.metadata.namespace}/{pod.metadata.name:<40} {ready:>4} {pod.status.phase}")
    for pvc in core.list_persistent_volume_claim_for_all_namespaces().items:
        size = (pvc.status.capacity or {}).get("storage", "-")
        print(f"pvc  {pvc.metadata.namespace}/{pvc.metadata.name:<20} {pvc.status.phase:<8} {size:>6} "
              f"{pvc.spec.volume_name or ''}")
    for d in custom.list_cluster_custom_object("directpv.dev", "v1beta1", "directpvdrives")["items"]:
        st = d.get("status", {})
        print(f"drive {d['metadata']['name']} {st.get('name', '?'):<8} size {st.get('total', 0) >> 20} MiB "
              f"allocated {st.get('allocated', 0) >> 20} MiB volumes {st.get('volumeCount', 0)} {st.get('status', '')}")
    for v in custom.list_cluster_custom_object("directpv.dev", "v1beta1", "directpvvolumes")["items"]:
        spec = v.get("spec", {})
        size = int(spec.get("size", 0)) >> 20
        print(f"volume {v['metadata']['name']} drive {spec.get('driveID', '?')} size {size} MiB")


def _pod_ready(pod: Any) -> bool:
    return bool(pod.status and pod.status.conditions
                and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions))


def test_the_whole_product_on_a_real_node(
    real_node: RealNode, loopdev: Callable[..., str], inventory: Callable[..., Path],
    playbook: Callable[..., Run],
) -> None:
    if not DRIVER_ARCHIVE.exists():
        skip_or_fail(f"needs the driver image archive {DRIVER_ARCHIVE} (make image)")
    api = real_node.api_client
    assert api is not None
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    storage, custom = k8s.StorageV1Api(api), k8s.CustomObjectsApi(api)
    image = image_ref(DRIVER_ARCHIVE)
    archives = [str(DRIVER_ARCHIVE)] + [str(tools_dir() / "images" / f"{n}.oci.tar")
                                        for n in ("csi-provisioner", "csi-resizer")]
    refs = [image_ref(Path(a)) for a in archives]

    # 1. Images: side-loaded by the role; check mode imports nothing; a second run changes nothing.
    inv = inventory({"localhost": {}}, {"directpv_image_archives": archives,
                                        "directpv_image_containerd_address": str(real_node.containerd_socket)})
    check = playbook("image.yml", inv, "--check")
    assert check.rc == 0, _ok(check)
    assert not set(refs) & set(real_node.images()), "check mode imported"
    first = playbook("image.yml", inv)
    assert first.rc == 0, _ok(first)
    assert set(refs) <= set(real_node.images())
    again = playbook("image.yml", inv)
    assert again.rc == 0 and again.changed("localhost") == 0, _ok(again)

    # 2. Drives: the node's own loop drives, formatted by the drives playbook.
    devs = [loopdev("1G"), loopdev("1G")]
    other = loopdev("1G")  # ours too, but not in the node plugin's allow-list: never served
    inv = inventory({"localhost": {"directpv_drives": [os.path.basename(d) for d in [*devs, other]],
                                   "directpv_node_name": NODE_NAME}})
    drives = playbook("drives.yml", inv)
    assert drives.rc == 0, _ok(drives)

    # 3. Install, waited for until Ready through the real probes.
    inv = inventory({"localhost": {}}, {
        "directpv_kubeconfig": str(real_node.kubeconfig), "directpv_kubelet_dir": str(real_node.kubelet_dir),
        "directpv_state_dir": str(real_node.state_dir), "directpv_node_allow_loop": True,
        "directpv_node_devices": devs, "directpv_controller_replicas": 1, "directpv_image_pull_policy": "Never",
        "directpv_install_wait_timeout": 300})
    t0 = time.monotonic()
    installed = playbook("install.yml", inv)
    install_seconds = time.monotonic() - t0
    assert installed.rc == 0, _ok(installed) + "\n" + real_node.procs["kubelet"].tail(30)
    ds = apps.read_namespaced_daemon_set("directpv-node", "directpv")
    assert ds.status.number_ready == 1, ds.status
    deploy = apps.read_namespaced_deployment("directpv-controller", "directpv")
    assert deploy.status.available_replicas == 1, deploy.status
    for pod in core.list_namespaced_pod("directpv").items:
        assert all(c.ready for c in pod.status.container_statuses), (pod.metadata.name, pod.status.container_statuses)
    # the node plugin registered itself with the kubelet (no registrar sidecar): the CSINode lists it
    csinode = wait_for("the kubelet to register csi.directpv.dev", lambda: [
        d for d in _csinode_drivers(storage) if d["name"] == "csi.directpv.dev"], 60)
    assert csinode[0]["nodeID"] == NODE_NAME, csinode
    drive_objs = wait_for("the two drives Ready", lambda: [
        d for d in custom.list_cluster_custom_object("directpv.dev", "v1beta1", "directpvdrives")["items"]
        if d.get("status", {}).get("status") == "Ready"], 60)
    assert sorted(d["status"]["name"] for d in drive_objs) == sorted(os.path.basename(d) for d in devs), drive_objs
    print(f"\nrealnode: cluster up in {real_node.start_seconds:.1f} s, install to Ready {install_seconds:.1f} s")
    show(api, "installed: the driver's pods Ready, the node's drives Ready")

    # 4. A StatefulSet of three pods writes through the kubelet.
    core.create_namespace({"metadata": {"name": NAMESPACE}})
    wait_for("the default service account", lambda: core.read_namespaced_service_account("default", NAMESPACE), 60)
    t0 = time.monotonic()
    apps.create_namespaced_stateful_set(NAMESPACE, _statefulset(image))
    wait_for("3 web pods Ready", lambda: len([p for p in core.list_namespaced_pod(NAMESPACE).items
                                              if _pod_ready(p)]) == 3, 240, real_node)
    print(f"realnode: 3 StatefulSet pods Running with new PVCs in {time.monotonic() - t0:.1f} s")
    show(api, "a StatefulSet of three pods, one PVC each")
    pvcs = {p.metadata.name: p for p in core.list_namespaced_persistent_volume_claim(NAMESPACE).items}
    assert sorted(pvcs) == ["data-web-0", "data-web-1", "data-web-2"]
    dirs = {}
    for i in range(3):
        pv = pvcs[f"data-web-{i}"].spec.volume_name
        d = _volume_dir(real_node, pv)
        assert d is not None, f"volume {pv} not on any drive under {real_node.state_dir / 'mnt'}"
        assert (d / "payload").read_text().strip() == f"web-{i}"
        blob = (d / "blob").read_bytes()
        assert len(blob) == 1 << 20
        assert hashlib.sha256(blob).hexdigest() == (d / "blob.sha256").read_text().strip()
        dirs[i] = d
    volumes = custom.list_cluster_custom_object("directpv.dev", "v1beta1", "directpvvolumes")["items"]
    assert len(volumes) == 3

    # 5. A deleted pod is re-created and finds its data.
    old_uid = core.read_namespaced_pod("web-1", NAMESPACE).metadata.uid
    core.delete_namespaced_pod("web-1", NAMESPACE)
    wait_for("web-1 re-created and Ready", lambda: (lambda p: p.metadata.uid != old_uid and _pod_ready(p))(
        core.read_namespaced_pod("web-1", NAMESPACE)), 180, real_node)
    assert (dirs[1] / "history").read_text().strip() == "restarted web-1"

    # 6. Expansion: csi-resizer (ControllerExpandVolume), then the kubelet's NodeExpandVolume.
    core.patch_namespaced_persistent_volume_claim(
        "data-web-0", NAMESPACE, {"spec": {"resources": {"requests": {"storage": "128Mi"}}}})
    wait_for("data-web-0 at 128Mi", lambda: (lambda c: _bytes(c.status.capacity["storage"]) >= 128 << 20
                                             and not c.status.conditions)(
        core.read_namespaced_persistent_volume_claim("data-web-0", NAMESPACE)), 180, real_node)
    show(api, "data-web-0 expanded to 128Mi")
    vol = custom.get_cluster_custom_object("directpv.dev", "v1beta1", "directpvvolumes",
                                           pvcs["data-web-0"].spec.volume_name)
    assert int(vol["spec"]["size"]) >= 128 << 20, vol["spec"]

    # 7. A read-only mount refuses writes.
    core.create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": "ro-check"}, "spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "ro", "image": image, "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c", RO_SCRIPT],
                            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-web-0", "readOnly": True}}]}})
    pod = wait_for("ro-check finished", lambda: (lambda p: p if p.status.phase in ("Succeeded", "Failed") else None)(
        core.read_namespaced_pod("ro-check", NAMESPACE)), 120, real_node)
    message = pod.status.container_statuses[0].state.terminated.message or ""
    assert message.startswith("REFUSED") and "Read-only file system" in message, message
    assert not (dirs[0] / "ro-probe").exists()
    core.delete_namespaced_pod("ro-check", NAMESPACE)

    # 8. The uninstall refuses while volumes exist, and removes nothing.
    inv_uninstall = inventory({"localhost": {}}, {"directpv_kubeconfig": str(real_node.kubeconfig)})
    refused = playbook("uninstall.yml", inv_uninstall)
    assert refused.rc != 0
    assert pvcs["data-web-0"].spec.volume_name in _ok(refused), _ok(refused)
    assert apps.read_namespaced_deployment("directpv-controller", "directpv")

    # 9. PVCs deleted: volumes deleted by the driver, space returned, directories gone from the drives.
    apps.delete_namespaced_stateful_set("web", NAMESPACE)
    wait_for("web pods gone", lambda: not [p for p in core.list_namespaced_pod(NAMESPACE).items
                                           if p.metadata.name.startswith("web-")], 120, real_node)
    wait_for("ro-check gone", lambda: not core.list_namespaced_pod(NAMESPACE).items, 60)
    for name in pvcs:
        core.delete_namespaced_persistent_volume_claim(name, NAMESPACE)
    wait_for("PVs deleted", lambda: not [pv for pv in core.list_persistent_volume().items
                                         if pv.spec.csi and pv.spec.csi.driver == "csi.directpv.dev"], 180)
    wait_for("DirectPVVolumes deleted", lambda: not custom.list_cluster_custom_object(
        "directpv.dev", "v1beta1", "directpvvolumes")["items"], 120)

    def space_returned() -> bool:
        items = custom.list_cluster_custom_object("directpv.dev", "v1beta1", "directpvdrives")["items"]
        return all(int(d["status"].get("allocated", 0)) == 0 and int(d["status"].get("volumeCount", 0)) == 0
                   for d in items)

    wait_for("drives with nothing allocated", space_returned, 60)
    show(api, "PVCs deleted: volumes gone, space returned")
    for d in dirs.values():
        wait_for(f"{d} removed from its drive", lambda d=d: not d.exists(), 60)  # type: ignore[misc]  # lambda default

    # 10. Uninstall: everything but the CRDs; the kubelet forgets the driver when its socket goes.
    removed = playbook("uninstall.yml", inv_uninstall)
    assert removed.rc == 0, _ok(removed)
    for read in (lambda: apps.read_namespaced_daemon_set("directpv-node", "directpv"),
                 lambda: apps.read_namespaced_deployment("directpv-controller", "directpv"),
                 lambda: storage.read_csi_driver("csi.directpv.dev")):
        with pytest.raises(ApiException) as err:
            read()
        assert err.value.status == 404
    ext = k8s.ApiextensionsV1Api(api)
    for crd in CRDS:
        assert ext.read_custom_resource_definition(crd)
    wait_for("node plugin pods gone", lambda: not core.list_namespaced_pod("directpv").items, 120)
    wait_for("the kubelet to deregister the driver", lambda: not [
        d for d in _csinode_drivers(storage) if d["name"] == "csi.directpv.dev"], 60)
    drive_files: List[str] = []
    for d in (real_node.state_dir / "mnt").glob("*"):
        drive_files += [p.name for p in d.iterdir()] if d.is_dir() else []
    assert not [f for f in drive_files if f.startswith("pvc-")], drive_files
