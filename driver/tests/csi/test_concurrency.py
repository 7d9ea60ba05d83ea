"""200 concurrent CreateVolume calls against 5 small drives, over the real socket:
the sum reserved never exceeds a drive's capacity, every call succeeds or gets
RESOURCE_EXHAUSTED, and retries return the same volume."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Tuple

import grpc
from csi.csi_helpers import (
    Csi,
    MiB,
    create_req,
)
from directpv_csi.csi.proto import csi_pb2 as pb

N_CALLS = 200


def _call(csi: Csi, name: str, size: int, params: Dict[str, str]) -> Tuple[str, Any]:
    try:
        vol = csi.controller.CreateVolume(create_req(name, size, params=params), timeout=60).volume
        return "ok", vol
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()


def test_200_concurrent_creates_never_overcommit(csi: Csi) -> None:
    for i in range(5):
        csi.add_drive(f"d{i}", f"n{i % 2}", 1024 * MiB)
    rng = random.Random(5)
    placements = ["most-free", "bin-pack", "spread"]
    reqs = [(f"pvc-{i:03d}", rng.choice((32, 64, 96, 128)) * MiB,
             {"directpv.dev/placement": rng.choice(placements)}) for i in range(N_CALLS)]

    # the first 20 names are sent twice in the same storm (a CO retrying before the answer)
    storm = reqs + reqs[:20]
    rng.shuffle(storm)
    with ThreadPoolExecutor(max_workers=len(storm)) as pool:
        results = list(pool.map(lambda r: _call(csi, *r), storm))
    by_name: Dict[str, list[Tuple[str, Any]]] = {}
    for (name, _, _), res in zip(storm, results):
        by_name.setdefault(name, []).append(res)
    for name, got in by_name.items():
        assert len({kind for kind, _ in got}) == 1, (name, got)  # duplicates agree: both made, or both refused
        if got[0][0] == "ok":
            assert all(res == got[0][1] for _, res in got), (name, got)  # ...and got the same volume
    first = [by_name[name][0] for name, _, _ in reqs]

    outcomes = {kind for kind, _ in first}
    assert outcomes <= {"ok", "RESOURCE_EXHAUSTED"}, [r for r in first if r[0] not in ("ok", "RESOURCE_EXHAUSTED")]
    assert "ok" in outcomes and "RESOURCE_EXHAUSTED" in outcomes  # the drives really filled up

    drives = {d.drive_id: d for d in csi.store.list_drives()}
    volumes = csi.store.list_volumes()
    for d in drives.values():
        on = [v for v in volumes if v.drive_id == d.drive_id]
        assert d.allocated == sum(v.size for v in on) <= d.total
        assert sorted(v.project_id for v in on) == list(range(1, len(on) + 1))
    assert csi.store.check() == []
    created = {name: res for (name, _, _), (kind, res) in zip(reqs, first) if kind == "ok"}
    assert {v.name for v in volumes} == set(created)
    for name, vol in created.items():
        assert vol.capacity_bytes == csi.store.get_volume(name).size
        assert vol.volume_context["directpv.dev/drive-id"] == csi.store.get_volume(name).drive_id

    # every request again, concurrently: the created ones come back unchanged
    with ThreadPoolExecutor(max_workers=N_CALLS) as pool:
        second = list(pool.map(lambda r: _call(csi, *r), reqs))
    for (name, _, _), (kind, res) in zip(reqs, second):
        assert kind in ("ok", "RESOURCE_EXHAUSTED")
        if name in created:
            assert kind == "ok" and res == created[name]
    for d in csi.store.list_drives():
        assert d.allocated <= d.total
    assert csi.store.check() == []

    # and every volume deletes cleanly, leaving nothing reserved
    for v in csi.store.list_volumes():
        csi.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=v.name))
    assert all(d.allocated == 0 and d.volume_count == 0 for d in csi.store.list_drives())
