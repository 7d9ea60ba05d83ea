"""Kubernetes Events from the kube store (kube/events.py), on the real kube-apiserver (tests/kube).

Each test reads the Events back from the API server (``events.k8s.io/v1`` in ``default``) and
selects them by the uid of the DirectPV object they are about, so events left by earlier tests
(the control plane is shared by the session) never match."""

from __future__ import annotations

import logging
import re
import socket
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, cast

import grpc
import jinja2
import pytest
import yaml
from directpv_csi.core.errors import Conflict, InvalidArgument, NotFound, PermissionDenied, Unavailable
from directpv_csi.core.models import DRIVE_ERROR, DRIVE_LOST, DRIVE_READY, DRIVE_REMOVED, Drive, Volume
from directpv_csi.csi.errors import translate
from directpv_csi.kube import events as ev
from directpv_csi.kube.errors import ApiConflict, api_error, translated
from directpv_csi.kube.store import DRIVES, GROUP, VERSION, VOLUMES, KubeStore, object_name
from kube.cluster import KubeStoreCluster
from kubernetes import client

from testsupport import eventually

GiB = 1024**3
INSTANCE = "node-events-1"
REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


@pytest.fixture(name="cluster")
def cluster_fixture(kube_store_cluster: KubeStoreCluster) -> KubeStoreCluster:
    kube_store_cluster.wipe()
    return kube_store_cluster


@pytest.fixture(name="store")
def store_fixture(cluster: KubeStoreCluster) -> Iterator[KubeStore]:
    s = KubeStore(cluster.new_client(), reporting_instance=INSTANCE)
    yield s
    s.close()


def new_drive(status: str = DRIVE_READY, message: str = "") -> Drive:
    return Drive(drive_id=str(uuid.uuid4()), node="n1", name="sdb", total=10 * GiB, status=status, message=message,
                 make="QEMU HARDDISK")


def uid_of(cluster: KubeStoreCluster, plural: str, name: str) -> str:
    obj = cast(Dict[str, Any],
               client.CustomObjectsApi(cluster.api_client).get_cluster_custom_object(GROUP, VERSION, plural, name))
    uid: str = obj["metadata"]["uid"]
    return uid


def events_about(cluster: KubeStoreCluster, uid: str) -> List[Dict[str, Any]]:
    """The Events in ``default`` regarding the object ``uid``, oldest first."""
    api = client.CustomObjectsApi(cluster.api_client)
    listed = cast(Dict[str, Any], api.list_namespaced_custom_object("events.k8s.io", "v1", "default", "events"))
    items: List[Dict[str, Any]] = listed["items"]
    mine = [e for e in items if (e.get("regarding") or {}).get("uid") == uid]
    return sorted(mine, key=lambda e: str(e["eventTime"]))


def reasons(events: List[Dict[str, Any]]) -> List[str]:
    return [e["reason"] for e in events]


def test_volume_provisioned_expanded_released(cluster: KubeStoreCluster, store: KubeStore) -> None:
    d = store.put_drive(new_drive())
    store.reserve_volume(Volume(name="pvc-events-1", drive_id=d.drive_id, node="", size=GiB, project_id=0))
    vuid = uid_of(cluster, VOLUMES, object_name("pvc-events-1"))
    assert store.events.flush()

    (prov,) = events_about(cluster, vuid)
    assert prov["reason"] == ev.VOLUME_PROVISIONED and prov["type"] == "Normal" and prov["action"] == "Provision"
    assert prov["regarding"] == {"apiVersion": "directpv.dev/v1beta1", "kind": "DirectPVVolume",
                                 "name": "pvc-events-1", "uid": vuid}
    assert prov["reportingController"] == "csi.directpv.dev" and prov["reportingInstance"] == INSTANCE
    assert "1 GiB" in prov["note"] and d.drive_id in prov["note"] and "(sdb)" in prov["note"]
    assert "node n1" in prov["note"]

    store.expand_volume("pvc-events-1", 2 * GiB)
    store.expand_volume("pvc-events-1", 2 * GiB)  # a retry of the same expansion changes nothing: no event
    store.delete_volume("pvc-events-1")
    store.delete_volume("pvc-events-1")  # already gone: no event
    assert store.events.flush()
    got = events_about(cluster, vuid)
    assert reasons(got) == [ev.VOLUME_PROVISIONED, ev.VOLUME_EXPANDED, ev.VOLUME_RELEASED]
    assert "from 1 GiB to 2 GiB" in got[1]["note"] and d.drive_id in got[1]["note"]
    assert "2 GiB released" in got[2]["note"] and "node n1" in got[2]["note"]
    assert all(e["type"] == "Normal" for e in got)
    # what `kubectl describe dpvv` and `kubectl get events` read: the same Events through core/v1
    core = client.CoreV1Api(cluster.api_client).list_namespaced_event(
        "default", field_selector=f"involvedObject.uid={vuid},involvedObject.kind=DirectPVVolume")
    assert sorted(str(e.reason) for e in core.items) == sorted(reasons(got))

    duid = uid_of(cluster, DRIVES, d.drive_id)
    (added,) = events_about(cluster, duid)
    assert added["reason"] == ev.DRIVE_ADDED and added["type"] == "Normal"
    assert added["regarding"]["kind"] == "DirectPVDrive" and "10 GiB" in added["note"]


def test_drive_lost_then_recovered(cluster: KubeStoreCluster, store: KubeStore) -> None:
    d = new_drive()
    store.put_drive(d)
    store.put_drive(d)  # no change: no event
    store.put_drive(replace(d, status=DRIVE_LOST, name="", message="device not found since 10:00; reattach it"))
    store.put_drive(d)
    store.update_drive(d.drive_id, status=DRIVE_REMOVED)
    assert store.events.flush()
    got = events_about(cluster, uid_of(cluster, DRIVES, d.drive_id))
    assert [(e["reason"], e["type"]) for e in got] == [
        (ev.DRIVE_ADDED, "Normal"), (ev.DRIVE_LOST, "Warning"), (ev.DRIVE_RECOVERED, "Normal"),
        (ev.DRIVE_REMOVED, "Normal")]
    assert "device not found since 10:00" in got[1]["note"] and "node n1" in got[1]["note"]
    assert "was Lost" in got[2]["note"]


@pytest.mark.parametrize(("message", "reason"), [
    ("I/O error: cannot read sdb: [Errno 5] Input/output error; check the device (dmesg)", ev.DRIVE_HAS_IO_ERROR),
    ("multiple matches: devices sdb, sdc all carry drive id x; none is mounted", ev.DRIVE_HAS_MULTIPLE_MATCHES),
    ("cannot use drive on sdb: metadata names another drive", ev.DRIVE_HAS_ERROR),
])
def test_drive_error_is_a_warning(cluster: KubeStoreCluster, store: KubeStore, message: str, reason: str) -> None:
    d = new_drive()
    store.put_drive(d)
    store.put_drive(replace(d, status=DRIVE_ERROR, message=message))
    store.update_drive(d.drive_id, status=DRIVE_READY, message="")  # the operator's path reports too
    assert store.events.flush()
    got = events_about(cluster, uid_of(cluster, DRIVES, d.drive_id))
    assert [(e["reason"], e["type"]) for e in got] == [
        (ev.DRIVE_ADDED, "Normal"), (reason, "Warning"), (ev.DRIVE_RECOVERED, "Normal")]
    assert message in got[1]["note"]


def test_a_drive_registered_in_error_is_a_warning_not_added(cluster: KubeStoreCluster, store: KubeStore) -> None:
    d = new_drive(DRIVE_ERROR, "I/O error on sdb: [Errno 5]")
    store.put_drive(d)
    assert store.events.flush()
    got = events_about(cluster, uid_of(cluster, DRIVES, d.drive_id))
    assert [(e["reason"], e["type"]) for e in got] == [(ev.DRIVE_HAS_IO_ERROR, "Warning")]


def test_a_flapping_drive_is_one_series_not_one_event_per_flap(cluster: KubeStoreCluster) -> None:
    store = KubeStore(cluster.new_client(), reporting_instance=INSTANCE)
    d = new_drive()
    lost = replace(d, status=DRIVE_LOST, name="", message="device not found")
    try:
        store.put_drive(d)
        for _ in range(5):
            store.put_drive(lost)
            store.put_drive(d)
    finally:
        store.close()  # sends the pending series counts
    got = events_about(cluster, uid_of(cluster, DRIVES, d.drive_id))
    assert reasons(got) == [ev.DRIVE_ADDED, ev.DRIVE_LOST, ev.DRIVE_RECOVERED]
    assert "series" not in got[0]
    for e in got[1:]:
        assert e["series"]["count"] == 5, e
        assert e["series"]["lastObservedTime"] >= e["eventTime"]
    assert (store.events.created, store.events.aggregated, store.events.failed) == (3, 8, 0)


def test_events_disabled_sends_none(cluster: KubeStoreCluster) -> None:
    store = KubeStore(cluster.new_client(), events=False)
    d = new_drive()
    try:
        store.put_drive(d)
        store.reserve_volume(Volume(name="pvc-quiet", drive_id=d.drive_id, node="", size=GiB, project_id=0))
        vuid = uid_of(cluster, VOLUMES, "pvc-quiet")
        store.expand_volume("pvc-quiet", 2 * GiB)
        store.put_drive(replace(d, status=DRIVE_LOST, name="", message="gone"))
        store.delete_volume("pvc-quiet")
        assert store.events.flush()
    finally:
        store.close()
    assert events_about(cluster, uid_of(cluster, DRIVES, d.drive_id)) == []
    assert events_about(cluster, vuid) == []
    assert store.events.created == 0


def test_refused_events_never_fail_the_operation(cluster: KubeStoreCluster, caplog: pytest.LogCaptureFixture) -> None:
    """The API server refuses every event (their namespace does not exist: 404): the store's
    operations all succeed, the failure is logged once (rate-limited), nothing is sent."""
    store = KubeStore(cluster.new_client(), reporting_instance=INSTANCE, events_namespace="no-such-namespace")
    d = new_drive()
    try:
        with caplog.at_level(logging.WARNING, logger="directpv_csi.store.events"):
            store.put_drive(d)
            v = store.reserve_volume(Volume(name="pvc-refused", drive_id=d.drive_id, node="", size=GiB,
                                            project_id=0))
            assert store.expand_volume("pvc-refused", 2 * GiB).size == 2 * GiB
            store.put_drive(replace(d, status=DRIVE_LOST, name="", message="gone"))
            assert store.delete_volume("pvc-refused") is not None
            assert store.events.flush()
    finally:
        store.close()
    assert v.size == GiB and store.get_volume("pvc-refused") is None
    assert (store.events.created, store.events.failed) == (0, 5)
    lines = [r.getMessage() for r in caplog.records if r.name == "directpv_csi.store.events"]
    assert len(lines) == 1, lines  # one line per minute at most, not one per event
    assert "no-such-namespace" in lines[0] and "DriveAdded" in lines[0]


def events_regarding_name(cluster: KubeStoreCluster, kind: str, prefix: str) -> List[Dict[str, Any]]:
    api = client.CustomObjectsApi(cluster.api_client)
    listed = cast(Dict[str, Any], api.list_namespaced_custom_object("events.k8s.io", "v1", "default", "events"))
    return [e for e in listed["items"] if (e.get("regarding") or {}).get("kind") == kind
            and str((e.get("regarding") or {}).get("name", "")).startswith(prefix)]


def test_a_burst_larger_than_the_queue_loses_no_event(cluster: KubeStoreCluster) -> None:
    """600 events about 12 objects (50 each, interleaved) through a queue of 12: repeats of a queued
    event fold into it, so every object has its one Event on the API server with series.count 50,
    and the folded repeats are counted (``coalesced``); nothing is shed."""
    from directpv_csi.kube.store import _EventSink

    sink = _EventSink(cluster.new_client())
    rec = ev.EventRecorder(sink, INSTANCE, queue_size=12, similar_max=0)  # combining: the next test
    prefix = f"burst-{uuid.uuid4().hex[:8]}-"
    objs = [ev.Regarding("DirectPVVolume", f"{prefix}{i}", str(uuid.uuid4())) for i in range(12)]
    for _ in range(50):
        for o in objs:
            rec.emit(o, ev.NORMAL, ev.VOLUME_RELEASED, "Release", f"{o.name} released")
    rec.close(timeout_s=20)
    got = events_regarding_name(cluster, "DirectPVVolume", prefix)
    assert sorted(e["regarding"]["name"] for e in got) == sorted(o.name for o in objs)
    assert [(e.get("series") or {}).get("count") for e in got] == [50] * 12
    assert (rec.created, rec.aggregated, rec.shed, rec.failed) == (12, 12 * 49, 0, 0)
    assert rec.coalesced > 0 and rec.stats()["coalesced"] == rec.coalesced


def test_similar_events_about_many_objects_are_combined_and_counted(cluster: KubeStoreCluster) -> None:
    """45 volumes provisioned (one Normal event each, different objects) and 15 drives lost (Warnings):
    the first 10 provisioned are Events of their own, the other 35 one combined series (note
    "(combined from similar events): ...", series.count 35, counted as ``combined``); every Warning
    stays its own Event; nothing is shed or lost: the counts add up to the 60 events emitted."""
    from directpv_csi.kube.store import _EventSink

    rec = ev.EventRecorder(_EventSink(cluster.new_client()), INSTANCE, queue_size=1000)
    prefix = f"similar-{uuid.uuid4().hex[:8]}-"
    for i in range(45):
        rec.emit(ev.Regarding("DirectPVVolume", f"{prefix}v{i:02d}", str(uuid.uuid4())), ev.NORMAL,
                 ev.VOLUME_PROVISIONED, "Provision", f"volume {prefix}v{i:02d}: 1 GiB reserved")
    for i in range(15):
        rec.emit(ev.Regarding("DirectPVDrive", f"{prefix}d{i:02d}", str(uuid.uuid4())), ev.WARNING, ev.DRIVE_LOST,
                 "Probe", f"drive {prefix}d{i:02d} lost")
    rec.close(timeout_s=20)
    volumes = events_regarding_name(cluster, "DirectPVVolume", prefix)
    combined = [e for e in volumes if e["note"].startswith(ev.COMBINED_PREFIX)]
    single = sorted(e["regarding"]["name"] for e in volumes if e not in combined)
    assert single == [f"{prefix}v{i:02d}" for i in range(10)]
    assert len(combined) == 1 and combined[0]["regarding"]["name"] == f"{prefix}v10"
    assert (combined[0].get("series") or {}).get("count") == 35
    drives = events_regarding_name(cluster, "DirectPVDrive", prefix)
    assert sorted(e["regarding"]["name"] for e in drives) == [f"{prefix}d{i:02d}" for i in range(15)]
    assert (rec.created, rec.combined, rec.aggregated, rec.shed, rec.failed) == (26, 35, 34, 0, 0)


def test_a_full_queue_sheds_distinct_events_counted_and_logged(cluster: KubeStoreCluster,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The API server is slow (the sink waits on a gate) and 30 distinct events arrive at a queue of
    10: each is either created on the API server or counted as shed, by reason, in a log line."""
    import threading

    from directpv_csi.kube.store import _EventSink

    gate = threading.Event()

    class Slow:
        def __init__(self) -> None:
            self.real = _EventSink(cluster.new_client())

        def create(self, namespace: str, body: Dict[str, Any]) -> None:
            gate.wait(10)
            self.real.create(namespace, body)

        def patch_series(self, namespace: str, name: str, series: Dict[str, Any]) -> None:
            self.real.patch_series(namespace, name, series)

    rec = ev.EventRecorder(Slow(), INSTANCE, queue_size=10)
    prefix = f"shed-{uuid.uuid4().hex[:8]}-"
    with caplog.at_level(logging.WARNING, logger="directpv_csi.store.events"):
        for i in range(30):
            rec.emit(ev.Regarding("DirectPVDrive", f"{prefix}{i}", str(uuid.uuid4())), ev.WARNING, ev.DRIVE_LOST,
                     "Probe", "lost")
        gate.set()
        rec.close(timeout_s=20)
    got = events_regarding_name(cluster, "DirectPVDrive", prefix)
    assert rec.failed == 0 and len(got) == rec.created and rec.created in (10, 11)
    assert rec.created + rec.shed == 30 and rec.shed_by_reason == {ev.DRIVE_LOST: rec.shed}
    lines = [r.getMessage() for r in caplog.records if r.name == "directpv_csi.store.events"]
    assert any("event queue full" in line and "DriveLost 1" in line for line in lines), lines
    assert any(f"shed {rec.shed}" in line for line in lines), lines  # the closing summary


# --- the install role's RBAC, as a service account's token sees it -------------------------------


def render_cluster_role(component: str) -> Dict[str, Any]:
    """roles/install/templates/clusterrole-<component>.yaml.j2 rendered as the role does (the CRD
    plurals from deploy/crds; ``regex_replace`` is Ansible's filter)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["regex_replace"] = lambda value, pattern, repl: re.sub(pattern, repl, value)
    text = (REPO / "roles" / "install" / "templates" / f"clusterrole-{component}.yaml.j2").read_text()
    plurals = [yaml.safe_load(p.read_text())["spec"]["names"]["plural"]
               for p in sorted((REPO / "deploy" / "crds").glob("*.yaml"))]
    role: Dict[str, Any] = yaml.safe_load(env.from_string(text).render(directpv_crd_plurals=plurals))
    return role


@pytest.fixture(name="service_account_client")
def service_account_client_fixture(cluster: KubeStoreCluster) -> Iterator[Callable[[Dict[str, Any]], Any]]:
    """``make(cluster_role) -> ApiClient`` authenticated as a new ServiceAccount bound to that role
    (under a name of its own; the role's name is replaced), by a real token from the TokenRequest API."""
    # Any: the generated client types its bodies as models; it sends plain dicts just as well
    rbac: Any = client.RbacAuthorizationV1Api(cluster.api_client)
    core: Any = client.CoreV1Api(cluster.api_client)
    made: List[str] = []

    def make(role: Dict[str, Any]) -> Any:
        name = f"events-rbac-{uuid.uuid4().hex[:8]}"
        made.append(name)
        core.create_namespace({"metadata": {"name": name}})
        core.create_namespaced_service_account(name, {"metadata": {"name": "sa"}})
        rbac.create_cluster_role(dict(role, metadata=dict(role["metadata"], name=name)))
        rbac.create_cluster_role_binding({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": name}]})
        token = core.create_namespaced_service_account_token(
            "sa", name, {"spec": {"audiences": [], "expirationSeconds": 3600}}).status.token
        admin = cluster.api_client.configuration
        cfg = client.Configuration(host=admin.host, api_key={"authorization": str(token)},
                                   api_key_prefix={"authorization": "Bearer"})
        cfg.ssl_ca_cert = admin.ssl_ca_cert
        api = client.ApiClient(cfg)
        whoami: Any = client.AuthenticationV1Api(api)
        assert whoami.create_self_subject_review({}).status.user_info.username == f"system:serviceaccount:{name}:sa"
        can: Any = client.AuthorizationV1Api(api)

        def allowed() -> bool:  # the authorizer's RBAC cache catches up with the new binding
            review = can.create_self_subject_access_review({"spec": {"resourceAttributes": {
                "group": "directpv.dev", "resource": "directpvdrives", "verb": "list"}}})
            return bool(review.status.allowed)

        deadline = time.monotonic() + 10
        while not allowed() and time.monotonic() < deadline:
            time.sleep(0.05)
        return api

    yield make
    for name in made:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


@pytest.mark.parametrize("component", ["controller", "node"])
def test_install_roles_allow_the_events(cluster: KubeStoreCluster, component: str,
                                        service_account_client: Callable[[Dict[str, Any]], Any]) -> None:
    """The ClusterRole the install role gives each service account lets the store create events and
    patch their series (and, for the controller, do the volume transitions)."""
    store = KubeStore(service_account_client(render_cluster_role(component)), reporting_instance=INSTANCE)
    d = new_drive()
    try:
        store.put_drive(d)
        for _ in range(2):
            store.put_drive(replace(d, status=DRIVE_LOST, name="", message="device not found"))
            store.put_drive(d)
        if component == "controller":
            store.reserve_volume(Volume(name="pvc-rbac", drive_id=d.drive_id, node="", size=GiB, project_id=0))
            store.expand_volume("pvc-rbac", 2 * GiB)
            store.delete_volume("pvc-rbac")
    finally:
        store.close()
    expected = 6 if component == "controller" else 3
    assert (store.events.created, store.events.patched, store.events.failed) == (expected, 2, 0)
    got = events_about(cluster, uid_of(cluster, DRIVES, d.drive_id))
    assert [(e["reason"], (e.get("series") or {}).get("count")) for e in got] == [
        (ev.DRIVE_ADDED, None), (ev.DRIVE_LOST, 2), (ev.DRIVE_RECOVERED, 2)]


def test_a_role_without_events_refuses_them_and_the_store_carries_on(
        cluster: KubeStoreCluster, service_account_client: Callable[[Dict[str, Any]], Any],
        caplog: pytest.LogCaptureFixture) -> None:
    role = render_cluster_role("node")
    role["rules"] = [r for r in role["rules"] if "events" not in r["resources"]]
    assert role["rules"]  # the directpv.dev rules are left
    store = KubeStore(service_account_client(role), reporting_instance=INSTANCE)
    d = new_drive()
    try:
        with caplog.at_level(logging.WARNING, logger="directpv_csi.store.events"):
            store.put_drive(d)
            assert store.put_drive(replace(d, status=DRIVE_LOST, name="", message="gone")).status == DRIVE_LOST
            assert store.events.flush()
    finally:
        store.close()
    assert (store.events.created, store.events.failed) == (0, 2)
    assert events_about(cluster, uid_of(cluster, DRIVES, d.drive_id)) == []
    (line,) = [r.getMessage() for r in caplog.records if r.name == "directpv_csi.store.events"]
    assert "Forbidden" in line or "forbidden" in line


def read_only_role(*plurals: str) -> Dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "ro"},
            "rules": [{"apiGroups": [GROUP], "resources": list(plurals), "verbs": ["get", "list", "watch"]}]}


def test_an_rbac_refusal_is_permission_denied_naming_verb_and_resource(
        cluster: KubeStoreCluster, service_account_client: Callable[[Dict[str, Any]], Any]) -> None:
    """A real 403 from the API server leaves the store as PermissionDenied (gRPC PERMISSION_DENIED),
    not as a raw ApiException (which the CO saw as INTERNAL)."""
    admin = KubeStore(cluster.new_client(), events=False)
    d = new_drive()
    try:
        admin.put_drive(d)
        store = KubeStore(service_account_client(read_only_role(DRIVES, VOLUMES)), events=False)
        try:
            assert eventually(lambda: store.get_drive(d.drive_id) is not None)  # reads are allowed
            with pytest.raises(PermissionDenied) as created:
                store.put_drive(new_drive())
            assert "create" in created.value.message and f"{DRIVES}.{GROUP}" in created.value.message
            assert "ClusterRole" in created.value.hint
            with pytest.raises(PermissionDenied) as reserved:
                store.reserve_volume(Volume(name="pvc-ro", drive_id=d.drive_id, node="", size=GiB, project_id=0))
            assert "update" in reserved.value.message and f"{DRIVES}/status.{GROUP}" in reserved.value.message
            assert translate(reserved.value)[0] == grpc.StatusCode.PERMISSION_DENIED
        finally:
            store.close()
        assert admin.get_drive(d.drive_id).allocated == 0
    finally:
        admin.close()


def test_a_role_that_cannot_list_volumes_fails_at_start_naming_them(
        cluster: KubeStoreCluster, service_account_client: Callable[[Dict[str, Any]], Any]) -> None:
    api = service_account_client(read_only_role(DRIVES))
    with pytest.raises(PermissionDenied) as refused:
        KubeStore(api, sync_timeout_s=3.0, events=False)
    assert "list" in refused.value.message and f"{VOLUMES}.{GROUP}" in refused.value.message


def test_an_unreachable_api_server_is_unavailable(cluster: KubeStoreCluster) -> None:
    """Connection refused (a real closed port) -> Unavailable (gRPC UNAVAILABLE: the CO retries)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = client.Configuration(host=f"https://127.0.0.1:{port}")
    cfg.retries = 0
    with pytest.raises(Unavailable) as gone, translated("get", f"{DRIVES}.{GROUP}", "d1"):
        client.CustomObjectsApi(client.ApiClient(cfg)).get_cluster_custom_object(GROUP, VERSION, DRIVES, "d1")
    assert "cannot get" in gone.value.message and translate(gone.value)[0] == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("status,kind", [(401, PermissionDenied), (403, PermissionDenied), (404, NotFound),
                                         (409, Conflict), (413, InvalidArgument), (422, InvalidArgument),
                                         (429, Unavailable), (500, Unavailable), (503, Unavailable)])
def test_each_api_status_has_its_domain_error(status: int, kind: type) -> None:
    body = '{"kind": "Status", "message": "said by the server"}'
    exc = client.ApiException(status=status, reason="Reason")
    exc.body = body
    err = api_error(exc, "patch", "directpvnodes.directpv.dev", "n1")
    assert type(err) is kind or (kind is Conflict and isinstance(err, ApiConflict))
    assert "said by the server" in err.message and "directpvnodes.directpv.dev n1" in err.message


def test_recorder_without_an_instance_is_refused() -> None:
    class Nowhere:
        def create(self, namespace: str, body: Dict[str, Any]) -> None:
            raise AssertionError("not called")

        def patch_series(self, namespace: str, name: str, series: Dict[str, Any]) -> None:
            raise AssertionError("not called")

    with pytest.raises(ValueError, match="reporting instance"):
        ev.EventRecorder(Nowhere(), "")
