"""core/scheduler.py: choice, refusals with reasons, placement policies."""

from __future__ import annotations

from typing import Any, Dict

import pytest
from directpv_csi.core.models import DRIVE_LOST, Drive
from directpv_csi.core.reservation import reservation_refusal
from directpv_csi.core.scheduler import (
    PLACEMENT_BIN_PACK,
    PLACEMENT_MOST_FREE,
    PLACEMENT_SPREAD,
    Refusal,
    Request,
    choose,
    refusal_reason,
    summarize,
)

GiB = 1024**3
MiB = 1024**2


def d(drive_id: str, total: int = 10 * GiB, allocated: int = 0, node: str = "n1", **kw: Any) -> Drive:
    return Drive(drive_id=drive_id, node=node, name=drive_id, total=total, allocated=allocated, **kw)


@pytest.mark.parametrize(
    "placement, want",
    [
        (PLACEMENT_MOST_FREE, "big"),  # most free bytes
        (PLACEMENT_BIN_PACK, "tight"),  # least free that still fits
        (PLACEMENT_SPREAD, "empty"),  # fewest volumes
    ],
)
def test_placement_policies(placement: str, want: str) -> None:
    drives = [
        d("big", total=100 * GiB, allocated=10 * GiB, volume_count=5),
        d("tight", total=3 * GiB, allocated=1 * GiB, volume_count=2),
        d("empty", total=20 * GiB, allocated=0, volume_count=0),
        d("small", total=1 * GiB, volume_count=0),  # cannot fit 2 GiB
    ]
    dec = choose(drives, Request(size=2 * GiB, placement=placement))
    assert dec.drive is not None and dec.drive.drive_id == want
    assert [r.drive_id for r in dec.refusals] == ["small"]


def test_ties_break_on_drive_id_deterministically() -> None:
    drives = [d("b"), d("a"), d("c")]
    for placement in (PLACEMENT_MOST_FREE, PLACEMENT_BIN_PACK, PLACEMENT_SPREAD):
        dec = choose(drives, Request(size=GiB, placement=placement))
        assert dec.drive is not None and dec.drive.drive_id == "a"


def test_every_refused_drive_has_its_reason() -> None:
    ok: Dict[str, Any] = {"access_tier": "Cold", "labels": {"rack": "r1"}}
    drives = [
        d("full", total=GiB, allocated=GiB - 100 * MiB, **ok),
        d("cordoned", schedulable=False, **ok),
        d("lost", status=DRIVE_LOST, message="device gone", **ok),
        d("hot", access_tier="Hot", labels={"rack": "r1"}),
        d("rack2", access_tier="Cold", labels={"rack": "r2"}),
        d("claimed", **ok),
    ]
    req = Request(size=GiB, access_tier="Cold", labels={"rack": "r1"}, claim="c1")
    dec = choose(drives, req, claimed={"claimed"})
    assert dec.drive is None
    reasons = {r.drive_id: r.reason for r in dec.refusals}
    assert reasons == {
        "full": "has 100 MiB free, needs 1 GiB",
        "cordoned": "cordoned",
        "lost": "is Lost (device gone)",
        "hot": "access tier Hot, wants Cold",
        "rack2": "label rack=r1 wanted, has rack=r2",
        "claimed": "already holds a volume of claim c1",
    }
    assert refusal_reason(d("tier", labels={"rack": "r1"}), req).startswith("access tier Default")
    assert refusal_reason(d("rack2", labels={"rack": "r2"}, access_tier="Cold"), req) == \
        "label rack=r1 wanted, has rack=r2"
    assert refusal_reason(d("x", access_tier="cold", labels={"rack": "r1"}), req, {"x"}) == \
        "already holds a volume of claim c1"
    assert refusal_reason(d("x", access_tier="cold", labels={"rack": "r1"}), req, set()) == ""


def test_exclude_skips_drives_silently() -> None:
    dec = choose([d("a", total=100 * GiB), d("b")], Request(size=GiB), exclude={"a"})
    assert dec.drive is not None and dec.drive.drive_id == "b" and dec.refusals == ()


def test_summarize_groups_by_node_and_truncates() -> None:
    refusals = [Refusal("d1", "n1", "has 100 MiB free, needs 1 GiB"), Refusal("d2", "n1", "cordoned"),
                Refusal("d3", "n2", "is Lost")]
    assert summarize(refusals) == ("node n1: drive d1 has 100 MiB free, needs 1 GiB; drive d2 cordoned; "
                                   "node n2: drive d3 is Lost")
    many = [Refusal(f"d{i}", "n1", "cordoned") for i in range(30)]
    text = summarize(many, limit=5)
    assert text.count("cordoned") == 5 and text.endswith("and 25 more drive(s) refused")
    assert summarize([]) == "no drives on the requested topology"


def test_cost_is_linear_in_candidates_only() -> None:
    # the scheduler sees only what it is given: 10 candidates out of a notional 10,000
    cands = [d(f"x{i:02d}", total=(i + 1) * GiB) for i in range(10)]
    dec = choose(cands, Request(size=GiB))
    assert dec.drive is not None and dec.drive.drive_id == "x09"


def test_one_rule_for_the_choice_the_reasons_and_the_stores_check() -> None:
    """choose(), refusal_reason and the stores' reservation check (exact wording) refuse the same
    drives for the same first reason: sift is their one home."""
    drives = [
        d("ok"),
        d("full", total=GiB, allocated=GiB - MiB),
        d("over", total=GiB, allocated=2 * GiB),  # shrunk under its volumes: nothing free, never negative
        d("cordoned", schedulable=False),
        d("lost", status=DRIVE_LOST, schedulable=False),
    ]
    req = Request(size=GiB)
    dec = choose(drives, req)
    assert dec.drive is not None and dec.drive.drive_id == "ok"
    human = {r.drive_id: r.reason for r in dec.refusals}
    assert human == {d_.drive_id: refusal_reason(d_, req) for d_ in drives if d_.drive_id != "ok"}
    assert human["over"] == "has 0 B free, needs 1 GiB"
    exact = {d_.drive_id: reservation_refusal(d_, GiB) for d_ in drives}
    assert exact == {"ok": "", "full": f"has {MiB} bytes free, needs {GiB}", "over": f"has 0 bytes free, needs {GiB}",
                     "cordoned": "is Ready, cordoned", "lost": "is Lost, cordoned"}
    assert {k for k, v in exact.items() if v} == set(human)
    # nothing asked (size 0): status and cordon only, as the stores ask before the generation
    assert [reservation_refusal(d_, 0) for d_ in drives] == ["", "", "", "is Ready, cordoned", "is Lost, cordoned"]
