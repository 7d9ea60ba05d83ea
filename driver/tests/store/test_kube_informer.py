"""The informer's cache with opaque resourceVersions (kube/informer.py), driven directly.

resourceVersions here are deliberately not integers, nor ordered as strings: the cache may only
compare them for equality. The events are what a watch delivers (in order); the writes what the
store applies from the API server's answers. No API server is needed: nothing is listed or
watched (the list/watch loop itself is tested on the real API server in test_kube_store.py)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from directpv_csi.kube.informer import Informer


def obj(name: str, rv: str, node: str = "n1", uid: str = "u1") -> Dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv, "uid": uid}, "spec": {"node": node}}


def informer() -> Informer:
    return Informer(None, "directpvdrives", {"node": lambda o: o["spec"]["node"]})


def rv(inf: Informer, name: str) -> Optional[str]:
    o = inf.get(name)
    return None if o is None else str(o["metadata"]["resourceVersion"])


def test_events_older_than_our_write_are_ignored_until_its_own_event() -> None:
    inf = informer()
    inf._on_list([obj("d1", "zz")], "l1")
    inf.apply(obj("d1", "b7", node="n2"))  # our write's answer
    inf._on_event("MODIFIED", obj("d1", "k3"))  # someone's write before ours: older
    assert rv(inf, "d1") == "b7" and [o["metadata"]["name"] for o in inf.by("node", "n2")] == ["d1"]
    inf._on_event("MODIFIED", obj("d1", "b7", node="n2"))  # ours
    inf._on_event("MODIFIED", obj("d1", "a0", node="n3"))  # after ours: newer, whatever the string says
    assert rv(inf, "d1") == "a0" and inf.by("node", "n2") == [] and len(inf.by("node", "n3")) == 1


def test_a_write_answer_arriving_after_its_event_holds_nothing_back() -> None:
    inf = informer()
    inf._on_event("ADDED", obj("d1", "q1"))
    inf._on_event("MODIFIED", obj("d1", "q2"))  # our write, announced before its answer was applied
    inf._on_event("MODIFIED", obj("d1", "q3"))  # and a later one
    inf.apply(obj("d1", "q2"))  # the late answer must not replace the newer q3
    assert rv(inf, "d1") == "q3"
    inf._on_event("MODIFIED", obj("d1", "q4"))
    assert rv(inf, "d1") == "q4"


def test_a_local_delete_is_not_resurrected_by_late_events() -> None:
    inf = informer()
    inf._on_event("ADDED", obj("v1", "r1", uid="old"))
    inf.forget("v1", "old")  # we deleted it
    inf._on_event("MODIFIED", obj("v1", "r2", uid="old"))  # late: before the delete
    assert inf.get("v1") is None
    inf._on_event("DELETED", obj("v1", "r3", uid="old"))
    inf._on_event("ADDED", obj("v1", "r4", uid="new"))  # created again
    assert rv(inf, "v1") == "r4"


def test_a_delete_announced_before_forget_holds_nothing_back() -> None:
    inf = informer()
    inf._on_event("ADDED", obj("v1", "r1", uid="old"))
    inf._on_event("DELETED", obj("v1", "r2", uid="old"))
    inf.forget("v1", "old")
    inf._on_event("ADDED", obj("v1", "r3", uid="new"))
    assert rv(inf, "v1") == "r3"


def test_a_list_settles_writes_made_before_it_was_sent_but_not_later_ones() -> None:
    inf = informer()
    inf.apply(obj("d1", "w1"))
    inf._on_list_start()
    inf.apply(obj("d2", "w2"))  # answered while the list was in flight
    inf._on_list([obj("d1", "s1"), obj("d2", "s0"), obj("d3", "s2")], "l9")
    assert (rv(inf, "d1"), rv(inf, "d2"), rv(inf, "d3")) == ("s1", "w2", "s2")
    inf._on_event("MODIFIED", obj("d2", "w2"))
    inf._on_event("MODIFIED", obj("d2", "w3"))
    assert rv(inf, "d2") == "w3"


def test_slim_copies_equal_the_object_and_share_what_objects_repeat() -> None:
    """kube/informer.py slim: the cached copy equals the object without managedFields and
    creationTimestamp; empty containers, a node's topology, the finalizer list and parameters are
    one shared object across copies, anything else (labels naming the object, ledgers) is not."""
    from directpv_csi.kube.informer import slim

    def drive(name: str, node: str) -> Dict[str, Any]:
        return {"apiVersion": "directpv.dev/v1beta1", "kind": "DirectPVDrive",
                "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": f"rv-{name}",
                             "creationTimestamp": "2026-12-01T00:00:00Z", "managedFields": [{"manager": "x"}],
                             "finalizers": ["directpv.dev/data-protection"],
                             "labels": {"directpv.dev/node": node, "directpv.dev/drive-name": name}},
                "spec": {"node": node, "schedulable": True, "labels": {}},
                "status": {"topology": {"directpv.dev/node": node}, "total": 1, "volumes": {},
                           "ledger": {"v1": {"size": 1, "parameters": {"fs": "xfs", "n": 1}}},
                           "flags": {"a": True}}}

    a, b, c = drive("d1", "n1"), drive("d2", "n1"), drive("d3", "n2")
    sa, sb, sc = slim(a), slim(b), slim(c)
    for raw, copy in ((a, sa), (b, sb), (c, sc)):
        want = dict(raw, metadata={k: v for k, v in raw["metadata"].items()
                                   if k not in ("managedFields", "creationTimestamp")})
        assert copy == want
    assert sa["status"]["topology"] is sb["status"]["topology"]  # same node: one dict
    assert sa["status"]["topology"] is not sc["status"]["topology"] and sc["status"]["topology"] == {
        "directpv.dev/node": "n2"}
    assert sa["metadata"]["finalizers"] is sc["metadata"]["finalizers"]
    assert sa["spec"]["labels"] is sc["status"]["volumes"]  # every empty dict is the same one
    assert sa["status"]["ledger"]["v1"]["parameters"] is sc["status"]["ledger"]["v1"]["parameters"]
    assert sa["metadata"]["labels"] is not sb["metadata"]["labels"]  # names the drive: its own
    assert sa["status"]["ledger"] is not sb["status"]["ledger"]  # not plain values: never shared
    # values of another type never share a container with equal-comparing ones (1 == True)
    other = slim(dict(a, status=dict(a["status"], topology={"directpv.dev/node": "n1"},
                                      ledger={"v1": {"size": 1, "parameters": {"fs": "xfs", "n": True}}})))
    assert other["status"]["ledger"]["v1"]["parameters"]["n"] is True
