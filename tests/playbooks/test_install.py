"""The install and uninstall playbooks against a real kube-apiserver (tests/kube/controlplane.py).

The venv's real ansible-playbook runs with a local connection and the fixture's kubeconfig;
kubernetes.core.k8s talks to the API server by server-side apply. The control plane has no
scheduler, controller-manager or kubelet, so no pod ever runs: the tests set
directpv_install_wait_ready false (nothing could become ready) and check what the API server
accepted and stored. Each test uses its own namespace (a deleted namespace stays Terminating
without the namespace controller); the cluster-scoped objects (CRDs, CSIDriver, classes, cluster
RBAC) are shared, so each test leaves them as a fresh install would.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
import yaml
from directpv_csi.kube.store import apply_crds
from kube.controlplane import ControlPlane
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from .playbook_helpers import REPO, Run

pytestmark = [pytest.mark.slow]

CRD_FILES = sorted((REPO / "deploy" / "crds").glob("*.yaml"))
EXTRA_CLASSES = [
    {"name": "directpv-hot", "parameters": {"directpv.dev/access-tier": "Hot"}},
    {"name": "directpv-one-per-drive", "parameters": {"directpv.dev/volume-claim-id": "one-per-drive"},
     "reclaim_policy": "Retain"},
]


def _has_kubernetes_core() -> bool:
    try:
        return importlib.util.find_spec("ansible_collections.kubernetes.core") is not None
    except ImportError:
        return False


if not _has_kubernetes_core():
    pytestmark.append(pytest.mark.skip(reason="needs the kubernetes.core collection: pip install ansible==12.3.0"))


@pytest.fixture
def kube(kube_control_plane: ControlPlane) -> dynamic.DynamicClient:
    return dynamic.DynamicClient(kube_control_plane.api_client)  # type: ignore[no-untyped-call]


@pytest.fixture
def kube_inventory(
    kube_control_plane: ControlPlane, inventory: Callable[..., Path]
) -> Callable[..., Path]:
    """``kube_inventory(**vars) -> dir``: one host, localhost, pointed at the fixture's API server."""

    def make(**variables: Any) -> Path:
        base: Dict[str, Any] = {
            "directpv_kubeconfig": str(kube_control_plane.kubeconfig),
            "directpv_install_wait_ready": False,  # no scheduler/kubelet: no pod can become ready
        }
        base.update(variables)
        return inventory({"localhost": {}}, base)

    return make


@pytest.fixture
def namespace() -> str:
    return f"dpv-{uuid.uuid4().hex[:8]}"


def _wipe_volumes(kube: dynamic.DynamicClient) -> None:
    """Every DirectPVVolume and DirectPVDrive object (other tests of the session may leave some; their
    data-protection finalizers would hold a CRD deletion) and every PV of this module's tests, finalizers
    dropped."""
    kinds = (("directpv.dev/v1beta1", "DirectPVVolume"), ("directpv.dev/v1beta1", "DirectPVDrive"),
             ("v1", "PersistentVolume"))
    for api_version, kind in kinds:
        try:
            api = kube.resources.get(api_version=api_version, kind=kind)
            objs = api.get().items
        except (dynamic.exceptions.NotFoundError, dynamic.exceptions.ResourceNotFoundError):
            continue  # CRD deleted (dangerous uninstall): nothing left
        for obj in objs:
            if kind != "PersistentVolume" or obj.metadata.name.startswith("dpv-test-"):
                _delete(api, obj.metadata.name)


@pytest.fixture
def clean_cluster(kube: dynamic.DynamicClient, kube_control_plane: ControlPlane) -> Iterator[None]:
    """The control plane is shared by the whole session (tests/kube's store tests apply the CRDs once
    per session): no volume objects before the test (they would block the uninstall), none after it,
    and the CRDs put back when the test deleted them."""
    _wipe_volumes(kube)
    yield
    _wipe_volumes(kube)
    apply_crds(kube_control_plane.api_client, REPO / "deploy" / "crds")


def _delete(api: Any, name: str) -> None:
    """Delete and drop finalizers: the API server's admission adds kubernetes.io/pv-protection to
    PVs, and no controller-manager runs here to remove it."""
    api.delete(name=name)
    try:
        api.patch(name=name, body={"metadata": {"finalizers": None}}, content_type="application/merge-patch+json")
    except ApiException as exc:
        if exc.status != 404:
            raise


def _get(kube: dynamic.DynamicClient, manifest: Dict[str, Any]) -> Dict[str, Any]:
    api = kube.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    meta = manifest["metadata"]
    obj = api.get(name=meta["name"], namespace=meta.get("namespace"))
    return dict(obj.to_dict())


def _exists(kube: dynamic.DynamicClient, api_version: str, kind: str, name: str, namespace: str = "") -> bool:
    try:
        api = kube.resources.get(api_version=api_version, kind=kind)
        api.get(name=name, namespace=namespace or None)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    except dynamic.exceptions.ResourceNotFoundError:
        return False
    return True


def _subset(want: Any, have: Any, path: str = "") -> List[str]:
    """Where ``have`` (read back) differs from ``want`` (rendered) on the fields ``want`` sets."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [f"{path}: {have!r} is not a mapping"]
        return [d for k, v in want.items() for d in _subset(v, have.get(k), f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(have, list) or len(have) != len(want):
            return [f"{path}: {have!r} != {want!r}"]
        return [d for i, (w, h) in enumerate(zip(want, have)) for d in _subset(w, h, f"{path}[{i}]")]
    if want != have and str(want) != str(have):
        return [f"{path}: {have!r} != {want!r}"]
    return []


def _item_failures(run: Run) -> List[str]:
    """Messages of failed loop items (a looped task's own message only says that some failed)."""
    out = []
    for play in run.data.get("plays", []):
        for task in play.get("tasks", []):
            for res in task.get("hosts", {}).values():
                for item in res.get("results", []) if res.get("failed") else []:
                    if item.get("failed"):
                        out.append(f"{task['task']['name']}: {item.get('msg', '')} {item.get('error', '')}".strip())
    return out or [f"{h}: {t}: {m}" for h, t, m in run.failures()] or [run.stderr]


def _render(
    playbook: Callable[..., Run], kube_inventory: Callable[..., Path], out: Path, **variables: Any
) -> List[Dict[str, Any]]:
    inv = kube_inventory(directpv_install_render_only=True, directpv_install_render_dir=str(out), **variables)
    run = playbook("install.yml", inv)
    assert run.rc == 0, run.failures() or run.stderr
    files = sorted(out.glob("*.yaml"))
    return [yaml.safe_load(f.read_text()) for f in files]


def test_crd_manifests_exist() -> None:
    assert CRD_FILES, "deploy/crds/*.yaml: the install applies these"


def _assert_least_privilege(rendered: List[Dict[str, Any]]) -> None:
    """No wildcard anywhere; the controller's ClusterRole lists exactly our CRDs and their status."""
    plurals = {yaml.safe_load(f.read_text())["spec"]["names"]["plural"] for f in CRD_FILES}
    roles = [m for m in rendered if m["kind"] in ("ClusterRole", "Role")]
    assert len(roles) == 3
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (role["metadata"]["name"], rule)
    controller = next(r for r in roles if r["kind"] == "ClusterRole" and r["metadata"]["name"] == "directpv-controller")
    ours = {res for rule in controller["rules"] if rule["apiGroups"] == ["directpv.dev"] for res in rule["resources"]}
    assert ours == plurals | {p + "/status" for p in plurals}


def test_check_mode_then_install_idempotent_and_equal_to_render(
    playbook: Callable[..., Run], kube_inventory: Callable[..., Path], kube: dynamic.DynamicClient,
    namespace: str, tmp_path: Path, clean_cluster: None,
) -> None:
    variables = {"directpv_namespace": namespace, "directpv_storage_classes": EXTRA_CLASSES,
                 "directpv_image_pull_secrets": ["regcred"],
                 "directpv_tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                                           "effect": "NoSchedule"}],
                 "directpv_node_selector": {"directpv.dev/storage": "yes"},
                 "directpv_kubelet_dir": "/var/lib/k0s/kubelet"}
    rendered = _render(playbook, kube_inventory, tmp_path / "rendered", **variables)
    kinds = [m["kind"] for m in rendered]
    assert kinds[0] == "Namespace" and kinds[-2:] == ["DaemonSet", "Deployment"]
    assert kinds.count("CustomResourceDefinition") == len(CRD_FILES)
    assert kinds.count("StorageClass") == 3
    assert not _exists(kube, "v1", "Namespace", namespace), "render-only applied something"
    _assert_least_privilege(rendered)

    inv = kube_inventory(**variables)
    check = playbook("install.yml", inv, "--check")
    assert check.rc == 0, _item_failures(check)
    assert not _exists(kube, "v1", "Namespace", namespace), "check mode created the namespace"
    assert not _exists(kube, "apps/v1", "Deployment", "directpv-controller", namespace)

    first = playbook("install.yml", inv)
    assert first.rc == 0, _item_failures(first)
    assert first.changed("localhost") >= 1

    for manifest in rendered:  # every object accepted, stored as rendered
        have = _get(kube, manifest)
        diff = _subset(manifest, have)
        assert not diff, f"{manifest['kind']}/{manifest['metadata']['name']}: {diff}"
        if manifest["kind"] == "CustomResourceDefinition":
            conditions = {c["type"]: c["status"] for c in have["status"]["conditions"]}
            assert conditions.get("Established") == "True", manifest["metadata"]["name"]

    ns = _get(kube, rendered[0])
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    ds = _get(kube, {"apiVersion": "apps/v1", "kind": "DaemonSet",
                     "metadata": {"name": "directpv-node", "namespace": namespace}})
    node = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "node")
    assert node["securityContext"]["privileged"] is True
    props = {m["mountPath"]: m.get("mountPropagation") for m in node["volumeMounts"]}
    assert props["/var/lib/k0s/kubelet"] == "Bidirectional" and props["/var/lib/directpv-csi"] == "Bidirectional"

    second = playbook("install.yml", inv)
    assert second.rc == 0, _item_failures(second)
    assert second.changed("localhost") == 0, [
        t["task"]["name"] for p in second.data["plays"] for t in p["tasks"]
        if any(r.get("changed") for r in t["hosts"].values())
    ]


def _volume(name: str) -> Dict[str, Any]:
    return {"apiVersion": "directpv.dev/v1beta1", "kind": "DirectPVVolume", "metadata": {"name": name},
            "spec": {"driveID": "d1", "node": "n1", "size": 1 << 30, "projectID": 7}}


def _pv(name: str) -> Dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "directpv",
                     "csi": {"driver": "csi.directpv.dev", "volumeHandle": name, "fsType": "xfs"}}}


def test_uninstall_refuses_with_volumes_keeps_crds_unless_dangerous(
    playbook: Callable[..., Run], kube_inventory: Callable[..., Path], kube: dynamic.DynamicClient,
    namespace: str, clean_cluster: None,
) -> None:
    inv = kube_inventory(directpv_namespace=namespace)
    installed = playbook("install.yml", inv)
    assert installed.rc == 0, installed.failures() or installed.stderr
    crd_names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in CRD_FILES]

    volumes = kube.resources.get(api_version="directpv.dev/v1beta1", kind="DirectPVVolume")
    pvs = kube.resources.get(api_version="v1", kind="PersistentVolume")
    volumes.create(body=_volume("dpv-test-vol"))
    pvs.create(body=_pv("dpv-test-pv"))
    refused = playbook("uninstall.yml", inv)
    assert refused.rc != 0
    message = " ".join(refused.messages("localhost"))
    assert "dpv-test-vol" in message and "dpv-test-pv" in message, refused.failures()
    assert _exists(kube, "apps/v1", "Deployment", "directpv-controller", namespace), "refused but removed"
    assert _exists(kube, "storage.k8s.io/v1", "CSIDriver", "csi.directpv.dev")
    _delete(volumes, "dpv-test-vol")
    refused = playbook("uninstall.yml", inv)  # the PV alone still blocks
    assert refused.rc != 0 and "dpv-test-pv" in " ".join(refused.messages("localhost")), refused.failures()
    _delete(pvs, "dpv-test-pv")

    removed = playbook("uninstall.yml", inv)
    assert removed.rc == 0, removed.failures() or removed.stderr
    for api_version, kind, name, ns in (
        ("apps/v1", "Deployment", "directpv-controller", namespace),
        ("apps/v1", "DaemonSet", "directpv-node", namespace),
        ("storage.k8s.io/v1", "CSIDriver", "csi.directpv.dev", ""),
        ("storage.k8s.io/v1", "StorageClass", "directpv", ""),
        ("rbac.authorization.k8s.io/v1", "ClusterRole", "directpv-controller", ""),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "directpv-node", ""),
    ):
        assert not _exists(kube, api_version, kind, name, ns), f"{kind}/{name} still there"
    ns_obj = client.CoreV1Api(kube.client).read_namespace(namespace)
    # Terminating, never gone: no namespace controller here
    assert ns_obj.metadata is not None and ns_obj.metadata.deletion_timestamp is not None
    for name in crd_names:
        assert _exists(kube, "apiextensions.k8s.io/v1", "CustomResourceDefinition", name), f"{name} removed"

    dangerous_inv = kube_inventory(directpv_namespace=namespace, directpv_uninstall_dangerous=True)
    dangerous = playbook("uninstall.yml", dangerous_inv)
    assert dangerous.rc == 0, dangerous.failures() or dangerous.stderr
    for name in crd_names:
        assert not _exists(kube, "apiextensions.k8s.io/v1", "CustomResourceDefinition", name), f"{name} kept"


# --- Rendering only (no API server): scheduling, node plugin options, the sidecars' RBAC ---

def _render_local(playbook: Callable[..., Run], inventory: Callable[..., Path], out: Path,
                  **variables: Any) -> Run:
    inv = inventory({"localhost": {}}, {"directpv_install_render_only": True,
                                        "directpv_install_render_dir": str(out), **variables})
    return playbook("install.yml", inv)


def _workloads(out: Path) -> Dict[str, Dict[str, Any]]:
    docs = [yaml.safe_load(f.read_text()) for f in sorted(out.glob("*.yaml"))]
    return {d["kind"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("DaemonSet", "Deployment")}


def test_directpv_style_scheduling_strings_are_converted_per_workload(
    playbook: Callable[..., Run], inventory: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "rendered"
    run = _render_local(
        playbook, inventory, out,
        directpv_node_selector="directpv.dev/storage=yes, example.com/zone=z1",
        directpv_tolerations="node-role.kubernetes.io/control-plane:NoSchedule,dedicated=storage:NoExecute,k=v",
        directpv_controller_node_selector={"kubernetes.io/os": "linux"},
        directpv_controller_tolerations=[{"key": "x", "operator": "Exists"}],
    )
    assert run.rc == 0, run.failures() or run.stderr
    spec = _workloads(out)
    node, controller = spec["DaemonSet"], spec["Deployment"]
    assert node["nodeSelector"] == {"directpv.dev/storage": "yes", "example.com/zone": "z1"}
    assert node["tolerations"] == [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "storage", "effect": "NoExecute"},
        {"key": "k", "operator": "Equal", "value": "v"},
    ]
    assert controller["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert controller["tolerations"] == [{"key": "x", "operator": "Exists"}]


@pytest.mark.parametrize("variables, words", [
    ({"directpv_node_selector": "a=b,c"}, ["directpv_node_plugin_node_selector", "key=value"]),
    ({"directpv_tolerations": "k=v:Sometimes"}, ["NoSchedule", "effect"]),
    ({"directpv_controller_tolerations": "a:b:c"}, ["directpv_controller_tolerations"]),
    ({"directpv_controller_node_selector": {"zone": True}}, ["controller Deployment", "label values"]),
    ({"directpv_node_plugin_node_selector": {"bad key": "v"}}, ["node DaemonSet", "label keys"]),
    ({"directpv_tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, ["Exists takes no value"]),
    ({"directpv_tolerations": [{"key": "k", "operatr": "Exists"}]}, ["only key, operator"]),
    ({"directpv_tolerations": {"key": "k"}}, ["list of toleration objects"]),
])
def test_invalid_scheduling_is_refused_before_anything_is_rendered(
    playbook: Callable[..., Run], inventory: Callable[..., Path], tmp_path: Path,
    variables: Dict[str, Any], words: List[str],
) -> None:
    out = tmp_path / "rendered"
    run = _render_local(playbook, inventory, out, **variables)
    assert run.rc != 0
    message = " ".join(_item_failures(run))
    for word in words:
        assert word in message, message
    assert not list(out.glob("*.yaml")), "rendered despite invalid input"


def test_node_plugin_registers_itself_by_default_upstream_sidecars_optional(
    playbook: Callable[..., Run], inventory: Callable[..., Path], tmp_path: Path
) -> None:
    run = _render_local(playbook, inventory, tmp_path / "builtin", directpv_node_allow_loop=True,
                        directpv_node_devices=["/dev/loop7", "loop8"], directpv_kubelet_dir="/var/lib/k0s/kubelet")
    assert run.rc == 0, run.failures() or run.stderr
    node = _workloads(tmp_path / "builtin")["DaemonSet"]
    assert [c["name"] for c in node["containers"]] == ["node"]
    args = node["containers"][0]["args"]
    assert "--registration-dir=/var/lib/k0s/kubelet/plugins_registry" in args
    assert "--kubelet-registration-path=/var/lib/k0s/kubelet/plugins/csi.directpv.dev/csi.sock" in args
    assert "--allow-loop" in args and "--device=/dev/loop7" in args and "--device=loop8" in args
    assert node["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    udev = next(m for m in node["containers"][0]["volumeMounts"] if m["mountPath"] == "/run/udev")
    assert udev["readOnly"] is True
    assert "registration-dir" not in {v["name"] for v in node["volumes"]}

    run = _render_local(playbook, inventory, tmp_path / "upstream", directpv_node_upstream_sidecars=True)
    assert run.rc == 0, run.failures() or run.stderr
    node = _workloads(tmp_path / "upstream")["DaemonSet"]
    assert [c["name"] for c in node["containers"]] == ["node-driver-registrar", "liveness-probe", "node"]
    args = node["containers"][2]["args"]
    assert not [a for a in args if a.startswith(("--registration-dir", "--allow-loop", "--device"))]


def _release_rbac(module: str, version: str) -> List[Dict[str, Any]]:
    """Rules of the ClusterRole and Role in a sidecar release's deploy/kubernetes/rbac.yaml (from the Go
    module cache that scripts/build-kube-tools.sh fills)."""
    gopath = Path(os.environ.get("GOPATH") or Path.home() / ".cache" / "directpv-csi" / "gopath")
    path = gopath / "pkg/mod/github.com/kubernetes-csi" / f"{module}@{version}" / "deploy/kubernetes/rbac.yaml"
    if not path.exists():
        pytest.skip(f"{path} missing: scripts/build-kube-tools.sh downloads the sidecar modules")
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] in ("ClusterRole", "Role")]
    return [rule for d in docs for rule in d["rules"]]


@pytest.mark.parametrize("module, version", [("external-provisioner/v6", "v6.3.0"), ("external-resizer/v2", "v2.3.0")])
def test_controller_rbac_covers_what_each_sidecar_release_asks_for(
    playbook: Callable[..., Run], inventory: Callable[..., Path], tmp_path: Path, module: str, version: str
) -> None:
    wanted = _release_rbac(module, version)
    out = tmp_path / "rendered"
    run = _render_local(playbook, inventory, out)
    assert run.rc == 0, run.failures() or run.stderr
    docs = [yaml.safe_load(f.read_text()) for f in sorted(out.glob("*.yaml"))]
    granted = {(g, r, v) for d in docs
               if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"] == "directpv-controller"
               for rule in d["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    missing = [(g, r, v) for rule in wanted for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
               if g != "snapshot.storage.k8s.io"  # no snapshots in this driver
               and (g, r, v) not in granted]
    assert not missing, f"{module} {version} needs {missing}"
