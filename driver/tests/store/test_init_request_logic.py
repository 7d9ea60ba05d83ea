"""kube/nodes.pending_devices / merged_status: which devices of a DirectPVInitRequest a node
still has to handle, and the request's status once results come in (pure dict logic)."""

from __future__ import annotations

from typing import Any, Dict, List

from directpv_csi.kube.nodes import merged_status, pending_devices


def request(devices: List[Dict[str, str]], results: Any = None) -> Dict[str, Any]:
    obj: Dict[str, Any] = {"metadata": {"name": "r1"}, "spec": {"devices": devices}}
    if results is not None:
        obj["status"] = {"results": results}
    return obj


def res(node: str, name: str, status: str) -> Dict[str, str]:
    return {"node": node, "name": name, "status": status, "driveID": "", "message": ""}


def test_pending_are_this_nodes_devices_without_a_result_each_once() -> None:
    obj = request([{"node": "n1", "name": "sda", "id": "t1"}, {"node": "n2", "name": "sda", "id": "t2"},
                   {"node": "n1", "name": "sdb", "id": "t3"}, {"node": "n1", "name": "sda", "id": "t1"}],
                  [res("n1", "sdb", "Error")])
    assert [d["name"] for d in pending_devices(obj, "n1")] == ["sda"]
    assert [d["name"] for d in pending_devices(obj, "n2")] == ["sda"]
    assert pending_devices(obj, "n3") == []
    # a Pending row (someone wrote it by hand, or an old version) does not count as done
    assert [d["name"] for d in pending_devices(request(obj["spec"]["devices"], [res("n1", "sda", "Pending")]),
                                               "n1")] == ["sda", "sdb"]


def test_status_is_pending_until_every_device_has_a_result_then_error_if_one_failed() -> None:
    obj = request([{"node": "n1", "name": "sda"}, {"node": "n2", "name": "sdb"}])
    first = merged_status(obj, [res("n1", "sda", "Success")])
    assert first["status"] == "Pending" and first["requested"] == 2 and len(first["results"]) == 1
    obj["status"] = first
    second = merged_status(obj, [res("n2", "sdb", "Error")])
    assert second["status"] == "Error"
    assert [(r["node"], r["status"]) for r in second["results"]] == [("n1", "Success"), ("n2", "Error")]
    obj["status"] = second
    redone = merged_status(obj, [res("n2", "sdb", "Planned")])  # a newer result replaces the old one
    assert redone["status"] == "Processed" and len(redone["results"]) == 2
