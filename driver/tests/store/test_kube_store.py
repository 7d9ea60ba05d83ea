"""The kube store adapter beyond the shared contract, on the real kube-apiserver (tests/kube):
the CRDs as the API server serves them, real 409 conflicts between several store replicas,
the watch-backed cache, and recovery from a crash between the two writes of a reservation."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.request
from typing import Any, Dict, Iterator, List, cast

import pytest
from directpv_csi.core.errors import Conflict, FailedPrecondition, InvalidArgument
from directpv_csi.core.models import Drive, Volume
from directpv_csi.kube.informer import Informer
from directpv_csi.kube.store import DRIVES, FINALIZER, GROUP, VERSION, VOLUMES, KubeStore, object_name
from kube.cluster import KubeStoreCluster
from kubernetes import client

from testsupport import eventually

GiB = 1024**3

pytestmark = pytest.mark.slow


@pytest.fixture(name="cluster")
def cluster_fixture(kube_store_cluster: KubeStoreCluster) -> KubeStoreCluster:
    kube_store_cluster.wipe()
    return kube_store_cluster


@pytest.fixture(name="store")
def store_fixture(cluster: KubeStoreCluster) -> Iterator[KubeStore]:
    s = KubeStore(cluster.api_client)
    yield s
    s.close()


def raw_get(cluster: KubeStoreCluster, path: str, accept: str = "application/json") -> str:
    """GET ``path`` as the admin, with the Accept header kubectl would send."""
    cp = cluster.control_plane
    ctx = ssl.create_default_context(cafile=str(cp.pki.ca_cert))
    ctx.load_cert_chain(str(cp.pki.admin_cert), str(cp.pki.admin_key))
    req = urllib.request.Request(cp.url + path, headers={"Accept": accept})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def conflicts_served(cluster: KubeStoreCluster) -> int:
    """409 answers the API server has given so far (its own /metrics counter)."""
    text = raw_get(cluster, "/metrics", "text/plain")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'code="409"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_crds_served_with_short_names_and_status_subresource(cluster: KubeStoreCluster) -> None:
    assert sorted(cluster.crds) == sorted(f"{p}.{GROUP}" for p in (
        "directpvdrives", "directpvvolumes", "directpvnodes", "directpvinitrequests"))
    res = client.CustomObjectsApi(cluster.api_client).get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in res.resources}
    for plural, short in (("directpvdrives", "dpvd"), ("directpvvolumes", "dpvv"), ("directpvnodes", "dpvn"),
                          ("directpvinitrequests", "dpvi")):
        assert by_name[plural].namespaced is False
        assert by_name[plural].short_names == [short]
        assert f"{plural}/status" in by_name


def test_printer_columns_show_node_drive_size_allocation(store: KubeStore, cluster: KubeStoreCluster) -> None:
    store.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=10 * GiB))
    store.reserve_volume(Volume(name="v1", drive_id="d1", node="", size=3 * GiB, project_id=0))
    # what `kubectl get dpvd` asks for: the server-side Table built from additionalPrinterColumns
    data = json.loads(raw_get(cluster, f"/apis/{GROUP}/{VERSION}/{DRIVES}",
                              "application/json;as=Table;v=v1;g=meta.k8s.io"))
    cols = [c["name"] for c in data["columnDefinitions"]]
    row = dict(zip(cols, data["rows"][0]["cells"]))
    assert (row["Name"], row["Node"], row["Drive"], row["Size"], row["Allocated"], row["Volumes"], row["Status"]) == \
        ("d1", "n1", "sdb", 10 * GiB, 3 * GiB, 1, "Ready")
    # label selectors work as documented (kubectl get dpvv -l directpv.dev/node=n1)
    lst = cast(Dict[str, Any], client.CustomObjectsApi(cluster.api_client).list_cluster_custom_object(
        GROUP, VERSION, VOLUMES, label_selector="directpv.dev/node=n1,directpv.dev/drive=d1"))
    assert [o["metadata"]["name"] for o in lst["items"]] == ["v1"]


def test_schema_rejects_bad_objects(cluster: KubeStoreCluster) -> None:
    api = client.CustomObjectsApi(cluster.api_client)
    with pytest.raises(client.ApiException) as e:
        api.create_cluster_custom_object(GROUP, VERSION, VOLUMES, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "DirectPVVolume", "metadata": {"name": "bad"},
            "spec": {"driveID": "d1", "node": "n1", "size": -1, "projectID": 1}})
    assert e.value.status == 422 and "spec.size" in str(e.value.body)


def test_writes_of_one_replica_reach_the_other_through_the_watch(cluster: KubeStoreCluster) -> None:
    a = KubeStore(cluster.new_client())
    b = KubeStore(cluster.new_client())
    try:
        a.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=10 * GiB))
        a.reserve_volume(Volume(name="v1", drive_id="d1", node="", size=GiB, project_id=0))
        assert eventually(lambda: b.get_volume("v1") is not None and b.get_drive("d1") is not None
                          and b.get_drive("d1").allocated == GiB)
        assert [d.drive_id for d in b.list_drives("n1")] == ["d1"]
        a.delete_volume("v1")
        assert eventually(lambda: b.get_volume("v1") is None and b.get_drive("d1").allocated == 0)
        # b's cache is stale-proof for writes: its reservation is checked against the server's version
        b.update_drive("d1", schedulable=False)
        assert eventually(lambda: a.get_drive("d1").schedulable is False)
        with pytest.raises(Conflict):
            a.reserve_volume(Volume(name="v2", drive_id="d1", node="", size=GiB, project_id=0))
    finally:
        a.close()
        b.close()


def test_many_replicas_never_overcommit_under_real_conflicts(cluster: KubeStoreCluster) -> None:
    """80 CreateVolume-like calls through 4 store replicas (own clients, own caches) onto 3 drives
    of 5 GiB: each call tries the drives in turn, as the controller does on Conflict."""
    stores = [KubeStore(cluster.new_client()) for _ in range(4)]
    drives = ["d1", "d2", "d3"]
    try:
        for i, d in enumerate(drives):
            stores[0].put_drive(Drive(drive_id=d, node=f"n{i}", name="sdb", total=5 * GiB))
        for s in stores:
            assert eventually(lambda s=s: len(s.list_drives()) == 3)  # type: ignore[misc]
        before = conflicts_served(cluster)
        ok: Dict[str, str] = {}
        refused: List[str] = []
        errors: List[BaseException] = []
        lock = threading.Lock()
        start = threading.Barrier(80)

        def worker(i: int) -> None:
            s = stores[i % len(stores)]
            name = f"v{i:03d}"
            start.wait()
            try:
                for k in range(len(drives)):
                    d = drives[(i + k) % len(drives)]
                    try:
                        s.reserve_volume(Volume(name=name, drive_id=d, node="", size=GiB, project_id=0))
                    except Conflict:
                        continue
                    with lock:
                        ok[name] = d
                    return
                with lock:
                    refused.append(name)
            except BaseException as e:
                with lock:
                    errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(80)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(ok) == 15 and len(refused) == 65  # exactly the capacity: never more, never less
        served = conflicts_served(cluster) - before
        assert served > 0, "no 409 was served: the test did not exercise optimistic concurrency"

        fresh = KubeStore(cluster.new_client())  # a replica that starts now sees the server's truth
        try:
            assert fresh.check() == []
            for d in drives:
                drive = fresh.get_drive(d)
                assert drive is not None and drive.allocated == 5 * GiB and drive.volume_count == 5
                vols = fresh.list_volumes(drive_id=d)
                assert sorted(v.name for v in vols) == sorted(n for n, dd in ok.items() if dd == d)
                assert sorted(v.project_id for v in vols) == [1, 2, 3, 4, 5]
        finally:
            fresh.close()
        print(f"80 reservations through 4 replicas: 15 granted, 65 refused, {served} conflicts (409) served")
    finally:
        for s in stores:
            s.close()


def _ledger_record(cluster: KubeStoreCluster, drive_id: str, name: str, size: int, pid: int,
                   reserved_at: float) -> None:
    """What step 1 of reserve_volume leaves behind when the process dies before step 2."""
    api = client.CustomObjectsApi(cluster.api_client)
    obj: Dict[str, Any] = api.get_cluster_custom_object(GROUP, VERSION, DRIVES, drive_id)  # type: ignore[assignment]
    obj["status"]["volumes"][name] = {"size": size, "projectID": pid, "reservedAt": reserved_at, "parameters": {}}
    obj["status"]["allocated"] += size
    obj["status"]["volumeCount"] += 1
    api.replace_cluster_custom_object_status(GROUP, VERSION, DRIVES, drive_id, obj)


def test_crash_between_ledger_and_volume_object(store: KubeStore, cluster: KubeStoreCluster) -> None:
    store.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=4 * GiB))
    store.reserve_volume(Volume(name="v1", drive_id="d1", node="", size=GiB, project_id=0))
    _ledger_record(cluster, "d1", "v2", GiB, 2, time.time())
    _ledger_record(cluster, "d1", "old", GiB, 3, time.time() - 3600)
    assert eventually(lambda: store.get_drive("d1").allocated == 3 * GiB)
    problems = store.check()
    assert len(problems) == 2 and all("no volume object" in p for p in problems)
    # the capacity is held: no over-commit while the records are orphans
    with pytest.raises(Conflict):
        store.reserve_volume(Volume(name="big", drive_id="d1", node="", size=2 * GiB, project_id=0))
    # the retried request completes with its recorded project id, reserving nothing twice
    v2 = store.reserve_volume(Volume(name="v2", drive_id="d1", node="", size=GiB, project_id=0))
    assert v2.project_id == 2 and store.get_drive("d1").allocated == 3 * GiB
    # reconcile releases only records past the grace period (a young one may be a reservation in flight)
    assert store.reconcile(grace_s=600) == ["old"]
    assert eventually(lambda: store.get_drive("d1").allocated == 2 * GiB)
    assert store.check() == []


def test_expand_completes_after_crash_without_reserving_twice(store: KubeStore, cluster: KubeStoreCluster) -> None:
    store.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=4 * GiB))
    store.reserve_volume(Volume(name="v1", drive_id="d1", node="", size=GiB, project_id=0))
    api = client.CustomObjectsApi(cluster.api_client)
    obj: Dict[str, Any] = api.get_cluster_custom_object(GROUP, VERSION, DRIVES, "d1")  # type: ignore[assignment]
    obj["status"]["volumes"]["v1"]["size"] = 2 * GiB  # step 1 of expand done, then a crash
    obj["status"]["allocated"] = 2 * GiB
    api.replace_cluster_custom_object_status(GROUP, VERSION, DRIVES, "d1", obj)
    assert store.expand_volume("v1", 2 * GiB).size == 2 * GiB
    assert store.get_drive("d1").allocated == 2 * GiB
    assert store.check() == []


def test_finalizers_protect_recorded_data(store: KubeStore, cluster: KubeStoreCluster) -> None:
    store.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=4 * GiB))
    store.reserve_volume(Volume(name="v1", drive_id="d1", node="", size=GiB, project_id=0))
    api = client.CustomObjectsApi(cluster.api_client)
    api.delete_cluster_custom_object(GROUP, VERSION, VOLUMES, "v1")  # a stray `kubectl delete dpvv v1`
    api.delete_cluster_custom_object(GROUP, VERSION, DRIVES, "d1")
    for plural, name in ((VOLUMES, "v1"), (DRIVES, "d1")):
        obj = cast(Dict[str, Any], api.get_cluster_custom_object(GROUP, VERSION, plural, name))
        assert obj["metadata"]["deletionTimestamp"] and obj["metadata"]["finalizers"] == [FINALIZER]
    assert store.get_volume("v1") is not None and store.get_drive("d1").allocated == GiB
    with pytest.raises(FailedPrecondition):
        store.delete_drive("d1")
    assert store.delete_volume("v1") is not None
    store.delete_drive("d1")
    for plural, name in ((VOLUMES, "v1"), (DRIVES, "d1")):
        with pytest.raises(client.ApiException) as e:
            api.get_cluster_custom_object(GROUP, VERSION, plural, name)
        assert e.value.status == 404


def test_expired_watch_is_detected_and_relisted(store: KubeStore, cluster: KubeStoreCluster) -> None:
    """A watch from a resourceVersion the server no longer holds gets 410 Gone: the informer
    answers None (list again), and a LIST then brings the cache up to date."""
    store.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=4 * GiB))
    informer = Informer(client.CustomObjectsApi(cluster.api_client), DRIVES, {"node": lambda o: o["spec"]["node"]})
    assert informer.watch_from("1", timeout_s=5) is None
    assert informer.items == {} and informer.relists == 0
    informer._list()
    assert list(informer.items) == ["d1"] and informer.relists == 1


def test_from_kubeconfig_and_ping(cluster: KubeStoreCluster) -> None:
    s = KubeStore.from_kubeconfig(str(cluster.control_plane.kubeconfig))
    try:
        assert s.ping() is True
        s.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=GiB))
        assert [d.drive_id for d in s.list_drives("n1")] == ["d1"]
    finally:
        s.close()
    assert s.ping() is False


def test_values_the_schema_refuses_are_invalid_arguments(store: KubeStore) -> None:
    store.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=GiB))
    with pytest.raises(InvalidArgument, match="accessTier"):
        store.update_drive("d1", access_tier="Lukewarm")
    with pytest.raises(InvalidArgument):
        store.put_drive(Drive(drive_id="Upper_Case", node="n1", name="sdb", total=GiB))
    assert store.get_drive("d1").access_tier == "Default"
    assert [d.drive_id for d in store.list_drives()] == ["d1"]


def test_csi_names_that_are_not_object_names_round_trip(store: KubeStore, cluster: KubeStoreCluster) -> None:
    """CSI volume names are arbitrary strings (csi-sanity uses upper case); the object name is derived."""
    store.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=4 * GiB))
    name = "Sanity-Volume_01:ABC"
    vol = store.reserve_volume(Volume(name=name, drive_id="d1", node="n1", size=GiB, project_id=0))
    assert vol.name == name
    assert store.reserve_volume(Volume(name=name, drive_id="d1", node="n1", size=GiB, project_id=0)) == vol
    obj = object_name(name)
    assert obj != name and obj.startswith("v-")
    raw = cast(Dict[str, Any],
               client.CustomObjectsApi(cluster.api_client).get_cluster_custom_object(GROUP, VERSION, VOLUMES, obj))
    assert raw["spec"]["name"] == name
    got = store.get_volume(name)
    assert got is not None and got.name == name
    assert [v.name for v in store.list_volumes(drive_id="d1")] == [name]
    assert store.update_volume(name, status="Ready").status == "Ready"
    assert store.delete_volume(name) is not None and store.get_volume(name) is None
    assert store.check() == []
    assert object_name("pvc-0a1b") == "pvc-0a1b", "valid names (external-provisioner's) are kept as they are"


def test_a_lagging_replica_confirms_a_miss_before_deleting_or_answering_not_found(cluster: KubeStoreCluster) -> None:
    """Replica b's volume watch stops (a watch that lags behind): a's new volume is not in b's cache.
    b's DeleteVolume must still delete it (an OK for a live volume would leak it and its space when
    csi-provisioner then deletes the PV), and b's expansion must find it."""
    from directpv_csi.csi.controller import ControllerServicer
    from directpv_csi.csi.proto import csi_pb2 as pb

    a = KubeStore(cluster.new_client())
    b = KubeStore(cluster.new_client())
    try:
        a.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=10 * GiB))
        assert eventually(lambda: b.get_drive("d1") is not None)
        b._volumes.stop()  # from here on b's volume cache hears nothing
        a.reserve_volume(Volume(name="v1", drive_id="d1", node="", size=GiB, project_id=0))
        a.reserve_volume(Volume(name="v2", drive_id="d1", node="", size=GiB, project_id=0))
        time.sleep(0.5)
        assert b.get_volume("v1") is None  # the lag this test is about
        assert b.read_volume("v1") is not None and b.read_volume("v1").size == GiB
        assert b.read_volume("nope") is None
        ctrl = ControllerServicer(b)
        grown = ctrl.ControllerExpandVolume(pb.ControllerExpandVolumeRequest(
            volume_id="v2", capacity_range=pb.CapacityRange(required_bytes=2 * GiB)), None)
        assert grown.capacity_bytes == 2 * GiB
        ctrl.DeleteVolume(pb.DeleteVolumeRequest(volume_id="v1"), None)
        assert a._get(VOLUMES, "v1") is None
        assert eventually(lambda: a.get_drive("d1").allocated == 2 * GiB)
    finally:
        a.close()
        b.close()


def test_names_with_a_trailing_newline_are_not_object_names(store: KubeStore) -> None:
    """``re.match`` with ``$`` accepts "d1\\n": names are matched whole (fullmatch)."""
    with pytest.raises(InvalidArgument):
        store.put_drive(Drive(drive_id="d1\n", node="n1", name="sdb", total=10 * GiB))
    assert object_name("pvc-1\n").startswith("v-") and object_name("pvc-1") == "pvc-1"
    store.put_drive(Drive(drive_id="d1", node="n1", name="sdb\n", total=10 * GiB))
    labels = cast(Dict[str, Any], client.CustomObjectsApi(store.api_client).get_cluster_custom_object(
        GROUP, VERSION, DRIVES, "d1"))["metadata"]["labels"]
    assert "directpv.dev/drive-name" not in labels  # not a label value: left out, not refused


def test_a_node_store_receives_only_its_own_nodes_changes(cluster: KubeStoreCluster) -> None:
    """A node plugin's store (``node=``) lists and watches its node's drives and volumes only: another
    node's changes are never sent to it (counted on its watch streams), and it caches none of them."""
    admin = KubeStore(cluster.new_client(), events=False)
    node = KubeStore(cluster.new_client(), events=False, node="n1")
    try:
        for drive_id, host in (("d1", "n1"), ("d2", "n2")):
            admin.put_drive(Drive(drive_id=drive_id, node=host, name="sdb", total=10 * GiB))
            admin.reserve_volume(Volume(name=f"v-{host}", drive_id=drive_id, node="", size=GiB, project_id=0))
        assert eventually(lambda: node.get_volume("v-n1") is not None)
        assert [d.drive_id for d in node.list_drives()] == ["d1"]
        assert [v.name for v in node.list_volumes()] == ["v-n1"]
        assert node.nodes() == ["n1"]
        received = node._drives.received + node._volumes.received
        admin_received = admin._drives.received + admin._volumes.received
        for i in range(3):  # another node's drive and volume change, and its volume goes
            admin.update_drive("d2", labels={"round": str(i)})
            admin.update_volume("v-n2", labels={"round": str(i)})
        admin.delete_volume("v-n2")
        # then one change to each of n1's objects: once both arrived, anything sent before them has too
        admin.update_drive("d1", labels={"round": "x"})
        admin.update_volume("v-n1", labels={"round": "x"})
        assert eventually(lambda: node.get_drive("d1").labels == {"round": "x"}
                          and node.get_volume("v-n1").labels == {"round": "x"})
        assert node._drives.received + node._volumes.received - received == 2
        assert eventually(lambda: admin._drives.received + admin._volumes.received - admin_received >= 10)
        # another node's drive is still found (the registry asks about clones and moved disks): one
        # GET, not cached, since no watch would keep it fresh
        other = node.get_drive("d2")
        assert other is not None and other.node == "n2" and node._drives.get("d2") is None
        assert node.read_volume("v-n2") is None and node.get_volume("v-n1") is not None
    finally:
        node.close()
        admin.close()


def test_connection_pool_sized_to_the_callers(cluster: KubeStoreCluster) -> None:
    """The client's default pool is 5 per CPU (10 here), fewer than the 16 gRPC workers: the store
    built for a server holds as many connections as threads call it, on every pool it uses."""
    s = KubeStore.from_kubeconfig(str(cluster.control_plane.kubeconfig), pool_size=20, events=False)
    try:
        for api in (s.api_client, s._watch_client, s._event_sink.client):
            assert api.rest_client.pool_manager.connection_pool_kw["maxsize"] == 20
        s.put_drive(Drive(drive_id="d1", node="n1", name="sdb", total=GiB))
        errors: List[BaseException] = []

        def reserve(i: int) -> None:
            try:
                s.reserve_volume(Volume(name=f"v{i}", drive_id="d1", node="", size=1024, project_id=0))
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=reserve, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(s.list_volumes(drive_id="d1")) == 20
        pools = list(s.api_client.rest_client.pool_manager.pools._container.values())
        assert pools and all(p.num_connections <= 20 for p in pools)
    finally:
        s.close()


def test_lists_come_in_pages_and_the_cache_keeps_slim_copies(cluster: KubeStoreCluster,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 2 (kube/watch.py LIST_PAGE): a new store still lists all 5 drives of one snapshot,
    and caches them without managedFields or creationTimestamp (kube/informer.py slim)."""
    from directpv_csi.kube import watch

    admin = KubeStore(cluster.new_client(), events=False)
    try:
        for i in range(5):
            admin.put_drive(Drive(drive_id=f"p{i}", node=f"n{i % 2}", name="sdb", total=10 * GiB))
    finally:
        admin.close()
    monkeypatch.setattr(watch, "LIST_PAGE", 2)
    s = KubeStore(cluster.new_client(), events=False)
    try:
        assert sorted(d.drive_id for d in s.list_drives()) == [f"p{i}" for i in range(5)]
        assert s._drives.relists == 1
        cached = s._drives.get("p0")
        assert cached is not None and "creationTimestamp" not in cached["metadata"]
        assert "managedFields" not in cached["metadata"] and cached["metadata"]["uid"]
        assert s.update_drive("p0", schedulable=False).schedulable is False  # a write from a slim copy
        got = client.CustomObjectsApi(cluster.api_client).get_cluster_custom_object(GROUP, VERSION, DRIVES, "p0")
        assert cast(Dict[str, Any], got)["metadata"]["creationTimestamp"]  # the server kept it
    finally:
        s.close()
