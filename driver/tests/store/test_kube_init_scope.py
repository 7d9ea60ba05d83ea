"""DirectPVInitRequests are node-scoped (kube/nodes.py), on the real kube-apiserver (tests/kube).

Two in-process watchers (nodes n1 and n2, a recording handler instead of a format: the format
itself is tested with a real node process in tests/kube/test_init_request.py) see requests made
with ``init_request_body``: a request labelled for n1 never reaches n2's watches (no event at
all), an unlabelled one (made before the label, or naming both nodes) is still served by each
node for its own devices."""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from directpv_csi.kube.nodes import INIT_REQUESTS, InitRequestWatcher, init_request_body
from directpv_csi.kube.objects import GROUP, LABEL_NODE, VERSION
from kube.cluster import KubeStoreCluster
from kubernetes import client

from testsupport import eventually

pytestmark = pytest.mark.slow


@pytest.fixture(name="watchers")
def watchers_fixture(kube_store_cluster: KubeStoreCluster) -> Iterator[Tuple[Any, Dict[str, List[str]],
                                                                            Dict[str, InitRequestWatcher]]]:
    api: Any = client.CustomObjectsApi(kube_store_cluster.api_client)  # untyped dict answers
    for obj in api.list_cluster_custom_object(GROUP, VERSION, INIT_REQUESTS)["items"]:
        api.delete_cluster_custom_object(GROUP, VERSION, INIT_REQUESTS, obj["metadata"]["name"])
    seen: Dict[str, List[str]] = {"n1": [], "n2": []}
    out: Dict[str, InitRequestWatcher] = {}
    for node in seen:
        def handle(req: Dict[str, Any], entry: Dict[str, Any], node: str = node) -> Dict[str, Any]:
            seen[node].append(f"{req['metadata']['name']}/{entry['name']}")
            return {"node": node, "name": entry["name"], "status": "Planned", "driveID": "", "message": "planned"}

        out[node] = InitRequestWatcher(kube_store_cluster.new_client(), node, handle)
        out[node].start()
    yield api, seen, out
    for w in out.values():
        w.stop()


def test_requests_reach_only_the_nodes_they_name(watchers: Tuple[Any, Dict[str, List[str]],
                                                                 Dict[str, InitRequestWatcher]]) -> None:
    api, seen, w = watchers
    assert w["n1"].selectors == ["directpv.dev/node=n1", "!directpv.dev/node"]
    time.sleep(1.0)  # both watches listed
    base = {n: x.received for n, x in w.items()}
    tag = uuid.uuid4().hex[:6]
    mine = init_request_body(f"one-{tag}", [{"node": "n1", "name": "sdb", "id": "t1"},
                                            {"node": "n1", "name": "sdc", "id": "t2"}], dry_run=True)
    assert mine["metadata"]["labels"] == {LABEL_NODE: "n1"}
    api.create_cluster_custom_object(GROUP, VERSION, INIT_REQUESTS, mine)
    assert eventually(lambda: len(seen["n1"]) == 2, 20), seen
    # n1: its ADDED plus the MODIFIED of its two results; n2 heard nothing of it
    assert eventually(lambda: w["n1"].received - base["n1"] >= 3, 10)
    assert w["n2"].received == base["n2"] and seen["n2"] == []

    both = init_request_body(f"both-{tag}", [{"node": "n1", "name": "sdd", "id": "t3"},
                                             {"node": "n2", "name": "sde", "id": "t4"}])
    assert "labels" not in both["metadata"]  # several nodes: unlabelled, every node's second watch
    old = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DirectPVInitRequest", "metadata": {"name": f"old-{tag}"},
           "spec": {"devices": [{"node": "n2", "name": "sdf", "id": "t5"}], "dryRun": True}}  # before the label
    api.create_cluster_custom_object(GROUP, VERSION, INIT_REQUESTS, both)
    api.create_cluster_custom_object(GROUP, VERSION, INIT_REQUESTS, old)
    assert eventually(lambda: sorted(seen["n2"]) == [f"both-{tag}/sde", f"old-{tag}/sdf"], 20), seen
    assert eventually(lambda: len(seen["n1"]) == 3, 20), seen
    assert sorted(seen["n1"]) == [f"both-{tag}/sdd", f"one-{tag}/sdb", f"one-{tag}/sdc"]
    got = api.get_cluster_custom_object(GROUP, VERSION, INIT_REQUESTS, f"both-{tag}")
    assert eventually(lambda: (api.get_cluster_custom_object(GROUP, VERSION, INIT_REQUESTS, f"both-{tag}")
                               .get("status") or {}).get("status") == "Processed", 10), got


def test_a_node_name_that_is_no_label_value_watches_every_request(kube_store_cluster: KubeStoreCluster) -> None:
    w = InitRequestWatcher(kube_store_cluster.new_client(), "n" * 64, lambda req, entry: {})
    assert w.selectors == [""]
    assert "labels" not in init_request_body("x", [{"node": "n" * 64, "name": "sdb", "id": "t"}])["metadata"]
