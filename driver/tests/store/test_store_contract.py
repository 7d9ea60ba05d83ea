"""The Store port's contract (store/base.py), run against every adapter in store_adapters.ADAPTERS
(the `adapter`/`store` fixtures come from driver/tests/store/conftest.py)."""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Tuple

import pytest
from directpv_csi.core.errors import AlreadyExists, Conflict, FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from directpv_csi.core.models import DRIVE_LOST, DRIVE_READY, VOLUME_READY, Drive, Tombstone, Volume

GiB = 1024**3


def drive(drive_id: str = "d1", node: str = "n1", total: int = 10 * GiB, **kw: Any) -> Drive:
    kw.setdefault("name", "loop" + drive_id)
    return Drive(drive_id=drive_id, node=node, total=total, **kw)


def vol(name: str, drive_id: str = "d1", size: int = GiB, **kw: Any) -> Volume:
    return Volume(name=name, drive_id=drive_id, node="", size=size, project_id=0, **kw)


# --- drives ---------------------------------------------------------------------


def test_put_get_list_drives_by_node(store: Any) -> None:
    store.put_drive(drive("d1", "n1"))
    store.put_drive(drive("d2", "n1"))
    store.put_drive(drive("d3", "n2"))
    assert store.get_drive("d1").node == "n1"
    assert store.get_drive("nope") is None
    assert sorted(d.drive_id for d in store.list_drives("n1")) == ["d1", "d2"]
    assert [d.drive_id for d in store.list_drives("n2")] == ["d3"]
    assert store.list_drives("n9") == []
    assert sorted(d.drive_id for d in store.list_drives()) == ["d1", "d2", "d3"]
    assert list(store.nodes()) == ["n1", "n2"]


def test_cordoned_drive_refuses_reservations(store: Any) -> None:
    store.put_drive(drive("d1"))
    store.update_drive("d1", schedulable=False)
    store.put_drive(drive("d1", name="sdq"))  # a node re-registering keeps the cordon
    assert store.get_drive("d1").schedulable is False
    with pytest.raises(Conflict):
        store.reserve_volume(vol("v1"))
    assert store.get_volume("v1") is None and store.get_drive("d1").allocated == 0


def test_put_drive_updates_node_fields_only(store: Any) -> None:
    store.put_drive(drive("d1"))
    store.update_drive("d1", access_tier="Hot", labels={"zone": "a"})
    v = store.reserve_volume(vol("v1", size=GiB))
    assert v.project_id == 1
    again = store.put_drive(drive("d1", total=20 * GiB, name="sdz", status=DRIVE_LOST, message="gone"))
    assert (again.total, again.name, again.status, again.message) == (20 * GiB, "sdz", DRIVE_LOST, "gone")
    assert (again.access_tier, again.labels, again.allocated, again.volume_count) == ("Hot", {"zone": "a"}, GiB, 1)


def test_put_drive_moves_between_nodes_in_index(store: Any) -> None:
    store.put_drive(drive("d1", "n1"))
    store.put_drive(drive("d1", "n2"))
    assert store.list_drives("n1") == []
    assert [d.drive_id for d in store.list_drives("n2")] == ["d1"]
    assert list(store.nodes()) == ["n2"]


def test_put_drive_rejects_bad_input(store: Any) -> None:
    with pytest.raises(InvalidArgument):
        store.put_drive(drive("", "n1"))
    with pytest.raises(InvalidArgument):
        store.put_drive(drive("d1", status="Bogus"))
    assert store.list_drives() == []


def test_update_drive_generation_and_errors(store: Any) -> None:
    d = store.put_drive(drive("d1"))
    d2 = store.update_drive("d1", expected_generation=d.generation, schedulable=False)
    assert d2.generation > d.generation and not d2.schedulable
    with pytest.raises(Conflict):
        store.update_drive("d1", expected_generation=d.generation, schedulable=True)
    with pytest.raises(NotFound):
        store.update_drive("nope", schedulable=True)
    with pytest.raises(InvalidArgument):
        store.update_drive("d1", total=1)
    with pytest.raises(InvalidArgument):
        store.update_drive("d1", status="Bogus")
    assert store.get_drive("d1").total == 10 * GiB


def test_delete_drive_refused_with_volumes(store: Any) -> None:
    store.put_drive(drive("d1"))
    store.reserve_volume(vol("v1"))
    with pytest.raises(FailedPrecondition):
        store.delete_drive("d1")
    store.delete_volume("v1")
    store.delete_drive("d1")
    assert store.get_drive("d1") is None and store.list_drives("n1") == []
    store.delete_drive("d1")  # missing: no-op


# --- volumes --------------------------------------------------------------------


def test_reserve_assigns_smallest_unused_project_id(store: Any) -> None:
    store.put_drive(drive("d1"))
    store.put_drive(drive("d2"))
    ids = [store.reserve_volume(vol(f"v{i}")).project_id for i in range(3)]
    assert ids == [1, 2, 3]
    assert store.reserve_volume(vol("w1", drive_id="d2")).project_id == 1  # per drive
    gone = store.delete_volume("v0")
    # the tombstone holds project id 1 until its node cleared it: never two volumes on one project
    assert store.reserve_volume(vol("v9")).project_id == 4
    assert store.clear_tombstone("d1", "v0", gone.uid)
    assert store.reserve_volume(vol("v10")).project_id == 1
    d = store.get_drive("d1")
    assert (d.allocated, d.volume_count) == (4 * GiB, 4)


def test_reserve_is_idempotent_by_name(store: Any) -> None:
    store.put_drive(drive("d1"))
    a = store.reserve_volume(vol("v1", parameters={"k": "v"}))
    b = store.reserve_volume(vol("v1", parameters={"k": "v"}))
    assert a == b
    assert store.get_drive("d1").allocated == GiB
    with pytest.raises(AlreadyExists):
        store.reserve_volume(vol("v1", size=2 * GiB, parameters={"k": "v"}))
    with pytest.raises(AlreadyExists):
        store.reserve_volume(vol("v1", parameters={"k": "other"}))
    assert store.get_drive("d1").allocated == GiB


def test_reserve_refuses_without_room_or_when_not_ready(store: Any) -> None:
    store.put_drive(drive("d1", total=2 * GiB))
    store.reserve_volume(vol("v1", size=2 * GiB))
    with pytest.raises(Conflict):
        store.reserve_volume(vol("v2", size=1))
    store.put_drive(drive("d2", status=DRIVE_LOST))
    with pytest.raises(Conflict):
        store.reserve_volume(vol("v3", drive_id="d2"))
    store.put_drive(drive("d3"))
    g = store.get_drive("d3").generation
    store.update_drive("d3", labels={"a": "b"})
    with pytest.raises(Conflict):
        store.reserve_volume(vol("v4", drive_id="d3"), expected_drive_generation=g)
    with pytest.raises(Conflict):
        store.reserve_volume(vol("v5", drive_id="missing"))
    with pytest.raises(InvalidArgument):
        store.reserve_volume(vol("v6", drive_id="d3", size=0))
    assert [v.name for v in store.list_volumes()] == ["v1"]


def test_volume_fields_round_trip(store: Any) -> None:
    store.put_drive(drive("d1", "n7"))
    v = store.reserve_volume(vol("v1", parameters={"directpv.dev/placement": "spread"}, labels={"a": "1"}))
    assert v.node == "n7" and v.generation >= 1 and v.created_at > 0
    got = store.get_volume("v1")
    assert got == v
    u = store.update_volume("v1", status=VOLUME_READY, staging_path="/s", target_paths=["/t1", "/t2"],
                            read_only_targets=("/t2",))
    assert (u.status, u.staging_path, u.target_paths, u.read_only_targets) == (VOLUME_READY, "/s", ("/t1", "/t2"),
                                                                               ("/t2",))
    assert store.get_volume("v1") == u
    with pytest.raises(Conflict):
        store.update_volume("v1", expected_generation=v.generation, staging_path="")
    with pytest.raises(NotFound):
        store.update_volume("nope", staging_path="")
    with pytest.raises(InvalidArgument):
        store.update_volume("v1", size=1)
    with pytest.raises(InvalidArgument):
        store.update_volume("v1", status="Bogus")
    assert store.get_volume("nope") is None


def test_list_volumes_filters_and_paginates(store: Any) -> None:
    store.put_drive(drive("d1", "n1", total=100 * GiB))
    store.put_drive(drive("d2", "n2", total=100 * GiB))
    for i in range(10):
        store.reserve_volume(vol(f"v{i:02d}", drive_id="d1" if i % 2 else "d2"))
    names = [v.name for v in store.list_volumes()]
    assert names == sorted(names) and len(names) == 10
    assert [v.name for v in store.list_volumes(drive_id="d1")] == [f"v{i:02d}" for i in range(1, 10, 2)]
    assert [v.name for v in store.list_volumes(node="n2")] == [f"v{i:02d}" for i in range(0, 10, 2)]
    page1 = store.list_volumes(limit=4)
    page2 = store.list_volumes(start_after=page1[-1].name, limit=4)
    page3 = store.list_volumes(start_after=page2[-1].name, limit=4)
    assert [v.name for v in page1 + page2 + page3] == names


def test_expand_never_reserves_twice(store: Any) -> None:
    store.put_drive(drive("d1", total=4 * GiB))
    store.reserve_volume(vol("v1", size=GiB))
    assert store.expand_volume("v1", 2 * GiB).size == 2 * GiB
    assert store.expand_volume("v1", 2 * GiB).size == 2 * GiB  # retry
    assert store.expand_volume("v1", GiB).size == 2 * GiB  # never shrinks
    assert store.get_drive("d1").allocated == 2 * GiB
    with pytest.raises(OutOfRange):
        store.expand_volume("v1", 5 * GiB)
    assert store.get_drive("d1").allocated == 2 * GiB
    with pytest.raises(NotFound):
        store.expand_volume("nope", GiB)


def test_delete_volume_releases_and_is_idempotent(store: Any) -> None:
    store.put_drive(drive("d1"))
    store.reserve_volume(vol("v1", size=3 * GiB))
    gone = store.delete_volume("v1")
    assert gone is not None and gone.name == "v1"
    assert store.delete_volume("v1") is None
    d = store.get_drive("d1")
    assert (d.allocated, d.volume_count) == (0, 0)


def test_data_survives_reopen(adapter: Tuple[Any, Callable[[], Any]]) -> None:
    store, reopen = adapter
    store.put_drive(drive("d1", "n1", labels={"x": "y"}))
    store.reserve_volume(vol("v1", size=2 * GiB))
    store.update_volume("v1", staging_path="/s")
    again = reopen()
    d = again.get_drive("d1")
    assert (d.allocated, d.volume_count, d.labels) == (2 * GiB, 1, {"x": "y"})
    assert again.get_volume("v1").staging_path == "/s"
    assert [x.drive_id for x in again.list_drives("n1")] == ["d1"]


def test_concurrent_reservations_never_overcommit(store: Any) -> None:
    store.put_drive(drive("d1", total=10 * GiB))
    ok: List[str] = []
    refused: List[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            store.reserve_volume(vol(f"v{i}", size=GiB))
            with lock:
                ok.append(f"v{i}")
        except Conflict:
            with lock:
                refused.append(f"v{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 10 and len(refused) == 30
    d = store.get_drive("d1")
    assert d.allocated == 10 * GiB and d.volume_count == 10
    assert sorted(v.project_id for v in store.list_volumes(drive_id="d1")) == list(range(1, 11))
    assert d.status == DRIVE_READY


# --- tombstones and restoring (the store decides every deletion) ---------------------------


def test_reserve_assigns_a_uid_per_incarnation(store: Any) -> None:
    store.put_drive(drive("d1"))
    a = store.reserve_volume(vol("v1"))
    assert a.uid and store.get_volume("v1").uid == a.uid
    store.delete_volume("v1")
    b = store.reserve_volume(vol("v1"))
    assert b.uid and b.uid != a.uid


def test_delete_volume_leaves_a_tombstone_until_cleared(store: Any) -> None:
    store.put_drive(drive("d1", "n1"))
    store.put_drive(drive("d2", "n1"))
    v = store.reserve_volume(vol("v1", size=3 * GiB))
    store.reserve_volume(vol("w1", drive_id="d2"))
    assert store.list_tombstones("d1") == []
    store.delete_volume("v1")
    store.delete_volume("v1")  # idempotent: no second tombstone
    [t] = store.list_tombstones("d1")
    assert (t.drive_id, t.node, t.name, t.uid, t.project_id, t.size) == ("d1", "n1", "v1", v.uid, v.project_id,
                                                                         3 * GiB)
    assert t.deleted_at > 0
    assert store.list_tombstones("d2") == [] and [x.name for x in store.list_tombstones()] == ["v1"]
    d = store.get_drive("d1")
    assert (d.allocated, d.volume_count) == (0, 0)  # capacity is free at once
    store.put_drive(drive("d1", "n1", name="sdx"))  # a node re-registering keeps the tombstone
    assert len(store.list_tombstones("d1")) == 1
    assert not store.clear_tombstone("d1", "v1", "other-uid")
    assert store.clear_tombstone("d1", "v1", v.uid)
    assert store.list_tombstones("d1") == [] and not store.clear_tombstone("d1", "v1", v.uid)


def test_add_tombstone_for_an_orphan(store: Any) -> None:
    store.put_drive(drive("d1", "n1"))
    live = store.reserve_volume(vol("live"))
    t = store.add_tombstone(Tombstone(drive_id="d1", node="", name="orphan", uid="u1", project_id=7))
    assert (t.node, t.name, t.uid) == ("n1", "orphan", "u1")
    store.add_tombstone(Tombstone(drive_id="d1", node="", name="orphan", uid="u1", project_id=7))  # idempotent
    assert [x.name for x in store.list_tombstones("d1")] == ["orphan"]
    assert store.reserve_volume(vol("v2")).project_id == 2  # 7 is held, 1 is live
    for uid in ("", live.uid):  # the live volume itself: only DeleteVolume deletes it
        with pytest.raises(FailedPrecondition):
            store.add_tombstone(Tombstone(drive_id="d1", node="", name="live", uid=uid, project_id=1))
    # a directory left by an earlier incarnation of the live name (another uid) may be tombstoned
    store.add_tombstone(Tombstone(drive_id="d1", node="", name="live", uid="earlier", project_id=9))
    assert sorted((x.name, x.uid) for x in store.list_tombstones("d1")) == [("live", "earlier"), ("orphan", "u1")]
    with pytest.raises(NotFound):
        store.add_tombstone(Tombstone(drive_id="nope", node="", name="o", uid="x", project_id=1))
    assert store.get_volume("live") is not None


def test_restore_volume_records_it_with_its_own_identity(store: Any) -> None:
    store.put_drive(drive("d1", "n1", total=4 * GiB))
    store.reserve_volume(vol("big", size=3 * GiB))
    r = store.restore_volume(Volume(name="pvc-r", drive_id="d1", node="", size=2 * GiB, project_id=9, uid="u9",
                                    parameters={"k": "v"}, labels={"l": "1"}, created_at=123.0))
    assert (r.name, r.node, r.size, r.project_id, r.uid, r.parameters, r.created_at) == (
        "pvc-r", "n1", 2 * GiB, 9, "u9", {"k": "v"}, 123.0)
    assert store.get_volume("pvc-r") == r
    d = store.get_drive("d1")
    assert (d.allocated, d.volume_count) == (5 * GiB, 2)  # never refused for room: the data is there
    same = Volume(name="pvc-r", drive_id="d1", node="", size=2 * GiB, project_id=9, uid="u9")
    assert store.restore_volume(same).uid == "u9"  # idempotent
    assert store.get_drive("d1").allocated == 5 * GiB
    with pytest.raises(AlreadyExists):  # never over-writes a record
        store.restore_volume(Volume(name="big", drive_id="d1", node="", size=GiB, project_id=5, uid="other"))
    with pytest.raises(Conflict):  # project id taken
        store.restore_volume(Volume(name="pvc-s", drive_id="d1", node="", size=GiB, project_id=9, uid="u10"))
    with pytest.raises(NotFound):
        store.restore_volume(Volume(name="pvc-t", drive_id="nope", node="", size=GiB, project_id=1, uid="u"))
    with pytest.raises(InvalidArgument):
        store.restore_volume(Volume(name="pvc-u", drive_id="d1", node="", size=GiB, project_id=0, uid="u"))
    assert store.get_volume("big").size == 3 * GiB and store.get_volume("pvc-s") is None
    with pytest.raises(Conflict):  # over-full after the restore: no new reservation
        store.reserve_volume(vol("next", size=1))


def test_tombstones_survive_reopen(adapter: Tuple[Any, Callable[[], Any]]) -> None:
    store, reopen = adapter
    store.put_drive(drive("d1", "n1"))
    v = store.reserve_volume(vol("v1"))
    store.delete_volume("v1")
    again = reopen()
    assert [(t.name, t.uid) for t in again.list_tombstones("d1")] == [("v1", v.uid)]
