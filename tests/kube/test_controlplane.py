"""Smoke test of the real control plane: namespaces, CRDs, and optimistic concurrency.

The future kube store adapter reserves capacity by optimistic concurrency: it
updates an object carrying the resourceVersion it read, and the API server must
refuse the update (409 Conflict) when someone else wrote in between. This test
proves the control plane the fixture starts really behaves that way.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, cast

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .controlplane import ControlPlane, start

GROUP = "smoke.test.directpv.dev"
VERSION = "v1"
PLURAL = "widgets"

pytestmark = pytest.mark.slow


def _crd() -> Dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"free": {"type": "integer", "minimum": 0}},
                                    "required": ["free"],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def _obj(value: object) -> Dict[str, Any]:
    """CustomObjectsApi returns the decoded JSON object (typed ``object`` by the client)."""
    assert isinstance(value, dict), f"expected a JSON object, got {type(value).__name__}"
    return value


def _wait_established(ext: client.ApiextensionsV1Api, name: str, timeout_s: float = 30.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        crd = ext.read_custom_resource_definition(name)
        for cond in (crd.status and crd.status.conditions) or []:
            if cond.type == "Established" and cond.status == "True":
                return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"CRD {name} not Established after {timeout_s} s")


def test_crd_object_and_stale_resource_version_conflict(kube_control_plane: ControlPlane) -> None:
    api = kube_control_plane.api_client
    core = client.CoreV1Api(api)
    ext = client.ApiextensionsV1Api(api)
    custom = client.CustomObjectsApi(api)

    # the server answers as the version we built
    version = client.VersionApi(api).get_code()
    assert version.major == "1" and version.git_version.startswith("v1.")

    ns = f"smoke-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    status = core.read_namespace(ns).status
    assert status is not None and status.phase == "Active"

    name = f"{PLURAL}.{GROUP}"
    try:
        ext.create_custom_resource_definition(cast(Any, _crd()))  # the client takes dict bodies
    except ApiException as e:  # a rerun in the same session (the CRD is cluster-scoped)
        if e.status != 409:
            raise
    _wait_established(ext, name)

    # the structural schema is enforced by the server
    with pytest.raises(ApiException) as bad:
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            PLURAL,
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": "bad"}, "spec": {"free": -1}},
        )
    assert bad.value.status == 422

    # creation right after Established may race the discovery of the new resource: retry 404 briefly
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"free": 100}}
    deadline = time.monotonic() + 10
    while True:
        try:
            created = _obj(custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body))
            break
        except ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    stale_rv = created["metadata"]["resourceVersion"]

    # a writer that read the object reserves 30: succeeds and bumps resourceVersion
    first = dict(created, spec={"free": 70})
    updated = _obj(custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "w1", first))
    assert updated["spec"]["free"] == 70
    assert updated["metadata"]["resourceVersion"] != stale_rv

    # a second writer still holding the old resourceVersion is refused with 409 Conflict
    stale = dict(created, spec={"free": 40})
    stale["metadata"] = dict(created["metadata"], resourceVersion=stale_rv)
    with pytest.raises(ApiException) as conflict:
        custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "w1", stale)
    assert conflict.value.status == 409
    assert "the object has been modified" in (conflict.value.body or "")

    # ...and nothing of the stale write landed
    current = _obj(custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "w1"))
    assert current["spec"]["free"] == 70
    assert current["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]

    # retrying with the fresh resourceVersion succeeds: the read-modify-write loop the store will use
    retry = dict(current, spec={"free": current["spec"]["free"] - 30})
    final = _obj(custom.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "w1", retry))
    assert final["spec"]["free"] == 40


def test_kubeconfig_admin_is_master_and_rbac_is_on(kube_control_plane: ControlPlane) -> None:
    """The kubeconfig (what kubectl and kubernetes.core use) authenticates as system:masters; RBAC is on."""
    from_file = config.new_client_from_config(config_file=str(kube_control_plane.kubeconfig))  # type: ignore[no-untyped-call]
    authz = client.AuthorizationV1Api(from_file)
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(verb="delete", resource="nodes")
        )
    )
    mine = authz.create_self_subject_access_review(review).status
    assert mine is not None and mine.allowed is True

    nobody = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user="system:anonymous",
            groups=["system:unauthenticated"],
            resource_attributes=client.V1ResourceAttributes(verb="delete", resource="nodes"),
        )
    )
    theirs = authz.create_subject_access_review(nobody).status
    assert theirs is not None and theirs.allowed is False


def test_children_start_safely_from_a_process_with_live_grpc_channels(tmp_path: Path) -> None:
    """start() must not fork() (a preexec_fn would make Python fork instead of vfork): with gRPC
    calls in flight in this process, a forked child can abort before exec (grpcio >= 1.80,
    grpc/grpc#43055; about 2 in 100 children did with the preexec_fn this harness used to pass)."""
    from concurrent import futures

    import grpc
    from directpv_csi.csi.identity import IdentityServicer
    from directpv_csi.csi.proto import csi_pb2 as pb
    from directpv_csi.csi.proto import csi_pb2_grpc as pbg

    server = grpc.server(futures.ThreadPoolExecutor(2))
    pbg.add_IdentityServicer_to_server(IdentityServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stop = threading.Event()

    def calls() -> None:
        stub = pbg.IdentityStub(channel)
        while not stop.is_set():
            stub.Probe(pb.ProbeRequest(), timeout=5)

    caller = threading.Thread(target=calls, daemon=True)
    caller.start()
    try:
        codes = []
        for i in range(150):
            proc = start(f"true-{i}", ["/bin/true"], tmp_path)
            codes.append(proc.popen.wait(30))
            proc.stop()
        assert codes == [0] * 150
        assert all(p.stat().st_size == 0 for p in tmp_path.glob("true-*.log"))  # nothing logged by a dying child
    finally:
        stop.set()
        caller.join(10)
        channel.close()
        server.stop(None)
